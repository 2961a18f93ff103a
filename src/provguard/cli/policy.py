"""``provguard decide`` and ``provguard policy ...``."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from provguard.cli.common import DEFAULT_POLICY_DIR, console, handles_errors
from provguard.decide import Request, decide
from provguard.errors import RequestError
from provguard.policy import load_policy_dir

policy_app = typer.Typer(help="Check and inspect policy bundles.", no_args_is_help=True)

PolicyOpt = Annotated[
    Path, typer.Option("--policy", "-p", help="Policy bundle file or folder of *.yaml bundles.")
]


def _parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        t = datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(f"not an ISO-8601 date or time: '{value}'") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@handles_errors
def decide_cmd(
    app: Annotated[str, typer.Option(help="Client app asking (douyin, duoshan, ...).")],
    action: Annotated[str, typer.Option(help="use, transfer, derive, store or display.")],
    category: Annotated[str, typer.Option(help="Data category, e.g. user.avatar.")],
    origin: Annotated[list[str], typer.Option(help="Origin(s) in the value's provenance label.")],
    purpose: Annotated[
        str | None, typer.Option(help="Purpose, e.g. social.friend_recommendation.")
    ] = None,
    recipient: Annotated[str | None, typer.Option(help="Receiving app of a transfer.")] = None,
    at: Annotated[
        str | None, typer.Option(help="Evaluate at this date/time (default: now).")
    ] = None,
    first_used_at: Annotated[
        str | None, typer.Option(help="When the recipient first used the grant (transfers).")
    ] = None,
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Decide one request and say why."""
    ps = load_policy_dir(policy)
    req = Request(
        app=app,
        action=action,
        category=category,
        origins=frozenset(origin),
        at=_parse_time(at),
        purpose=purpose,
        recipient=recipient,
        grant_first_used_by_recipient_at=_parse_time(first_used_at) if first_used_at else None,
    )
    d = decide(ps, req)
    if as_json:
        import json

        console.print_json(json.dumps(d.as_dict()))
        if d.effect == "deny":
            raise typer.Exit(code=1)
        return
    colour = {"deny": "red", "permit": "green", "not_applicable": "yellow"}[d.effect]
    label = d.effect.upper() + (" (by exception)" if d.excepted else "")
    console.print(f"[bold {colour}]{label}[/]")
    if not d.reasons:
        console.print("no rule in force matches this request")
    for r in d.reasons:
        inst = ps.instrument(r.instrument_id)
        console.print(f"  rule [bold]{r.rule_id}[/] ({r.outcome} {r.effect})", highlight=False)
        console.print(
            f"    instrument: {inst.id} - {inst.issuer}, {inst.validity_text()}", highlight=False
        )
        console.print(f"    why: {r.explanation}", highlight=False)
    if d.effect == "deny":
        raise typer.Exit(code=1)


@policy_app.command("check")
@handles_errors
def check_cmd(policy: PolicyOpt = DEFAULT_POLICY_DIR) -> None:
    """Load and check bundles; print every error with file:line:col."""
    ps = load_policy_dir(policy)
    table = Table("instrument", "kind", "validity", "rules")
    for b in ps.bundles:
        table.add_row(
            b.instrument.id, b.instrument.kind, b.instrument.validity_text(), str(len(b.rules))
        )
    console.print(table)
    console.print(
        f"[green]ok[/]: {len(ps.bundles)} bundle(s), "
        f"{sum(len(b.rules) for b in ps.bundles)} rule(s)"
    )


@policy_app.command("show")
@handles_errors
def show_cmd(policy: PolicyOpt = DEFAULT_POLICY_DIR) -> None:
    """List every rule with its target and location."""
    ps = load_policy_dir(policy)
    table = Table("rule", "instrument", "summary", "at")
    for inst, rule in ps.rules():
        table.add_row(rule.id, inst.id, rule.summary(), rule.location or "")
    console.print(table)
