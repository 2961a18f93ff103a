"""Friend-recommendation scoring in Apache Spark (DataFrames), the scale-out twin of
:mod:`provguard.recommend.heuristics`.

:func:`local_spark_session` starts a **loopback-only** local session: ``SPARK_LOCAL_IP``,
``spark.driver.host`` and ``spark.driver.bindAddress`` are ``127.0.0.1``, master ``local[2]``,
the web UI is off. :func:`spark_top_k` expresses candidate generation and scoring as joins:

1. ``E``: the undirected simple edge set, both directions (self loops and duplicates dropped);
2. node weight ``w(x)``: 1 (common neighbours), ``1/ln deg x`` (Adamic–Adar), ``1/deg x``
   (resource allocation);
3. two-hop paths ``E(x, u) ⋈ E(x, v)``, ``u != v``, summed per ``(u, v)``: the score;
4. existing friendships removed with a left anti join;
5. per ``u`` the top k by score descending, candidate id ascending (``row_number`` over a
   window).

It returns the same arrays as :func:`provguard.recommend.rank.top_k_rows`. Spark sums the
per-path weights in another order than scipy, so float scores agree to ~1e-12 relative and two
candidates whose exact scores tie can come out in either order; compare with
:func:`provguard.recommend.compare.top_k_agreement`.

Requires ``pyspark`` and a Java runtime (17); :func:`spark_unavailable_reason` says why a
session cannot start.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa

from provguard.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SparkMethod = Literal["common_neighbours", "adamic_adar", "resource_allocation"]


def spark_unavailable_reason() -> str | None:
    """``None`` if a local Spark session can start here, else the reason (no pyspark, no Java)."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed"
    java_home = os.environ.get("JAVA_HOME")
    if not (
        java_home and os.path.exists(os.path.join(java_home, "bin", "java"))
    ) and not shutil.which("java"):
        return "no Java runtime (java not on PATH and JAVA_HOME unset)"
    return None


def local_spark_session(
    app_name: str = "provguard", *, shuffle_partitions: int = 4
) -> SparkSession:
    """Start (or reuse) a loopback-only ``local[2]`` Spark session.

    Sets ``SPARK_LOCAL_IP=127.0.0.1`` in this process's environment before the JVM starts.

    Raises:
        InputError: Spark cannot start here (see :func:`spark_unavailable_reason`).
    """
    reason = spark_unavailable_reason()
    if reason is not None:
        raise InputError(f"cannot start Spark: {reason}")
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )


def spark_top_k(
    spark: SparkSession,
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    *,
    method: SparkMethod,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k friend recommendations by a neighbourhood heuristic, computed in Spark.

    Args:
        spark: a session (:func:`local_spark_session`).
        src, dst: ``(m,) int`` undirected edges; self loops and duplicates are dropped (as in
            :func:`provguard.recommend.graph.adjacency`).
        n: number of users; ids must be in ``0..n-1``.
        method: ``common_neighbours``, ``adamic_adar`` or ``resource_allocation``.
        k: >= 1.

    Returns:
        ``(ids, scores)``: ``(n, k) int64`` (``-1`` padded) and ``(n, k) float64`` (0 padded).

    Raises:
        InputError: bad arrays, ids, k or method.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if method not in ("common_neighbours", "adamic_adar", "resource_allocation"):
        raise InputError(f"unknown method {method!r}")
    if isinstance(k, bool) or k < 1:
        raise InputError(f"k must be >= 1, got {k!r}")
    s = np.asarray(src, dtype=np.int64)
    d = np.asarray(dst, dtype=np.int64)
    if s.shape != d.shape or s.ndim != 1:
        raise InputError("src and dst must be 1-D arrays of equal length")
    if s.size and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n):
        raise InputError(f"an edge names a user outside 0..{n - 1}")
    ids = np.full((n, k), -1, dtype=np.int64)
    scores = np.zeros((n, k), dtype=np.float64)
    keep = s != d
    lo, hi = np.minimum(s[keep], d[keep]), np.maximum(s[keep], d[keep])
    if lo.size == 0:
        return ids, scores
    pairs = np.unique(np.stack([lo, hi], axis=1), axis=0)
    both = np.concatenate([pairs, pairs[:, ::-1]])
    table = pa.table({"x": both[:, 0].copy(), "y": both[:, 1].copy()})
    edges = spark.createDataFrame(table).cache()
    deg = edges.groupBy("x").agg(F.count(F.lit(1)).alias("deg"))
    if method == "common_neighbours":
        wcol = F.lit(1.0)
    elif method == "adamic_adar":
        wcol = F.lit(1.0) / F.log(F.col("deg").cast("double"))
    else:
        wcol = F.lit(1.0) / F.col("deg").cast("double")
    # a middle node of a path u - x - v with u != v has degree >= 2 (and ln 1 = 0 is no weight)
    weights = deg.where(F.col("deg") >= 2).select("x", wcol.alias("w"))
    left = edges.select(F.col("x"), F.col("y").alias("u"))
    right = edges.select(F.col("x"), F.col("y").alias("v"))
    paths = left.join(right, "x").where(F.col("u") != F.col("v")).join(weights, "x")
    summed = paths.groupBy("u", "v").agg(F.sum("w").alias("score"))
    existing = edges.select(F.col("x").alias("u"), F.col("y").alias("v"))
    fresh = summed.join(existing, ["u", "v"], "left_anti").where(F.col("score") > 0)
    win = Window.partitionBy("u").orderBy(F.col("score").desc(), F.col("v").asc())
    top = fresh.withColumn("rank", F.row_number().over(win)).where(F.col("rank") <= k)
    rows = top.select("u", "v", "score", "rank").toArrow()
    edges.unpersist()
    u = np.asarray(rows.column("u").to_numpy(), dtype=np.int64)
    v = np.asarray(rows.column("v").to_numpy(), dtype=np.int64)
    r = np.asarray(rows.column("rank").to_numpy(), dtype=np.int64) - 1
    ids[u, r] = v
    scores[u, r] = np.asarray(rows.column("score").to_numpy(), dtype=np.float64)
    return ids, scores
