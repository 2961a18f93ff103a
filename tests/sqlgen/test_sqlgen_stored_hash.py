"""Keyed hashes stored at load time: on every back-end the rewrite that reads the stored hash
returns exactly what the rewrite that computes it returns (and what Python's ``hmac`` gives);
under another key the stored column is ignored and the hash is computed."""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.dataplane import stored_hash_select, with_stored_hashes
from provguard.errors import InputError
from provguard.policy.model import PolicySet
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, SchemaRegistry, default_schema, hmac_hex, rewrite
from provguard.sqlgen.keyed import key_id
from provguard.sqlgen.schema import PROFILES

from .conftest import AT, HASH_KEY, random_profiles

QUERIES = [
    "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 3 = 1",
    "SELECT p.subject_id, p.handle AS h FROM profiles AS p ORDER BY p.created_at LIMIT 30",
    # a derived column is nullified (never hashed); the bare one reads the stored hash
    "SELECT upper(handle) AS u, handle FROM profiles",
    # aggregate root: the bare group key is hashed in the query, never read from storage
    "SELECT handle, count(*) AS n FROM profiles GROUP BY handle",
]


def _policy(mask_policy: PolicySet, key: bytes) -> QueryPolicy:
    return QueryPolicy(
        mask_policy,
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=key,
    )


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


def _duck(sql: str, t: pa.Table) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        return _rows(con.sql(sql).to_arrow_table())
    finally:
        con.close()


def _stored(t: pa.Table, key: bytes) -> tuple[pa.Table, SchemaRegistry]:
    hashed, spec = with_stored_hashes(t, PROFILES, key)
    return hashed, SchemaRegistry(tables={"profiles": spec})


def test_stored_hashes_are_the_hmac() -> None:
    t = random_profiles(30, seed=1)
    hashed, spec = with_stored_hashes(t, PROFILES, HASH_KEY, columns=["handle"])
    assert spec.hash_key_id == key_id(HASH_KEY)
    assert spec.columns["handle"].hash_column == "handle__hmac"
    values, hashes = hashed["handle"].to_pylist(), hashed["handle__hmac"].to_pylist()
    for value, h in zip(values, hashes, strict=True):
        assert h == (None if value is None else hmac_hex(value, HASH_KEY))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60))
def test_stored_equals_computed_duckdb(seed: int, n: int, mask_policy: PolicySet) -> None:
    qp = _policy(mask_policy, HASH_KEY)
    t = random_profiles(n, seed=seed)
    hashed, reg = _stored(t, HASH_KEY)
    for sql in QUERIES:
        computed = rewrite(sql, default_schema(), qp)
        stored = rewrite(sql, reg, qp)
        assert _duck(stored.sql, hashed) == _duck(computed.sql, t), sql


def test_stored_hash_is_read_only_for_bare_columns(mask_policy: PolicySet) -> None:
    qp = _policy(mask_policy, HASH_KEY)
    _, reg = _stored(random_profiles(5, seed=2), HASH_KEY)
    sqls = [rewrite(q, reg, qp).sql for q in QUERIES]
    assert "SHA256" not in sqls[0] and "handle__hmac" in sqls[0]
    assert "SHA256" not in sqls[1] and "handle__hmac" in sqls[1]
    assert "SHA256" not in sqls[2] and "handle__hmac" in sqls[2]
    assert "THEN NULL ELSE _pg_q.u END AS u" in sqls[2]
    assert "SHA256" in sqls[3] and "handle__hmac" not in sqls[3]


def test_other_key_falls_back_to_computing(mask_policy: PolicySet) -> None:
    """Stored under key A, queried under key B: the stored column is ignored."""
    other = b"another-deployment-key-0123"
    t = random_profiles(40, seed=3)
    hashed, reg = _stored(t, HASH_KEY)
    qp = _policy(mask_policy, other)
    sql = QUERIES[0]
    r = rewrite(sql, reg, qp)
    assert "handle__hmac" not in r.sql and "SHA256" in r.sql
    got = _duck(r.sql, hashed)
    assert got == _duck(rewrite(sql, default_schema(), qp).sql, t)
    wechat_only = [
        row["handle"]
        for row in t.to_pylist()
        if row["subject_id"] % 3 == 1
        and row["handle_origins"] in (4, 6)
        and row["handle"]
        and row["app_id"] == "douyin"  # controller isolation: douyin's rows only
    ]
    assert wechat_only, "the sample must hash some handles"
    hashes = {g[1] for g in got}
    assert {hmac_hex(h, other) for h in wechat_only} <= hashes
    assert not {hmac_hex(h, HASH_KEY) for h in wechat_only} & hashes


def test_stored_hash_columns_are_hidden(mask_policy: PolicySet) -> None:
    _, reg = _stored(random_profiles(5, seed=2), HASH_KEY)
    with pytest.raises(InputError):
        rewrite("SELECT handle__hmac FROM profiles", reg, _policy(mask_policy, HASH_KEY))


def test_stored_hash_select_errors() -> None:
    with pytest.raises(InputError):
        stored_hash_select("profiles", PROFILES, HASH_KEY, columns=["nope"])
    with pytest.raises(InputError):
        stored_hash_select("profiles", PROFILES, b"short")


def test_stored_equals_computed_spark(mask_policy: PolicySet, spark: Any) -> None:
    qp = _policy(mask_policy, HASH_KEY)
    t = random_profiles(80, seed=4)
    sql, spec = stored_hash_select("profiles", PROFILES, HASH_KEY, dialect="spark")
    spark.register("profiles", t)
    hashed = spark.query(sql)
    spark.register("profiles", hashed)
    reg = SchemaRegistry(tables={"profiles": spec})
    for q in QUERIES[:2]:
        s = rewrite(q, reg, qp, dialect="spark")
        assert "handle__hmac" in s.sql
        got = _rows(spark.query(s.sql, [c.origins_column for c in s.columns]))
        assert got == _duck(rewrite(q, default_schema(), qp).sql, t), q
