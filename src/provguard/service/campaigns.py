"""Remediation campaigns over HTTP: status, progress and subjects, per tenant.

=====================================  ========  ===================================================
``GET  /v1/campaigns``                 any key   campaigns (an app key: those with its targets)
``GET  /v1/campaigns/{id}``            any key   targets per state, notices per status, progress
``GET  /v1/campaigns/{id}/subjects``   any key   the targets (an app key: its own only; paged)
=====================================  ========  ===================================================

Read-only, from the campaign tables of ``control.db``
(:mod:`provguard.adapters.campaign_sqlite`). Tenant isolation: an app key sees the states,
notices and subjects of its own app only, and a campaign without any of its targets answers 404
``PG530`` as a missing one does. The whole-campaign history (counts per state after each
operation) mixes apps, so it is given to auditor keys only.

What is served must agree with the hash-chained audit log, as in ``provguard report --store``
(section 3c): every endpoint first runs the store cross-check of the ``campaigns`` table
(targets per state against the newest chained snapshot, the campaign records against their
chained entries; :class:`~provguard.service.withheld.ChainGuard`, cached per process) and
answers 503 ``PG340`` with the discrepancy summary (an auditor key: the first discrepancies
too) while it disagrees -- never the edited states (fresh user 12, M1).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import ColumnElement, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters import campaign_sqlite as cq
from provguard.campaign.model import STATES
from provguard.errors import StoreError
from provguard.service.app import _ERRORS, ServiceState, State, current_client
from provguard.service.auth import Client
from provguard.service.errors import NotFoundError
from provguard.service.schemas import (
    CampaignStatus,
    CampaignSubject,
    CampaignSubjectsPage,
    CampaignView,
    ProgressPoint,
)

AnyClient = Annotated[Client, Depends(current_client)]

__all__ = ["campaign_status", "campaigns_api"]

_DONE = ("changed", "ignored", "escalated")  # a non-exempt target that left pending/notified


def _iso(value: Any) -> str | None:
    if not isinstance(value, datetime):
        return None if value is None else str(value)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _rows(state: ServiceState, query: Any) -> list[Any]:
    try:
        with state.engine.connect() as conn:
            if not inspect(conn).has_table("campaigns"):
                return []
            return list(conn.execute(query).all())
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the campaign store: {exc}") from exc


def _scope(client: Client, campaign_id: str | None = None) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if campaign_id is not None:
        cond.append(cq.targets.c.campaign_id == campaign_id)
    if not client.is_auditor:
        cond.append(cq.targets.c.app_id == client.app)
    return cond


def _checked(state: ServiceState, client: Client, what: str) -> None:
    """Raise :class:`~provguard.service.withheld.WithheldError` (PG340, 503) while the
    ``campaigns`` table disagrees with the audit chain."""
    state.chain_guard().require(("campaigns",), what, detail=client.is_auditor)


def _campaign(state: ServiceState, client: Client, campaign_id: str) -> CampaignView:
    c = cq.campaigns
    rows = _rows(state, select(c).where(c.c.campaign_id == campaign_id))
    if rows and not client.is_auditor:
        mine = _rows(
            state, select(func.count()).select_from(cq.targets).where(*_scope(client, campaign_id))
        )
        if not mine or not mine[0][0]:
            rows = []
    if not rows:
        raise NotFoundError(f"no campaign '{campaign_id}' visible to this key")
    r = rows[0]
    return CampaignView(
        campaign_id=r.campaign_id,
        rule_id=r.rule_id,
        instrument_id=r.instrument_id,
        created_at=_iso(r.created_at) or "",
    )


def campaign_status(state: ServiceState, client: Client, campaign_id: str) -> CampaignStatus:
    """The status of ``campaign_id`` as ``client`` may see it (see the module docstring).
    Raises :class:`NotFoundError` (404 ``PG530``), :class:`StoreError`,
    :class:`~provguard.service.withheld.WithheldError` (503 ``PG340``: the campaign table
    disagrees with the audit chain)."""
    _checked(state, client, "campaign status")
    view = _campaign(state, client, campaign_id)
    t, o = cq.targets, cq.outbox
    got = {
        r[0]: int(r[1])
        for r in _rows(
            state,
            select(t.c.state, func.count()).where(*_scope(client, campaign_id)).group_by(t.c.state),
        )
    }
    states: dict[str, int] = {str(s): got.get(s, 0) for s in STATES}
    ocond = [o.c.campaign_id == campaign_id]
    if not client.is_auditor:
        ocond.append(o.c.app_id == client.app)
    outbox = {
        r[0]: int(r[1])
        for r in _rows(state, select(o.c.status, func.count()).where(*ocond).group_by(o.c.status))
    }
    history: list[ProgressPoint] = []
    if client.is_auditor:
        p = cq.progress
        history = [
            ProgressPoint(at=_iso(r.at) or "", operation=r.operation, counts=json.loads(r.counts))
            for r in _rows(state, select(p).where(p.c.campaign_id == campaign_id).order_by(p.c.seq))
        ]
    actionable = sum(states.values()) - states.get("exempt", 0)
    done = sum(states.get(s, 0) for s in _DONE)
    return CampaignStatus(
        campaign=view,
        scope="all apps" if client.is_auditor else client.app,
        targets=sum(states.values()),
        states=states,
        outbox=outbox,
        progress=round(done / actionable, 6) if actionable else 1.0,
        history=history,
    )


def _build_router() -> APIRouter:
    router = APIRouter(prefix="/v1", responses=_ERRORS, tags=["campaigns"])

    @router.get("/campaigns", response_model=list[CampaignView])
    def list_campaigns(client: AnyClient, state: State) -> list[CampaignView]:
        """Campaigns, oldest first (an app key: only those with targets of its app)."""
        _checked(state, client, "campaign list")
        c = cq.campaigns
        query = select(c).order_by(c.c.created_at, c.c.campaign_id)
        if not client.is_auditor:
            query = query.where(
                c.c.campaign_id.in_(select(cq.targets.c.campaign_id).where(*_scope(client)))
            )
        return [
            CampaignView(
                campaign_id=r.campaign_id,
                rule_id=r.rule_id,
                instrument_id=r.instrument_id,
                created_at=_iso(r.created_at) or "",
            )
            for r in _rows(state, query)
        ]

    @router.get("/campaigns/{campaign_id}", response_model=CampaignStatus)
    def get_campaign(campaign_id: str, client: AnyClient, state: State) -> CampaignStatus:
        """Targets per state, notices per delivery status and progress (0..1)."""
        return campaign_status(state, client, campaign_id)

    @router.get("/campaigns/{campaign_id}/subjects", response_model=CampaignSubjectsPage)
    def campaign_subjects(
        campaign_id: str,
        client: AnyClient,
        state: State,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        target_state: Annotated[str | None, Query(alias="state", max_length=32)] = None,
    ) -> CampaignSubjectsPage:
        """The campaign's targets, ordered by (app, subject, provider)."""
        _checked(state, client, "campaign's targets")
        _campaign(state, client, campaign_id)
        t = cq.targets
        cond = _scope(client, campaign_id)
        if target_state is not None:
            cond.append(t.c.state == target_state)
        total = _rows(state, select(func.count()).select_from(t).where(*cond))[0][0]
        rows = _rows(
            state,
            select(t)
            .where(*cond)
            .order_by(t.c.app_id, t.c.subject_id, t.c.provider)
            .limit(limit)
            .offset(offset),
        )
        return CampaignSubjectsPage(
            subjects=[
                CampaignSubject(
                    app_id=r.app_id,
                    subject_id=r.subject_id,
                    provider=r.provider,
                    state=r.state,
                    fields=r.fields,
                    origin_kind=r.origin_kind,
                    exempt_reason=r.exempt_reason,
                    notified_at=_iso(r.notified_at),
                    updated_at=_iso(r.updated_at) or "",
                )
                for r in rows
            ],
            total=int(total),
            offset=offset,
            limit=limit,
        )

    return router


campaigns_api = _build_router()
