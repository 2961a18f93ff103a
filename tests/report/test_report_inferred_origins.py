"""Report sections 5 and 7 on inferred origins (fresh-user finding F1): section 5 says how many
card values were withheld because the scan found them to be copies of a WeChat/QQ value, and
section 7 no longer says the campaign's inferred copies have "no recorded origin" (they are
recorded as ``user_input``)."""

from __future__ import annotations

import html as html_text
import re
from collections.abc import Callable
from typing import cast

import pyarrow as pa

from provguard.job.campaign import CampaignResult
from provguard.job.report import _campaign_note, stored_cards
from provguard.job.run import RunResult
from provguard.report.model import RecommendationSummary, ReportModel, StoredCards
from provguard.report.recommend_text import withheld_inferred_sentence
from provguard.report.render import render_html

EDGES = pa.table({"src": pa.array([0, 1, 2], pa.int64()), "dst": pa.array([1, 2, 3], pa.int64())})
CARDS = pa.table({"viewer": pa.array([0, 0, 1, 2, 3], pa.int64())})


def _section5(html: str) -> str:
    section = html.split('id="s-recs"')[1].split("</section>")[0]
    return html_text.unescape(" ".join(re.sub(r"<[^>]+>", " ", section).split()))


def test_stored_cards_records_the_inferred_counts() -> None:
    counts = {"handles": 7, "pictures": 3, "withheld_handles": 6, "withheld_pictures": 3}
    st = stored_cards(CARDS, EDGES, 4, 2, inferred=counts)
    assert (
        st.inferred_handles,
        st.inferred_pictures,
        st.withheld_inferred_handles,
        st.withheld_inferred_pictures,
    ) == (7, 3, 6, 3)
    old = stored_cards(CARDS, EDGES, 4, 2)
    assert old.inferred_handles is None and old.withheld_inferred_pictures is None


def test_the_sentence_gives_the_counts_or_nothing_for_an_older_run() -> None:
    st = StoredCards(
        path="data/recommendations.parquet",
        rows=40384,
        viewers=4039,
        users=4039,
        k=10,
        short_viewers=1,
        empty_viewers=0,
        pool_bound=1,
        inferred_handles=5126,
        inferred_pictures=1,
        withheld_inferred_handles=5126,
        withheld_inferred_pictures=1,
    )
    text = withheld_inferred_sentence(st)
    assert text.startswith(
        "The profile-match scan (section 4) flags 5,126 card handles and 1 card picture as "
        "copies of the candidate's WeChat/QQ value that the app did not record as coming from "
        "there"
    )
    assert (
        "5,126 card handles and 1 card picture were withheld (the placeholder shown instead) "
        "because of the inferred origin alone." in text
    )
    assert "handle_inferred_origins, avatar_inferred_origins" in text
    assert withheld_inferred_sentence(None) == ""
    assert withheld_inferred_sentence(st.model_copy(update={"inferred_handles": None})) == ""
    none = st.model_copy(
        update={
            "inferred_handles": 0,
            "inferred_pictures": 0,
            "withheld_inferred_handles": 0,
            "withheld_inferred_pictures": 0,
        }
    )
    assert "flags none of the handles or pictures" in withheld_inferred_sentence(none)


def test_section_5_renders_the_withheld_count_and_an_old_run_does_not(
    make_model: Callable[..., ReportModel],
) -> None:
    counts = {"handles": 12, "pictures": 4, "withheld_handles": 11, "withheld_pictures": 4}
    st = stored_cards(CARDS, EDGES, 4, 2, inferred=counts)
    r = RecommendationSummary(users=4, recs_per_user=2, stored=st)
    text = _section5(render_html(make_model(recommendations=r)))
    assert "flags 12 card handles and 4 card pictures as copies" in text
    assert "11 card handles and 4 card pictures were withheld" in text
    old = r.model_copy(update={"stored": stored_cards(CARDS, EDGES, 4, 2)})
    html = render_html(make_model(recommendations=old))
    assert 'id="recs-inferred"' not in html and "inferred origin" not in _section5(html)


def test_the_campaign_note_says_the_inferred_copies_are_recorded_as_user_input() -> None:
    c = CampaignResult(
        campaign_id="duoshan-no-platform-profile@2019-06-30",
        rule_id="duoshan-no-platform-profile",
        instrument_id="cn-tj-binhai-2019-douyin-duoshan",
        targets=1049,
        exempt=18,
        inferred=258,
        notified=1031,
        states={"exempt": 18, "notified": 1031},
        exempt_reasons={"verified_name": 18},
    )

    class _Run:
        campaign = c

    note = _campaign_note(cast(RunResult, _Run()))
    assert "no recorded origin" not in note
    assert (
        "for 258 of them a copied value is recorded as the user's own input (user_input), not "
        "as coming from the provider: the scan found the copy, and it is treated as "
        "originating at the provider (an inferred origin)." in note
    )
    assert "18 are exempt because the handle is the subject's real name (18 verified_name)" in note
