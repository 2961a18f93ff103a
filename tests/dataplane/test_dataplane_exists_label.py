"""The label subquery of an ``IN`` / ``EXISTS`` / scalar subquery reads the rows the subquery
itself reads: the same controller filter (session 5's note: it did not, so whether ANOTHER app
had a matching row showed in a label bit, 192 = ``douyin|duoshan`` vs 0).

Non-interference, checked cell by cell (values and labels): douyin's answer over both apps'
rows equals its answer over douyin's rows alone, whatever duoshan's rows hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from provguard.dataplane import query_frames
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy
from provguard.sqlgen.schema import job_schema

ROOT = Path(__file__).resolve().parents[2]
REG = default_registry()
WECHAT = REG.mask(["wechat"])
FIRST_PARTY = REG.mask(["douyin", "duoshan"])  # 192


def _profiles(rows: list[tuple[str, int, int]], *, handle: str | None = None) -> pa.Table:
    """``profiles`` rows (app, subject, handle label) in the job's schema; each handle is
    ``handle`` when given, else ``h<subject>``."""
    from provguard.job.ingest import LABELLED_PROFILE_SCHEMA

    base = datetime(2018, 1, 1, tzinfo=UTC)
    return pa.Table.from_pylist(
        [
            {
                "app_id": app,
                "subject_id": subject,
                "account_id": f"{app}{subject}",
                "handle": handle or f"h{subject}",
                "handle_origins": label,
                "handle_grant": None,
                "avatar_key": f"av/{subject}.jpg",
                "avatar_origins": REG.mask(["user_input"]),
                "avatar_grant": None,
                "grant_id": None,
                "created_at": base + timedelta(hours=subject),
            }
            for app, subject, label in rows
        ],
        schema=LABELLED_PROFILE_SCHEMA,
    )


@pytest.fixture(scope="module")
def display() -> QueryPolicy:
    """Douyin under profile.display (the injunction lets it read handles)."""
    return QueryPolicy(
        load_policy_dir(ROOT / "policies"),
        REG,
        app="douyin",
        purpose="profile.display",
        at=datetime(2019, 6, 1, tzinfo=UTC),
    )


EXISTS_OR = (
    "SELECT subject_id, handle FROM profiles a WHERE EXISTS (SELECT 1 FROM profiles b"
    " WHERE b.handle = a.handle AND b.subject_id <> a.subject_id) OR a.handle LIKE 'h%'"
)


def _run(sql: str, table: pa.Table, policy: QueryPolicy) -> list[dict[str, Any]]:
    out = query_frames({"profiles": table}, sql, job_schema(), policy).table
    return sorted(out.to_pylist(), key=lambda r: repr(sorted(r.items())))


def test_another_apps_row_does_not_show_in_the_label(display: QueryPolicy) -> None:
    """Douyin's subject 0 and duoshan's subject 1 have the same handle, WeChat's and QQ's. The
    EXISTS reads douyin's rows only, so no QQ bit can reach douyin's answer: before the fix
    the label subquery also read duoshan's row, and ``handle__origins`` was
    ``wechat|qq``."""
    qq = REG.mask(["qq"])
    both = _profiles([("douyin", 0, WECHAT), ("duoshan", 1, qq)], handle="h")
    rows = _run(EXISTS_OR, both, display)
    assert rows == [
        {
            "subject_id": 0,
            "subject_id__origins": FIRST_PARTY | WECHAT,
            "handle": "h",
            "handle__origins": WECHAT,
        }
    ]
    # when douyin itself has the matching QQ row, its label is there
    own = _profiles([("douyin", 0, WECHAT), ("douyin", 1, qq)], handle="h")
    mine = {r["subject_id"]: r for r in _run(EXISTS_OR, own, display)}
    assert mine[0]["handle__origins"] == WECHAT | qq | FIRST_PARTY


SHAPES = [
    EXISTS_OR,
    "SELECT subject_id, handle FROM profiles a WHERE a.subject_id IN"
    " (SELECT b.subject_id - 1 FROM profiles b WHERE b.handle LIKE 'h%') OR a.subject_id >= 0",
    "SELECT subject_id, (SELECT count(*) FROM profiles b WHERE b.subject_id > a.subject_id)"
    " AS n FROM profiles a",
    "SELECT subject_id, handle FROM profiles a WHERE NOT EXISTS"
    " (SELECT 1 FROM profiles b JOIN profiles c ON b.subject_id = c.subject_id"
    " WHERE b.subject_id = a.subject_id * 2) OR a.subject_id % 2 = 0",
    "SELECT subject_id, handle FROM profiles a WHERE a.subject_id IN (SELECT p.subject_id FROM"
    " profiles p RIGHT JOIN profiles q ON p.subject_id = q.subject_id + 1) OR a.subject_id > 3",
]


@pytest.mark.parametrize("sql", SHAPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_labels_do_not_depend_on_another_apps_rows(
    sql: str, seed: int, display: QueryPolicy
) -> None:
    import random

    rnd = random.Random(seed)
    labels = [WECHAT, REG.mask(["qq"]), REG.mask(["user_input"]), WECHAT | REG.mask(["qq"])]
    mine = [("douyin", s, rnd.choice(labels)) for s in range(12) if rnd.random() < 0.6]
    theirs = [("duoshan", s, rnd.choice(labels)) for s in range(12) if rnd.random() < 0.6]
    alone = _run(sql, _profiles(mine), display)
    assert alone  # the shapes return rows, so a label that differed would show
    assert _run(sql, _profiles(mine + theirs), display) == alone
