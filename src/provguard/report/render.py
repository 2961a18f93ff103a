"""Render a :class:`~provguard.report.model.ReportModel` as one self-contained HTML file.

The HTML has inline CSS, inline SVG charts drawn here in Python, no scripts and no external
assets (fonts, images, stylesheets), so it can be archived, e-mailed and printed as evidence.
Jinja2 renders ``templates/report.html`` with autoescaping on: every string from the model is
HTML-escaped; only the SVG produced by :func:`hbar_chart_svg` (itself built from escaped text)
is inserted as markup.

:func:`to_evidence_json` writes the same model as a JSON evidence bundle; the report's footer
prints the bundle's ``report_sha256`` so a reader can check that both describe the same run.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from provguard.report.anchor import ANCHORED_SECTIONS, canonical_sha256, file_statement
from provguard.report.audit_text import (
    audit_off_sentence,
    coverage_sentence,
    service_count_phrase,
)
from provguard.report.model import (
    MIN_QUERIES,
    CampaignProgress,
    DecisionCount,
    ReportModel,
    TimeBucket,
)
from provguard.report.recommend_text import (
    cost_sentence,
    headline_caption,
    identical_sentences,
    interval_text,
    net_change_text,
    ranker_weights_sentence,
    stored_sentence,
    thin_rows,
    withheld_inferred_sentence,
)

__all__ = [
    "CAMPAIGN_COLOURS",
    "EVIDENCE_SCHEMA",
    "OUTCOME_COLOURS",
    "Bar",
    "PivotRow",
    "RuleDenials",
    "Segment",
    "campaign_chart_svg",
    "denials_by_rule",
    "hbar_chart_svg",
    "pivot",
    "render_html",
    "report_digest",
    "time_chart_svg",
    "to_evidence_json",
    "write_report",
]

EVIDENCE_SCHEMA = "provguard.compliance-evidence/1"
TEMPLATES = Path(__file__).parent / "templates"

EFFECT_COLOURS = {"deny": "#b3261e", "permit": "#2e7d32", "not_applicable": "#8a8a8a"}


# -------------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class PivotRow:
    """Decision counts for one ``key`` (a rule, app or purpose), split by effect."""

    key: str
    permit: int
    deny: int
    not_applicable: int

    @property
    def total(self) -> int:
        return self.permit + self.deny + self.not_applicable


NO_RULE = "(no rule applied)"


def pivot(rows: Iterable[DecisionCount], by: str) -> list[PivotRow]:
    """Sum ``rows`` by the field ``by`` (``rule_id``, ``app``, ``purpose`` or ``action``), one
    column per effect; sorted by total, descending, then key. A ``None`` rule is
    :data:`NO_RULE`. Raises ``ValueError`` for another ``by``."""
    if by not in ("rule_id", "app", "purpose", "action"):
        raise ValueError(f"cannot pivot decision counts by {by!r}")
    acc: dict[str, dict[str, int]] = {}
    for row in rows:
        value = getattr(row, by)
        key = NO_RULE if value is None else str(value)
        cell = acc.setdefault(key, {"permit": 0, "deny": 0, "not_applicable": 0})
        cell[row.effect] += row.count
    out = [PivotRow(k, v["permit"], v["deny"], v["not_applicable"]) for k, v in acc.items()]
    return sorted(out, key=lambda r: (-r.total, r.key))


@dataclass(frozen=True)
class RuleDenials:
    """One deny rule of an instrument and how many decisions it denied; ``in_force`` is
    ``None`` when the instrument's status is withheld (its events disagree with the chain)."""

    instrument_id: str
    rule_id: str
    summary: str
    denials: int
    in_force: bool | None
    #: the rule's machine scope as the run enforced it (``RuleView.scope``; None: not recorded)
    scope: str | None = None


def denials_by_rule(model: ReportModel) -> list[RuleDenials]:
    """Every ``deny`` rule of every instrument (in order, including those with 0 denials), then
    any rule that denied something but is not listed in an instrument (instrument ``"?"``)."""
    counts: dict[str, int] = {}
    for row in model.decision_counts:
        if row.effect == "deny" and row.rule_id is not None:
            counts[row.rule_id] = counts.get(row.rule_id, 0) + row.count
    out: list[RuleDenials] = []
    listed: set[str] = set()
    for inst in model.instruments:
        for rule in inst.rules:
            if rule.effect == "deny":
                listed.add(rule.rule_id)
                out.append(
                    RuleDenials(
                        inst.id,
                        rule.rule_id,
                        rule.summary,
                        counts.get(rule.rule_id, 0),
                        inst.in_force,
                        rule.scope,
                    )
                )
    for rule_id in sorted(set(counts) - listed):
        out.append(
            RuleDenials("?", rule_id, "(not listed in any instrument)", counts[rule_id], True)
        )
    return out


# --------------------------------------------------------------------------------- SVG charts


@dataclass(frozen=True)
class Segment:
    """A part of a bar: ``value`` (>= 0), its ``colour`` (CSS colour) and ``name`` (legend)."""

    value: int
    colour: str
    name: str


@dataclass(frozen=True)
class Bar:
    """One row of a horizontal bar chart: a ``label`` and stacked ``segments``."""

    label: str
    segments: tuple[Segment, ...]

    @property
    def total(self) -> int:
        return sum(s.value for s in self.segments)


def _fmt(n: int) -> str:
    return f"{n:,}"


def hbar_chart_svg(
    bars: Sequence[Bar],
    *,
    title: str,
    label_width: int = 340,
    bar_width: int = 380,
    row_height: int = 26,
    max_label_chars: int = 48,
) -> Markup:
    """A horizontal (stacked) bar chart as inline SVG markup; sizes in CSS pixels.

    Each segment's width is ``bar_width * value / max_total`` (so widths are proportional to
    counts across all bars; the longest bar is ``bar_width`` wide), rounded to 0.01 px, drawn
    as ``<rect class="seg" data-value=N width=W>``. Labels longer than ``max_label_chars`` are
    shortened with "…" (the full label is in the row's ``<title>`` tooltip). A legend lists the
    distinct segment names. All text is XML-escaped. An empty ``bars`` gives a short "no data"
    figure.
    """
    esc = escape
    legend: dict[str, str] = {}
    for bar in bars:
        for seg in bar.segments:
            if seg.value < 0:
                raise ValueError(f"negative bar value {seg.value} for {bar.label!r}")
            legend.setdefault(seg.name, seg.colour)
    value_space = 90
    width = label_width + bar_width + value_space
    top = 8
    legend_h = 24 if legend else 0
    height = top + max(len(bars), 1) * row_height + legend_h + 8
    max_total = max((b.total for b in bars), default=0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
    ]
    if not bars:
        parts.append(f'<text x="0" y="{top + 16}" class="muted">no data</text></svg>')
        return Markup("".join(parts))
    for i, bar in enumerate(bars):
        y = top + i * row_height
        label = bar.label
        short = label if len(label) <= max_label_chars else label[: max_label_chars - 1] + "…"
        parts.append(f'<g class="bar"><title>{esc(label)}: {_fmt(bar.total)}</title>')
        parts.append(
            f'<text x="{label_width - 8}" y="{y + row_height * 0.65:.1f}" '
            f'text-anchor="end" class="label">{esc(short)}</text>'
        )
        x = float(label_width)
        for seg in bar.segments:
            w = round(bar_width * seg.value / max_total, 2) if max_total else 0.0
            parts.append(
                f'<rect class="seg" x="{x:.2f}" y="{y + 4}" width="{w:.2f}" '
                f'height="{row_height - 8}" fill="{esc(seg.colour)}" '
                f'data-value="{seg.value}" data-name="{esc(seg.name)}"/>'
            )
            x += w
        parts.append(
            f'<text x="{x + 6:.2f}" y="{y + row_height * 0.65:.1f}" class="value">'
            f"{_fmt(bar.total)}</text></g>"
        )
    ly = top + len(bars) * row_height + 16
    lx = float(label_width)
    for name, colour in legend.items():
        parts.append(
            f'<rect x="{lx:.0f}" y="{ly - 10}" width="12" height="12" fill="{esc(colour)}"/>'
            f'<text x="{lx + 16:.0f}" y="{ly}" class="legend">{esc(name)}</text>'
        )
        lx += 28 + 6.8 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class _Column:
    """One stacked column: its tooltip and segments, bottom first (zero segments skipped)."""

    tip: str
    segments: tuple[Segment, ...]


def _columns_svg(
    columns: Sequence[_Column],
    *,
    title: str,
    width: int,
    height: int,
    bottom: int,
    col_width: Callable[[float], float],
    x_labels: Callable[[int, float, float], str],
    legend: Sequence[tuple[str, str]],
    legend_stroke: bool = False,
) -> Markup:
    """The shared body of the stacked column charts (sizes in CSS pixels): a plot of
    ``width`` x ``height`` with a 70 px left margin for the axis labels (the peak and 0) and
    ``bottom`` px below the axis; each column is ``col_width(step)`` wide, centred in its
    ``step = plot_width / len(columns)`` slot, its height ``plot_height * total / peak``; each
    non-zero segment is ``<rect class="seg" data-value=N data-name=NAME>`` inside
    ``<g class="col">`` with the column's ``tip`` as ``<title>``. ``x_labels(i, x, col)``
    returns the markup under column ``i`` (left edge ``x``); ``legend`` lists ``(name,
    colour)`` along the bottom. All text is escaped. No columns give a "no data" figure."""
    esc = escape
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{esc(title)}">'
        f"<title>{esc(title)}</title>"
    ]
    if not columns:
        parts.append('<text x="0" y="24" class="muted">no data</text></svg>')
        return Markup("".join(parts))
    left, right, top = 70, 10, 10
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(max(sum(seg.value for seg in c.segments) for c in columns), 1)
    step = plot_w / len(columns)
    col = col_width(step)
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" '
        'stroke="#888"/>'
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" class="value">{_fmt(peak)}</text>'
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" class="value">0</text>'
    )
    for i, column in enumerate(columns):
        x = left + i * step + (step - col) / 2
        y = float(top + plot_h)
        parts.append(f'<g class="col"><title>{esc(column.tip)}</title>')
        for seg in column.segments:
            if not seg.value:
                continue
            h = plot_h * seg.value / peak
            y -= h
            parts.append(
                f'<rect class="seg" x="{x:.2f}" y="{y:.2f}" width="{col:.2f}" height="{h:.2f}" '
                f'fill="{esc(seg.colour)}" data-value="{seg.value}" data-name="{esc(seg.name)}"/>'
            )
        parts.append("</g>")
        parts.append(x_labels(i, x, col))
    lx = float(left)
    stroke = ' stroke="#888" stroke-width="0.5"' if legend_stroke else ""
    for name, colour in legend:
        parts.append(
            f'<rect x="{lx:.0f}" y="{height - 16}" width="12" height="12" fill="{esc(colour)}"'
            f"{stroke}/>"
            f'<text x="{lx + 16:.0f}" y="{height - 6}" class="legend">{esc(name)}</text>'
        )
        lx += 28 + 6.8 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))


def time_chart_svg(
    buckets: Sequence[TimeBucket],
    *,
    title: str,
    width: int = 810,
    height: int = 220,
) -> Markup:
    """A stacked column chart of decisions per time bucket (deny / permit / not applicable), as
    inline SVG; sizes in CSS pixels. Column heights are ``plot_height * total / max_total``;
    each segment is ``<rect class="seg" data-value=N>``. The first and last bucket starts are
    labelled (UTC). An empty ``buckets`` gives a short "no data" figure."""
    effects = ("deny", "permit", "not_applicable")
    columns = [
        _Column(
            f"{_fmt_date(b.start)} (+{b.seconds} s): {_fmt(b.permit + b.deny + b.not_applicable)}",
            tuple(Segment(getattr(b, e), EFFECT_COLOURS[e], e) for e in effects),
        )
        for b in buckets
    ]

    def first_and_last(i: int, _x: float, _col: float) -> str:
        if i != len(buckets) - 1:
            return ""
        first, last = _fmt_date(buckets[0].start), _fmt_date(buckets[-1].start)
        return (
            f'<text x="70" y="{height - 26}" class="legend">{escape(first)}</text>'
            f'<text x="{width - 10}" y="{height - 26}" text-anchor="end" class="legend">'
            f"{escape(last)}</text>"
        )

    return _columns_svg(
        columns,
        title=title,
        width=width,
        height=height,
        bottom=46,
        col_width=lambda step: max(1.0, step * 0.8),
        x_labels=first_and_last,
        legend=[(e.replace("_", " "), EFFECT_COLOURS[e]) for e in effects],
    )


CAMPAIGN_COLOURS = {
    "pending": "#9e9e9e",
    "notified": "#1f5fa8",
    "changed": "#2e7d32",
    "exempt": "#d7d2c4",
    "ignored": "#e08a00",
    "escalated": "#b3261e",
}
"""Fill colour of each campaign target state in :func:`campaign_chart_svg`."""


def campaign_chart_svg(
    campaign: CampaignProgress,
    *,
    title: str,
    width: int = 810,
    height: int = 250,
    max_points: int = 40,
) -> Markup:
    """Campaign progress over time as inline SVG: one stacked column per history point (the
    counts of targets per state after that operation, oldest left; the last ``max_points``),
    labelled with the date and operation under it. Column height is
    ``plot_height * targets / max_targets``; each segment is
    ``<rect class="seg" data-name=STATE data-value=N>``. No history gives a "no data" figure."""
    points = list(campaign.history)[-max_points:]
    columns = [
        _Column(
            f"{_fmt_date(p.at)} {p.operation}: "
            + ", ".join(f"{k} {v}" for k, v in p.counts.items() if v),
            tuple(
                Segment(int(p.counts.get(name, 0)), colour, name)
                for name, colour in CAMPAIGN_COLOURS.items()
            ),
        )
        for p in points
    ]
    label_every = max(1, round(len(points) / 8))
    plot_bottom = height - 70

    def dated(i: int, x: float, col: float) -> str:
        if i % label_every and i != len(points) - 1:
            return ""
        cx, point = x + col / 2, points[i]
        return (
            f'<text x="{cx:.1f}" y="{plot_bottom + 14}" text-anchor="middle" '
            f'class="legend">{escape(point.at.astimezone(UTC).strftime("%Y-%m-%d"))}</text>'
            f'<text x="{cx:.1f}" y="{plot_bottom + 28}" text-anchor="middle" '
            f'class="muted">{escape(point.operation)}</text>'
        )

    return _columns_svg(
        columns,
        title=title,
        width=width,
        height=height,
        bottom=70,
        col_width=lambda step: max(1.0, min(step * 0.7, 90.0)),
        x_labels=dated,
        legend=list(CAMPAIGN_COLOURS.items()),
        legend_stroke=True,
    )


def _revocation_bars(model: ReportModel) -> list[Bar]:
    r = model.revocations
    if r is None:
        return []
    ok, late, wait = EFFECT_COLOURS["permit"], EFFECT_COLOURS["deny"], "#1565c0"
    rows = [
        ("purged by the deadline", "on time", r.purged - r.purged_late, ok),
        ("purged after the deadline", "late", r.purged_late, late),
        ("quarantined, purge pending", "pending", r.quarantined, wait),
        ("open (not yet quarantined)", "open", r.open, EFFECT_COLOURS["not_applicable"]),
        ("overdue (deadline passed, not purged)", "overdue", r.overdue, late),
    ]
    return [Bar(label, (Segment(v, colour, name),)) for label, name, v, colour in rows]


OUTCOME_COLOURS = {
    "denied": EFFECT_COLOURS["deny"],
    "grandfathered": "#1565c0",
    "permitted": EFFECT_COLOURS["permit"],
    "not_applicable": EFFECT_COLOURS["not_applicable"],
}
"""Fill colour of each token-exchange outcome (:class:`.model.TokenExchangeRow`)."""

GRANT_STATUS_COLOURS = {
    "active": EFFECT_COLOURS["permit"],
    "revoked": "#e08a00",
    "quarantined": "#e08a00",
    "purged": "#8a8a8a",
    "expired": "#d7d2c4",
}


def _exchange_bars(model: ReportModel) -> list[Bar]:
    """One bar per (from app, to app, kind) of the registry's token exchanges, stacked by
    outcome (denied, grandfathered, permitted, not applicable)."""
    s = model.sign_ins
    if s is None:
        return []
    acc: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in s.exchanges:
        cell = acc.setdefault((r.from_app, r.to_app, r.kind), dict.fromkeys(OUTCOME_COLOURS, 0))
        cell[r.outcome] += r.count
    return [
        Bar(
            f"{src} → {dst} ({kind.replace('_', ' ')})",
            tuple(
                Segment(v, OUTCOME_COLOURS[name], name.replace("_", " "))
                for name, v in cell.items()
                if v
            ),
        )
        for (src, dst, kind), cell in sorted(acc.items())
    ]


def _sign_in_bars(model: ReportModel) -> list[Bar]:
    """One bar per (provider, client app) of the registry's completed sign-ins, stacked by the
    grant's status now."""
    s = model.sign_ins
    if s is None:
        return []
    return [
        Bar(
            f"{r.provider} → {r.app}",
            tuple(
                Segment(n, GRANT_STATUS_COLOURS.get(status, "#5f6368"), status)
                for status, n in sorted(r.statuses.items())
                if n
            ),
        )
        for r in s.sign_ins
    ]


def _effect_bars(rows: Sequence[PivotRow]) -> list[Bar]:
    return [
        Bar(
            r.key,
            tuple(
                Segment(v, EFFECT_COLOURS[name], name.replace("_", " "))
                for name, v in (
                    ("deny", r.deny),
                    ("permit", r.permit),
                    ("not_applicable", r.not_applicable),
                )
                if v
            ),
        )
        for r in rows
    ]


def _transfer_bars(model: ReportModel) -> list[Bar]:
    t = model.transfers
    if t is None:
        return []
    rows = [
        ("denied", "denied", t.denied, EFFECT_COLOURS["deny"]),
        (
            "permitted: grandfathered (used before the order)",
            "grandfathered",
            t.grandfathered_permitted,
            "#1565c0",
        ),
        ("permitted: other reason", "permitted", t.other_permitted, EFFECT_COLOURS["permit"]),
        (
            "not applicable (no rule)",
            "not applicable",
            t.not_applicable,
            EFFECT_COLOURS["not_applicable"],
        ),
    ]
    return [
        Bar(label, (Segment(v, colour, name),))
        for label, name, v, colour in rows
        if v or name != "permitted"
    ]


# ------------------------------------------------------------------------------------ HTML


def _fmt_date(value: date | datetime | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return value.isoformat()


def _fmt_num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return _fmt(value)
    return f"{value:.{digits}f}"


def _fmt_delta(value: float, digits: int = 4) -> str:
    """Signed change; a non-zero change too small for ``digits`` keeps its sign and size
    (``-3.1e-04``) instead of reading as ``-0.000``."""
    if value != 0 and abs(value) < 0.5 * 10**-digits:
        return f"{value:+.1e}"
    return f"{value:+.{digits}f}"


def _fmt_change(value: float | None, digits: int = 4) -> str:
    """A signed change with exactly ``digits`` decimals, so a column has one precision; a
    non-zero change that rounds to zero keeps its sign and size in brackets
    (``-0.0000 (-3.0e-05)``) rather than reading as no change; ``None`` (not measured): "—"."""
    if value is None:
        return "—"
    fixed = f"{value:+.{digits}f}"
    if value != 0 and abs(value) < 0.5 * 10**-digits:
        fixed = f"{'-' if value < 0 else '+'}{0:.{digits}f} ({value:+.1e})"
    return fixed


def _pct(part: int | None, whole: int | None) -> str:
    if part is None or not whole:
        return "—"
    return f"{100.0 * part / whole:.1f}%"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _fmt_num
    env.filters["when"] = _fmt_date
    env.filters["delta"] = _fmt_delta
    env.filters["change"] = _fmt_change
    env.globals["pct"] = _pct
    env.globals["min_queries"] = MIN_QUERIES
    env.globals["stored_sentence"] = stored_sentence
    env.globals["withheld_inferred_sentence"] = withheld_inferred_sentence
    env.globals["coverage_sentence"] = coverage_sentence
    env.globals["audit_off_sentence"] = audit_off_sentence
    env.globals["service_count_phrase"] = service_count_phrase
    env.globals["ranker_weights_sentence"] = ranker_weights_sentence
    env.globals["headline_caption"] = headline_caption
    env.globals["net_change_text"] = net_change_text
    env.globals["interval_text"] = interval_text
    env.globals["cost_sentence"] = cost_sentence
    env.globals["identical_sentences"] = identical_sentences
    env.globals["thin_rows"] = thin_rows
    return env


def report_digest(model: ReportModel) -> str:
    """SHA-256 hex of the model's canonical JSON (sorted keys, no whitespace, UTF-8):
    :func:`provguard.report.anchor.canonical_sha256` of ``model.model_dump(mode="json")``, so
    the digest of an ``evidence.json``'s ``report`` section can be recomputed from the file
    (:func:`provguard.report.anchor.evidence_report_digest`)."""
    return canonical_sha256(model.model_dump(mode="json"))


def _context(model: ReportModel) -> dict[str, Any]:
    by_rule = pivot(model.decision_counts, "rule_id")
    return {
        "m": model,
        "summary": denials_by_rule(model),
        "by_rule": by_rule,
        "by_app": pivot(model.decision_counts, "app"),
        "by_purpose": pivot(model.decision_counts, "purpose"),
        "total_decisions": sum(r.count for r in model.decision_counts),
        "total_denials": sum(r.count for r in model.decision_counts if r.effect == "deny"),
        "service_total": sum(r.count for r in model.service_decision_counts),
        "rule_chart": hbar_chart_svg(_effect_bars(by_rule), title="Decisions per rule"),
        "transfer_chart": hbar_chart_svg(
            _transfer_bars(model), title="Login-grant transfers by outcome"
        ),
        "time_chart": time_chart_svg(
            model.decisions_over_time, title="Decisions recorded over time (audit time, UTC)"
        ),
        "revocation_chart": hbar_chart_svg(
            _revocation_bars(model), title="Revocation jobs by outcome"
        ),
        "sign_in_chart": hbar_chart_svg(
            _sign_in_bars(model), title="Sign-ins by provider and client app (grant status now)"
        ),
        "exchange_chart": hbar_chart_svg(_exchange_bars(model), title="Token exchanges by outcome"),
        "campaign_charts": [
            campaign_chart_svg(c, title=f"Campaign {c.campaign_id}: targets per state over time")
            for c in (model.campaigns or ())
        ],
        "digest": report_digest(model),
        "schema": EVIDENCE_SCHEMA,
        "withheld": _withheld(model),
    }


def _withheld(model: ReportModel) -> dict[str, str]:
    """Cross-checked table -> the PG340 statement printed instead of its section's figures
    (only tables that disagree with the audit chain)."""
    check = model.chain_check
    if check is None:
        return {}
    out = {t.table: check.statement(t.table) for t in check.tables if t.discrepancies}
    # the anchored report files (evidence.json, the scan): their own sentence, naming the
    # job.report entry and the digests (provguard.report.anchor)
    for d in check.discrepancies:
        if d.table in ANCHORED_SECTIONS:
            out[d.table] = file_statement(
                d.table, d.table_value, d.chain_value, d.seq, d.field, check.code
            )
    return out


def render_html(model: ReportModel) -> str:
    """The report as one HTML5 document (UTF-8 text, inline CSS and SVG, no scripts)."""
    return _environment().get_template("report.html").render(**_context(model))


def write_report(model: ReportModel, path: str | Path) -> Path:
    """Render and write the report atomically (temp file in the same folder, fsync, rename):
    a reader never sees a half-written file. Returns the path. Raises ``OSError``."""
    return _atomic_write(Path(path), render_html(model))


def _atomic_write(target: Path, text: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def to_evidence_json(model: ReportModel) -> str:
    """The JSON evidence bundle (pretty-printed, keys sorted, UTF-8 text)::

    {"schema": "provguard.compliance-evidence/1",
     "report_sha256": <report_digest(model)>,
     "report": <the model, as JSON values; dates ISO-8601>,
     "derived": {"denials_by_rule": [...], "decisions_by_rule": [...],
                 "decisions_by_app": [...], "decisions_by_purpose": [...]}}
    """

    def rows(pivoted: list[PivotRow]) -> list[dict[str, object]]:
        return [
            {
                "key": r.key,
                "permit": r.permit,
                "deny": r.deny,
                "not_applicable": r.not_applicable,
                "total": r.total,
            }
            for r in pivoted
        ]

    bundle = {
        "schema": EVIDENCE_SCHEMA,
        "report_sha256": report_digest(model),
        "report": model.model_dump(mode="json"),
        "derived": {
            "denials_by_rule": [
                {"instrument_id": d.instrument_id, "rule_id": d.rule_id, "denials": d.denials}
                for d in denials_by_rule(model)
            ],
            "decisions_by_rule": rows(pivot(model.decision_counts, "rule_id")),
            "decisions_by_app": rows(pivot(model.decision_counts, "app")),
            "decisions_by_purpose": rows(pivot(model.decision_counts, "purpose")),
            "service_decisions_by_rule": rows(pivot(model.service_decision_counts, "rule_id")),
        },
    }
    return json.dumps(bundle, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_evidence(model: ReportModel, path: str | Path) -> Path:
    """Write :func:`to_evidence_json` atomically beside the report. Raises ``OSError``."""
    return _atomic_write(Path(path), to_evidence_json(model))
