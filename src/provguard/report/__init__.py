"""The compliance report: a typed view model, HTML rendering and a JSON evidence bundle."""

from provguard.report.model import (
    AuditSummary,
    CheckpointView,
    DataSource,
    DecisionCount,
    InstrumentView,
    MetricRow,
    RecommendationSummary,
    RemovedSignal,
    ReportModel,
    RuleView,
    ScanRow,
    TimeBucket,
    TransferSample,
    TransferSummary,
)
from provguard.report.render import render_html, to_evidence_json, write_report

__all__ = [
    "AuditSummary",
    "CheckpointView",
    "DataSource",
    "DecisionCount",
    "InstrumentView",
    "MetricRow",
    "RecommendationSummary",
    "RemovedSignal",
    "ReportModel",
    "RuleView",
    "ScanRow",
    "TimeBucket",
    "TransferSample",
    "TransferSummary",
    "render_html",
    "to_evidence_json",
    "write_report",
]
