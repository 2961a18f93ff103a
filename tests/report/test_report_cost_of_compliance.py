"""The report's cost-of-compliance section: table and margins rendered from the model's values
(and the empty-slice / "not better" cases), and the evidence JSON keeps them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from provguard.report.model import (
    ComplianceMetricRow,
    MetricRow,
    RankerMargin,
    RecommendationSummary,
    ReportModel,
)
from provguard.report.render import render_html, to_evidence_json


def _summary() -> RecommendationSummary:
    rows = (
        ComplianceMetricRow(
            policy="none",
            method="resource_allocation",
            slice="all",
            recall_at_10=0.48231,
            mrr=0.6783,
            hits_at_50=0.9621,
            coverage=1.0,
            queries=17646,
            users=3270,
        ),
        ComplianceMetricRow(
            policy="strict",
            method="learned_ranker",
            slice="all",
            recall_at_10=0.48824,
            mrr=0.67881,
            hits_at_50=0.95963,
            coverage=1.0,
            queries=17646,
            users=3270,
            signals_removed=11,
        ),
        ComplianceMetricRow(policy="strict", method="learned_ranker", slice="cold_start"),
    )
    margins = (
        RankerMargin(
            policy="none",
            baseline="resource_allocation",
            recall_at_10=0.0656,
            mrr=0.0976,
            hits_at_50=0.0043,
            coverage=0.0,
        ),
        RankerMargin(
            policy="strict",
            baseline="resource_allocation",
            recall_at_10=0.0059,
            mrr=0.0005,
            hits_at_50=-0.0025,
            coverage=0.0,
            forbidden_removed=11,
        ),
    )
    return RecommendationSummary(
        users=4039,
        recs_per_user=10,
        metrics=(MetricRow(name="Recall@10", value_without=0.5479, value_with=0.5479),),
        compliance=rows,
        margins=margins,
        protocol="Random 10% edge hold-out; queries of 1,000 of 4,039 users (seeded sample).",
    )


def _table(html: str, table_id: str) -> list[list[str]]:
    part = html[html.index(f'id="{table_id}"') :]
    part = part[: part.index("</table>")]
    body = part[part.index("<tbody>") :]
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", tr, re.S)]
        for tr in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def test_table_rows_and_caption(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(recommendations=_summary()))
    rows = _table(html, "cost-of-compliance")
    assert rows[0] == [
        "none",
        "resource_allocation",
        "all",
        "0.4823",
        "0.6783",
        "0.9621",
        "1.0000",
        "—",  # catalogue coverage@10 not measured in this row
        "17,646",
        "0",
    ]
    assert rows[1][3:7] == ["0.4882", "0.6788", "0.9596", "1.0000"] and rows[1][-1] == "11"
    assert rows[2][3:7] == ["—", "—", "—", "—"]  # empty slice: no figure, not 0
    assert "queries of 1,000 of 4,039 users (seeded sample)" in html


def test_margins_flag_the_metric_the_ranker_loses(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(recommendations=_summary()))
    rows = _table(html, "ranker-margins")
    assert rows[0][3:] == ["+0.0656", "+0.0976", "+0.0043", "+0.0000", "—", "yes"]
    assert rows[1][2:] == ["11", "+0.0059", "+0.0005", "-0.0025", "+0.0000", "—", "no"]


def test_section_absent_without_compliance_rows(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(recommendations=RecommendationSummary(users=3, recs_per_user=10)))
    assert 'id="cost-of-compliance"' not in html and 'id="ranker-margins"' not in html


def test_evidence_keeps_the_table(make_model: Callable[..., ReportModel]) -> None:
    doc = json.loads(to_evidence_json(make_model(recommendations=_summary())))
    text = json.dumps(doc)
    assert "0.48824" in text and "-0.0025" in text


def test_beats_on_every_metric_is_strict() -> None:
    tie = RankerMargin(
        policy="p", baseline="b", recall_at_10=0.1, mrr=0.1, hits_at_50=0.0, coverage=0.0
    )
    assert not tie.beats_on_every_metric
    with pytest.raises(ValidationError):
        ComplianceMetricRow(policy="p", method="m", slice="all", queries=-1)


def test_catalogue_coverage_is_shown_and_decides_every_metric(
    make_model: Callable[..., ReportModel],
) -> None:
    """Catalogue coverage@10 (Ge et al., RecSys 2010) has its own column in both tables, and a
    ranker that loses on it is not "better on every metric"."""
    row = ComplianceMetricRow(
        policy="none",
        method="learned_ranker",
        slice="all",
        recall_at_10=0.5,
        mrr=0.6,
        hits_at_50=0.9,
        coverage=1.0,
        catalogue_coverage_at_10=0.43217,
    )
    wins = dict(
        policy="none",
        baseline="resource_allocation",
        recall_at_10=0.01,
        mrr=0.02,
        hits_at_50=0.003,
        coverage=0.0,
    )
    loses = RankerMargin(**wins, catalogue_coverage_at_10=-0.036)  # type: ignore[arg-type]
    assert not loses.beats_on_every_metric
    assert RankerMargin(**wins, catalogue_coverage_at_10=0.05).beats_on_every_metric  # type: ignore[arg-type]
    assert RankerMargin(**wins).beats_on_every_metric  # type: ignore[arg-type]  # not measured
    recs = RecommendationSummary(users=10, recs_per_user=10, compliance=(row,), margins=(loses,))
    html = render_html(make_model(recommendations=recs))
    assert "Catalogue coverage@10" in html
    cost = html[html.index('id="cost-of-compliance"') :]
    assert "0.4322" in cost[: cost.index("</table>")]
    margins = html[html.index('id="ranker-margins"') :]
    margins = margins[: margins.index("</table>")]
    assert "-0.0360" in margins and ">no<" in margins
