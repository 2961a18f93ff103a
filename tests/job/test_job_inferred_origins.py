"""Inferred origins (fresh-user finding F1): a value the app recorded as ``user_input`` that the
profile-match scan flags as a copy of the provider's value gets the provider's origin beside its
recorded label, and profile display decides on both (hand-made tables, the shipped policy)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.decide import DecisionPoint
from provguard.errors import InputError
from provguard.job.decisions import DecisionRecorder
from provguard.job.display import (
    INFERRED_COLUMNS,
    decide_display,
    inferred_context,
    with_inferred_origins,
)
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry

AT = datetime(2019, 6, 30, tzinfo=UTC)
REG = default_registry()
WECHAT = REG.mask(["wechat"])
QQ = REG.mask(["qq"])
USER = REG.mask(["user_input"])


def _labelled() -> pa.Table:
    """Five profiles: (app, subject) with recorded handle/avatar labels."""
    rows = [
        # re-typed WeChat nickname and re-uploaded picture, both recorded as user input
        ("duoshan", 1, "红豆", USER, "duoshan/a1", USER),
        # imported from WeChat (recorded), matched: nothing inferred
        ("duoshan", 2, "小明", WECHAT, "duoshan/a2", WECHAT),
        # the user's own values, no match
        ("duoshan", 3, "own", USER, "duoshan/a3", USER),
        # douyin: re-typed QQ nickname
        ("douyin", 1, "红豆", USER, "douyin/a1", USER),
        # recorded WeChat handle that also matches the QQ copy: QQ is inferred
        ("douyin", 4, "same", WECHAT, "douyin/a4", USER),
    ]
    return pa.table(
        {
            "app_id": pa.array([r[0] for r in rows], pa.string()),
            "subject_id": pa.array([r[1] for r in rows], pa.int64()),
            "account_id": pa.array([f"acct-{r[0]}-{r[1]:06d}" for r in rows], pa.string()),
            "handle": pa.array([r[2] for r in rows], pa.string()),
            "handle_origins": pa.array([r[3] for r in rows], pa.uint64()),
            "avatar_key": pa.array([r[4] for r in rows], pa.string()),
            "avatar_origins": pa.array([r[5] for r in rows], pa.uint64()),
        }
    )


def _scan() -> pa.Table:
    rows = [
        ("douyin", 1, "qq", True, False),
        ("douyin", 4, "qq", True, False),
        ("douyin", 4, "wechat", True, False),
        ("duoshan", 1, "wechat", True, True),
        ("duoshan", 2, "wechat", True, True),
        ("duoshan", 3, "wechat", False, False),
        ("duoshan", 99, "qq", True, True),  # no such profile: ignored
    ]
    return pa.table(
        {
            "app_id": [r[0] for r in rows],
            "subject_id": pa.array([r[1] for r in rows], pa.int64()),
            "provider": [r[2] for r in rows],
            "handle_match": [r[3] for r in rows],
            "picture_match": [r[4] for r in rows],
        }
    )


def test_a_scanned_copy_gets_the_providers_origin_and_a_recorded_one_does_not() -> None:
    out = with_inferred_origins(_labelled(), _scan(), REG)
    assert out.column_names[-2:] == list(INFERRED_COLUMNS)
    got = list(
        zip(
            out.column("app_id").to_pylist(),
            out.column("subject_id").to_pylist(),
            out.column("handle_inferred_origins").to_pylist(),
            out.column("avatar_inferred_origins").to_pylist(),
            strict=True,
        )
    )
    assert got == [
        ("duoshan", 1, WECHAT, WECHAT),
        ("duoshan", 2, 0, 0),  # already recorded as WeChat
        ("duoshan", 3, 0, 0),  # no match
        ("douyin", 1, QQ, 0),
        ("douyin", 4, QQ, 0),  # WeChat recorded, QQ inferred
    ]
    # the recorded labels are untouched, and a second pass replaces (never ORs twice)
    assert (
        out.column("handle_origins").to_pylist() == _labelled().column("handle_origins").to_pylist()
    )
    again = with_inferred_origins(out, _scan().slice(0, 0), REG)
    assert again.column("handle_inferred_origins").to_pylist() == [0] * 5
    assert again.num_columns == out.num_columns


def test_bad_scan_input_is_refused() -> None:
    with pytest.raises(InputError, match=r"the scan lacks column.*picture_match"):
        with_inferred_origins(_labelled(), _scan().drop_columns(["picture_match"]), REG)
    with pytest.raises(InputError, match=r"the profiles lack column.*avatar_origins"):
        with_inferred_origins(_labelled().drop_columns(["avatar_origins"]), _scan(), REG)
    odd = _scan().set_column(2, "provider", pa.array(["WeChat "] * 7))
    with pytest.raises(InputError, match="unknown origin 'WeChat '"):
        with_inferred_origins(_labelled(), odd, REG)


def test_display_decides_on_the_inferred_origin_and_keeps_it_apart(repo_root: Path) -> None:
    pdp = DecisionPoint(load_policy_dir(repo_root / "policies"))
    recorder = DecisionRecorder()
    table = with_inferred_origins(_labelled(), _scan(), REG)
    out = decide_display(table, pdp, REG, AT, recorder).to_pylist()
    by_key = {(r["app_id"], r["subject_id"]): r for r in out}
    copy = by_key[("duoshan", 1)]
    # recorded user_input, but a copy of the WeChat value: duoshan must not show it
    assert (copy["handle_decision"], copy["avatar_decision"]) == ("deny", "deny")
    assert copy["shown_handle"] == "duoshan user 000001"
    assert copy["handle_decision_origins"] == USER | WECHAT
    assert copy["handle_inferred_origins"] == WECHAT
    # recorded = decision label without the inferred bits
    assert copy["handle_decision_origins"] & ~copy["handle_inferred_origins"] == USER
    assert copy["rule_id"] == "duoshan-no-platform-profile"
    own = by_key[("duoshan", 3)]
    assert (own["handle_decision"], own["shown_handle"], own["handle_inferred_origins"]) == (
        "not_applicable",
        "own",
        0,
    )
    # douyin's display is not restricted by the order; the shown value keeps both labels
    dy = by_key[("douyin", 1)]
    assert dy["handle_decision"] == "not_applicable" and dy["shown_handle"] == "红豆"
    assert dy["shown_handle_origins"] == USER | QQ and dy["handle_inferred_origins"] == QQ
    # the audit context names the inferred origins; the request carries the union
    entries = [p for kind, p in recorder.entries if kind == "decision"]
    assert len(entries) == 10
    inferred = [p for p in entries if "inferred" in p["context"]]
    assert sorted((p["context"]["app"], p["context"]["subject_id"], p["context"]["field"],
                   tuple(p["context"]["inferred"])) for p in inferred) == [
        ("douyin", 1, "handle", ("qq",)),
        ("douyin", 4, "handle", ("qq",)),
        ("duoshan", 1, "avatar", ("wechat",)),
        ("duoshan", 1, "handle", ("wechat",)),
    ]  # fmt: skip
    first = next(p for p in inferred if p["context"]["app"] == "duoshan")
    assert set(first["request"]["origins"]) == {"user_input", "wechat"}


def test_without_inferred_columns_display_decides_on_recorded_labels(repo_root: Path) -> None:
    pdp = DecisionPoint(load_policy_dir(repo_root / "policies"))
    out = decide_display(_labelled(), pdp, REG, AT, DecisionRecorder()).to_pylist()
    copy = next(r for r in out if (r["app_id"], r["subject_id"]) == ("duoshan", 1))
    assert copy["handle_decision"] == "not_applicable" and copy["handle_inferred_origins"] == 0
    assert inferred_context(REG, 0) == {}
    assert inferred_context(REG, WECHAT | QQ) == {"inferred": ["qq", "wechat"]}


_PROVIDERS = ("wechat", "qq")
_LABELS = (USER, WECHAT, QQ, WECHAT | QQ, REG.mask(["unknown"]))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.tuples(st.sampled_from(_LABELS), st.sampled_from(_LABELS)), max_size=8),
    hits=st.lists(
        st.tuples(st.integers(0, 9), st.sampled_from(_PROVIDERS), st.booleans(), st.booleans()),
        max_size=16,
        unique_by=lambda h: (h[0], h[1]),
    ),
)
def test_inferred_bits_are_exactly_the_matched_providers_missing_from_the_label(
    labels: list[tuple[int, int]], hits: list[tuple[int, str, bool, bool]]
) -> None:
    labelled = pa.table(
        {
            "app_id": pa.array(["duoshan"] * len(labels), pa.string()),
            "subject_id": pa.array(range(len(labels)), pa.int64()),
            "handle_origins": pa.array([h for h, _ in labels], pa.uint64()),
            "avatar_origins": pa.array([a for _, a in labels], pa.uint64()),
        }
    )
    scan = pa.table(
        {
            "app_id": pa.array(["duoshan"] * len(hits), pa.string()),
            "subject_id": pa.array([h[0] for h in hits], pa.int64()),
            "provider": pa.array([h[1] for h in hits], pa.string()),
            "handle_match": pa.array([h[2] for h in hits], pa.bool_()),
            "picture_match": pa.array([h[3] for h in hits], pa.bool_()),
        }
    )
    out = with_inferred_origins(labelled, scan, REG)
    for field, pos, col in ((0, 2, "handle"), (1, 3, "avatar")):
        got = out.column(f"{col}_inferred_origins").to_pylist()
        for sid, (h_label, a_label) in enumerate(labels):
            recorded = (h_label, a_label)[field]
            matched = 0
            for h in hits:
                if h[0] == sid and h[pos]:
                    matched |= REG.mask([h[1]])
            # the scan's providers the recorded label lacks, nothing else
            assert got[sid] == matched & ~recorded
            assert got[sid] & recorded == 0
