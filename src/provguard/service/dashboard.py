"""The server-rendered dashboard (Jinja2, autoescaped): the report's figures, live.

``GET /dashboard`` shows what the compliance report shows -- decisions per rule / app / purpose,
decisions over time, transfers, the audit chain's state and newest signed checkpoint -- read from
the stores at each request (the decision tally is incremental), plus the most recent denials.
``GET /dashboard/grants`` shows login grants by app and status, onward transfers and the
revocations and purges of the grant registry; ``GET /dashboard/campaigns`` every remediation
campaign's targets per state, now and over time (chart and table).
It needs an auditor key, kept in an HttpOnly, SameSite=Strict cookie set by the login form
(``/dashboard/login``); pages reload every ``dashboard_refresh`` seconds. No scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from provguard.report.render import (
    _effect_bars,
    _revocation_bars,
    _transfer_bars,
    campaign_chart_svg,
    hbar_chart_svg,
    pivot,
    time_chart_svg,
)

__all__ = ["dashboard"]

TEMPLATES = Path(__file__).parent / "templates"
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["num"] = lambda n: f"{n:,}"

dashboard = APIRouter(include_in_schema=False)


def _auditor(request: Request) -> bool:
    from provguard.service.app import state_of

    client = state_of(request).keys.lookup(request.cookies.get("provguard_key"))
    return client is not None and client.is_auditor


def _page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**context), status_code=status)


@dashboard.get("/dashboard/login")
def login_form() -> HTMLResponse:
    return _page("login.html", error="")


@dashboard.post("/dashboard/login")
async def login(request: Request) -> Response:
    from provguard.service.app import state_of

    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0]
    client = state_of(request).keys.lookup(key)
    if client is None or not client.is_auditor:
        return _page("login.html", 401, error="That is not an auditor key.")
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie("provguard_key", key, httponly=True, samesite="strict")
    return response


@dashboard.get("/dashboard")
def overview(request: Request) -> Response:
    from provguard.service.app import state_of

    if not _auditor(request):
        return RedirectResponse("/dashboard/login", status_code=303)
    state = state_of(request)
    if state.writer is not None:
        state.writer.flush(timeout=10.0)
    model = state.report_model()
    by_rule = pivot(model.decision_counts, "rule_id")
    denials = state.log.find(kind="decision", payload_equals={"effect": "deny"}, limit=20)
    writer = state.writer.stats() if state.writer is not None else None
    return _page(
        "dashboard.html",
        m=model,
        refresh=state.settings.dashboard_refresh,
        total_decisions=sum(r.count for r in model.decision_counts),
        total_denials=sum(r.count for r in model.decision_counts if r.effect == "deny"),
        by_rule=by_rule,
        by_app=pivot(model.decision_counts, "app"),
        by_purpose=pivot(model.decision_counts, "purpose"),
        rule_chart=hbar_chart_svg(_effect_bars(by_rule), title="Decisions per rule"),
        time_chart=time_chart_svg(model.decisions_over_time, title="Decisions over time"),
        transfer_chart=hbar_chart_svg(
            _transfer_bars(model), title="Login-grant transfers by outcome"
        ),
        denials=denials,
        writer=writer,
        mode=state.writer.mode if state.writer is not None else "off",
    )


def _grant_counts(state: Any) -> list[dict[str, Any]]:
    """Login grants in the control store by (app, provider, status)."""
    from sqlalchemy import func, select
    from sqlalchemy.exc import SQLAlchemyError

    from provguard.adapters import control_sqlite as cs
    from provguard.errors import StoreError

    g = cs.grants
    try:
        with state.engine.connect() as conn:
            rows = conn.execute(
                select(g.c.app_id, g.c.provider, g.c.status, func.count())
                .group_by(g.c.app_id, g.c.provider, g.c.status)
                .order_by(g.c.app_id, g.c.provider, g.c.status)
            ).all()
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read grants: {exc}") from exc
    return [{"app": r[0], "provider": r[1], "status": r[2], "count": int(r[3])} for r in rows]


@dashboard.get("/dashboard/grants")
def grants_page(request: Request) -> Response:
    """Grants by app and status, onward transfers, revocations and purges (live)."""
    from provguard.service.app import state_of

    if not _auditor(request):
        return RedirectResponse("/dashboard/login", status_code=303)
    state = state_of(request)
    model = state.report_model()
    return _page(
        "grants.html",
        m=model,
        refresh=state.settings.dashboard_refresh,
        grants=_grant_counts(state),
        transfer_chart=hbar_chart_svg(
            _transfer_bars(model), title="Login-grant transfers by outcome"
        ),
        revocation_chart=hbar_chart_svg(
            _revocation_bars(model), title="Revocation jobs by outcome"
        ),
    )


@dashboard.get("/dashboard/campaigns")
def campaigns_page(request: Request) -> Response:
    """Every remediation campaign: targets per state now and over time (live)."""
    from provguard.service.app import state_of

    if not _auditor(request):
        return RedirectResponse("/dashboard/login", status_code=303)
    state = state_of(request)
    model = state.report_model()
    return _page(
        "campaigns.html",
        m=model,
        refresh=state.settings.dashboard_refresh,
        charts=[
            campaign_chart_svg(c, title=f"{c.campaign_id}: targets per state over time")
            for c in (model.campaigns or ())
        ],
    )
