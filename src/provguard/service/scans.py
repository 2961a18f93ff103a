"""Profile-match scans over HTTP: is this app profile a copy of the provider's?

=====================================  ========  ===================================================
``POST /v1/scans``                     app       the match decision of one (handle, picture) pair
``POST /v1/scans/batch``               app       up to 1000 pairs, answered in order
=====================================  ========  ===================================================

Handles are compared by :func:`provguard.similarity.match.score_handles` with the calibrated
thresholds (docs/scanner.md); pictures by the Hamming distance of their 256-bit PDQ hashes
(Facebook's PDQ, as :mod:`provguard.similarity.pictures`) within
:data:`provguard.similarity.scan.PICTURE_RADIUS` bits. The HTTP caller sends one hash per side,
so the batch scan's dihedral (mirror) variants and chromaticity gate do not apply here: hash the
picture as the scan job does before sending it if those matter.

``provider`` must be a provider origin the policy knows (:data:`PROVIDER_ORIGINS`: the known
origins except ``unknown`` and ``user_input``), spelled exactly as in ``/v1/decisions``
``origins``: anything else (``"WeChat "``) is refused 422 ``PG140`` before any pair is matched,
since it would come back as an ``inferred_origins`` value the decision endpoint refuses. The
refusal is audit-logged as a ``request.rejected`` entry (code, path, key; the app's error
handler, :data:`provguard.service.app.REJECTED_KIND`), never as a ``scan``.

Each request is one ``scan`` audit entry (client app, key, per pair the provider, subject id,
match kind, picture distance and verdict -- never the raw handles).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter

from provguard.errors import RequestError
from provguard.provenance.origins import KNOWN_ORIGINS, UNKNOWN
from provguard.service.app import _ERRORS, AppClient, ServiceState, State
from provguard.service.auth import Client
from provguard.service.limits import StrictJSONRoute
from provguard.service.schemas import (
    AuditInfo,
    ScanBatch,
    ScanBatchResponse,
    ScanPair,
    ScanResult,
)
from provguard.similarity.match import score_handles
from provguard.similarity.pictures import hamming
from provguard.similarity.scan import PICTURE_RADIUS

__all__ = ["PROVIDER_ORIGINS", "check_providers", "match_pairs", "scans_api"]

PROVIDER_ORIGINS = frozenset(KNOWN_ORIGINS - {UNKNOWN, "user_input"})
"""Origins a scanned copy can come from (a platform; not ``unknown`` nor ``user_input``)."""


def check_providers(pairs: list[ScanPair], *, batch: bool = False) -> None:
    """Raise :class:`~provguard.errors.RequestError` (PG140, HTTP 422) naming the first pair
    whose ``provider`` is not in :data:`PROVIDER_ORIGINS` (exact spelling, as ``origins`` in a
    decision request; ``pairs[i]: `` prefixed in a batch)."""
    for i, pair in enumerate(pairs):
        if pair.provider not in PROVIDER_ORIGINS:
            where = f"pairs[{i}]: " if batch else ""
            raise RequestError(
                f"{where}unknown provider origin {pair.provider!r}; known: "
                f"{', '.join(sorted(PROVIDER_ORIGINS))}"
            )


def match_pairs(pairs: list[ScanPair], radius: int = PICTURE_RADIUS) -> list[ScanResult]:
    """The match decision of each pair (see the module docstring), in order.

    ``radius``: largest Hamming distance (bits, 0..256) of a picture match.
    """
    scores = score_handles([p.handle for p in pairs], [p.provider_handle for p in pairs])
    out: list[ScanResult] = []
    for i, p in enumerate(pairs):
        distance: int | None = None
        if p.picture_pdq is not None and p.provider_picture_pdq is not None:
            distance = hamming(bytes.fromhex(p.picture_pdq), bytes.fromhex(p.provider_picture_pdq))
        handle_match = bool(scores.match[i])
        picture_match = distance is not None and distance <= radius
        fields = [f for f, hit in (("handle", handle_match), ("avatar", picture_match)) if hit]
        out.append(
            ScanResult(
                provider=p.provider,
                subject_id=p.subject_id,
                handle_match_kind=str(scores.match_kind[i]),
                handle_similarity=round(float(np.asarray(scores.similarity)[i]), 6),
                handle_match=handle_match,
                picture_distance=distance,
                picture_radius=radius,
                picture_match=picture_match,
                copy_match=bool(fields),
                copied_fields=fields,
                inferred_origins=[p.provider] if fields else [],
            )
        )
    return out


def _audit(state: ServiceState, client: Client, results: list[ScanResult]) -> AuditInfo:
    writer = state.writer
    if writer is None:
        return AuditInfo(mode="off", submission=None, acknowledged=False)
    payload: dict[str, Any] = {
        "context": {"client_app": client.app, "key": client.name},
        "pairs": len(results),
        "matches": sum(r.copy_match for r in results),
        "results": [
            {
                "provider": r.provider,
                "subject_id": r.subject_id,
                "handle_match_kind": r.handle_match_kind,
                "picture_distance": r.picture_distance,
                "copy_match": r.copy_match,
            }
            for r in results
        ],
    }
    number = writer.submit("scan", payload)
    acked = False
    if number is not None and state.settings.ack == "committed":
        acked = writer.wait(number, timeout=30.0)
    return AuditInfo(mode=writer.mode, submission=number, acknowledged=acked)


def _build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=_ERRORS, tags=["scans"], route_class=StrictJSONRoute)

    @router.post("/scans", response_model=ScanResult)
    def scan_one(pair: ScanPair, client: AppClient, state: State) -> ScanResult:
        """The match decision of one app profile against the provider's copy (422 ``PG140``
        for a provider that is not a known provider origin)."""
        check_providers([pair])
        result = match_pairs([pair])[0]
        _audit(state, client, [result])
        return result

    @router.post("/scans/batch", response_model=ScanBatchResponse)
    def scan_batch(batch: ScanBatch, client: AppClient, state: State) -> ScanBatchResponse:
        """Up to 1000 pairs in one call (one audit entry for the batch; 422 ``PG140``, nothing
        matched, if any provider is not a known provider origin)."""
        check_providers(batch.pairs, batch=True)
        results = match_pairs(batch.pairs)
        audit = _audit(state, client, results)
        return ScanBatchResponse(
            results=results, matches=sum(r.copy_match for r in results), audit=audit
        )

    return router


scans_api = _build_router()
