"""render_html / write_report / to_evidence_json on a filled model."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pydantic import ValidationError

from provguard.report.model import DecisionCount, ReportModel, TransferSummary
from provguard.report.render import (
    EVIDENCE_SCHEMA,
    Bar,
    Segment,
    denials_by_rule,
    hbar_chart_svg,
    pivot,
    render_html,
    report_digest,
    to_evidence_json,
    write_report,
)

R1 = "no-platform-profile-in-friend-recommendation"
R2 = "no-login-grant-transfer"
R3 = "duoshan-no-platform-profile"
MakeModel = Callable[..., ReportModel]


def text_of(html: str) -> str:
    class P(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []

        def handle_data(self, data: str) -> None:
            self.parts.append(data)

    p = P()
    p.feed(html)
    return re.sub(r"\s+", " ", " ".join(p.parts))


def test_key_values_appear(model: ReportModel) -> None:
    html = render_html(model)
    text = text_of(html)
    assert html.startswith("<!DOCTYPE html>")
    assert "Tianjin Binhai New Area People's Court" in html.replace("&#39;", "'")
    assert "Policy evaluated as of 2019-04-01" in text
    assert "(2019) 津0116 行保 1号" in text  # non-ASCII kept as is
    assert "until the final judgment" in text
    # summary: denials per injunction rule
    assert re.search(rf"{R1} .*? 81,600", text)
    assert re.search(rf"{R2} .*? 1,530", text)
    assert re.search(rf"{R3} .*? 10,200", text)
    assert "129,030 policy decisions were recorded, of which 93,330 were denials" in text
    assert "chain intact" in text and model.audit is not None and model.audit.head_hash in text
    assert "precision@10 0.4120 0.3710 -0.0410" in text
    assert "1,190 (29.5% of scanned)" in text
    assert "grandfathered" in text and "37.9%" in text
    assert report_digest(model) in text
    assert "SNAP ego-Facebook" in text


def test_self_contained_no_scripts_or_external_assets(model: ReportModel) -> None:
    html = render_html(model)
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html


def test_untrusted_strings_are_escaped(make_model: MakeModel) -> None:
    hostile = "<script>alert('x')</script>"
    model = make_model(title=f"Report {hostile}", notes=(f"note {hostile}",))
    html = render_html(model)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(" in html
    assert "u17 &lt;script&gt;alert(1)&lt;/script&gt;" in html  # transfer subject
    # and inside SVG labels
    svg = hbar_chart_svg([Bar(hostile, (Segment(3, "#000", "a<b"),))], title="t & <u>")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a&lt;b" in svg
    ET.fromstring(str(svg))  # well-formed XML


def widths(svg: str) -> list[tuple[int, float]]:
    root = ET.fromstring(svg)
    return [
        (int(r.attrib["data-value"]), float(r.attrib["width"]))
        for r in root.iter("{http://www.w3.org/2000/svg}rect")
        if r.attrib.get("class") == "seg"
    ]


def test_bar_widths_are_proportional_to_counts() -> None:
    bars = [Bar(f"r{i}", (Segment(v, "#b3261e", "deny"),)) for i, v in enumerate([400, 100, 1, 0])]
    w = widths(str(hbar_chart_svg(bars, title="t", bar_width=400)))
    assert w == [(400, 400.0), (100, 100.0), (1, 1.0), (0, 0.0)]
    stacked = [
        Bar("a", (Segment(30, "#f00", "deny"), Segment(10, "#0f0", "permit"))),
        Bar("b", (Segment(20, "#f00", "deny"),)),
    ]
    w = widths(str(hbar_chart_svg(stacked, title="t", bar_width=200)))
    assert w == [(30, 150.0), (10, 50.0), (20, 100.0)]
    with pytest.raises(ValueError):
        hbar_chart_svg([Bar("x", (Segment(-1, "#000", "n"),))], title="t")
    assert "no data" in hbar_chart_svg([], title="t")


def test_report_charts_match_the_decision_counts(model: ReportModel) -> None:
    html = render_html(model)
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) == 2
    rule_bars = widths(svgs[0])
    per_unit = {round(w / v, 6) for v, w in rule_bars if v}
    assert max(per_unit) - min(per_unit) < 1e-3  # one scale for every bar
    assert sorted(v for v, _ in rule_bars) == sorted(
        r.total for r in pivot(model.decision_counts, "rule_id")
    )
    transfer_values = [v for v, _ in widths(svgs[1])]
    assert transfer_values == [1530, 412, 2097]  # "other reason" (0) is left out


def test_aggregation(make_model: MakeModel) -> None:
    rows = [
        DecisionCount(rule_id="a", app="douyin", purpose="p", action="use", effect="deny", count=2),
        DecisionCount(rule_id="a", app="douyin", purpose="p", action="use", effect="deny", count=3),
        DecisionCount(
            rule_id=None, app="duoshan", purpose="q", action="use", effect="not_applicable", count=7
        ),
    ]
    by_rule = pivot(rows, "rule_id")
    assert [(r.key, r.deny, r.not_applicable, r.total) for r in by_rule] == [
        ("(no rule applied)", 0, 7, 7),
        ("a", 5, 0, 5),
    ]
    with pytest.raises(ValueError):
        pivot(rows, "effect")
    model = make_model(decision_counts=rows)
    d = denials_by_rule(model)
    assert [(x.rule_id, x.denials) for x in d] == [(R1, 0), (R2, 0), (R3, 0), ("a", 5)]


def test_optional_sections_say_not_run(make_model: MakeModel) -> None:
    model = make_model(
        transfers=None, scan=None, recommendations=None, audit=None, decision_counts=()
    )
    text = text_of(render_html(model))
    for phrase in (
        "transfer audit was not run",
        "scan was not run",
        "comparison was not run",
        "No audit log summary",
        "No decisions",
    ):
        assert phrase in text


def test_broken_audit_is_reported(make_model: MakeModel) -> None:
    model = make_model()
    assert model.audit is not None
    broken = model.audit.model_copy(
        update={"verify_ok": False, "first_bad_seq": 7, "reason": "entry #7 was edited"}
    )
    text = text_of(render_html(make_model(audit=broken)))
    assert "chain broken at entry #7" in text and "entry #7 was edited" in text
    assert "does not verify" in text


def test_model_validation(make_model: MakeModel) -> None:
    with pytest.raises(ValidationError):
        TransferSummary(total=1, denied=2, grandfathered_permitted=0, not_applicable=0)
    with pytest.raises(ValidationError):
        make_model(generated_at=datetime(2019, 4, 2))  # naive
    with pytest.raises(ValidationError):
        DecisionCount(rule_id=None, app="a", purpose="p", action="use", effect="deny", count=-1)
    with pytest.raises(ValidationError):
        make_model(unknown_field=1)


def test_write_report_is_atomic_and_evidence_json_matches(
    tmp_path: Path, model: ReportModel
) -> None:
    target = tmp_path / "out" / "report.html"
    assert write_report(model, target) == target
    assert target.read_text(encoding="utf-8") == render_html(model)
    assert [p.name for p in target.parent.iterdir()] == ["report.html"]  # no temp files left
    bundle = json.loads(to_evidence_json(model))
    assert bundle["schema"] == EVIDENCE_SCHEMA
    assert bundle["report_sha256"] == report_digest(model)
    assert ReportModel.model_validate(bundle["report"]) == model  # round trip
    assert {d["rule_id"]: d["denials"] for d in bundle["derived"]["denials_by_rule"]} == {
        R1: 81_600,
        R2: 1_530,
        R3: 10_200,
    }
    assert bundle["report"]["generated_at"] == "2019-04-02T09:15:00Z"
    assert model.generated_at_utc() == datetime(2019, 4, 2, 9, 15, tzinfo=UTC)


def test_one_precision_per_column_in_section_5(make_model: Callable[..., ReportModel]) -> None:
    """Section 5's quality table: every cell of a numeric column has the same number of
    decimals (4), tiny changes included; and the margins' "no" is not shown as a denial."""
    from provguard.report.model import MetricRow, RankerMargin, RecommendationSummary

    recs = RecommendationSummary(
        users=10,
        recs_per_user=10,
        metrics=(
            MetricRow(name="recall@10", value_without=0.5, value_with=0.25),
            MetricRow(name="mrr", value_without=0.123456, value_with=0.12343),
            MetricRow(name="hits@50", value_without=0.2, value_with=0.2),
        ),
        margins=(
            RankerMargin(
                policy="injunction", baseline="adamic_adar", recall_at_10=0.01, mrr=-0.00002,
                hits_at_50=0.1, coverage=0.0,
            ),
        ),
    )  # fmt: skip
    html = render_html(make_model(recommendations=recs))
    section = html.split('id="s-recs"')[1].split("</section>")[0]
    table = section.split("<tbody>")[1].split("</tbody>")[0]
    cells = [re.findall(r'<td class="n">([^<]*)</td>', row) for row in table.split("</tr>")[:-1]]
    # Change is the difference of the rounded values shown (0.1234 - 0.1235), so a reader who
    # subtracts the columns gets the same; no unit given, so no net count; no interval given
    assert cells == [
        ["0.5000", "0.2500", "-0.2500", "—", "—"],
        ["0.1235", "0.1234", "-0.0001", "—", "—"],
        ["0.2000", "0.2000", "+0.0000", "—", "—"],
    ]
    for column in list(zip(*cells, strict=True))[:3]:
        assert {len(c.split(" ")[0].split(".")[1]) for c in column} == {4}
    margins = section.split('id="ranker-margins"')[1].split("</table>")[0]
    assert "-0.0000 (-2.0e-05)" in margins and 'class="deny"' not in margins
