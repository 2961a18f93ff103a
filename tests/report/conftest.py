"""A filled report model shaped like the 2019 Douyin/Duoshan injunction run."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

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
