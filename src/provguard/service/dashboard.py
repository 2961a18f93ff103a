"""The server-rendered dashboard (Jinja2, autoescaped): the report's figures, live.

``GET /dashboard`` shows what the compliance report shows -- decisions per rule / app / purpose,
decisions over time, transfers, the audit chain's state and newest signed checkpoint -- read from
the stores at each request (the decision tally is incremental), plus the most recent denials.
``GET /dashboard/grants`` shows login grants by app and status, onward transfers and the
revocations and purges of the grant registry; ``GET /dashboard/campaigns`` every remediation
campaign's targets per state, now and over time (chart and table).
A section whose control-store (or grant-registry) table disagrees with the audit chain is
withheld on every page exactly as in the report: the report model's PG340 statement
(:meth:`~provguard.report.model.ChainCheckView.statement`) replaces its figures -- never "No
remediation campaign" / "No transfers recorded" when the table exists but is withheld -- and
the sandbox grants' statuses, which the chain does not record, are marked "not chain-backed"
with section 6's caveat (fresh user 12, M1 / L1 / L2).
It needs an auditor key, given once at the login form (``/dashboard/login``), which opens a
session: a signed session cookie that is not the key (HttpOnly, SameSite=Strict,
Path=/dashboard, 8 h; :mod:`provguard.service.sessions`), accepted by the dashboard routes only
and ended by ``/dashboard/logout``. Pages reload every ``dashboard_refresh`` seconds. No
scripts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from provguard.report.from_store import SIGN_IN_TABLES
from provguard.report.render import (
    _effect_bars,
    _exchange_bars,
    _revocation_bars,
    _sign_in_bars,
    _transfer_bars,
    campaign_chart_svg,
    hbar_chart_svg,
    pivot,
    time_chart_svg,
)
from provguard.service.sessions import LEGACY_KEY_COOKIE, SESSION_COOKIE, DashboardSessions

if TYPE_CHECKING:
    from provguard.report.model import ReportModel
    from provguard.service.app import ServiceState

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


def sessions_of(request: Request) -> DashboardSessions:
    """The app's :class:`DashboardSessions` (``app.state.dashboard_sessions``; created with a
    random secret on first use when the app did not set one)."""
    sessions = getattr(request.app.state, "dashboard_sessions", None)
    if not isinstance(sessions, DashboardSessions):
        sessions = DashboardSessions()
        request.app.state.dashboard_sessions = sessions
    return sessions


def _auditor(request: Request) -> bool:
    from provguard.service.app import state_of

    cookie = request.cookies.get(SESSION_COOKIE)
    return sessions_of(request).client(cookie, state_of(request).keys) is not None


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
    sessions = sessions_of(request)
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        sessions.issue(key),
        max_age=sessions.lifetime,
        path="/dashboard",
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(LEGACY_KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@dashboard.get("/dashboard/logout")
@dashboard.post("/dashboard/logout")
def logout(request: Request) -> Response:
    """End the session: refuse its id from now on, delete the cookie (and an old
    ``provguard_key`` cookie), back to the login form. Answered the same with or without a
    session."""
    sessions_of(request).end(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard", httponly=True, samesite="strict")
    response.delete_cookie(LEGACY_KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _live(
    request: Request, template: str, build: Callable[[ServiceState, ReportModel], dict[str, Any]]
) -> Response:
    """The shape every live page shares: auditors only (else to the login form), the audit
    writer flushed (a decision just made is shown), the report model read from the stores,
    and ``template`` rendered with ``m``, ``refresh`` and what ``build`` adds."""
    from provguard.service.app import state_of

    if not _auditor(request):
        return RedirectResponse("/dashboard/login", status_code=303)
    state = state_of(request)
    if state.writer is not None:
        state.writer.flush(timeout=10.0)
    model = state.report_model()
    return _page(template, m=model, refresh=state.settings.dashboard_refresh, **build(state, model))


def _transfer_chart(model: ReportModel) -> Markup:
    return hbar_chart_svg(_transfer_bars(model), title="Login-grant transfers by outcome")


@dashboard.get("/dashboard")
def overview(request: Request) -> Response:
    """Decisions per rule / app / purpose and over time, transfers, the audit chain, and the
    most recent denials (live)."""

    def build(state: ServiceState, model: ReportModel) -> dict[str, Any]:
        # live monitoring: the latest job run and the service's own decisions together (the
        # court report keeps them apart)
        counts = (*model.decision_counts, *model.service_decision_counts)
        by_rule = pivot(counts, "rule_id")
        return {
            "total_decisions": sum(r.count for r in counts),
            "total_denials": sum(r.count for r in counts if r.effect == "deny"),
            "by_rule": by_rule,
            "by_app": pivot(counts, "app"),
            "by_purpose": pivot(counts, "purpose"),
            "rule_chart": hbar_chart_svg(_effect_bars(by_rule), title="Decisions per rule"),
            "time_chart": time_chart_svg(model.decisions_over_time, title="Decisions over time"),
            "transfer_chart": _transfer_chart(model),
            "denials": state.log.find(kind="decision", payload_equals={"effect": "deny"}, limit=20),
            "writer": state.writer.stats() if state.writer is not None else None,
            "mode": state.writer.mode if state.writer is not None else "off",
        }

    return _live(request, "dashboard.html", build)


@dashboard.get("/dashboard/grants")
def grants_page(request: Request) -> Response:
    """Grants of both stores by app and status, the registry's sign-ins and token exchanges,
    onward transfers, revocations and purges (live)."""

    def build(state: ServiceState, model: ReportModel) -> dict[str, Any]:
        check = model.chain_check
        return {
            "grants": state.grant_views.counts(),
            # section 6's caveat: the sandbox grants table is not chain-backed (finding L2)
            "sandbox_caveat": check.not_in_chain.get("grants", "") if check else "",
            # 3a withheld: the registry tables it is built on that disagree with the chain
            "sign_ins_withheld": [t for t in SIGN_IN_TABLES if check and check.failed(t)],
            "registry": state.grant_views.registry_source,
            "sign_in_chart": hbar_chart_svg(
                _sign_in_bars(model),
                title="Sign-ins by provider and client app (grant status now)",
            ),
            "exchange_chart": hbar_chart_svg(
                _exchange_bars(model), title="Token exchanges by outcome"
            ),
            "transfer_chart": _transfer_chart(model),
            "revocation_chart": hbar_chart_svg(
                _revocation_bars(model), title="Revocation jobs by outcome"
            ),
        }

    return _live(request, "grants.html", build)


@dashboard.get("/dashboard/campaigns")
def campaigns_page(request: Request) -> Response:
    """Every remediation campaign: targets per state now and over time (live)."""

    def build(_state: ServiceState, model: ReportModel) -> dict[str, Any]:
        return {
            "charts": [
                campaign_chart_svg(c, title=f"{c.campaign_id}: targets per state over time")
                for c in (model.campaigns or ())
            ]
        }

    return _live(request, "campaigns.html", build)
