"""Friend recommendations for one app under the policy, and without it.

Signals (each with the provenance of what it is computed from):
- ``common_neighbours``: friends of friends on the app's own follow graph (origin: the app);
- ``handle_similarity[user_input]``: shared surname-like handle key among friends-of-friends,
  computed from handles the users typed themselves (origin ``user_input``);
- ``handle_similarity[platform]``: the extra pairs that only handles received from a provider
  add (origins: those providers plus ``user_input``).
Every signal goes through the decision point (action ``derive``, purpose
``social.friend_recommendation``) before scoring; the policy removes what it denies. Each card
then shows the candidate's handle and picture only if the decision point permits ``use`` of
them for friend recommendation; otherwise the app's placeholder.

Quality protocol: a random 10 % edge hold-out (seeded), top-k on the training graph, Recall@k,
MRR and coverage on the held-out edges. On ego-Facebook a random split flatters friends of friends
(almost every held-out edge closes a triangle), so absolute figures are optimistic; the difference
between the two policies is the point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from provguard.decide import DecisionPoint, Request
from provguard.job.decisions import DecisionRecorder
from provguard.job.display import PLACEHOLDER_AVATAR, placeholder_handle
from provguard.provenance import OriginRegistry
from provguard.recommend.evaluate import coverage, holdout_split, mrr, recall_at_k
from provguard.recommend.graph import adjacency
from provguard.recommend.rank import GateResult, Recommendations, allow_all, recommend
from provguard.recommend.signals import (
    Signal,
    common_neighbours,
    handle_similarity,
    two_hop_candidates,
)
from provguard.similarity.handles import normalize_handles

PURPOSE = "social.friend_recommendation"

CARD_SCHEMA = pa.schema(
    [
        ("viewer", pa.int64()),
        ("rank", pa.int32()),
        ("candidate", pa.int64()),
        ("score", pa.float64()),
        ("shown_handle", pa.string()),
        ("shown_avatar_key", pa.string()),
        ("handle_decision", pa.string()),
        ("avatar_decision", pa.string()),
    ]
)


@dataclass(frozen=True)
class QualityRow:
    metric: str
    without_policy: float
    with_policy: float


@dataclass(frozen=True)
class RecommendationResult:
    cards: pa.Table  # CARD_SCHEMA, with the policy
    quality: list[QualityRow]
    signals_used: tuple[str, ...]
    signals_removed: list[GateResult]
    removed_names: tuple[str, ...]
    removed_pairs: tuple[int, ...]  # candidate pairs each removed signal would have scored
    test_edges: int
    users: int


def build_signals(
    adj: sp.csr_matrix,
    app: str,
    handles: list[str | None],
    handle_origins: list[frozenset[str]],
) -> list[Signal]:
    """The signals of the module docstring, on adjacency ``adj`` ((n, n) CSR)."""
    cn = common_neighbours(adj, origins=frozenset({app}))
    mask = two_hop_candidates(adj)
    normalized = normalize_handles(handles).to_pylist()
    typed = [
        h if o == {"user_input"} else None for h, o in zip(normalized, handle_origins, strict=True)
    ]
    hs_user = handle_similarity(
        mask,
        typed,
        frozenset({"user_input"}),
        name="handle_similarity[user_input]",
        weight=0.5,
        mask_origins=frozenset({app}),
    )
    platform_origins = frozenset().union(*handle_origins) if handle_origins else frozenset()
    hs_all = handle_similarity(
        mask, normalized, platform_origins, weight=0.5, mask_origins=frozenset({app})
    )
    extra = sp.csr_matrix(hs_all.scores - hs_user.scores)
    extra.eliminate_zeros()
    hs_platform = Signal("handle_similarity[platform]", hs_all.category, hs_all.origins, 0.5, extra)
    return [cn, hs_user, hs_platform]


def policy_gate(
    pdp: DecisionPoint,
    app: str,
    at: datetime,
    recorder: DecisionRecorder,
    stage: str = "recommendation_signal",
) -> Callable[[Signal], GateResult]:
    """A gate asking the PDP whether a signal may be derived for friend recommendation."""

    def gate(signal: Signal) -> GateResult:
        d = pdp.decide(
            Request(
                app=app,
                action="derive",
                category=signal.category,
                origins=signal.origins,
                at=at,
                purpose=PURPOSE,
            )
        )
        recorder.record(d, stage, {"signal": signal.name})
        return GateResult(
            d.allowed,
            d.explain(),
            tuple(r.rule_id for r in d.determining if d.effect == "deny"),
            tuple(r.instrument_id for r in d.determining if d.effect == "deny"),
        )

    return gate


def _profile_columns(
    profiles: pa.Table, n: int, registry: OriginRegistry
) -> tuple[
    list[str | None], list[frozenset[str]], list[str | None], list[frozenset[str]], list[str]
]:
    handles: list[str | None] = [None] * n
    h_origins: list[frozenset[str]] = [frozenset()] * n
    avatars: list[str | None] = [None] * n
    a_origins: list[frozenset[str]] = [frozenset()] * n
    accounts: list[str] = [""] * n
    for row in profiles.to_pylist():
        i = row["subject_id"]
        if 0 <= i < n:
            handles[i] = row["handle"]
            h_origins[i] = registry.names_of(row["handle_origins"])
            avatars[i] = row["avatar_key"]
            a_origins[i] = registry.names_of(row["avatar_origins"])
            accounts[i] = row["account_id"]
    return handles, h_origins, avatars, a_origins, accounts


def run_recommendations(
    src: np.ndarray,
    dst: np.ndarray,
    profiles: pa.Table,
    registry: OriginRegistry,
    pdp: DecisionPoint,
    at: datetime,
    recorder: DecisionRecorder,
    *,
    app: str = "douyin",
    k: int = 10,
    holdout: float = 0.1,
    seed: int = 7,
) -> RecommendationResult:
    """Evaluate with and without the policy on a hold-out split, then build every user's cards on
    the full graph under the policy. ``src``/``dst``: (m,) int64 undirected edges of the app graph;
    ``profiles``: the app's labelled profiles (:mod:`.ingest` schema)."""
    n = int(max(src.max(initial=-1), dst.max(initial=-1)) + 1)
    handles, h_origins, avatars, a_origins, accounts = _profile_columns(profiles, n, registry)

    train_src, train_dst, test_src, test_dst = holdout_split(src, dst, holdout, seed)
    train = adjacency(train_src, train_dst, n)
    test = (test_src, test_dst)
    eval_signals = build_signals(train, app, handles, h_origins)
    # the evaluation's gate decisions are audited too, under their own stage
    runs: dict[str, Recommendations] = {
        "without": recommend(train, eval_signals, allow_all, k),
        "with": recommend(
            train, eval_signals, policy_gate(pdp, app, at, recorder, "recommendation_evaluation"), k
        ),
    }
    quality = [
        QualityRow(
            f"Recall@{k}", recall_at_k(runs["without"], test, k), recall_at_k(runs["with"], test, k)
        ),
        QualityRow(f"MRR@{k}", mrr(runs["without"], test, k), mrr(runs["with"], test, k)),
        QualityRow("coverage", coverage(runs["without"]), coverage(runs["with"])),
    ]

    full = adjacency(src, dst, n)
    signals = build_signals(full, app, handles, h_origins)
    final = recommend(full, signals, policy_gate(pdp, app, at, recorder), k)
    nnz = {s.name: int(s.scores.nnz) for s in signals}
    cards = _cards(final, handles, h_origins, avatars, a_origins, accounts, pdp, app, at, recorder)
    return RecommendationResult(
        cards=cards,
        quality=quality,
        signals_used=final.used,
        signals_removed=[final.gate_results[name] for name in final.removed],
        removed_names=final.removed,
        removed_pairs=tuple(nnz[name] for name in final.removed),
        test_edges=len(test_src),
        users=n,
    )


def _cards(
    recs: Recommendations,
    handles: list[str | None],
    h_origins: list[frozenset[str]],
    avatars: list[str | None],
    a_origins: list[frozenset[str]],
    accounts: list[str],
    pdp: DecisionPoint,
    app: str,
    at: datetime,
    recorder: DecisionRecorder,
) -> pa.Table:
    out: dict[str, list[object]] = {name: [] for name in CARD_SCHEMA.names}
    for viewer in range(recs.n_users):
        for rank in range(recs.k):
            cand = int(recs.candidates[viewer, rank])
            if cand < 0:
                break
            effects = []
            for category, origins in (
                ("user.name.nickname", h_origins[cand]),
                ("user.avatar", a_origins[cand]),
            ):
                d = pdp.decide(
                    Request(
                        app=app,
                        action="use",
                        category=category,
                        origins=origins or frozenset({"unknown"}),
                        at=at,
                        purpose=PURPOSE,
                    )
                )
                recorder.record(
                    d,
                    "recommendation_card",
                    {"viewer": viewer, "candidate": cand, "field": category},
                )
                effects.append(d.effect)
            handle = handles[cand]
            out["viewer"].append(viewer)
            out["rank"].append(rank + 1)
            out["candidate"].append(cand)
            out["score"].append(float(recs.scores[viewer, rank]))
            out["shown_handle"].append(
                handle
                if effects[0] != "deny" and handle is not None
                else placeholder_handle(app, accounts[cand] or str(cand))
            )
            out["shown_avatar_key"].append(
                avatars[cand] if effects[1] != "deny" and avatars[cand] else PLACEHOLDER_AVATAR
            )
            out["handle_decision"].append(effects[0])
            out["avatar_decision"].append(effects[1])
    return pa.table(out, schema=CARD_SCHEMA)
