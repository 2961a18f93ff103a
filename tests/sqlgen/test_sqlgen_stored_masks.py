"""Stored masks: a bare protected column reads the masked value stored at load time under the
verdict's fingerprint; it answers exactly as the masking CASE (DuckDB, hypothesis tables; Spark,
one table), and any difference in policy, app, purpose, key, label or output shape falls back to
the CASE."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provguard.dataplane import (
    mask_fingerprints,
    normalised_labels_select,
    stored_mask_select,
    with_stored_masks,
)
from provguard.errors import InputError
from provguard.policy import load_policy_dir
from provguard.policy.model import PolicySet
from provguard.provenance import default_registry
from provguard.sqlgen import (
    PLACEHOLDER,
    REDACT_TAIL,
    QueryError,
    QueryPolicy,
    SchemaRegistry,
    default_schema,
    rewrite,
)
from provguard.sqlgen.keyed import key_id
from provguard.sqlgen.schema import PROFILES
from provguard.sqlgen.stored import mask_fingerprint

from .conftest import AT, GOLDEN, HANDLES, HASH_KEY, LABELS, make_profiles, random_profiles

#: outputs that read the stored mask (bare columns of the table, label = stored label | constant
#: bits outside every mask)
USES = [
    "SELECT subject_id, handle, avatar_key FROM profiles WHERE subject_id % 3 = 1",
    "SELECT p.subject_id, p.handle AS h FROM profiles AS p ORDER BY p.created_at LIMIT 30",
    # handle_grant shares handle's label: the label is the same per-row part
    "SELECT handle FROM profiles WHERE handle_grant IS NOT NULL",
    "SELECT avatar_key AS a, app_id FROM profiles WHERE app_id = 'douyin'",
]
#: outputs that must be masked by the CASE (the stored mask would be wrong or not apply)
FALLS_BACK = [
    # a derived output is nullified, never read from storage
    "SELECT upper(handle) AS u FROM profiles",
    # aggregate root
    "SELECT handle, count(*) AS n FROM profiles GROUP BY handle",
    # the avatar's label enters the handle's (implicit flow): another per-row label
    "SELECT handle FROM profiles WHERE avatar_key IS NOT NULL",
    # grant_id is labelled {wechat, qq}: constant bits that meet the handle's masks
    "SELECT handle FROM profiles WHERE grant_id IS NOT NULL",
    # a derived table: the bare column is not read from a base table by the root
    "SELECT x.handle FROM (SELECT handle FROM profiles) AS x",
    # an outer join pads rows with NULL: their label is unknown (placeholder), not NULL
    "SELECT a.subject_id, b.handle FROM profiles AS a LEFT JOIN profiles AS b"
    " ON a.subject_id = b.subject_id + 1",
]
#: inner joins on constant-labelled keys keep the bare outputs' labels: stored masks are read
USES.append(
    "SELECT a.subject_id, b.handle FROM profiles AS a JOIN profiles AS b"
    " ON a.subject_id = b.subject_id + 1"
)


def _policy(policy: PolicySet, key: bytes = HASH_KEY, **kw: Any) -> QueryPolicy:
    args: dict[str, Any] = {"app": "douyin", "purpose": "social.friend_recommendation"}
    args.update(kw)
    return QueryPolicy(policy, default_registry(), at=AT, hash_key=key, **args)


def _rows(t: pa.Table) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in t.to_pylist()), key=repr)


def _duck(sql: str, t: pa.Table) -> list[tuple[Any, ...]]:
    con = duckdb.connect()
    con.register("profiles", t)
    try:
        return _rows(con.sql(sql).to_arrow_table())
    finally:
        con.close()


def _stored(t: pa.Table, qp: QueryPolicy) -> tuple[pa.Table, SchemaRegistry]:
    masked, spec, stored = with_stored_masks(t, "profiles", default_schema(), qp)
    assert set(stored) == {"handle", "avatar_key"}
    return masked, SchemaRegistry(tables={"profiles": spec})


_label = st.sampled_from([*LABELS, None])
_row = st.tuples(
    st.sampled_from(["douyin", "duoshan"]),
    st.one_of(st.none(), st.integers(0, len(HANDLES) - 1)),
    _label,
    st.one_of(st.none(), st.integers(0, 5)),
    _label,
)


#: the rewrites of the hypothesis test, made once: the spec (and so every rewritten text) does
#: not depend on the rows, only on the policy
_PLANS: dict[str, Any] = {}


def _plans(mask_policy: PolicySet) -> dict[str, Any]:
    if not _PLANS:
        qp = _policy(mask_policy)
        select, spec, stored = stored_mask_select("profiles", default_schema(), qp)
        assert set(stored) == {"handle", "avatar_key"}
        reg = SchemaRegistry(tables={"profiles": spec})
        # labels normalised at load (0/NULL -> unknown), then masks stored over them
        normalise, nspec = normalised_labels_select("profiles", PROFILES, 1)
        nschema = SchemaRegistry(tables={"profiles": nspec})
        nselect, nmspec, _ = stored_mask_select("profiles", nschema, qp)
        nreg = SchemaRegistry(tables={"profiles": nmspec})
        _PLANS.update(select=select, normalise=normalise, nselect=nselect)
        _PLANS["queries"] = [
            (
                sql,
                sql in USES,
                rewrite(sql, reg, qp).sql,
                rewrite(sql, default_schema(), qp).sql,
                rewrite(sql, nreg, qp).sql,
            )
            for sql in USES + FALLS_BACK
        ]
    return _PLANS


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_row, min_size=1, max_size=40))
def test_stored_mask_equals_case_duckdb(rows: list[Any], mask_policy: PolicySet) -> None:
    """Hypothesis tables (NULL and 0 labels included): cell by cell, the stored-mask answer is
    the CASE answer, masks and labels included."""
    t = make_profiles([(i, app, h, hl, a, al) for i, (app, h, hl, a, al) in enumerate(rows)])
    plans = _plans(mask_policy)
    one: dict[str, str | bool | int | float | list[str]] = {"threads": 1}
    cons = [duckdb.connect(config=one) for _ in range(3)]
    case_con, stored_con, norm_con = cons
    try:
        case_con.register("profiles", t)
        stored_con.register("profiles", case_con.sql(plans["select"]).to_arrow_table())
        norm_con.register("profiles", case_con.sql(plans["normalise"]).to_arrow_table())
        norm_con.register("profiles", norm_con.sql(plans["nselect"]).to_arrow_table())
        for sql, uses, stored, case, normalised in plans["queries"]:
            assert ("__mask_" in stored) is uses, sql
            assert ("CASE" not in stored) is uses, sql
            assert ("__mask_" in normalised) is uses, sql
            assert "NULLIF(profiles." not in normalised, sql
            expected = _rows(case_con.sql(case).to_arrow_table())
            assert _rows(stored_con.sql(stored).to_arrow_table()) == expected, sql
            assert _rows(norm_con.sql(normalised).to_arrow_table()) == expected, sql
    finally:
        for con in cons:
            con.close()


def test_stored_values_are_the_case_values(mask_policy: PolicySet) -> None:
    """The companion holds, per row, what the rewrite returns for ``SELECT col FROM profiles``
    (the stored cells checked directly, not only through queries)."""
    t = random_profiles(60, seed=5)
    qp = _policy(mask_policy)
    masked, spec, stored = with_stored_masks(t, "profiles", default_schema(), qp)
    assert masked.num_rows == t.num_rows  # every controller's rows keep their stored masks
    con = duckdb.connect()
    # the masked value is a function of the value and its label only: the reference reads
    # every row as douyin's (controller isolation would hide duoshan's rows from douyin)
    con.register(
        "profiles",
        t.set_column(
            t.schema.get_field_index("app_id"), "app_id", pa.array(["douyin"] * t.num_rows)
        ),
    )
    try:
        for column, fp in stored.items():
            companion = spec.columns[column].stored_masks[fp]
            assert companion == f"{column}__mask_{fp[:12]}"
            case = rewrite(f"SELECT {column} FROM profiles", default_schema(), qp).sql
            direct = con.sql(case).to_arrow_table().column(0).to_pylist()
            assert masked[companion].to_pylist() == direct
    finally:
        con.close()
    # the test policy masks some rows and keeps others: the companion is not a constant
    handle_mask = masked[spec.columns["handle"].stored_masks[stored["handle"]]].to_pylist()
    assert PLACEHOLDER in handle_mask and any(v and v.endswith(REDACT_TAIL) for v in handle_mask)
    assert any(v is not None and len(v) == 64 for v in handle_mask)  # hashed
    assert set(handle_mask) & set(t["handle"].to_pylist())  # kept in clear


def _swapped(mask_policy_path: Any, tmp_path: Any, old: str, new: str) -> PolicySet:
    text = mask_policy_path.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "policy.yaml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return load_policy_dir(path)


@pytest.mark.parametrize(
    "change",
    ["policy changed", "other purpose", "other app", "other key", "instrument added"],
)
def test_any_difference_falls_back(change: str, mask_policy: PolicySet, tmp_path: Any) -> None:
    t = random_profiles(80, seed=11)
    masked, reg = _stored(t, _policy(mask_policy))
    path = GOLDEN / "policy-masks.yaml"
    if change == "policy changed":
        qp = _policy(_swapped(path, tmp_path, "strategy: redact", "strategy: placeholder"))
    elif change == "other purpose":
        qp = _policy(mask_policy, purpose="social.messaging")
    elif change == "other app":
        qp = _policy(mask_policy, app="duoshan")
    elif change == "other key":
        qp = _policy(mask_policy, key=b"another-deployment-key-0123")
    else:
        # a later instrument adds a rule: the avatar of user_input origin is withheld too
        extra = (
            "  - id: avatar-user-input\n    effect: deny\n    actions: [use, derive]\n"
            "    purposes: [social.friend_recommendation]\n    apps: [douyin]\n"
            "    data: {categories: [user.avatar], origins: [user_input]}\n"
            "    obligations: [{kind: mask, strategy: nullify}]\n"
        )
        text = path.read_text(encoding="utf-8") + extra
        (tmp_path / "policy.yaml").write_text(text, encoding="utf-8")
        qp = _policy(load_policy_dir(tmp_path / "policy.yaml"))
    sql = USES[0]
    r = rewrite(sql, reg, qp)
    case = rewrite(sql, default_schema(), qp)
    # the avatar's verdict (nullify / placeholder, no key) changes with app, purpose and the
    # new rule; the handle's (hash / redact / placeholder) with the strategies and the key
    avatar_same = change in ("other key", "policy changed")
    handle_same = change == "instrument added"
    assert ("avatar_key__mask_" in r.sql) is avatar_same
    assert ("handle__mask_" in r.sql) is handle_same
    assert _duck(r.sql, masked) == _duck(case.sql, t)


def test_fingerprint_excludes_the_key_bytes(mask_policy: PolicySet) -> None:
    """The key enters only as its public key_id, and only when a hash branch exists; neither
    the key nor its pads appear in the spec."""
    a = _policy(mask_policy, key=b"first-deployment-key-00000")
    b = _policy(mask_policy, key=b"second-deployment-key-0000")
    fa = mask_fingerprints("profiles", default_schema(), a)
    fb = mask_fingerprints("profiles", default_schema(), b)
    assert fa["handle"] != fb["handle"]  # hashed: the key id differs
    assert fa["avatar_key"] == fb["avatar_key"]  # nullify / placeholder: no key involved
    _, spec, _ = stored_mask_select("profiles", default_schema(), a)
    dumped = json.dumps(spec.model_dump(mode="json"))
    assert "first-deployment" not in dumped and b"first-deployment".hex() not in dumped
    # the fingerprint function sees the key id only: equal ids give equal prints
    label = rewrite("SELECT handle FROM profiles", default_schema(), a).expression
    inner = label.find(__import__("sqlglot").exp.Subquery)
    assert inner is not None
    lab = {p.alias_or_name: p.this for p in inner.this.expressions}["handle__origins"]
    masks = {"hash": 4, "placeholder": 1}
    one = mask_fingerprint(
        "profiles", "handle", "profiles", masks, 1, lab, key_id(b"k" * 20), "x", "y"
    )
    two = mask_fingerprint(
        "profiles", "handle", "profiles", masks, 1, lab, key_id(b"k" * 20), "x", "y"
    )
    other = mask_fingerprint(
        "profiles", "handle", "profiles", masks, 1, lab, key_id(b"j" * 20), "x", "y"
    )
    assert one == two != other
    assert one is not None and b"k".hex() * 20 not in one


def test_companions_are_hidden(mask_policy: PolicySet) -> None:
    qp = _policy(mask_policy)
    _, reg = _stored(random_profiles(5, seed=2), qp)
    companion = next(iter(reg.tables["profiles"].columns["handle"].stored_masks.values()))
    with pytest.raises(QueryError):
        rewrite(f"SELECT {companion} FROM profiles", reg, qp)


def test_stored_mask_select_errors(mask_policy: PolicySet) -> None:
    qp = _policy(mask_policy)
    with pytest.raises(InputError):
        stored_mask_select("profiles", default_schema(), qp, columns=["nope"])
    with pytest.raises(InputError):  # constant label: no per-row mask to store
        stored_mask_select("profiles", default_schema(), qp, columns=["account_id"])
    with pytest.raises(InputError):  # not masked under this policy
        stored_mask_select("profiles", default_schema(), qp, columns=["handle_grant"])
    no_key = QueryPolicy(
        mask_policy,
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=None,
    )
    import os

    if not os.environ.get("PROVGUARD_HASH_KEY"):
        with pytest.raises(QueryError):  # the hash branch needs the key, as the CASE does
            stored_mask_select("profiles", default_schema(), no_key, columns=["handle"])


def test_stored_mask_equals_case_spark(mask_policy: PolicySet, spark: Any) -> None:
    """One fixed table: Spark reading the companions (computed by DuckDB) answers as DuckDB's
    CASE and as Spark's own CASE."""
    qp = _policy(mask_policy)
    t = random_profiles(80, seed=4)
    masked, reg = _stored(t, qp)
    spark.register("profiles", masked)
    for q in USES[:2]:
        s = rewrite(q, reg, qp, dialect="spark")
        assert "__mask_" in s.sql
        labels = [c.origins_column for c in s.columns]
        got = _rows(spark.query(s.sql, labels))
        assert got == _duck(rewrite(q, default_schema(), qp).sql, t), q
        case = rewrite(q, default_schema(), qp, dialect="spark")
        assert got == _rows(spark.query(case.sql, labels)), q
