"""``EXISTS`` / ``IN`` / scalar subqueries read only the rows the policy lets the query read: the
row-rule filter (:class:`~provguard.sqlgen.schema.RowSpec`), the row-label filter
(:class:`~provguard.sqlgen.schema.RowLabelSpec`) and the mask guards of control positions apply
to the subquery's value AND to the copy of it that computes its label (session 6's note: the
copy had only the controller filter, so a row the rule drops still added its bits, e.g. a QQ
bit, to the label of Douyin's answer).

Non-interference, checked cell by cell (values and labels): the answer over a dataset holding
rows the filters drop equals the answer over the same dataset without those rows. The dropped
rows carry the ``apple`` origin in their handle label, which no kept row has, so a dropped row
that reached a label would show."""

from __future__ import annotations

import random
from typing import Any

import pyarrow as pa
import pytest

from provguard.dataplane import query_frames
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, SchemaRegistry, rewrite
from provguard.sqlgen.schema import PROFILES, ROW_LABEL, RowLabelSpec, RowSpec, TableSpec

REG = default_registry()
WECHAT, QQ, USER, GOOGLE, APPLE = (
    REG.mask([n]) for n in ("wechat", "qq", "user_input", "google", "apple")
)
FIRST_PARTY = REG.mask(["douyin", "duoshan"])
#: handle labels of the rows every variant keeps (the mask policy hashes WeChat, redacts QQ)
KEPT_HANDLES = [USER, GOOGLE, USER | GOOGLE, WECHAT, QQ, USER | WECHAT]

#: a row rule on ``profiles``: under social.friend_recommendation the mask policy denies
#: user.social.friend_list for WeChat and QQ (rule no-platform-friend-lists), so rows whose
#: ``row_origins`` hold either are dropped at every scan
ROW_RULE = SchemaRegistry(
    tables={
        "profiles": TableSpec(
            columns=PROFILES.columns,
            controller_column="app_id",
            rows=RowSpec(category="user.social.friend_list", origins_column="row_origins"),
        )
    }
)
#: a row label on ``profiles`` (as ``CREATE TABLE AS`` records it): the rows exist because of
#: nicknames, which the mask policy masks for WeChat, QQ and unknown (mask 13), so rows whose
#: ``__row__origins`` meet those origins are dropped at every scan
ROW_LABELLED = SchemaRegistry(
    tables={
        "profiles": TableSpec(
            columns=PROFILES.columns,
            controller_column="app_id",
            row_label=RowLabelSpec(categories=("user.name.nickname",), sources=("x.handle",)),
        )
    }
)
#: two copies of the profiles schema: the subqueries read ``mirror``, whose extra rows carry
#: masked handles read in a control position of the subquery (mask guards drop them)
MIRRORED = SchemaRegistry(tables={"profiles": PROFILES, "mirror": PROFILES})

# The subquery shapes of test_dataplane_exists_label.py (EXISTS, IN, scalar count(*), NOT EXISTS
# over a join, IN over a RIGHT JOIN, where the filter wraps the scan), a count over a LEFT JOIN
# (the filter joins its ON), and two where the subquery alone decides which rows come back (a
# dropped row deciding EXISTS or a count would change the VALUES, not just a label). Every
# subquery reads the inner handle in a control position, so the mask guards apply there too.
SHAPES = {
    "exists_or": "SELECT subject_id, handle FROM profiles a WHERE EXISTS (SELECT 1 FROM {t} b"
    " WHERE b.handle = a.handle AND b.subject_id <> a.subject_id) OR a.subject_id % 3 = 0",
    "in": "SELECT subject_id, handle FROM profiles a WHERE a.subject_id IN"
    " (SELECT b.subject_id - 1 FROM {t} b WHERE b.handle LIKE 'h%') OR a.subject_id >= 0",
    "scalar_count": "SELECT subject_id, (SELECT count(*) FROM {t} b WHERE b.subject_id >"
    " a.subject_id AND b.handle LIKE 'h%') AS n FROM profiles a",
    "not_exists_join": "SELECT subject_id, handle FROM profiles a WHERE NOT EXISTS"
    " (SELECT 1 FROM {t} b JOIN {t} c ON b.subject_id = c.subject_id"
    " WHERE b.subject_id = a.subject_id * 2 AND b.handle LIKE 'h%' AND c.handle LIKE 'h%')"
    " OR a.subject_id % 2 = 0",
    "in_right_join": "SELECT subject_id, handle FROM profiles a WHERE a.subject_id IN (SELECT"
    " p.subject_id FROM {t} p RIGHT JOIN profiles q ON p.subject_id = q.subject_id + 1"
    " AND p.handle LIKE 'h%') OR a.subject_id > 3",
    "count_left_join": "SELECT subject_id, (SELECT count(c.subject_id) FROM {t} b LEFT JOIN {t} c"
    " ON c.subject_id > b.subject_id AND c.handle LIKE 'h%' WHERE b.subject_id = a.subject_id"
    " AND b.handle LIKE 'h%') AS n FROM profiles a",
    "exists_decides": "SELECT subject_id, handle FROM profiles a WHERE EXISTS (SELECT 1 FROM {t} b"
    " WHERE b.subject_id = a.subject_id + 1 AND b.handle LIKE 'h%')",
    "count_decides": "SELECT subject_id FROM profiles a WHERE (SELECT count(*) FROM {t} b"
    " WHERE b.subject_id < a.subject_id AND b.handle LIKE 'h%') >= 1",
}


def _table(rows: list[tuple[int, int, int]]) -> pa.Table:
    """Douyin ``profiles`` rows (subject, handle label, row bits) in the job's schema plus
    ``row_origins`` and ``__row__origins`` (both the row bits); handles ``h0`` … ``h3`` so
    that different subjects share a handle."""
    from provguard.job.ingest import LABELLED_PROFILE_SCHEMA

    schema = LABELLED_PROFILE_SCHEMA.append(pa.field("row_origins", pa.uint64())).append(
        pa.field(ROW_LABEL, pa.uint64())
    )
    return pa.Table.from_pylist(
        [
            {
                "app_id": "douyin",
                "subject_id": subject,
                "account_id": f"douyin{subject}",
                "handle": f"h{subject % 4}",
                "handle_origins": label,
                "avatar_key": f"av/{subject}.jpg",
                "avatar_origins": USER,
                "row_origins": bits,
                ROW_LABEL: bits,
            }
            for subject, label, bits in rows
        ],
        schema=schema,
    )


def _dataset(
    variant: str, seed: int
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(kept rows, rows the variant's filter drops) for ``seed``. Kept rows have row bits the
    policy allows (row rule: none of WeChat/QQ; row label: none of WeChat/QQ/unknown) and handle
    labels from :data:`KEPT_HANDLES`; dropped rows have row bits it denies (row variants) or a
    masked handle label (mirror variant), plus ``apple`` in their handle label."""
    rnd = random.Random(seed)
    kept = [
        (s, rnd.choice(KEPT_HANDLES), rnd.choice([0, USER, GOOGLE, FIRST_PARTY]))
        for s in range(12)
        if rnd.random() < 0.7
    ]
    if variant == "row_rule":
        deny = [WECHAT, QQ, WECHAT | USER, QQ | GOOGLE]
        extra = [(s, rnd.choice(KEPT_HANDLES) | APPLE, rnd.choice(deny)) for s in range(13)]
    elif variant == "row_label":
        deny = [WECHAT, QQ, REG.mask(["unknown"]), QQ | USER]
        extra = [(s, rnd.choice(KEPT_HANDLES) | APPLE, rnd.choice(deny)) for s in range(13)]
    else:
        # handle labels the mask policy masks: WeChat, QQ, unknown (a stored 1 or 0; a 0 with
        # apple is not unknown, so only the stored unknown bit is OR-ed with apple)
        masked = [WECHAT | APPLE, QQ | APPLE, REG.mask(["unknown"]) | APPLE, QQ | USER | APPLE, 0]
        extra = [(s, rnd.choice(masked), 0) for s in range(13)]
    return kept, [r for r in extra if rnd.random() < 0.6]


def duck_answer(
    sql: str, frames: dict[str, pa.Table], schema: SchemaRegistry, policy: QueryPolicy
) -> list[dict[str, Any]]:
    """The DuckDB answer (:func:`~provguard.dataplane.query_frames`) as row dicts, sorted."""
    out = query_frames(frames, sql, schema, policy).table
    return sorted(out.to_pylist(), key=lambda r: repr(sorted(r.items())))


def _frames(
    variant: str, rows: list[tuple[int, int, int]], kept: list[tuple[int, int, int]]
) -> dict[str, pa.Table]:
    if variant == "mirror":
        return {"profiles": _table(kept), "mirror": _table(rows)}
    return {"profiles": _table(rows)}


VARIANTS = {"row_rule": ROW_RULE, "row_label": ROW_LABELLED, "mirror": MIRRORED}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("seed", [1, 2])
def test_rows_the_policy_drops_do_not_reach_values_or_labels(
    variant: str, shape: str, seed: int, mask_policy: QueryPolicy
) -> None:
    schema = VARIANTS[variant]
    sql = SHAPES[shape].format(t="mirror" if variant == "mirror" else "profiles")
    kept, dropped = _dataset(variant, seed)
    assert dropped
    alone = duck_answer(sql, _frames(variant, kept, kept), schema, mask_policy)
    assert alone  # the shapes return rows, so a value or label that differed would show
    assert not any(v & APPLE for r in alone for k, v in r.items() if k.endswith("__origins"))
    assert duck_answer(sql, _frames(variant, kept + dropped, kept), schema, mask_policy) == alone


def engine_cases(
    only: dict[str, tuple[str, ...]] | None = None,
) -> list[tuple[str, str, SchemaRegistry, dict[str, pa.Table], dict[str, pa.Table]]]:
    """(variant, sql, schema, frames with the dropped rows, frames without them) on seed 1 for
    every variant and shape, or for the variant -> shapes of ``only``: what the PostgreSQL and
    Spark checks run."""
    out = []
    chosen = only if only is not None else {v: tuple(sorted(SHAPES)) for v in sorted(VARIANTS)}
    for variant, shapes in chosen.items():
        schema = VARIANTS[variant]
        kept, dropped = _dataset(variant, 1)
        for shape in shapes:
            sql = SHAPES[shape].format(t="mirror" if variant == "mirror" else "profiles")
            out.append(
                (
                    variant,
                    sql,
                    schema,
                    _frames(variant, kept + dropped, kept),
                    _frames(variant, kept, kept),
                )
            )
    return out


def engine_rows(table: pa.Table) -> list[dict[str, Any]]:
    """``table``'s rows in the order :func:`duck_answer` sorts them."""
    return sorted(table.to_pylist(), key=lambda r: repr(sorted(r.items())))


def test_postgres_reads_the_same_rows(pg: Any, mask_policy: QueryPolicy) -> None:
    """The postgres dialect places the same filters (WHERE, LEFT JOIN ON, filtered derived
    table) on the label subqueries: its answer over the rows with the dropped ones equals
    DuckDB's over the kept rows alone, cell by cell."""
    loaded: dict[str, int] = {}
    checked = 0
    for variant, sql, schema, full, alone in engine_cases():
        for name, table in full.items():
            key = hash((variant, name))
            if loaded.get(name) != key:
                pg.register(name, table)
                loaded[name] = key
        r = rewrite(sql, schema, mask_policy, dialect="postgres")
        got = engine_rows(pg.query(r.query_sql, list(r.label_columns)))
        want = duck_answer(sql, alone, schema, mask_policy)
        assert got == want, (variant, sql)
        checked += len(want)
    assert checked > 100
