"""``provguard run``: the 2019 injunction's whole story on the sandbox platform.

Stages (each reported to ``progress``): load the policy; read the graph; build the sandbox
platform; ingest with provenance labels into the stores; audit every grant transfer; decide
profile display; recommend friends with and without the policy; scan profiles against the
provider's copy; append every decision to the hash-chained audit log and verify it; write the
report. Returns a :class:`RunResult` with everything the report and the tests read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from provguard.adapters.graph_files import read_edge_list
from provguard.adapters.platform_files import write_platform
from provguard.audit.chain import VerifyResult
from provguard.clock import Clock
from provguard.config import RunSettings
from provguard.decide import DecisionPoint
from provguard.grants import TokenCipher
from provguard.job.campaign import CampaignResult, run_campaign
from provguard.job.decisions import DecisionRecorder
from provguard.job.display import decide_display
from provguard.job.grants import GrantsStageResult, run_grants_stage
from provguard.job.ingest import label_profiles
from provguard.job.recommendations import RecommendationResult, run_recommendations
from provguard.job.scan import ScanSummary, hash_pictures, run_scan
from provguard.job.transfers import audit_transfers
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import default_registry
from provguard.sandbox import Platform, build_platform
from provguard.wiring import Workspace, open_workspace

Progress = Callable[[str], None]

STAGES = (
    "load policy",
    "read graph",
    "build sandbox platform",
    "ingest with provenance",
    "audit grant transfers",
    "sign in, exchange and revoke grants",
    "decide profile display",
    "recommend friends",
    "scan profiles",
    "run remediation campaign",
    "write audit log",
    "write report",
)


@dataclass
class RunResult:
    settings: RunSettings
    policy: PolicySet
    platform: Platform
    labelled: pa.Table
    transfers: pa.Table
    display: pa.Table
    recommendations: RecommendationResult
    scan: pa.Table
    scan_summaries: list[ScanSummary]
    campaign: CampaignResult
    decision_counts: list[dict[str, object]]
    audit_appended: int
    verify: VerifyResult
    grants: GrantsStageResult | None = None
    graph_stats: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run_main_job(
    settings: RunSettings,
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> RunResult:
    """Run every stage; see the module docstring. Raises the stage's :class:`ProvguardError`."""
    import time

    step = progress or (lambda _name: None)
    timings: dict[str, float] = {}

    # the audit log is stamped by ``clock`` (real time by default); decisions use settings.as_of
    step("load policy")
    policy = load_policy_dir(settings.policy)
    recorder = DecisionRecorder()
    at: datetime = settings.as_of

    step("read graph")
    t0 = time.perf_counter()
    graph = read_edge_list(settings.graph)
    timings["read graph"] = time.perf_counter() - t0

    step("build sandbox platform")
    t0 = time.perf_counter()
    platform = build_platform(graph, seed=settings.seed)
    timings["build sandbox platform"] = time.perf_counter() - t0

    step("ingest with provenance")
    t0 = time.perf_counter()
    ws: Workspace = open_workspace(settings.out, clock)
    try:
        # instrument events recorded in this folder's control store (provguard instrument event)
        policy = policy.with_events(ws.control.events())
        pdp = DecisionPoint(policy)
        registry = default_registry()
        write_platform(platform, ws.platform_dir)
        ws.control.save_bundles(policy.bundles)
        ws.control.save_grants(platform.grants)
        labelled = label_profiles(platform.app_profiles, platform.grants, registry)
        ws.data.write_table("profiles", labelled)
        ws.data.write_table("edges", platform.edges)
        timings["ingest with provenance"] = time.perf_counter() - t0

        step("audit grant transfers")
        t0 = time.perf_counter()
        transfers = audit_transfers(platform.transfers, pdp, at, recorder)
        ws.data.write_table("transfer_audit", transfers)
        ws.control.save_transfers(
            transfers.select(
                [
                    "transfer_id",
                    "grant_id",
                    "subject_id",
                    "provider",
                    "from_app",
                    "to_app",
                    "first_used_at",
                    "decision",
                    "rule_id",
                    "excepted",
                ]
            )
        )
        timings["audit grant transfers"] = time.perf_counter() - t0

        # the injunction's transfer rule over real HTTP: sign-ins on the sandbox platform,
        # duoshan's RFC 8693 token exchanges, revocations and the purge cascade
        step("sign in, exchange and revoke grants")
        t0 = time.perf_counter()
        grants_stage = run_grants_stage(
            platform,
            pdp,
            at,
            ws.root / "grants.db",
            seed=settings.seed,
            cipher=TokenCipher.from_env_or_file(ws.root / "token.key"),
        )
        timings["sign in, exchange and revoke grants"] = time.perf_counter() - t0

        step("decide profile display")
        t0 = time.perf_counter()
        display = decide_display(labelled, pdp, registry, at, recorder)
        ws.data.write_table("profile_display", display)
        timings["decide profile display"] = time.perf_counter() - t0

        step("recommend friends")
        t0 = time.perf_counter()
        src = platform.edges.column("src").to_numpy()
        dst = platform.edges.column("dst").to_numpy()
        app_profiles = labelled.filter(pc.equal(labelled.column("app_id"), settings.app))
        recs = run_recommendations(
            np.asarray(src, dtype=np.int64),
            np.asarray(dst, dtype=np.int64),
            app_profiles,
            registry,
            pdp,
            at,
            recorder,
            app=settings.app,
            k=settings.k,
            holdout=settings.holdout,
            seed=settings.seed,
            subjects=platform.subjects,
            pictures=platform.pictures,
        )
        ws.data.write_table("recommendations", recs.cards)
        timings["recommend friends"] = time.perf_counter() - t0

        step("scan profiles")
        t0 = time.perf_counter()
        hashes = hash_pictures(platform.pictures)
        ws.data.write_table("picture_hashes", hashes)
        scan, summaries = run_scan(platform.app_profiles, platform.provider_profiles, hashes)
        ws.data.write_table("profile_scan", scan)
        timings["scan profiles"] = time.perf_counter() - t0

        step("run remediation campaign")
        t0 = time.perf_counter()
        campaign, targets = run_campaign(
            scan,
            platform.app_profiles,
            platform.subjects,
            policy,
            at,
            ws.root / "control.db",
            ws.root / "outbox.jsonl",
        )
        ws.data.write_table(
            "campaign_targets",
            pa.Table.from_pylist([t.__dict__ for t in targets])
            if targets
            else pa.table({"subject_id": pa.array([], pa.int64())}),
        )
        timings["run remediation campaign"] = time.perf_counter() - t0

        step("write audit log")
        t0 = time.perf_counter()
        entries = recorder.drain()
        entries.extend(grants_stage.audit_entries)
        entries.append(("campaign", {k: v for k, v in campaign.__dict__.items()}))
        ws.audit.append_many(entries)
        verify = ws.audit.verify()
        timings["write audit log"] = time.perf_counter() - t0

        result = RunResult(
            settings=settings,
            policy=policy,
            platform=platform,
            labelled=labelled,
            transfers=transfers,
            display=display,
            recommendations=recs,
            scan=scan,
            scan_summaries=summaries,
            campaign=campaign,
            decision_counts=recorder.count_rows(),
            audit_appended=len(entries),
            verify=verify,
            grants=grants_stage,
            graph_stats={
                "nodes": graph.num_nodes,
                "edges": graph.num_edges,
                "dropped_self_loops": graph.dropped_self_loops,
                "dropped_duplicates": graph.dropped_duplicates,
            },
            timings=timings,
        )

        step("write report")
        t0 = time.perf_counter()
        from provguard.job.report import write_run_report

        write_run_report(result, ws)
        timings["write report"] = time.perf_counter() - t0
        return result
    finally:
        ws.close()
