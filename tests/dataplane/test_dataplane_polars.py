"""The Polars entry point: labelled Polars frames in, a Polars frame out, through Arrow; the same
cells as the Arrow path and as the PDP's per-row answer."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from provguard.dataplane import query_frames, query_polars
from provguard.provenance import default_registry
from provguard.sqlgen import PLACEHOLDER, QueryPolicy, default_schema, hmac_hex

from .conftest import HASH_KEY, ROOT

REG = default_registry()


def _profiles() -> pa.Table:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from sqlgen.conftest import random_profiles

    return random_profiles(60, seed=13)


def test_polars_in_polars_out(mask_policy: QueryPolicy) -> None:
    arrow = _profiles()
    frame = pl.from_arrow(arrow)
    assert isinstance(frame, pl.DataFrame)
    sql = "SELECT subject_id, handle FROM profiles WHERE app_id = 'douyin' ORDER BY created_at"
    out = query_polars({"profiles": frame}, sql, default_schema(), mask_policy)
    assert isinstance(out, pl.DataFrame)
    assert out.columns == ["subject_id", "handle", "subject_id__origins", "handle__origins"]
    assert out.schema["handle__origins"] == pl.UInt64
    same = query_frames({"profiles": arrow}, sql, default_schema(), mask_policy).table
    assert out.to_arrow().to_pylist() == same.to_pylist()
    # each cell as the PDP says, from the source rows in the same order
    src = [r for r in arrow.sort_by("created_at").to_pylist() if r["app_id"] == "douyin"]
    nick = ("user.name.nickname",)
    wechat = REG.mask(["wechat"])
    hashed = 0
    for row, r in zip(out.iter_rows(named=True), src, strict=True):
        label = row["handle__origins"]
        assert label == (r["handle_origins"] or 1) | REG.mask(["douyin", "duoshan"])
        kind, strategy = mask_policy.row_strategy(nick, label)
        if r["handle"] is None:
            continue
        if kind == "clear":
            assert row["handle"] == r["handle"]
        elif strategy == "placeholder":
            assert row["handle"] == PLACEHOLDER
        elif strategy == "hash":
            assert label & wechat and row["handle"] == hmac_hex(r["handle"], HASH_KEY)
            hashed += 1
        else:
            assert row["handle"] == r["handle"][0] + "***"
    assert hashed > 0


def test_pandas_frames_too(mask_policy: QueryPolicy) -> None:
    arrow = _profiles()
    sql = "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id ORDER BY app_id"
    out = query_polars({"profiles": arrow.to_pandas()}, sql, default_schema(), mask_policy)
    # controller isolation: douyin counts its own 30 rows, never duoshan's 30
    assert out["app_id"].to_list() == ["douyin"]
    assert out["n"].to_list() == [30]
