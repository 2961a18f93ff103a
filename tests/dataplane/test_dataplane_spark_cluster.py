"""The scale-out engine on a cluster URL, not only ``local[2]``: a Spark standalone cluster (one
master, one worker: separate JVMs on 127.0.0.1) runs ``provguard query --engine spark
--spark-master spark://...`` and answers exactly as DuckDB (values, masks and labels), and the
audit entry names the master the query ran on.

The query runs in a subprocess: one process holds one SparkContext, and the other tests' local
session must not answer for the cluster (``SparkEngine`` refuses a master it did not get)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.cli.test_cli_query import MASKS, store  # noqa: F401  (fixture)
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app
from provguard.cli.query import spark_settings
from provguard.errors import InputError

KEY = "spark-cluster-hash-key-0123456789"
SQL = (
    "SELECT p.subject_id, p.handle, p.avatar_key, count(*) OVER (PARTITION BY p.app_id) AS n"
    " FROM profiles AS p WHERE p.subject_id % 3 <> 1 ORDER BY p.subject_id"
)
runner = CliRunner()


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    pytest.importorskip("pyspark")
    from provguard.adapters.spark_standalone import StandaloneCluster

    with StandaloneCluster(workers=1, cores=1, memory="1g") as c:
        yield c.url


def _args(data: Path, *extra: str) -> list[str]:
    return ["query", "--app", "douyin", "--purpose", "social.friend_recommendation",
            "--store", str(data), "--policy", str(MASKS), "--at", "2019-06-30", "--json",
            "--raw-labels", "--limit", "100", *extra, SQL]  # fmt: skip


def _rows(output: str) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in output.splitlines() if ln.startswith("{")]


def test_a_cluster_url_answers_as_duckdb_and_is_audited(
    cluster: str,
    store: Path,  # noqa: F811
) -> None:
    env = {**os.environ, "PROVGUARD_HASH_KEY": KEY, "COLUMNS": "400"}
    env["PYSPARK_PYTHON"] = sys.executable
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "provguard.cli.main",
            *_args(
                store,
                "--engine",
                "spark",
                "--spark-master",
                cluster,
                "--spark-conf",
                "spark.executor.memory=512m",
            ),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    on_cluster = _rows(ran.stdout)
    local = runner.invoke(app, _args(store), env={"PROVGUARD_HASH_KEY": KEY, "COLUMNS": "400"})
    assert local.exit_code == 0, local.output
    on_duckdb = _rows(local.output)
    # douyin's 20 rows minus the filtered third, masks applied (the policy hashes, redacts,
    # nulls and withholds), labels as 64-bit masks
    assert len(on_duckdb) == 14
    assert on_cluster == on_duckdb
    assert any(r["handle"] == "[withheld]" for r in on_duckdb)
    assert any(isinstance(r["handle"], str) and len(r["handle"]) == 64 for r in on_duckdb)
    assert all(isinstance(r["handle__origins"], int) for r in on_duckdb)
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        assert log.verify().ok
        entries = [dict(e.payload) for e in log.entries(kind="query")]
    spark_entry, duck_entry = entries[-2], entries[-1]
    assert spark_entry["engine"] == "spark" and spark_entry["spark_master"] == cluster
    assert duck_entry["engine"] == "duckdb" and "spark_master" not in duck_entry


def test_spark_conf_items_are_key_value() -> None:
    assert spark_settings(["a=1", "b.c = x=y", "a=2"]) == {"a": "2", "b.c": " x=y"}
    for bad in (["novalue"], ["=1"], [" =1"]):
        with pytest.raises(InputError, match="KEY=VALUE"):
            spark_settings(bad)
