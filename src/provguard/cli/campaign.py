"""``provguard campaign ...``: start, dispatch, rescan and follow a remediation campaign."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import pyarrow.compute as pc
import typer

from provguard.adapters.campaign_sqlite import JsonlMailbox, SqlCampaignStore
from provguard.adapters.platform_files import read_platform
from provguard.campaign import TokenBucket, dispatch, select_targets
from provguard.cli.common import DEFAULT_POLICY_DIR, console, user_errors
from provguard.errors import InputError
from provguard.policy import load_policy_dir
from provguard.similarity.pictures import hash_picture_table
from provguard.similarity.scan import scan_profiles

campaign_app = typer.Typer(
    name="campaign",
    help="Remediation campaigns (notify, track, rescan).",
    no_args_is_help=True,
    add_completion=False,
)

StoreOpt = Annotated[Path, typer.Option("--store", help="Campaign store (SQLite file).")]
IdOpt = Annotated[str, typer.Option("--campaign", help="Campaign id.")]
AtOpt = Annotated[str | None, typer.Option("--at", help="ISO time (default: now, UTC).")]


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--at: not an ISO time: {text}") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _scan(platform: Path):  # type: ignore[no-untyped-def]
    plat = read_platform(platform)
    hashes = hash_picture_table(plat.pictures)
    return plat, scan_profiles(plat.app_profiles, plat.provider_profiles, hashes)


def _status(store: SqlCampaignStore, campaign: str) -> None:
    counts = store.counts(campaign)
    console.print(" ".join(f"{k}={v}" for k, v in counts.items()))


@campaign_app.command("start")
def start(
    rule: Annotated[str, typer.Option(help="The rule to enforce (its id).")],
    store: StoreOpt,
    platform: Annotated[Path, typer.Option(help="Platform export folder (Parquet tables).")],
    campaign: IdOpt = "default",
    policy_dir: Annotated[Path, typer.Option(help="Policy folder.")] = DEFAULT_POLICY_DIR,
    at: AtOpt = None,
    recorded_only: Annotated[bool, typer.Option(help="Leave out inferred copies.")] = False,
    verified_names: Annotated[
        bool, typer.Option(help="Use the platform's legal names for the real-name exemption.")
    ] = True,
) -> None:
    """Select the profiles RULE forbids and queue a notice for each (idempotent)."""
    with user_errors():
        when = _at(at)
        policy = load_policy_dir(policy_dir)
        plat, scan = _scan(platform)
        names = None
        if verified_names:
            s = plat.subjects
            names = dict(
                zip(
                    s.column("subject_id").to_pylist(),
                    s.column("real_name").to_pylist(),
                    strict=True,
                )
            )
        inst, found = select_targets(
            scan,
            plat.app_profiles,
            policy,
            rule,
            when,
            real_names=names,
            recorded_only=recorded_only,
        )
        db = SqlCampaignStore(store)
        added = db.start(campaign, rule, inst, found, when)
        console.print(
            f"campaign {campaign} ({rule}): added {added['added']}, already {added['already']}"
        )
        _status(db, campaign)


@campaign_app.command("dispatch")
def dispatch_cmd(
    store: StoreOpt,
    mailbox: Annotated[Path, typer.Option(help="JSONL mailbox the notices go to.")],
    campaign: IdOpt = "default",
    rate: Annotated[float, typer.Option(help="Notices per second.")] = 50.0,
    max_messages: Annotated[int, typer.Option(help="At most this many notices.")] = 10_000,
) -> None:
    """Deliver due notices from the outbox (retried, rate-limited)."""
    with user_errors():
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        r = dispatch(
            db,
            campaign,
            JsonlMailbox(mailbox),
            now=lambda: datetime.now(UTC),
            limiter=TokenBucket(rate, max(1, int(rate))),
            max_messages=max_messages,
        )
        console.print(f"sent {r.sent}, failed {r.failed}, gave up {r.dead}")
        _status(db, campaign)


@campaign_app.command("rescan")
def rescan(
    store: StoreOpt,
    platform: Annotated[Path, typer.Option(help="Platform export folder (Parquet tables).")],
    campaign: IdOpt = "default",
    at: AtOpt = None,
    ignore_after_days: Annotated[int, typer.Option(help="Days before ignored/escalated.")] = 7,
) -> None:
    """Scan again; changed profiles leave the campaign, persistent copies are ignored/escalated."""
    with user_errors():
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        _, scan = _scan(platform)
        hits = scan.filter(pc.field("copy_match")).select(["app_id", "subject_id", "provider"])
        still = {(r["app_id"], r["subject_id"], r["provider"]) for r in hits.to_pylist()}
        moved = db.apply_rescan(
            campaign, still, _at(at), ignore_after=timedelta(days=ignore_after_days)
        )
        console.print(" ".join(f"{k}: {v}" for k, v in sorted(moved.items())) or "no change")
        _status(db, campaign)


@campaign_app.command("status")
def status(store: StoreOpt, campaign: IdOpt = "default") -> None:
    """Progress over time: state counts after every operation."""
    with user_errors():
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        for when, op, counts in db.history(campaign):
            console.print(
                f"{when.isoformat()} {op:9} " + " ".join(f"{k}={v}" for k, v in counts.items())
            )
        console.print(
            "outbox: " + " ".join(f"{k}={v}" for k, v in sorted(db.outbox_counts(campaign).items()))
        )


@campaign_app.command("history")
def history(
    store: StoreOpt,
    subject: Annotated[int, typer.Option(help="The data subject's id.")],
    app: Annotated[str, typer.Option(help="The client app.")],
    provider: Annotated[str, typer.Option(help="The provider whose copy matched.")],
    campaign: IdOpt = "default",
) -> None:
    """Every state change of one target (app, subject, provider), oldest first."""
    with user_errors():
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        rows = db.events(campaign, (app, subject, provider))
        if not rows:
            raise InputError(f"no target ({app}, {subject}, {provider}) in campaign '{campaign}'")
        for e in rows:
            console.print(
                f"{e['at'].isoformat()} {e['from_state'] or '-':9} -> {e['to_state']:9} "
                f"{e['note'] or ''}"
            )
