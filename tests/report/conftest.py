"""A filled report model shaped like the 2019 Douyin/Duoshan injunction run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from provguard.report.model import (
    AuditSummary,
    DataSource,
    DecisionCount,
    InstrumentView,
    MetricRow,
    RecommendationSummary,
    RemovedSignal,
    ReportModel,
    RuleView,
    ScanRow,
    TransferSample,
    TransferSummary,
)

R1 = "no-platform-profile-in-friend-recommendation"
R2 = "no-login-grant-transfer"
R3 = "duoshan-no-platform-profile"


def sample_model(**overrides: object) -> ReportModel:
    fields: dict[str, object] = {
        "title": "Compliance report — Douyin / Duoshan use of WeChat and QQ profile data",
        "generated_at": datetime(2019, 4, 2, 9, 15, tzinfo=UTC),
        "as_of": date(2019, 4, 1),
        "operator": "Data-governance team",
        "data_source": DataSource(
            graph_name="SNAP ego-Facebook (sandbox profiles)",
            citation="J. McAuley and J. Leskovec. Learning to Discover Social Circles in Ego "
            "Networks. NIPS, 2012.",
            description="Synthetic handles, pictures and grants generated with seed 2019.",
            nodes=4039,
            edges=88234,
        ),
        "instruments": (
            InstrumentView(
                id="cn-tj-binhai-2019-douyin-duoshan",
                kind="court_order.preliminary_injunction",
                issuer="Tianjin Binhai New Area People's Court",
                citation="(2019) 津0116 行保 1号 — preliminary injunction (conduct preservation)",
                issued=date(2019, 3, 20),
                effective_from=date(2019, 3, 20),
                effective_until="until the final judgment",
                in_force=True,
                rules=(
                    RuleView(
                        rule_id=R1,
                        effect="deny",
                        summary="Douyin may not use WeChat/QQ "
                        "handles or profile pictures when recommending friends.",
                    ),
                    RuleView(
                        rule_id=R2,
                        effect="deny",
                        summary="Douyin may not pass its "
                        "WeChat/QQ login grant to any other app (accounts used before "
                        "the order excepted).",
                    ),
                    RuleView(
                        rule_id=R3,
                        effect="deny",
                        summary="Duoshan may not use, derive "
                        "or display WeChat/QQ handles or pictures obtained through Douyin.",
                    ),
                ),
            ),
        ),
        "decision_counts": (
            DecisionCount(
                rule_id=R1,
                app="douyin",
                purpose="social.friend_recommendation",
                action="use",
                effect="deny",
                count=61_200,
            ),
            DecisionCount(
                rule_id=R1,
                app="douyin",
                purpose="social.friend_recommendation",
                action="derive",
                effect="deny",
                count=20_400,
            ),
            DecisionCount(
                rule_id=R2,
                app="douyin",
                purpose="account.login",
                action="transfer",
                effect="deny",
                count=1_530,
            ),
            DecisionCount(
                rule_id=R3,
                app="duoshan",
                purpose="profile.display",
                action="display",
                effect="deny",
                count=10_200,
            ),
            DecisionCount(
                rule_id=None,
                app="douyin",
                purpose="profile.display",
                action="display",
                effect="not_applicable",
                count=30_600,
            ),
            DecisionCount(
                rule_id="allow-user-input",
                app="douyin",
                purpose="social.friend_recommendation",
                action="use",
                effect="permit",
                count=5_100,
            ),
        ),
        "transfers": TransferSummary(
            total=4_039,
            denied=1_530,
            grandfathered_permitted=412,
            not_applicable=2_097,
            sample=(
                TransferSample(
                    transfer_id="tr-000017",
                    subject="u17 <script>alert(1)</script>",
                    recipient="duoshan",
                    first_used_at=datetime(2019, 1, 15, 10, 0, tzinfo=UTC),
                    decision="permit",
                    rule=R2,
                ),
                TransferSample(
                    transfer_id="tr-000018",
                    subject="u18 小明✨",
                    recipient="duoshan",
                    first_used_at=None,
                    decision="deny",
                    rule=R2,
                ),
                TransferSample(
                    transfer_id="tr-000019",
                    subject="u19",
                    recipient="douyin",
                    first_used_at=None,
                    decision="not_applicable",
                    rule=None,
                ),
            ),
        ),
        "scan": (
            ScanRow(
                app="duoshan",
                profiles_scanned=4_039,
                handle_exact=611,
                handle_normalised=803,
                picture=702,
                either=1_190,
                truth_handle=842,
                truth_picture=730,
                truth_either=1_243,
            ),
            ScanRow(
                app="douyin",
                profiles_scanned=4_039,
                handle_exact=1_020,
                handle_normalised=1_288,
                picture=1_105,
                either=1_801,
            ),
        ),
        "recommendations": RecommendationSummary(
            users=4_039,
            recs_per_user=10,
            metrics=(
                MetricRow(name="precision@10", value_without=0.412, value_with=0.371),
                MetricRow(name="recall@10", value_without=0.287, value_with=0.251),
                MetricRow(name="nDCG@10", value_without=0.503, value_with=0.466),
            ),
            removed_signals=(
                RemovedSignal(signal="handle similarity", count=61_200, rule_id=R1),
                RemovedSignal(signal="avatar embedding similarity", count=20_400, rule_id=R1),
            ),
        ),
        "audit": AuditSummary(
            entries=129_030,
            head_hash="3d1b5c3a636b13397ae2fe984e8462dae80a012bb3c38e4071207ae29c77b59b",
            verify_ok=True,
            log_path="out/audit.db",
        ),
        "notes": (
            "Profiles, handles, pictures and grants are synthetic; "
            "only the friendship graph is real.",
            "Picture matching uses PDQ perceptual hashes; heavy crops can evade it.",
        ),
    }
    fields.update(overrides)
    return ReportModel.model_validate(fields)


@pytest.fixture
def model() -> ReportModel:
    return sample_model()


@pytest.fixture
def make_model() -> Callable[..., ReportModel]:
    """``sample_model`` with fields overridden by keyword."""
    return sample_model


# ------------------------------------------------------------------ a small real output folder


def build_small_store(root: Path, policy_dir: Path) -> dict[str, object]:
    """An output folder like ``provguard run`` writes, small: the real injunction bundle in the
    control store, 6 grants (4 douyin, 2 duoshan), 3 transfers, and decisions made by the real
    PDP appended to the audit log. Returns the expected figures."""
    from collections import Counter

    import pyarrow as pa

    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.control_sqlite import SqlControlStore
    from provguard.audit.records import decision_payload
    from provguard.clock import FixedClock
    from provguard.decide import Request, decide
    from provguard.policy import load_policy_dir

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    policy = load_policy_dir(policy_dir)
    control = SqlControlStore(root / "control.db")
    control.save_bundles(policy.bundles)
    t0 = datetime(2019, 3, 1, tzinfo=UTC)
    control.save_grants(
        pa.table(
            {
                "grant_id": [f"grt_{i}" for i in range(6)],
                "subject_id": list(range(6)),
                "provider": ["wechat", "qq", "wechat", "qq", "wechat", "qq"],
                "app_id": ["douyin"] * 4 + ["duoshan"] * 2,
                "openid": [f"o{i}" for i in range(6)],
                "unionid": [f"u{i}" for i in range(6)],
                "scopes": ["snsapi_userinfo"] * 6,
                "granted_at": [t0] * 6,
                "status": ["active"] * 5 + ["revoked"],
            }
        )
    )
    at = datetime(2019, 6, 30, tzinfo=UTC)
    entries = []
    counts: Counter[str] = Counter()
    transfers = []
    for i, first_used in enumerate(
        [datetime(2019, 2, 1, tzinfo=UTC), datetime(2019, 5, 1, tzinfo=UTC), None]
    ):
        d = decide(
            policy,
            Request(
                app="douyin",
                action="transfer",
                category="grant.login",
                origins=frozenset({"wechat"}),
                at=at,
                recipient="duoshan",
                grant_first_used_by_recipient_at=first_used or at,
            ),
        )
        # the job's transfer-audit payload: the context names the transfer, so the report's
        # cross-check finds each row's chained decision (provguard.audit.crosscheck)
        context = {"grant_id": f"grt_{i}", "subject_id": i, "transfer_id": f"trf_{i}"}
        entries.append(("decision", decision_payload(d, stage="transfer_audit", context=context)))
        counts[d.effect] += 1
        transfers.append(
            {
                "transfer_id": f"trf_{i}",
                "grant_id": f"grt_{i}",
                "subject_id": i,
                "provider": "wechat",
                "from_app": "douyin",
                "to_app": "duoshan",
                "first_used_at": first_used or at,
                "decision": d.effect,
                "rule_id": d.determining[0].rule_id if d.determining else None,
                "excepted": int(d.excepted),
            }
        )
    control.save_transfers(pa.Table.from_pylist(transfers))
    for i in range(20):
        origin = "wechat" if i % 2 == 0 else "user_input"
        d = decide(
            policy,
            Request(
                app="douyin",
                action="use",
                category="user.avatar",
                origins=frozenset({origin}),
                at=at,
                purpose="social.friend_recommendation",
            ),
        )
        entries.append(("decision", decision_payload(d, stage="recommend", context={"i": i})))
        counts[d.effect] += 1
    clock = FixedClock(datetime(2024, 1, 1, 12, 0, tzinfo=UTC))
    log = SqliteAuditLog(root / "control.db", clock=clock)
    for kind, payload in entries:
        log.append(kind, payload)
        clock.advance(7)
    log.append("note", {"text": "not a decision"})
    log.close()
    control.engine.dispose()
    return {"counts": dict(counts), "decisions": len(entries), "entries": len(entries) + 1}


@pytest.fixture
def small_store(tmp_path: Path, repo_root: Path) -> tuple[Path, dict[str, object]]:
    root = tmp_path / "out"
    return root, build_small_store(root, repo_root / "policies")


# ---------------------------------------------------------------- revocations and a campaign

T0 = datetime(2019, 7, 1, 9, 0, tzinfo=UTC)
CAMPAIGN = "duoshan-no-platform-profile@2019-06-30"


def add_revocations(root: Path) -> dict[str, str]:
    from provguard.adapters.grant_store import SqlGrantStore
    from provguard.clock import FixedClock
    from provguard.grants.crypto import TokenCipher, generate_key
    from provguard.grants.model import GrantRecord, IssuedToken
    from provguard.grants.revocation import RevocationCascade

    """grants.db with three revoked grants: purged on time, purged late, still quarantined.
    Returns {grant id: expected state label}."""
    clock = FixedClock(T0)
    store = SqlGrantStore(root / "grants.db", TokenCipher(generate_key()))
    for i in range(3):
        g = GrantRecord(f"g{i}", "wechat", "douyin", f"o{i}", f"u{i}", "snsapi_userinfo", T0)
        store.record_login(
            g, [IssuedToken("app_session", f"tok-{i}", T0 + timedelta(days=1))], [], T0
        )
    cascade = RevocationCascade(store, clock=clock, purge_within=timedelta(days=15))
    on_time = cascade.revoke("g0", reason="authorization_revoked", source="wechat.notification")
    late = cascade.revoke("g1", reason="client_revoked", source="rfc7009")
    cascade.revoke("g2", reason="account_deleted", source="wechat.notification")
    clock.advance(3 * 86400)
    cascade.purge(on_time)
    clock.advance(20 * 86400)  # past g1's deadline (15 days after T0)
    cascade.purge(late)
    store.close()
    return {"g0": "on time", "g1": "late", "g2": "quarantined"}


def add_campaign(root: Path) -> None:
    from provguard.adapters.campaign_sqlite import SqlCampaignStore
    from provguard.campaign.model import Target

    db = SqlCampaignStore(root / "control.db")
    targets = [
        Target("duoshan", i, "wechat", "handle,avatar", "recorded", 1.0, None) for i in range(6)
    ] + [Target("duoshan", 9, "qq", "handle", "recorded", 1.0, "chinese_name")]
    db.start(CAMPAIGN, "duoshan-no-platform-profile", "x-instrument", targets, T0)
    still = [("duoshan", i, "wechat") for i in range(2, 6)]
    db.apply_rescan(CAMPAIGN, still, T0 + timedelta(days=7), ignore_after=timedelta(days=30))
    still = [("duoshan", i, "wechat") for i in range(4, 6)]
    db.apply_rescan(CAMPAIGN, still, T0 + timedelta(days=14), ignore_after=timedelta(days=30))
    db.engine.dispose()


# ------------------------------------------------------- the grants stage of the job, small

_STAGE_CACHE: dict[str, Any] = {}


def run_small_grants_stage(cache: Path) -> tuple[Path, Any]:
    """The main job's grants stage (:func:`provguard.job.grants.run_grants_stage`, 16 sign-ins
    over HTTP on loopback, duoshan's 16 token exchanges, 4 revocations) on a sandbox platform
    built from the first 400 lines of the real ego-Facebook graph; run once per process.
    Returns ``(grants.db path, GrantsStageResult)``; copy the file before changing it."""
    if "db" not in _STAGE_CACHE:
        from provguard.adapters.graph_files import read_edge_list
        from provguard.decide import DecisionPoint
        from provguard.job.grants import run_grants_stage
        from provguard.policy import load_policy_dir
        from provguard.sandbox import build_platform

        repo = Path(__file__).resolve().parents[2]
        lines = (repo / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
        cache.mkdir(parents=True, exist_ok=True)
        graph = cache / "ego-facebook-400.txt"
        graph.write_text("\n".join(lines[:400]) + "\n")
        platform = build_platform(read_edge_list(graph), seed=7)
        pdp = DecisionPoint(load_policy_dir(repo / "policies"))
        db = cache / "grants.db"
        result = run_grants_stage(
            platform, pdp, datetime(2019, 6, 30, tzinfo=UTC), db, sample=16, revoke=4
        )
        _STAGE_CACHE["db"], _STAGE_CACHE["result"] = db, result
    return _STAGE_CACHE["db"], _STAGE_CACHE["result"]


@pytest.fixture(scope="session")
def grants_stage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """:func:`run_small_grants_stage` as a session fixture."""
    return run_small_grants_stage(tmp_path_factory.mktemp("grants-stage"))


def copy_registry(src: Path, dst: Path) -> Path:
    """Copy the SQLite grant registry ``src`` to ``dst`` with SQLite's backup API (WAL
    included); returns ``dst``."""
    import sqlite3

    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()
    return dst
