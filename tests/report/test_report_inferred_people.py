"""Session 7 (fresh user 9, low): report section 5 said "3,545 handles ... were withheld because
of an inferred origin alone" -- a count of *cards* (one candidate's handle on one viewer's card),
while they are 332 people's handles. The recommendation stage now also counts the distinct
people (candidates) behind each figure, the report carries both (``StoredCards.*_people``) and
the sentence states both: "3,545 card handles (332 distinct people's handles)"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from provguard.decide import DecisionPoint
from provguard.job.decisions import DecisionRecorder
from provguard.job.recommendations import _cards
from provguard.job.report import stored_cards
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.recommend.protocol import Profiles
from provguard.recommend.rank import Recommendations
from provguard.report.model import StoredCards
from provguard.report.recommend_text import withheld_inferred_sentence

ROOT = Path(__file__).parents[2]
REG = default_registry()
AT = datetime(2019, 6, 30, tzinfo=UTC)


def _stage() -> tuple[pa.Table, dict[str, int]]:
    """Four douyin users; candidate 2's handle is a copy of a WeChat nickname recorded as the
    user's own input (withheld only because of the inferred origin); candidate 3's handle is
    recorded as WeChat and also flagged as a QQ copy (withheld anyway: not "alone"), and its
    picture a QQ copy recorded as own input (withheld alone). Candidates 2 and 3 are on three
    viewers' cards each."""
    n = 4
    handle_inf = [0, 0, REG.mask(["wechat"]), REG.mask(["qq"])]
    avatar_inf = [0, 0, 0, REG.mask(["qq"])]
    labelled = pa.table(
        {
            "subject_id": pa.array(range(n), pa.int64()),
            "app_id": ["douyin"] * n,
            "handle": ["u0", "u1", "wx_copy", "wx_real"],
            "avatar_key": ["a0", "a1", "a2", "a3"],
            "account_id": ["d0", "d1", "d2", "d3"],
            "handle_inferred_origins": pa.array(handle_inf, pa.uint64()),
            "avatar_inferred_origins": pa.array(avatar_inf, pa.uint64()),
        }
    )
    own = frozenset({"user_input"})
    prof = Profiles(
        login=(None,) * n,
        handles=("u0", "u1", "wx_copy", "wx_real"),
        # the stage's origins already include the inferred bits
        handle_origins=(own, own, own | {"wechat"}, frozenset({"wechat", "qq"})),
        hashes=np.zeros((n, 32), np.uint8),
        has_hash=np.zeros(n, bool),
        picture_origins=(own, own, own, own | {"qq"}),
    )
    recs = Recommendations(
        candidates=np.array([[2, 3], [2, 3], [3, 1], [2, -1]], np.int64),
        scores=np.ones((n, 2)),
        used=(),
        removed=(),
    )
    pdp = DecisionPoint(load_policy_dir(ROOT / "policies"))
    return _cards(recs, labelled, n, prof, pdp, "douyin", AT, DecisionRecorder(), REG)


def test_the_stage_counts_cards_and_distinct_people() -> None:
    cards, counts = _stage()
    assert counts == {
        "handles": 6,
        "pictures": 3,
        "withheld_handles": 3,  # candidate 2 on three cards
        "withheld_pictures": 3,  # candidate 3's picture on three cards
        "handles_people": 2,
        "pictures_people": 1,
        "withheld_handles_people": 1,
        "withheld_pictures_people": 1,
    }
    # differential: the people are the distinct candidates of the cards with an inferred bit
    rows = cards.to_pylist()
    assert counts["handles_people"] == len(
        {r["candidate"] for r in rows if r["handle_inferred_origins"]}
    )
    assert counts["pictures_people"] == len(
        {r["candidate"] for r in rows if r["avatar_inferred_origins"]}
    )
    assert all(r["handle_decision"] == "deny" for r in rows if r["candidate"] in (2, 3))


def test_the_people_reach_the_report_and_the_sentence() -> None:
    cards, counts = _stage()
    edges = pa.table(
        {"src": pa.array([0, 1, 2], pa.int64()), "dst": pa.array([1, 2, 3], pa.int64())}
    )
    st = stored_cards(cards.select(["viewer"]), edges, 4, 2, inferred=counts)
    assert (st.inferred_handle_people, st.withheld_inferred_handle_people) == (2, 1)
    assert (st.inferred_picture_people, st.withheld_inferred_picture_people) == (1, 1)
    text = withheld_inferred_sentence(st)
    assert (
        "flags 6 card handles (2 distinct people's handles) and 3 card pictures "
        "(1 person's picture)" in text
    )
    assert (
        "3 card handles (1 person's handle) and 3 card pictures (1 person's picture) were "
        "withheld (the placeholder shown instead) because of the inferred origin alone." in text
    )
    # an evidence file of a run before the people were counted: the card counts, named so
    old = {k: v for k, v in counts.items() if not k.endswith("_people")}
    st_old = stored_cards(cards.select(["viewer"]), edges, 4, 2, inferred=old)
    assert st_old.inferred_handle_people is None
    assert "3 card handles and 3 card pictures were withheld" in withheld_inferred_sentence(st_old)


def test_the_demo_figures() -> None:
    """The figures of ``make demo`` (ego-Facebook, evidence.json ``recommendations.stored``):
    3,545 card handles of 332 people and 1,668 card pictures of 159 people, all withheld because
    of the inferred origin alone."""
    st = StoredCards(
        path="data/recommendations.parquet",
        rows=40384,
        viewers=4039,
        users=4039,
        k=10,
        short_viewers=1,
        empty_viewers=0,
        pool_bound=1,
        inferred_handles=3545,
        inferred_pictures=1668,
        withheld_inferred_handles=3545,
        withheld_inferred_pictures=1668,
        inferred_handle_people=332,
        inferred_picture_people=159,
        withheld_inferred_handle_people=332,
        withheld_inferred_picture_people=159,
    )
    text = withheld_inferred_sentence(st)
    both = (
        "3,545 card handles (332 distinct people's handles) and 1,668 card pictures (159 "
        "distinct people's pictures)"
    )
    assert text.startswith(f"The profile-match scan (section 4) flags {both} as copies of")
    assert (
        f"{both} were withheld (the placeholder shown instead) because of the inferred "
        "origin alone." in text
    )
    assert "a person recommended to many viewers counts once per card" in text
