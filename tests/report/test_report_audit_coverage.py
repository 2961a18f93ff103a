"""Report section 6 says which entries the newest signed checkpoint covers, with which key file
its signature was verified (or that none was), and that one stored in the log proves nothing
against someone who can rewrite the file (finding A; finding M1 of session 4)."""

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
            key_file="audit.pub" if ok is not None else None,
            public_key_id="902c3c77b4cd67be" if ok is not None else None,
            head_in_log=True,
        )
        if checkpoint is not None
        else None
    )
    return AuditSummary(entries=entries, head_hash=HEAD, verify_ok=True, checkpoint=view)


def test_a_tail_no_checkpoint_covers_is_named(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(audit=_audit(90_000, 80_000)))
    text = _coverage(html)
    assert text.startswith(
        "entries #1–#80000 are covered by a checkpoint whose signature was not checked (no "
        "public key beside the log); entries after #80000 (#80001–#90000) are not covered by "
        "any signed checkpoint."
    )
    assert "proves nothing against someone who can rewrite the file" in text
    assert "signature not checked: no public key beside the log" in html


def test_full_coverage_and_none(make_model: Callable[..., ReportModel]) -> None:
    html = render_html(make_model(audit=_audit(92_791, 92_791, ok=True)))
    assert _coverage(html).startswith(
        "every entry (#1–#92791) is covered by a checkpoint signed by key 902c3c77b4cd67be, "
        "signature verified with audit.pub."
    )
    assert "signature verified with audit.pub" in html and "not checked" not in html
    html = render_html(make_model(audit=_audit(92_791, None)))
    assert _coverage(html) == (
        "none: no signed checkpoint is stored in the log, so nothing beyond the chain itself "
        "is proven (docs/audit.md)."
    )


def test_a_broken_chain_covers_nothing(make_model: Callable[..., ReportModel]) -> None:
    audit = _audit(92_791, 92_791, ok=True).model_copy(
        update={"verify_ok": False, "first_bad_seq": 17, "reason": "entry #17 was edited"}
    )
    assert _coverage(render_html(make_model(audit=audit))).startswith(
        "no entry is covered: the chain does not verify, so a checkpoint signed by key "
        "902c3c77b4cd67be, signature verified with audit.pub vouches for nothing."
    )


def test_a_rewritten_head_covers_nothing(make_model: Callable[..., ReportModel]) -> None:
    audit = _audit(90_000, 80_000, ok=True)
    assert audit.checkpoint is not None
    audit = audit.model_copy(
        update={"checkpoint": audit.checkpoint.model_copy(update={"head_in_log": False})}
    )
    assert _coverage(render_html(make_model(audit=audit))).startswith(
        "no entry is covered: entry #80000 of the log does not hash to the head of a "
        "checkpoint signed by key 902c3c77b4cd67be, signature verified with audit.pub (the log "
        "was rewritten after signing)."
    )
