"""``provguard decide``, ``provguard policy ...`` and ``provguard instrument ...``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from provguard.cli.common import (
    DEFAULT_POLICY_DIR,
    console,
    err_console,
    handles_errors,
    parse_day,
    parse_instant,
)
from provguard.decide import Request, decide
from provguard.decide.analysis import (
    AXES,
    CONTEXT_AXES,
    DiffResult,
    can,
    diff,
    explain_rules,
    lint,
)
from provguard.decide.model import AttrValue
from provguard.errors import InputError, RequestError
from provguard.policy import PolicySet, load_policy_dir, load_policy_dirs
from provguard.policy.model import EventEnd, day_start, day_text
from provguard.taxonomy import Taxonomies

policy_app = typer.Typer(help="Check, compare and query policy bundles.", no_args_is_help=True)
instrument_app = typer.Typer(help="Record instrument events (final judgment, ...).")

PolicyOpt = Annotated[
    Path, typer.Option("--policy", "-p", help="Policy bundle file or folder of *.yaml bundles.")
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Control store (SQLite file) whose recorded events apply."),
]


def _parse_time(value: str | None, option: str = "--at") -> datetime:
    """``--at`` and the grant times: see :func:`provguard.cli.common.parse_instant` (naive
    date-times are refused, as by the HTTP API); None = now."""
    if value is None:
        return datetime.now(UTC)
    return parse_instant(value, option)


def _attr(text: str) -> tuple[str, AttrValue]:
    """``KEY=VALUE`` with VALUE typed: true/false, integer, number, ISO date, else text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise RequestError(f"expected KEY=VALUE, got '{text}'")
    value: AttrValue
    if raw in ("true", "false"):
        value = raw == "true"
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                try:
                    value = date.fromisoformat(raw)
                except ValueError:
                    value = raw
    return key, value


def load_policy_with_events(
    policy: Path, store: Path | None, *, require_recorded: bool = True
) -> PolicySet:
    """The policy folder with the instrument events recorded in the control store ``store``
    applied (e.g. a final judgment that ends an injunction). Raises
    :class:`~provguard.errors.InputError` when ``store`` does not exist, and the loader's
    errors."""
    ps = load_policy_dir(policy)
    if store is not None:
        from provguard.adapters.control_sqlite import SqlControlStore
        from provguard.policy.required import require_instruments

        cs = SqlControlStore(_existing(store))
        if require_recorded:  # the store's instruments bind its decisions (InputError PG100)
            require_instruments(ps, cs.instrument_ids(), store=str(store))
        ps = ps.with_events(cs.events())
    return ps


def _existing(store: Path) -> Path:
    """A control store must exist: a mistyped path must not silently create an empty one."""
    if not store.is_file():
        raise InputError(f"no control store at {store} (the output folder's control.db)")
    return store


AnyAppOpt = Annotated[
    bool,
    typer.Option(
        "--any-app",
        help="Accept an --app that no loaded bundle names (by default that is an error, since a "
        "misspelt app would silently be not_applicable).",
    ),
]


def _check_apps(ps: PolicySet, app: str, recipient: str | None, any_app: bool) -> None:
    """An --app no bundle declares (``known_apps``) or names is an error unless ``any_app``; an
    unknown --recipient is a warning (asking about a transfer to an app no rule names is normal).
    Nothing is checked when no bundle says anything about apps."""
    known = ps.known_apps()
    if not known:
        return
    import difflib

    def hint(name: str) -> str:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        return f"; hint: did you mean '{close[0]}'?" if close else ""

    if app not in known and not any_app:
        raise InputError(
            f"unknown app '{app}': no loaded bundle names it (known: {', '.join(sorted(known))})"
            f"{hint(app)}; pass --any-app to decide for an app no rule names"
        )
    if recipient is not None and recipient not in known:
        err_console.print(
            f"[yellow]warning[/] recipient '{escape(recipient)}' is not named by any loaded "
            f"bundle (known: {escape(', '.join(sorted(known)))}){escape(hint(recipient))}",
            highlight=False,
            soft_wrap=True,
        )


def _request(
    app: str,
    action: str,
    category: str,
    origin: list[str],
    purpose: str | None,
    recipient: str | None,
    controller: str | None,
    at: str | None,
    first_used_at: str | None,
    granted_at: str | None,
    grant_status: str | None,
    context: list[str] | None,
    subject: list[str] | None,
    taxonomy: Taxonomies | None = None,
) -> Request:
    return Request(
        app=app,
        action=action,
        category=category,
        origins=frozenset(origin),
        at=_parse_time(at),
        purpose=purpose,
        recipient=recipient,
        controller=controller,
        grant_first_used_by_recipient_at=(
            _parse_time(first_used_at, "--first-used-at") if first_used_at else None
        ),
        grant_granted_at=_parse_time(granted_at, "--granted-at") if granted_at else None,
        grant_status=grant_status,
        context=dict(_attr(c) for c in context or ()),
        subject=dict(_attr(s) for s in subject or ()),
        taxonomy=taxonomy,
        grant_facts="asserted",  # the caller's word: checked (first use within grant..at)
    )


AppOpt = Annotated[str, typer.Option(help="Client app asking (douyin, duoshan, ...).")]
ActionOpt = Annotated[str, typer.Option(help="use, transfer, derive, store or display.")]
CategoryOpt = Annotated[
    str,
    typer.Option(
        help="Data category, e.g. user.avatar. A broader category (user.name) is denied by "
        "every deny on a narrower one (user.name.nickname)."
    ),
]
OriginOpt = Annotated[list[str], typer.Option(help="Origin(s) in the value's provenance label.")]
PurposeOpt = Annotated[
    str | None,
    typer.Option(
        help="Purpose, e.g. social.friend_recommendation. A broader purpose (social) is denied "
        "by every deny on a narrower one."
    ),
]
RecipientOpt = Annotated[str | None, typer.Option(help="Receiving app of a transfer.")]
ControllerOpt = Annotated[str | None, typer.Option(help="Controller (handler) of the app.")]
AtOpt = Annotated[str | None, typer.Option(help="Evaluate at this date/time (default: now).")]
FirstUsedOpt = Annotated[
    str | None, typer.Option(help="When the recipient first used the grant (transfers).")
]
GrantedOpt = Annotated[str | None, typer.Option(help="When the grant was given.")]
StatusOpt = Annotated[str | None, typer.Option(help="Grant status: active, revoked, expired.")]
ContextOpt = Annotated[
    list[str] | None, typer.Option(help="Request context KEY=VALUE (repeatable).")
]
SubjectOpt = Annotated[
    list[str] | None, typer.Option(help="Data-subject attribute KEY=VALUE (repeatable).")
]


@handles_errors
def decide_cmd(
    app: AppOpt,
    action: ActionOpt,
    category: CategoryOpt,
    origin: OriginOpt,
    purpose: PurposeOpt = None,
    recipient: RecipientOpt = None,
    at: AtOpt = None,
    first_used_at: FirstUsedOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
    controller: ControllerOpt = None,
    granted_at: GrantedOpt = None,
    grant_status: StatusOpt = None,
    context: ContextOpt = None,
    subject: SubjectOpt = None,
    store: StoreOpt = None,
    any_app: AnyAppOpt = False,
) -> None:
    """Decide one request and say why.

    Exit codes:

    0 - permit or not_applicable (an enforcement point proceeds)

    1 - deny

    2 - bad input: unknown taxonomy key, origin or app, malformed policy (printed with its code)
    """
    ps = load_policy_with_events(policy, store)
    _check_apps(ps, app, recipient, any_app)
    req = _request(
        app, action, category, origin, purpose, recipient, controller, at, first_used_at,
        granted_at, grant_status, context, subject, ps.taxonomy,
    )  # fmt: skip
    d = decide(ps, req)
    if as_json:
        console.print_json(json.dumps(d.as_dict()))
        if d.effect == "deny":
            raise typer.Exit(code=1)
        return
    colour = {"deny": "red", "permit": "green", "not_applicable": "yellow"}[d.effect]
    label = d.effect.upper() + (" (by exception)" if d.excepted else "")
    console.print(f"[bold {colour}]{label}[/]")
    if not d.reasons:
        console.print("no rule in force matches this request")
    for r in (*d.reasons, *d.shadow):
        inst = ps.instrument(r.instrument_id)
        console.print(f"  rule [bold]{r.rule_id}[/] ({r.outcome} {r.effect})", highlight=False)
        console.print(
            f"    instrument: {inst.id} - {inst.issuer}, {inst.validity_text()}", highlight=False
        )
        console.print(f"    why: {r.explanation}", highlight=False)
    for o in d.obligations:
        console.print(f"  obligation: {json.dumps(o.as_dict())}", highlight=False)
    if d.effect == "deny":
        raise typer.Exit(code=1)


@policy_app.command("check")
@handles_errors
def check_cmd(
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    store: StoreOpt = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when a rule can never fire.")] = False,
) -> None:
    """Load and check bundles: every error with file:line:col and a hint; rules that never fire."""
    ps = load_policy_with_events(policy, store)
    table = Table("instrument", "kind", "validity", "default", "rules")
    for b in ps.bundles:
        table.add_row(
            b.instrument.id,
            b.instrument.kind,
            b.instrument.validity_text(),
            b.default,
            str(len(b.rules)),
        )
    console.print(table)
    findings = lint(ps)
    for f in findings:
        where = f"{f.location}: " if f.location else ""
        rule = f" rule '{f.rule_id}'" if f.rule_id else ""
        console.print(
            f"[yellow]warning[/] {escape(where)}{f.kind}: {f.instrument_id}{rule}: "
            f"{escape(f.message)}; hint: {escape(f.hint)}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"[green]ok[/]: {len(ps.bundles)} bundle(s), "
        f"{sum(len(b.rules) for b in ps.bundles)} rule(s), {len(findings)} warning(s)"
    )
    if strict and findings:
        raise typer.Exit(code=1)


@policy_app.command("digest")
@handles_errors
def digest_cmd(
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the entry's payload.")] = False,
) -> None:
    """Print a policy's digest, each file's SHA-256 and each rule's enforced scope.

    The same values a run's job.policy audit entry records: compare them with the report's
    section 1 (or `provguard audit show --kind job.policy`) to tell which bundle a run
    enforced."""
    from provguard.job.run import policy_entry

    _, payload = policy_entry(load_policy_dir(policy), policy)
    if as_json:
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return
    console.print(f"policy digest: {payload['policy_digest']}", highlight=False)
    files = payload["files"]
    assert isinstance(files, dict)
    for name, sha in files.items():
        console.print(f"  {sha}  {escape(str(name))}", highlight=False, soft_wrap=True)
    rules = payload["rules"]
    assert isinstance(rules, list)
    for r in rules:
        console.print(
            f"  {r['instrument']}/{r['id']}: {escape(str(r['scope']))}",
            highlight=False,
            soft_wrap=True,
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


def _diff_columns(result: DiffResult) -> list[str]:
    cols = ["from", "action", "purpose", "category", "app", "controller", "recipient", "origins"]
    # context columns, when some condition reads them (they are enumerated too)
    return cols + [a for a in CONTEXT_AXES if result.axis_size(a) > 1]


def _diff_entries(
    result: DiffResult, full: bool, outcome_only: bool
) -> list[tuple[dict[str, str], str, str, bool, int]]:
    """(values per column, before, after, rule_only, classes) per row to print."""
    cols = _diff_columns(result)
    out: list[tuple[dict[str, str], str, str, bool, int]] = []
    if full:
        rows = sorted(
            result.rows,
            key=lambda r: r.verdicts is not None and r.verdicts[0].same_outcome(r.verdicts[1]),
        )
        for r in rows:
            assert r.verdicts is not None
            rule_only = r.verdicts[0].same_outcome(r.verdicts[1])
            mark = " *" if r.context_dependent else ""
            shown = {c: r.request[c] for c in cols}
            out.append((shown, r.before, r.after + mark, rule_only, 1))
    else:
        for g in result.compact():
            mark = " *" if g.context_dependent else ""
            shown = {c: result.show(c, g.values[AXES.index(c)], g.values) for c in cols}
            out.append((shown, g.before.text(), g.after.text() + mark, g.rule_only, g.count))
    return [e for e in out if not (outcome_only and e[3])]


def render_diff(
    result: DiffResult,
    out: Console,
    *,
    full: bool = False,
    wide: bool = False,
    outcome_only: bool = False,
) -> None:
    """Print ``result`` on ``out``: a table when it fits the console's width (or ``wide``),
    else one block per row showing only the columns that are not ``any``, so that it reads at
    80 columns. Rows whose outcome changes come first; rows with the same outcome (effect,
    exception, obligations) decided by another rule are listed after them under their own
    heading ("same outcome, different rule")."""
    cols = _diff_columns(result)
    entries = _diff_entries(result, full, outcome_only)
    table = Table(*cols, "before", "after", "kind", *([] if full else ["classes"]))
    for shown, before, after, rule_only, count in entries:
        table.add_row(
            *(escape(shown[c]) for c in cols),
            escape(before),
            escape(after),
            "same outcome, other rule" if rule_only else "outcome",
            *([] if full else [f"{count:,}"]),
        )
    # the table's natural width (every cell on one line), not the width Rich would squeeze it to
    natural = Measurement.get(out, out.options.update_width(1 << 16), table).maximum
    fits = natural <= out.width
    if wide or fits:
        out.print(table)
    else:
        heading: bool | None = None
        for n, (shown, before, after, rule_only, count) in enumerate(entries, start=1):
            if heading is not rule_only:
                heading = rule_only
                title = (
                    "Same outcome, different rule"
                    if rule_only
                    else "Outcome changes (effect, exception or obligations)"
                )
                out.print(f"[bold underline]{title}[/]", highlight=False)
            classes = "" if full else f"  ({count:,} class{'es' if count != 1 else ''})"
            out.print(
                f"[bold]{n}.[/] {escape(before)} [bold]->[/] {escape(after)}{classes}",
                highlight=False,
            )
            grid = Table.grid(padding=(0, 1))
            grid.add_column(width=2)
            grid.add_column(no_wrap=True, style="dim")
            grid.add_column(overflow="fold")
            for c in cols:
                if shown[c] != "any":
                    grid.add_row("", c, escape(shown[c]))
            out.print(grid)
    why = result.domain.why_inexact if result.domain is not None else []
    note = f" (not exact: {'; '.join(why)})" if why else " (exact)"
    out.print(
        f"{result.changed:,} changed class(es) of {result.requests_checked:,} checked{note}: "
        f"{result.changed_outcome:,} change their outcome, {result.changed_rule_only:,} have "
        "the same outcome from a different rule"
        + (" (not listed: --outcome-only)" if outcome_only else "")
        + "; (+n) = n more equivalent values; any = every value of the column"
        + (
            "; * = a rule reading context that was evaluated absent took part"
            if any(c[3] for c in result.cubes)
            else ""
        ),
        highlight=False,
    )


def _describe_set(paths: list[Path], ps: PolicySet) -> str:
    names = " + ".join(str(p) for p in paths)
    ids = ", ".join(b.instrument.id for b in ps.bundles)
    return f"{names} ({len(ps.bundles)} bundle(s): {ids})"


@policy_app.command("diff")
@handles_errors
def diff_cmd(
    before: Annotated[Path, typer.Argument(help="BEFORE: a bundle file or folder.")],
    after: Annotated[
        list[Path] | None,
        typer.Argument(
            help="AFTER: one or more bundle files or folders, loaded together as one set. "
            "Omit it with --plus (AFTER is then BEFORE plus those bundles)."
        ),
    ] = None,
    plus: Annotated[
        list[Path] | None,
        typer.Option(
            "--plus",
            help="What changes if I ADD these bundles: AFTER = (AFTER or BEFORE) + these. "
            "Repeatable.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print rows as JSON.")] = False,
    full: Annotated[
        bool, typer.Option("--full", help="One row per request class instead of merged groups.")
    ] = False,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Always print one wide table (default: a table when it "
            "fits the terminal, else one block per row).",
        ),
    ] = False,
    outcome_only: Annotated[
        bool,
        typer.Option(
            "--outcome-only",
            help="Leave out rows with the same outcome decided by a different rule.",
        ),
    ] = False,
) -> None:
    """Every class of requests whose decision changes from BEFORE to AFTER (exact, not sampled).

    `diff A B` compares A with B as a replacement (B alone). To see what changes when you ADD
    bundles to A, give them all as AFTER (`diff policies policies policies/extra`) or use
    `diff policies --plus policies/extra`.

    Classes that change the same way are merged into one row ("any" = every value of that
    column; "classes" = how many request classes the row stands for); --full lists them one by
    one. Rows whose effect, exception or obligations change come first; "same outcome,
    different rule" rows are counted and listed apart.
    """
    after_paths = list(after or [])
    if not after_paths and not plus:
        raise InputError(
            "give AFTER (bundle files or folders) or --plus DIR; e.g. "
            "'provguard policy diff policies --plus policies/extra'"
        )
    after_paths = (after_paths or [before]) + list(plus or [])
    a, b = load_policy_dir(before), load_policy_dirs(after_paths)
    result = diff(a, b)
    if as_json:
        doc = result.as_json(full=full)
        doc["before_bundles"] = [bd.instrument.id for bd in a.bundles]
        doc["after_bundles"] = [bd.instrument.id for bd in b.bundles]
        console.print_json(json.dumps(doc))
        return
    console.print(f"[bold]before[/]: {escape(_describe_set([before], a))}", highlight=False)
    console.print(f"[bold]after[/]:  {escape(_describe_set(after_paths, b))}", highlight=False)
    ids_a = {bd.instrument.id for bd in a.bundles}
    if not ids_a & {bd.instrument.id for bd in b.bundles}:
        err_console.print(
            "[yellow]note[/] AFTER contains none of BEFORE's instruments, so this compares "
            "them as replacements. To see what changes when you ADD bundles, run "
            f"'provguard policy diff {escape(str(before))} --plus "
            f"{escape(' '.join(str(p) for p in after_paths))}'",
            highlight=False,
        )
    render_diff(result, console, full=full, wide=wide, outcome_only=outcome_only)


@policy_app.command("can")
@handles_errors
def can_cmd(
    app: AppOpt,
    category: CategoryOpt,
    origin: Annotated[str, typer.Option(help="Origin of the value.")],
    purpose: Annotated[str, typer.Option(help="Purpose, e.g. social.friend_recommendation.")],
    action: Annotated[str, typer.Option(help="Action (default use).")] = "use",
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    store: StoreOpt = None,
    any_app: AnyAppOpt = False,
) -> None:
    """Can APP ever ACTION CATEGORY of ORIGIN for PURPOSE? Every period and controller class.

    Exit codes: 0 whatever the answer, 2 for bad input.
    """
    ps = load_policy_with_events(policy, store)
    _check_apps(ps, app, None, any_app)
    rows = can(ps, app=app, category=category, origin=origin, purpose=purpose, action=action)
    table = Table("from", "controller", "recipient", "grant", "context", "decision")
    for r in rows:
        ctx = "; ".join(
            r.request[ax]
            for ax in ("scopes", "subject", "context", "consent")
            if r.request.get(ax, "absent") not in ("absent", "any", "no consent")
        )
        grant = "; ".join(
            f"{name} {r.request[ax]}"
            for name, ax in (
                ("first used", "first_used"),
                ("granted", "granted"),
                ("status", "grant_status"),
            )
            if r.request.get(ax, "absent") != "absent"
        )
        table.add_row(
            r.request["from"],
            escape(r.request["controller"]),
            escape(r.request["recipient"]),
            escape(grant or "-"),
            escape(ctx or "-"),
            escape(r.verdict),
        )
    console.print(table)
    ever = any(r.allowed for r in rows)
    console.print(
        f"[bold]{'yes' if ever else 'never'}[/]: {app} {'can' if ever else 'can never'} "
        f"{action} {category} of origin {origin} for {purpose}"
        + (" (in the periods / controllers / contexts not denied above)" if ever else ""),
        highlight=False,
    )


@policy_app.command("explain")
@handles_errors
def explain_cmd(
    app: AppOpt,
    action: ActionOpt,
    category: CategoryOpt,
    origin: OriginOpt,
    purpose: PurposeOpt = None,
    recipient: RecipientOpt = None,
    controller: ControllerOpt = None,
    at: AtOpt = None,
    first_used_at: FirstUsedOpt = None,
    granted_at: GrantedOpt = None,
    grant_status: StatusOpt = None,
    context: ContextOpt = None,
    subject: SubjectOpt = None,
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    store: StoreOpt = None,
    any_app: AnyAppOpt = False,
) -> None:
    """One decision, with every rule considered and why it did or did not match.

    Exit codes: 0 whatever the decision, 2 for bad input.
    """
    ps = load_policy_with_events(policy, store)
    _check_apps(ps, app, recipient, any_app)
    req = _request(
        app, action, category, origin, purpose, recipient, controller, at, first_used_at,
        granted_at, grant_status, context, subject, ps.taxonomy,
    )  # fmt: skip
    d = decide(ps, req)
    console.print(f"[bold]{d.effect.upper()}[/]" + (" (by exception)" if d.excepted else ""))
    table = Table("instrument", "rule", "effect", "status", "why", "at")
    for t in explain_rules(ps, req):
        table.add_row(
            t.instrument_id, t.rule_id, t.effect, t.status, escape(t.detail), t.location or ""
        )
    console.print(table)


@instrument_app.command("event")
@handles_errors
def event_cmd(
    event: Annotated[str, typer.Argument(help="Event name, e.g. final_judgment.")],
    instrument: Annotated[str, typer.Option(help="Instrument id.")],
    on: Annotated[str, typer.Option("--date", help="Day of the event (YYYY-MM-DD).")],
    store: Annotated[Path, typer.Option(help="Control store (SQLite file) to record into.")],
    policy: PolicyOpt = DEFAULT_POLICY_DIR,
    replace: Annotated[
        bool, typer.Option("--replace", help="Correct an event recorded with another date.")
    ] = False,
) -> None:
    """Record that EVENT happened to an instrument; from that day its rules no longer apply
    (decisions about earlier times still use them)."""
    from provguard.adapters.control_sqlite import SqlControlStore

    ps = load_policy_dir(policy)
    try:
        inst = ps.instrument(instrument)
    except KeyError:
        known = ", ".join(b.instrument.id for b in ps.bundles)
        raise InputError(f"no instrument '{instrument}' in {policy}; known: {known}") from None
    until = inst.effective_until
    if not isinstance(until, EventEnd) or until.event != event:
        raise InputError(
            f"instrument '{instrument}' does not end on event '{event}' "
            f"(its validity: {inst.validity_text()})"
        )
    day = parse_day(on, "--date")
    if day < inst.effective_from:
        raise InputError(
            f"{event} on {day.isoformat()} is before the instrument took effect "
            f"({inst.effective_from.isoformat()})"
        )
    # an event is a fact that happened: a day that has not begun yet where the instrument is
    # in force is refused, as `grants consent` refuses a future consent (fresh user 10, L1)
    if day_start(day, inst.timezone) > datetime.now(UTC):
        raise InputError(
            f"{event} on {day.isoformat()} has not happened yet (the day has not begun in "
            f"{inst.timezone or 'UTC'}): record the event on or after that day"
        )
    cs = SqlControlStore(_existing(store))
    before = cs.events().get((instrument, event))
    if before == day:
        console.print(
            f"already recorded: {event} of {instrument} on {day.isoformat()}; nothing changed",
            highlight=False,
        )
        return
    if before is not None and not replace:
        raise InputError(
            f"{event} of {instrument} is already recorded on {before.isoformat()}; "
            "pass --replace to correct it (the correction is audited)"
        )
    # the control store appends the event's chained ``instrument_event`` entry in the same
    # transaction as the row (and returns it); a store that does not is given the entry here
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.audit.chain import AuditEntry
    from provguard.audit.folder import cover_own_entry

    entry: AuditEntry | None = cs.record_event(instrument, event, day)
    if entry is None:
        with SqliteAuditLog(store) as log:  # instrument events are evidence too
            entry = log.append(
                "instrument_event",
                {
                    "instrument": instrument,
                    "event": event,
                    "date": day.isoformat(),
                    "replaces": before.isoformat() if before else None,
                },
            )
    console.print(
        f"recorded {event} of {instrument} on {day.isoformat()}: its rules apply to times before "
        f"{day_text(day_start(day, inst.timezone))} only",
        highlight=False,
    )
    # sign a checkpoint over this entry only (never over entries someone else appended), so
    # that a store with audit.pub beside it applies the event (SqlControlStore.events)
    with SqliteAuditLog(store, create=False) as log:
        coverage = cover_own_entry(log, store.resolve().parent, entry)
    typer.echo(coverage.message(), err=True)


@instrument_app.command("events")
@handles_errors
def events_cmd(
    store: Annotated[Path, typer.Option(help="Control store (SQLite file).")],
) -> None:
    """List the recorded instrument events."""
    from provguard.adapters.control_sqlite import SqlControlStore

    table = Table("instrument", "event", "date")
    for (iid, ev), day in sorted(SqlControlStore(_existing(store)).events().items()):
        table.add_row(iid, ev, day.isoformat())
    console.print(table)
