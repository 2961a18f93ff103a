"""Report section 6 says which entries the newest signed checkpoint covers, and that one
stored in the log proves nothing against someone who can rewrite the file (finding A)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

from provguard.report.model import AuditSummary, CheckpointView, ReportModel
from provguard.report.render import render_html

HEAD = "3d1b5c3a636b13397ae2fe984e8462dae80a012bb3c38e4071207ae29c77b59b"


def _coverage(html: str) -> str:
    part = html.split('id="audit-coverage">')[1].split("</dd>")[0]
    return " ".join(re.sub(r"<[^>]+>", " ", part).split())


def _audit(entries: int, checkpoint: int | None, ok: bool | None = None) -> AuditSummary:
    view = (
        CheckpointView(
            count=checkpoint,
            head_hash=HEAD,
            signed_at=datetime(2026, 11, 30, 6, 0, tzinfo=UTC),
            key_id="902c3c77b4cd67be",
            signature_ok=ok,
        )
        if checkpoint is not None
        else None
    )
    return AuditSummary(entries=entries, head_hash=HEAD, verify_ok=True, checkpoint=view)


def test_a_tail_no_checkpoint_covers_is_named(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(audit=_audit(90_000, 80_000)))
    text = _coverage(html)
    assert text.startswith(
        "entries #1–#80000; entries after #80000 (#80001–#90000) are not covered by any "
        "signed checkpoint."
    )
    assert "proves nothing against someone who can rewrite the file" in text
    assert "signature not checked here: no public key was given" in html


def test_full_coverage_and_none(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(audit=_audit(92_791, 92_791, ok=True)))
    assert _coverage(html).startswith("every entry (#1–#92791).")
    assert "signature valid" in html and "signature not checked here" not in html
    html = render_html(make_model(audit=_audit(92_791, None)))
    assert _coverage(html).startswith("none: no signed checkpoint is stored in the log")
