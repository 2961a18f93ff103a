"""``provguard run``: the main job, with progress and a summary."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from provguard.cli.common import console, handles_errors
from provguard.config import DEFAULT_GRAPH, DEFAULT_POLICY, RunSettings
from provguard.errors import InputError
from provguard.job.run import STAGES, RunResult, run_main_job


@handles_errors
def run_cmd(
    out: Annotated[Path, typer.Option(help="Output folder (created if missing).")] = Path(
        "out/demo"
    ),
    graph: Annotated[
        Path, typer.Option(help="Edge list of the platform's social graph.")
    ] = DEFAULT_GRAPH,
    policy: Annotated[
        Path, typer.Option("--policy", "-p", help="Policy bundle file or folder.")
    ] = DEFAULT_POLICY,
    seed: Annotated[int, typer.Option(help="Sandbox seed.", min=0)] = 7,
    as_of: Annotated[
        str, typer.Option(help="Evaluate the policy at this date (YYYY-MM-DD).")
    ] = "2019-06-30",
    k: Annotated[int, typer.Option(help="Recommendations per user.", min=1, max=100)] = 10,
    platform: Annotated[
        Path | None,
        typer.Option(
            help="Platform export folder (one Parquet file per table, as `provguard sandbox"
            " build` writes it) to run on instead of building the sandbox on --graph."
        ),
    ] = None,
    store_masks: Annotated[
        bool,
        typer.Option(
            "--store-masks/--no-store-masks",
            help="After writing profiles, normalise its labels and store the masks of every"
            " (app, purpose) pair the policy serves (default), so policy-aware queries read"
            " them instead of masking per row; --no-store-masks keeps raw labels and no masks.",
        ),
    ] = True,
) -> None:
    """Build the sandbox platform on a real graph (or read a platform export) and run the
    injunction's whole story."""
    from provguard.cli.policy import _parse_time

    at: datetime = _parse_time(as_of).astimezone(UTC)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a folder")
    if platform is not None and not platform.is_dir():
        raise InputError(f"--platform {platform} is not a folder (a platform export)")
    settings = RunSettings(
        out=out,
        graph=graph,
        policy=policy,
        seed=seed,
        as_of=at,
        k=k,
        platform=platform,
        store_masks=store_masks,
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("starting", total=len(STAGES))
        seen: list[str] = []

        def progress(stage: str) -> None:
            if seen:
                bar.advance(task)
            seen.append(stage)
            bar.update(task, description=stage)

        result = run_main_job(settings, progress)
        bar.advance(task)
        bar.update(task, description="done")
    _summary(result)


def _summary(r: RunResult) -> None:
    table = Table(title="decisions per rule", show_lines=False)
    for col in ("rule", "app", "purpose", "action", "effect", "count"):
        table.add_column(col, justify="right" if col == "count" else "left", overflow="fold")
    for row in r.decision_counts:
        if row["effect"] == "not_applicable":
            continue
        table.add_row(
            *(
                str(row[c] or "-")
                for c in ("rule_id", "app", "purpose", "action", "effect", "count")
            )
        )
    console.print(table)
    t = r.transfers
    denied = sum(1 for d in t.column("decision").to_pylist() if d == "deny")
    grandfathered = sum(1 for e in t.column("excepted").to_pylist() if e)
    console.print(
        f"transfers douyin -> duoshan: {t.num_rows} "
        f"(denied {denied}, grandfathered {grandfathered})"
    )
    if r.grants is not None:
        g = r.grants
        console.print(
            f"grants over HTTP: {g.signed_in} signed in; duoshan token exchanges denied "
            f"{g.exchanges_denied}, permitted {g.exchanges_permitted} "
            f"(grandfathered {g.exchanges_grandfathered}); {g.revoked} revoked at the platform, "
            f"{g.values_purged} values and {g.derived_purged} derived values purged; "
            f"nothing remains: {g.nothing_remains}"
        )
    if r.stored_hashes is not None:
        h = r.stored_hashes
        console.print(
            f"keyed hashes stored: {h.table} ({', '.join(h.columns)}),"
            f" HMAC-SHA256 under key fingerprint {h.key_id}"
        )
    if r.stored_masks is not None:
        console.print(f"stored masks: {r.stored_masks.summary()}", highlight=False)
    for q in r.recommendations.quality:
        ci = r.recommendations.interval_of(q.metric)
        console.print(
            f"{q.metric}: without policy {q.without_policy:.4f}, with policy {q.with_policy:.4f}"
            + (f" (change 95 % CI [{ci[0]:+.4f}, {ci[1]:+.4f}])" if ci is not None else "")
        )
    for s in r.scan_summaries:
        console.print(
            f"scan {s.app_id}: {s.copy_match} of {s.compared} profiles copy the provider "
            f"(handle {s.handle_match}, picture {s.picture_match}); "
            f"sandbox ground truth: {s.truth_either} copies "
            f"(handle {s.truth_handle_copies}, picture {s.truth_picture_copies})"
        )
    c = r.campaign
    picked = (
        f" ({c.selected} selected by this run, {c.added} new)"
        if c.selected is not None and c.selected != c.targets
        else ""
    )
    console.print(
        f"campaign {c.campaign_id}: {c.targets} targets{picked}, {c.exempt} exempt (real name),"
        f" {c.notified} notified now; states {c.states}"
    )
    status = "intact" if r.verify.ok else f"BROKEN at #{r.verify.first_bad_seq}: {r.verify.reason}"
    console.print(
        f"audit log: {r.audit_appended} entries appended (the policy record, decisions, grant"
        f" events and the campaign record), chain {status}"
    )
    if r.checkpoint is not None:
        cp = r.checkpoint
        console.print(
            f"signed checkpoints: {r.checkpoints_signed} (Ed25519, key {cp.key_id}); newest at "
            f"entry {cp.count}, head {cp.head_hash[:16]}…: "
            f"{r.settings.out / 'checkpoint.json'} with public key {r.settings.out / 'audit.pub'}"
        )
    if r.policy_entry_seq is not None:
        console.print(f"policy enforced: recorded in audit entry #{r.policy_entry_seq}")
    console.print(f"report: {r.settings.out / 'report.html'}")
    if r.report_anchor is not None:
        a = r.report_anchor
        console.print(
            f"report anchored: job.report entry #{a.seq} (digests of report.html, evidence.json,"
            f" the scan and the cards), checkpoint signed at entry {a.checkpoint.count} ->"
            f" {r.settings.out / 'checkpoint.json'}"
        )
