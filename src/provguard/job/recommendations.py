"""The main job's friend-recommendation stage: the documented protocol, then the cards.

1. **Cost of compliance** (:func:`provguard.recommend.protocol.cost_of_compliance`, protocol in
   docs/recommendation.md): a random edge hold-out of the app's follow graph (``holdout``,
   seeded; the learned ranker is fitted on a second hold-out inside the training graph), every
   signal of :func:`~provguard.recommend.protocol.build_signals` -- graph heuristics and
   structural features (origin: the app), handle and picture similarity split by the values'
   provenance labels, imported provider friend lists (the sandbox's model,
   :func:`~provguard.recommend.protocol.sandbox_contacts_for`) -- gated per policy bundle:
   ``none`` (no policy), ``injunction`` (the run's policy) and ``strict`` (the run's policy plus
   :data:`STRICT_VARIANT_YAML`, a fictional internal rule: no WeChat/QQ-origin data of any
   category). Methods: the heuristics alone and the learned ranker. Metrics: Recall@k, MRR and
   Hits@50 (per user, top 50) and coverage, on the queries of ``eval_users`` sampled users
   (all users when ``eval_users`` is None or not smaller than the user count).
2. **Cards**: the learned ranker under the run's policy, fitted on the hold-out (features on the
   training graph, labels = the held-out edges), ranks the friends-of-friends of the full graph;
   each card shows the candidate's handle and picture only if the decision point permits
   ``use`` of them for friend recommendation, else the app's placeholder.

**Inferred origins** (fresh-user finding F1): when ``profiles`` carries the columns of
:func:`provguard.job.display.with_inferred_origins` (the main job adds them from the
profile-match scan, which runs before this stage), a handle or picture the scan flags as a copy
of the provider's value has the provider's origin *in addition to* its recorded label, for the
signals' provenance (a handle/picture similarity pair touching a copied value carries the
provider, so the gate removes it before training and scoring) and for each card field's ``use``
decision (so a re-typed WeChat nickname or a re-uploaded QQ picture is withheld). The cards keep
the two apart: ``handle_inferred_origins`` / ``avatar_inferred_origins`` hold the inferred bits,
``*_decision_origins`` their union with the recorded label, and the audit context of such a
decision names them (``"inferred": [...]``). Without those columns everything is decided on the
recorded labels, as before.

Every decision of the run's policy (each signal's ``derive`` in the evaluation and for the
cards, each card field's ``use``) is recorded for the audit log; the ``none`` and ``strict``
bundles are hypothetical and not audited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import numpy as np
import pyarrow as pa

from provguard.decide import DecisionPoint, Request
from provguard.job.decisions import DecisionRecorder
from provguard.job.display import (
    PLACEHOLDER_AVATAR,
    first_party_mask,
    inferred_context,
    inferred_masks,
    placeholder_handle,
)
from provguard.job.scan import hash_pictures
from provguard.policy import PolicySet
from provguard.policy.loader import load_bundle_text
from provguard.provenance import OriginRegistry
from provguard.recommend.protocol import (
    ComplianceRow,
    Profiles,
    cost_of_compliance,
    paired_bootstrap,
    pool_recall,
    profiles_from_tables,
    random_edge_split,
    sandbox_contacts_for,
    split_views,
    view,
)
from provguard.recommend.rank import GateResult, Recommendations
from provguard.recommend.ranker import LearnedRanker
from provguard.recommend.signals import Signal
from provguard.report.model import (
    ComplianceMetricRow,
    MetricRow,
    RankerMargin,
    RecommendationSummary,
    RemovedSignal,
)

PURPOSE = "social.friend_recommendation"
HEURISTICS = ("common_neighbours", "adamic_adar", "resource_allocation")
HITS_K = 50

STRICT_VARIANT_YAML = """\
instrument:
  id: internal-strict-no-platform-data
  kind: internal_policy
  title: No WeChat/QQ-origin data in friend recommendation (stricter than the 2019 order)
  issuer: provguard evaluation (fictional internal policy)
  issued: 2019-03-20
  effective_from: 2019-03-20
  effective_until: {event: revoked}

rules:
  - id: no-platform-data-in-friend-recommendation
    description: >-
      Douyin uses no value whose provenance includes WeChat or QQ, of any data category, when
      recommending friends.
    effect: deny
    actions: [use, derive]
    purposes: [social.friend_recommendation]
    apps: [douyin]
    data:
      origins: [wechat, qq]
"""
"""The stricter variant measured next to the run's policy (a fictional internal policy, the same
as ``tests/recommend/policies/strict-no-platform-data.yaml``)."""

CARD_SCHEMA = pa.schema(
    [
        ("app_id", pa.string()),
        ("viewer", pa.int64()),
        ("rank", pa.int32()),
        ("candidate", pa.int64()),
        ("score", pa.float64()),
        ("shown_handle", pa.string()),
        ("shown_avatar_key", pa.string()),
        ("handle_decision", pa.string()),
        ("avatar_decision", pa.string()),
        ("shown_handle_origins", pa.uint64()),
        ("shown_avatar_origins", pa.uint64()),
        ("handle_decision_origins", pa.uint64()),
        ("avatar_decision_origins", pa.uint64()),
        ("handle_inferred_origins", pa.uint64()),
        ("avatar_inferred_origins", pa.uint64()),
    ]
)
"""The cards table (``recommendations``). ``app_id`` is the app whose cards they are (the
table's controller column in :func:`provguard.sqlgen.schema.job_schema`: another app's query
reads none of them). ``handle_decision`` / ``avatar_decision`` are the
decision point's answer on ``use`` of the candidate's handle / picture: under the injunction a
``deny`` says exactly that the withheld value came from WeChat or QQ, so each decision is a value
*derived from the original's provenance* and carries the original value's label
(``handle_decision_origins`` / ``avatar_decision_origins``, uint64 origin bitmasks; ``unknown``
for a value without a label) -- never the app's own origin as the placeholder shown instead does.
A schema that names those columns as the decisions' per-row labels (with the original's data
category) makes a query over the decisions checked like one over the withheld values.
``handle_inferred_origins`` / ``avatar_inferred_origins``: the origins the profile-match scan
inferred for the candidate's value beyond its recorded label (0: none; module docstring); they
are included in the decision labels, so the recorded label is
``*_decision_origins & ~*_inferred_origins`` (or ``unknown``)."""


@dataclass(frozen=True)
class QualityRow:
    """One metric of the learned ranker without any policy and under the run's policy."""

    metric: str
    without_policy: float
    with_policy: float


# quality-row name prefix -> the key of protocol.paired_bootstrap's intervals
_INTERVAL_KEYS = {"recall": "recall_at_10", "mrr": "mrr", "hits": "hits_at_50"}


@dataclass(frozen=True)
class RecommendationResult:
    """What the stage produced.

    Attributes:
        cards: :data:`CARD_SCHEMA` table, under the run's policy.
        quality: the learned ranker's metrics, ``none`` vs the run's policy (slice ``all``).
        signals_used: signals the card ranker used.
        signals_removed: the gate's answers for the signals the run's policy removed.
        removed_names: their names.
        removed_pairs: candidate pairs each removed signal would have scored.
        test_edges: held-out edges of the evaluation.
        users: users of the graph.
        compliance: the full cost-of-compliance table (policy x method x slice).
        eval_users: users whose queries were evaluated (sampled or all).
        pool_recall: share of held-out edges inside the friends-of-friends pool (the ceiling).
        protocol: one-paragraph description of the split, pool and sample, for the report.
        policy_intervals: metric attribute (``recall_at_10``, ``mrr``, ``hits_at_50``) ->
            ``(low, high)``, the 95 % paired-bootstrap interval of the learned ranker's metric
            with the run's policy minus without it, over the evaluated users
            (:func:`provguard.recommend.protocol.paired_bootstrap`).
        ranker_weights: policy -> the learned ranker's fusion weight ``beta`` chosen on
            validation users (0: resource allocation's ranking alone; 1: the model's alone).
        inferred_cards: card values with an inferred origin (module docstring), counted per
            field: ``handles`` / ``pictures`` (cards whose candidate's handle / picture has
            one) and ``withheld_handles`` / ``withheld_pictures`` (of those, the ones denied
            only because of it: the same request on the recorded label alone is not denied);
            each also as ``<name>_people`` (e.g. ``withheld_handles_people``): the number of
            distinct people (candidates) whose handle / picture those cards show -- one
            person's copied value is on the cards of every viewer it is recommended to.
    """

    cards: pa.Table
    quality: list[QualityRow]
    signals_used: tuple[str, ...]
    signals_removed: list[GateResult]
    removed_names: tuple[str, ...]
    removed_pairs: tuple[int, ...]
    test_edges: int
    users: int
    compliance: tuple[ComplianceRow, ...] = ()
    eval_users: int = 0
    pool_recall: float = float("nan")
    protocol: str = ""
    policy_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    ranker_weights: dict[str, float] = field(default_factory=dict)
    inferred_cards: dict[str, int] = field(default_factory=dict)

    def interval_of(self, metric: str) -> tuple[float, float] | None:
        """The interval of :attr:`policy_intervals` for a quality row's ``metric`` name
        (``Recall@10``, ``MRR@50``, ``Hits@50``), or None for a metric without one."""
        key = _INTERVAL_KEYS.get(metric.split("@")[0].lower())
        return self.policy_intervals.get(key) if key is not None else None


def strict_variant(policy: PolicySet) -> PolicySet:
    """``policy`` plus the rule of :data:`STRICT_VARIANT_YAML` (events kept)."""
    extra = load_bundle_text(STRICT_VARIANT_YAML, "<strict variant>")
    return PolicySet((*policy.bundles, extra), policy.events)


def policy_gate(
    pdp: DecisionPoint,
    app: str,
    at: datetime,
    recorder: DecisionRecorder,
    stage: str = "recommendation_signal",
) -> Callable[[Signal], GateResult]:
    """A gate asking the PDP whether a signal may be derived for friend recommendation, each
    decision recorded under ``stage`` (context: the signal's name)."""

    def gate(signal: Signal) -> GateResult:
        d = pdp.decide(
            Request(
                app=app,
                action="derive",
                category=signal.category,
                origins=signal.origins or frozenset({"unknown"}),
                at=at,
                purpose=PURPOSE,
            )
        )
        recorder.record(d, stage, {"signal": signal.name})
        deny = d.effect == "deny"
        return GateResult(
            d.allowed,
            d.explain(),
            tuple(r.rule_id for r in d.determining if deny),
            tuple(r.instrument_id for r in d.determining if deny),
        )

    return gate


def labelled_profiles(
    n: int,
    labelled: pa.Table,
    registry: OriginRegistry,
    subjects: pa.Table,
    pictures: pa.Table | None,
    *,
    app: str,
    picture_hashes: pa.Table | None = None,
) -> Profiles:
    """Protocol :class:`Profiles` whose handle and picture origins are the ingested provenance
    labels (``handle_origins`` / ``avatar_origins`` bitmasks decoded with ``registry``), each
    OR-ed with the inferred origins when ``labelled`` has the columns of
    :func:`provguard.job.display.with_inferred_origins`.

    ``labelled``: the app's rows of the :mod:`.ingest` schema; ``subjects``: ``subject_id,
    login``; ``pictures``: ``avatar_key, data`` (PDQ-hashed; None: no picture signal);
    ``picture_hashes``: ``avatar_key, pdq`` already computed (then ``pictures`` is not decoded).

    Raises:
        InputError: a required column is missing.
    """
    sandbox_shaped = labelled.select(["app_id", "subject_id", "handle", "avatar_key"])
    sandbox_shaped = sandbox_shaped.append_column(
        "handle_source", pa.array(["user_input"] * labelled.num_rows, pa.string())
    ).append_column("avatar_source", pa.array(["user_input"] * labelled.num_rows, pa.string()))
    base = profiles_from_tables(
        n, subjects, sandbox_shaped, pictures, app=app, picture_hashes=picture_hashes
    )
    h_or = list(base.handle_origins)
    p_or = list(base.picture_origins)
    inf_h, inf_a = inferred_masks(labelled)
    for sid, app_id, h_mask, a_mask, ih, ia in zip(
        labelled.column("subject_id").to_pylist(),
        labelled.column("app_id").to_pylist(),
        labelled.column("handle_origins").to_pylist(),
        labelled.column("avatar_origins").to_pylist(),
        inf_h,
        inf_a,
        strict=True,
    ):
        if app_id == app and 0 <= sid < n:
            h_or[sid] = registry.names_of((h_mask or 0) | ih)
            p_or[sid] = registry.names_of((a_mask or 0) | ia)
    return replace(base, handle_origins=tuple(h_or), picture_origins=tuple(p_or))


def _metric(rows: Sequence[ComplianceRow], policy: str, attr: str) -> float:
    for r in rows:
        if r.policy == policy and r.method == "learned_ranker" and r.slice == "all":
            return float(getattr(r, attr))
    return float("nan")


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
    subjects: pa.Table | None = None,
    pictures: pa.Table | None = None,
    eval_users: int | None = 1000,
    ranker: str = "logistic",
    picture_hashes: pa.Table | None = None,
) -> RecommendationResult:
    """Cost of compliance on a hold-out, then every user's cards on the full graph under the
    policy (module docstring).

    Args:
        src, dst: ``(m,) int64`` undirected edges of the app's follow graph.
        profiles: the app's labelled profiles (:mod:`.ingest` schema), optionally with the
            inferred-origin columns of :func:`provguard.job.display.with_inferred_origins`
            (module docstring).
        registry: decodes the provenance bitmasks.
        pdp: decision point of the run's policy (``pdp.policy`` is the ``injunction`` bundle).
        at: decision time.
        recorder: receives every decision of the run's policy.
        app, k, holdout, seed: app evaluated, cards per user and Recall@k cut-off, share of
            edges held out (< 0.5), seed of split, contact model and ranker.
        subjects: ``subject_id, login`` (logins feed the provider-contact model); None: no
            imported contacts.
        pictures: ``avatar_key, data``; None: no picture signal.
        eval_users: evaluate the queries of this many users sampled without replacement
            (seeded); None: all users.
        ranker: ``"logistic"`` or ``"hgb"``.
        picture_hashes: ``avatar_key, pdq`` of ``pictures`` if the caller already has them (the
            main job hashes once and gives the same table to the profile-match scan). None:
            ``pictures`` are hashed here with :func:`provguard.job.scan.hash_pictures`; a
            picture table that does not hash as a whole (an undecodable picture) falls back to
            per-picture hashing that skips the bad pictures.

    Raises:
        InputError: bad edges, ``holdout`` outside (0, 0.5), ``k > 50``.
    """
    from provguard.errors import InputError

    if not 1 <= k <= HITS_K:
        raise InputError(f"k must be in 1..{HITS_K} for the evaluation, got {k}")
    s = np.asarray(src, dtype=np.int64)
    d = np.asarray(dst, dtype=np.int64)
    n = int(max(s.max(initial=-1), d.max(initial=-1)) + 1)
    logins = subjects
    if logins is None:
        logins = pa.table(
            {"subject_id": pa.array([], pa.int64()), "login": pa.array([], pa.string())}
        )
    hashes = picture_hashes
    if hashes is None and pictures is not None:
        try:
            hashes = hash_pictures(pictures)
        except InputError:
            hashes = None  # per-picture hashing below skips undecodable pictures
    prof = labelled_profiles(
        n, profiles, registry, logins, pictures, app=app, picture_hashes=hashes
    )
    contacts = {} if subjects is None else sandbox_contacts_for(s, d, prof, keep=0.5, seed=seed)
    split = random_edge_split(
        s, d, n, fraction=holdout, seed=seed, contacts=contacts, name=f"{app}/random"
    )
    train, fit = split_views(split, prof, app=app)
    sample: np.ndarray | None = None
    if eval_users is not None and eval_users < n:
        sample = np.sort(np.random.default_rng(seed).choice(n, eval_users, replace=False))
    policy = pdp.policy
    bundles: dict[str, PolicySet | None] = {
        "none": None,
        "injunction": policy,
        "strict": strict_variant(policy),
    }

    def gate_for(name: str, p: PolicySet) -> Callable[[Signal], GateResult]:
        if name == "injunction":
            return policy_gate(pdp, app, at, recorder, "recommendation_evaluation")
        return policy_gate(DecisionPoint(p), app, at, DecisionRecorder(), "hypothetical")

    kept: dict[tuple[str, str], Recommendations] = {}
    models: dict[str, LearnedRanker] = {}
    rows = cost_of_compliance(
        split,
        prof,
        bundles,
        at=at,
        app=app,
        k=k,
        hits_k=HITS_K,
        heuristics=HEURISTICS,
        ranker=ranker,
        seed=seed,
        gate_for=gate_for,
        query_users=sample,
        views=(train, fit),
        keep_recs=kept,
        keep_models=models,
    )
    # the policy's effect on the ranker with its uncertainty: paired over the same users
    intervals = {
        d.metric: (d.low, d.high)
        for d in paired_bootstrap(
            kept[("injunction", "learned_ranker")],
            kept[("none", "learned_ranker")],
            split.test,
            users=sample,
            k=k,
            hits_k=HITS_K,
            seed=seed,
        )
    }
    quality = [
        QualityRow(label, _metric(rows, "none", attr), _metric(rows, "injunction", attr))
        for label, attr in (
            (f"Recall@{k}", "recall_at_10"),
            (f"MRR@{HITS_K}", "mrr"),
            (f"Hits@{HITS_K}", "hits_at_50"),
            ("user coverage", "coverage"),
            (f"catalogue coverage@{k}", "catalogue_coverage_at_10"),
        )
    ]

    # the cards: the ranker under the run's policy, fitted on the hold-out, on the full graph
    gate = policy_gate(pdp, app, at, recorder)
    full = view(n, (s, d), prof, contacts=contacts, app=app)
    model = LearnedRanker(ranker, seed=seed)  # type: ignore[arg-type]
    model.fit(train.pool, train.signals, gate, split.test)
    final = model.recommend(full.pool, full.signals, gate, k)
    nnz = {sig.name: int(sig.scores.nnz) for sig in full.signals}
    cards, inferred_cards = _cards(final, profiles, n, prof, pdp, app, at, recorder, registry)
    evaluated = n if sample is None else int(sample.size)
    protocol = (
        f"Random {holdout:.0%} edge hold-out of the follow graph (seed {seed}; "
        f"{split.notes['test_edges']:,} held-out edges); ranker fitted on a second hold-out "
        f"inside the training graph; candidates: friends of friends (pool recall "
        f"{pool_recall(split):.3f}); queries of {evaluated:,} of {n:,} users"
        + (" (seeded sample)" if sample is not None else "")
        + "; imported contacts are the sandbox's provider friend-list model (keep 0.5)."
    )
    return RecommendationResult(
        cards=cards,
        quality=quality,
        signals_used=final.used,
        signals_removed=[final.gate_results[name] for name in final.removed],
        removed_names=final.removed,
        removed_pairs=tuple(nnz[name] for name in final.removed),
        test_edges=int(split.notes["test_edges"]),
        users=n,
        compliance=tuple(rows),
        eval_users=evaluated,
        pool_recall=pool_recall(split),
        protocol=protocol,
        policy_intervals=intervals,
        ranker_weights={policy: float(m.beta) for policy, m in models.items()},
        inferred_cards=inferred_cards,
    )


def ranker_margins(rows: Sequence[ComplianceRow], slice_name: str = "all") -> list[RankerMargin]:
    """Per policy: the learned ranker minus the best heuristic (highest Recall@10, then MRR),
    per metric (positive: the ranker is better)."""
    out: list[RankerMargin] = []
    for policy in dict.fromkeys(r.policy for r in rows):
        mine = [r for r in rows if r.policy == policy and r.slice == slice_name]
        ranker = [r for r in mine if r.method == "learned_ranker"]
        heur = [r for r in mine if r.method != "learned_ranker"]
        if not ranker or not heur:
            continue
        best = max(heur, key=lambda r: (r.recall_at_10, r.mrr))
        lr = ranker[0]
        deltas = (
            lr.recall_at_10 - best.recall_at_10,
            lr.mrr - best.mrr,
            lr.hits_at_50 - best.hits_at_50,
            lr.coverage - best.coverage,
            lr.catalogue_coverage_at_10 - best.catalogue_coverage_at_10,
        )
        out.append(
            RankerMargin(
                policy=policy,
                baseline=best.method,
                recall_at_10=deltas[0],
                mrr=deltas[1],
                hits_at_50=deltas[2],
                coverage=deltas[3],
                forbidden_removed=len(lr.signals_removed),
                catalogue_coverage_at_10=_num(deltas[4]),
            )
        )
    return out


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def recommendation_summary(result: RecommendationResult, k: int) -> RecommendationSummary:
    """The report's view of the stage: the ranker's metrics without / with the run's policy,
    the removed signals, the cost-of-compliance table and the ranker's margins."""
    return RecommendationSummary(
        users=result.users,
        recs_per_user=k,
        metrics=tuple(
            MetricRow(name=q.metric, value_without=q.without_policy, value_with=q.with_policy)
            for q in result.quality
        ),
        removed_signals=tuple(
            RemovedSignal(signal=name, count=pairs, rule_id=", ".join(g.rules) or "-")
            for name, g, pairs in zip(
                result.removed_names, result.signals_removed, result.removed_pairs, strict=True
            )
        ),
        compliance=tuple(
            ComplianceMetricRow(
                policy=r.policy,
                method=r.method,
                slice=r.slice,
                recall_at_10=_num(r.recall_at_10),
                mrr=_num(r.mrr),
                hits_at_50=_num(r.hits_at_50),
                coverage=_num(r.coverage),
                catalogue_coverage_at_10=_num(r.catalogue_coverage_at_10),
                queries=r.queries,
                users=r.users,
                signals_removed=len(r.signals_removed),
            )
            for r in result.compliance
        ),
        margins=tuple(ranker_margins(result.compliance)),
        protocol=result.protocol,
    )


def _cards(
    recs: Recommendations,
    labelled: pa.Table,
    n: int,
    prof: Profiles,
    pdp: DecisionPoint,
    app: str,
    at: datetime,
    recorder: DecisionRecorder,
    registry: OriginRegistry,
) -> tuple[pa.Table, dict[str, int]]:
    """The cards table (:data:`CARD_SCHEMA`) and the inferred-origin counts of
    :attr:`RecommendationResult.inferred_cards`."""
    own = first_party_mask(registry, app)
    counts = {"handles": 0, "pictures": 0, "withheld_handles": 0, "withheld_pictures": 0}
    # the distinct people (candidates) behind those card values: one person's copied handle is
    # on the cards of many viewers, so the card count alone overstates how many people it is
    people: dict[str, set[int]] = {name: set() for name in counts}
    handles: list[str | None] = [None] * n
    avatars: list[str | None] = [None] * n
    accounts: list[str] = [""] * n
    # the inferred bits alone (prof's origins already include them)
    inferred = ([0] * n, [0] * n)
    inf_h, inf_a = inferred_masks(labelled)
    for sid, app_id, h, a, acc, ih, ia in zip(
        labelled.column("subject_id").to_pylist(),
        labelled.column("app_id").to_pylist(),
        labelled.column("handle").to_pylist(),
        labelled.column("avatar_key").to_pylist(),
        labelled.column("account_id").to_pylist(),
        inf_h,
        inf_a,
        strict=True,
    ):
        if app_id == app and 0 <= sid < n:
            handles[sid], avatars[sid], accounts[sid] = h, a, acc
            inferred[0][sid], inferred[1][sid] = ih, ia
    out: dict[str, list[object]] = {name: [] for name in CARD_SCHEMA.names}
    for viewer in range(recs.n_users):
        for rank in range(recs.k):
            cand = int(recs.candidates[viewer, rank])
            if cand < 0:
                break
            effects = []
            for category, origins, inf, what in (
                ("user.name.nickname", prof.handle_origins[cand], inferred[0][cand], "handles"),
                ("user.avatar", prof.picture_origins[cand], inferred[1][cand], "pictures"),
            ):
                request = Request(
                    app=app,
                    action="use",
                    category=category,
                    origins=origins or frozenset({"unknown"}),
                    at=at,
                    purpose=PURPOSE,
                )
                d = pdp.decide(request)
                if inf:
                    counts[what] += 1
                    people[what].add(cand)
                    # the same request on the recorded label alone (not audited: hypothetical)
                    recorded = registry.names_of(registry.mask(origins) & ~inf)
                    alone = pdp.decide(replace(request, origins=recorded or frozenset({"unknown"})))
                    if d.effect == "deny" and alone.effect != "deny":
                        counts["withheld_" + what] += 1
                        people["withheld_" + what].add(cand)
                recorder.record(
                    d,
                    "recommendation_card",
                    {
                        "viewer": viewer,
                        "candidate": cand,
                        "field": category,
                        **inferred_context(registry, inf),
                    },
                )
                effects.append(d.effect)
            handle = handles[cand]
            out["app_id"].append(app)
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
            # a decision is a function of the original's label: it keeps that label
            out["handle_decision_origins"].append(
                registry.mask(prof.handle_origins[cand] or {"unknown"})
            )
            out["avatar_decision_origins"].append(
                registry.mask(prof.picture_origins[cand] or {"unknown"})
            )
            # the shown values' labels: the original's when shown, the app's own for a
            # placeholder (so the cards table is queried under the policy like profiles)
            out["shown_handle_origins"].append(
                registry.mask(prof.handle_origins[cand])
                if effects[0] != "deny" and handle is not None
                else own
            )
            out["shown_avatar_origins"].append(
                registry.mask(prof.picture_origins[cand])
                if effects[1] != "deny" and avatars[cand]
                else own
            )
            out["handle_inferred_origins"].append(inferred[0][cand])
            out["avatar_inferred_origins"].append(inferred[1][cand])
    for name, who in people.items():
        counts[name + "_people"] = len(who)
    return pa.table(out, schema=CARD_SCHEMA), counts
