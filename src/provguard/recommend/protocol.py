"""The evaluation protocol of friend recommendation under a policy: "the cost of compliance".

Documented in ``docs/recommendation.md``. In short:

- **Splits.** :func:`random_edge_split` (ego-Facebook): 10 % of the edges held out with
  :func:`~provguard.recommend.evaluate.holdout_split`; the ranker is fitted on a second hold-out
  inside the training graph. :func:`time_split` (CollegeMsg): train on the messages before a
  cut-off, predict the **first contacts** after it; the ranker is fitted one window earlier.
- **Pool.** Every method ranks the same fixed candidate pool: the friends-of-friends pairs of the
  graph it is given (training graph for test, fitting graph for training). A held-out pair
  outside the pool cannot be found by any method (the ``pool_recall`` column says how many are
  in it).
- **Slices.** ``all`` and ``cold_start``: queries from users with at most ``cold_max_degree``
  friends in the training graph.
- **Metrics** (:func:`slice_metrics`): Recall@10 (micro, per query), MRR (per user, within the
  top ``hits_k``), Hits@50 (per user: at least one held-out friend in the top 50), user coverage
  (per user: at least one recommendation) and catalogue coverage@10 (share of all users that
  appear in some top-10 list; Ge, Delgado-Battenfeld & Jannach, RecSys 2010).
- **Noise.** :func:`paired_bootstrap` gives 95 % intervals of one method minus another per
  metric (users resampled with all their queries), so a "beats" claim can be checked against the
  split's noise.
- **Policies.** Each policy bundle (``None`` = no policy) becomes a gate
  (:func:`decision_gate`) that every signal passes through, before training and before scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from provguard.decide import DecisionPoint, Request
from provguard.errors import InputError
from provguard.policy import PolicySet
from provguard.recommend.evaluate import holdout_split
from provguard.recommend.features import (
    common_neighbour_links,
    degree_max,
    degree_min,
    jaccard,
    paths_of_length_3,
    reciprocal_rank_features,
)
from provguard.recommend.global_features import global_signals
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import adamic_adar, preferential_attachment, resource_allocation
from provguard.recommend.platform_signals import (
    handle_similarity_by_origin,
    interaction_paths,
    interaction_weights,
    picture_similarity,
    provider_contacts,
    sandbox_provider_contacts,
)
from provguard.recommend.rank import (
    GateResult,
    Recommendations,
    _as_gate_result,
    allow_all,
    recommend,
)
from provguard.recommend.ranker import HEADS, HEADS_LOCKED, Gate, LearnedRanker
from provguard.recommend.signals import Signal, common_neighbours, two_hop_candidates
from provguard.similarity.handles import normalize_handles
from provguard.similarity.pictures import PDQ_BYTES, decode_image, pdq_hash

PURPOSE = "social.friend_recommendation"
LGBM_RERANK_TOP = 150
"""Depth of resource allocation's per-user list the ``"lgbm"`` ranker re-ranks."""
HEURISTICS = ("common_neighbours", "adamic_adar", "resource_allocation")
RANKERS = (
    "logistic",
    "hgb",
    "lgbm",
    "lgbm-cv",
    "lgbm-fwd",
    "lgbm-fwd-ens",
    "lgbm-fwd-head",
    "lgbm-fwd-head1",
)
"""Ranker names of :func:`cost_of_compliance`; ``"lgbm-cv"`` (round 5) is
``LearnedRanker("lgbm", directed=True, folds=CV_FOLDS, coverage_rerank=True)``;
``"lgbm-fwd"`` (round 6) is ``LearnedRanker("lgbm", directed=True, forward=True,
coverage_rerank=True)``, validated on the split's earlier graph (:func:`earlier_view`);
``"lgbm-fwd-ens"`` the same with ``objective="ensemble"`` (a pointwise and a LambdaRank
model, their per-user ranks fused; round 6's final choice); ``"lgbm-fwd-head"`` (round 7) the
same with ``anchor_head=True``: resource allocation's top ``head`` candidates of each list stay
in place, ``head`` chosen with ``beta`` on forward validation; ``"lgbm-fwd-head1"`` (round 8) the
same with ``heads=HEADS_LOCKED`` = (1, 2, 3, 5): RA's first candidate is always kept first."""
CV_FOLDS = 4
"""Folds of the ``"lgbm-cv"`` ranker's cross-fitted validation."""


def decision_gate(
    pdp: DecisionPoint,
    app: str,
    at: datetime,
    *,
    purpose: str = PURPOSE,
    on_decision: Callable[[Signal, GateResult], None] | None = None,
) -> Callable[[Signal], GateResult]:
    """A gate that asks the decision point ``derive`` for ``purpose`` per signal.

    The request is ``Request(app, "derive", signal.category, signal.origins, at, purpose)``; a
    signal with no origins is asked about as ``{"unknown"}``.

    Returns:
        ``gate(signal) -> GateResult`` (denying rule and instrument ids filled on a deny).
    """

    def gate(signal: Signal) -> GateResult:
        d = pdp.decide(
            Request(
                app=app,
                action="derive",
                category=signal.category,
                origins=signal.origins or frozenset({"unknown"}),
                at=at,
                purpose=purpose,
            )
        )
        deny = d.effect == "deny"
        result = GateResult(
            d.allowed,
            d.explain(),
            tuple(r.rule_id for r in d.determining if deny),
            tuple(r.instrument_id for r in d.determining if deny),
        )
        if on_decision is not None:
            on_decision(signal, result)
        return result

    return gate


# ---------------------------------------------------------------------------------------------
# per-user profile data


@dataclass(frozen=True, eq=False)
class Profiles:
    """What the profile signals need per user (index = subject id, ``n`` users).

    Attributes:
        login: provider each user signed in with (``"wechat"``, ``"qq"``) or None.
        handles: normalised handles (None: no profile).
        handle_origins: origin set of each handle (empty: no profile).
        hashes: ``(n, 32) uint8`` PDQ hashes of the profile pictures.
        has_hash: ``(n,) bool``.
        picture_origins: origin set of each picture.
    """

    login: tuple[str | None, ...]
    handles: tuple[str | None, ...]
    handle_origins: tuple[frozenset[str], ...]
    hashes: np.ndarray
    has_hash: np.ndarray
    picture_origins: tuple[frozenset[str], ...]

    @property
    def n(self) -> int:
        """Number of users."""
        return len(self.login)

    @classmethod
    def empty(cls, n: int) -> Profiles:
        """``n`` users with no login, handle or picture."""
        return cls(
            (None,) * n,
            (None,) * n,
            (frozenset(),) * n,
            np.zeros((n, PDQ_BYTES), np.uint8),
            np.zeros(n, bool),
            (frozenset(),) * n,
        )


def profiles_from_tables(
    n: int,
    subjects: pa.Table,
    app_profiles: pa.Table,
    pictures: pa.Table | None,
    *,
    app: str = "douyin",
    picture_hashes: pa.Table | None = None,
) -> Profiles:
    """Per-user profile data from sandbox-shaped tables (:mod:`provguard.sandbox.schema`).

    A handle/picture with source ``provider`` has origin = the subject's ``login`` provider;
    ``user_input`` has origin ``user_input``. Pictures are decoded and PDQ-hashed (a picture that
    does not decode gets no hash) unless ``picture_hashes`` already holds their hashes. Subjects
    with ids outside ``0..n-1`` are ignored.

    Args:
        n: number of users.
        subjects: ``subject_id, login`` columns.
        app_profiles: ``app_id, subject_id, handle, handle_source, avatar_key, avatar_source``.
        pictures: ``avatar_key, data`` (None: no hashes unless ``picture_hashes``).
        app: which app's profiles to read.
        picture_hashes: ``avatar_key, pdq`` (32-byte PDQ hashes, e.g. the profile-match scan's
            :func:`~provguard.similarity.pictures.hash_picture_table`, whose ``pdq`` is the hash
            of the normalised centre square); when given, ``pictures`` is not decoded and a key
            missing from it has no hash.

    Raises:
        InputError: a required column is missing, or a ``pdq`` value is not 32 bytes.
    """
    for table, cols in (
        (subjects, ("subject_id", "login")),
        (
            app_profiles,
            ("app_id", "subject_id", "handle", "handle_source", "avatar_key", "avatar_source"),
        ),
    ):
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise InputError(f"table lacks column(s) {missing}")
    login: list[str | None] = [None] * n
    for sid, lg in zip(
        subjects["subject_id"].to_pylist(), subjects["login"].to_pylist(), strict=True
    ):
        if 0 <= sid < n:
            login[sid] = lg if lg in ("wechat", "qq") else None
    raw_handles: list[str | None] = [None] * n
    h_or: list[frozenset[str]] = [frozenset()] * n
    keys: list[str | None] = [None] * n
    p_or: list[frozenset[str]] = [frozenset()] * n
    for row in app_profiles.select(
        ["app_id", "subject_id", "handle", "handle_source", "avatar_key", "avatar_source"]
    ).to_pylist():
        sid = row["subject_id"]
        if row["app_id"] != app or not 0 <= sid < n:
            continue

        def origin(source: str, sid: int = sid) -> frozenset[str]:
            if source == "provider":
                return frozenset({login[sid] or "unknown"})
            return frozenset({"user_input"})

        raw_handles[sid] = row["handle"]
        h_or[sid] = origin(row["handle_source"])
        keys[sid] = row["avatar_key"]
        p_or[sid] = origin(row["avatar_source"])
    norm = normalize_handles(raw_handles).to_pylist()
    hashes = np.zeros((n, PDQ_BYTES), np.uint8)
    has = np.zeros(n, bool)
    if picture_hashes is not None:
        missing = [c for c in ("avatar_key", "pdq") if c not in picture_hashes.column_names]
        if missing:
            raise InputError(f"picture_hashes lacks column(s) {missing}")
        pdq_of = dict(
            zip(
                picture_hashes["avatar_key"].to_pylist(),
                picture_hashes["pdq"].to_pylist(),
                strict=True,
            )
        )
        for sid, key in enumerate(keys):
            h = pdq_of.get(key) if key is not None else None
            if h is None:
                continue
            if len(h) != PDQ_BYTES:
                raise InputError(f"picture {key}: pdq must be {PDQ_BYTES} bytes, got {len(h)}")
            hashes[sid] = np.frombuffer(h, np.uint8)
            has[sid] = True
    elif pictures is not None:
        data_of = dict(
            zip(pictures["avatar_key"].to_pylist(), pictures["data"].to_pylist(), strict=True)
        )
        for sid, key in enumerate(keys):
            blob = data_of.get(key) if key is not None else None
            if blob is None:
                continue
            try:
                h, _quality = pdq_hash(decode_image(blob))
            except InputError:
                continue
            hashes[sid] = np.frombuffer(h, np.uint8)
            has[sid] = True
    return Profiles(tuple(login), tuple(norm), tuple(h_or), hashes, has, tuple(p_or))


# ---------------------------------------------------------------------------------------------
# splits


@dataclass(frozen=True, eq=False)
class Split:
    """One evaluation split (see module docstring).

    Attributes:
        name: e.g. ``"ego-facebook/random-10%"``.
        n: number of users.
        train: ``(src, dst)`` graph known when the test predictions are made.
        test: ``(src, dst)`` pairs to predict (new friendships / first contacts).
        fit: ``(src, dst)`` graph the ranker computes its training features on.
        fit_positives: ``(src, dst)`` the ranker's training labels.
        contacts: provider -> ``(src, dst)`` provider friend lists (static).
        messages: optional ``(src, dst, time)`` interaction log.
        fit_before, train_before: message cut-offs (unix seconds) for the fit / train views.
        cold_max_degree: users with at most this many training friends form the cold-start slice.
        notes: protocol facts (counts of dropped pairs etc.), for the report.
    """

    name: str
    n: int
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    fit: tuple[np.ndarray, np.ndarray]
    fit_positives: tuple[np.ndarray, np.ndarray]
    contacts: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    messages: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    fit_before: int | None = None
    train_before: int | None = None
    cold_max_degree: int = 3
    notes: Mapping[str, int] = field(default_factory=dict)
    earlier: tuple[np.ndarray, np.ndarray] | None = None
    """The graph one step before ``fit`` (round 6, "forward validation"): it relates to the
    fitting graph as the fitting graph to the training graph (the same share of edges removed
    again, or one more time window earlier); None when the split leaves no room for it."""
    earlier_positives: tuple[np.ndarray, np.ndarray] | None = None
    """The pairs that are new in ``fit`` against ``earlier`` (the labels of that step)."""
    earlier_before: int | None = None
    """Message cut-off (unix seconds) of the ``earlier`` view (time splits)."""


def random_edge_split(
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    *,
    fraction: float = 0.1,
    seed: int = 7,
    contacts: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    cold_max_degree: int = 3,
    name: str = "random",
) -> Split:
    """Random edge hold-out (test) plus a second hold-out inside the training graph (fitting).

    The inner hold-out removes ``fraction / (1 - fraction)`` of the training edges, so the
    fitting graph relates to the training graph as the training graph to the full one. When
    ``fraction < 1/3`` a third hold-out (seed ``seed + 2``) removes ``fraction / (1 - 2
    fraction)`` of the fitting edges: ``Split.earlier`` / ``earlier_positives``, the fitting
    step repeated one step earlier (the forward validation of ``"lgbm-fwd"``).

    Raises:
        InputError: bad arrays, fraction outside (0, 0.5), ids >= n.
    """
    if not 0.0 < fraction < 0.5:
        raise InputError(f"fraction must be in (0, 0.5), got {fraction}")
    trs, trd, tes, ted = holdout_split(src, dst, fraction, seed)
    if trs.size and max(int(trs.max()), int(trd.max()), int(tes.max()), int(ted.max())) >= n:
        raise InputError(f"an edge names a user outside 0..{n - 1}")
    fs, fd, ps, pd = holdout_split(trs, trd, fraction / (1.0 - fraction), seed + 1)
    earlier: tuple[np.ndarray, np.ndarray] | None = None
    earlier_pos: tuple[np.ndarray, np.ndarray] | None = None
    if fraction < 1.0 / 3.0:
        # the same share of all edges removed once more, so earlier : fit ~ fit : train
        es, ed, qs, qd = holdout_split(fs, fd, fraction / (1.0 - 2.0 * fraction), seed + 2)
        earlier, earlier_pos = (es, ed), (qs, qd)
    return Split(
        name,
        n,
        (trs, trd),
        (tes, ted),
        (fs, fd),
        (ps, pd),
        contacts=dict(contacts or {}),
        cold_max_degree=cold_max_degree,
        notes={"train_edges": int(trs.size), "test_edges": int(tes.size)},
        earlier=earlier,
        earlier_positives=earlier_pos,
    )


def _first_contacts(
    s: np.ndarray, d: np.ndarray, t: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi = np.minimum(s, d), np.maximum(s, d)
    keep = lo != hi
    keys = lo[keep] * n + hi[keep]
    times = t[keep]
    order = np.lexsort((times, keys))
    keys, times = keys[order], times[order]
    first = np.ones(keys.size, bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first] // n, keys[first] % n, times[first]


def time_split(
    src: np.ndarray,
    dst: np.ndarray,
    time: np.ndarray,
    n: int,
    *,
    fit_quantile: float = 0.6,
    train_quantile: float = 0.8,
    contacts: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    cold_max_degree: int = 3,
    name: str = "time",
) -> Split:
    """Time-based split of a timestamped interaction log: predict first contacts.

    Cut-offs are message-count quantiles of ``time``: ``T_fit`` (``fit_quantile``) and
    ``T_train`` (``train_quantile``). The training graph holds the pairs with a message before
    ``T_train``; the test pairs are those whose **first** message is at or after ``T_train`` and
    whose two users both have a training friend (a brand-new user cannot be reached by any
    graph method; their count is in ``notes["test_dropped_new_user"]``). The fitting graph and its
    labels are the same one window earlier (``T_fit`` .. ``T_train``). When
    ``2 fit_quantile - train_quantile > 0`` the same is repeated one more window earlier
    (``Split.earlier``: pairs before ``T_earlier`` at that quantile; ``earlier_positives``: the
    first contacts in ``T_earlier .. T_fit`` of users who both had one before ``T_earlier``).

    Raises:
        InputError: bad arrays, ids >= n, or quantiles not ``0 < fit < train < 1``.
    """
    if not 0.0 < fit_quantile < train_quantile < 1.0:
        raise InputError("need 0 < fit_quantile < train_quantile < 1")
    s = np.asarray(src, dtype=np.int64)
    d = np.asarray(dst, dtype=np.int64)
    t = np.asarray(time, dtype=np.int64)
    if not (s.shape == d.shape == t.shape) or s.ndim != 1 or s.size == 0:
        raise InputError("src, dst, time must be non-empty 1-D arrays of equal length")
    if min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n:
        raise InputError(f"a message names a user outside 0..{n - 1}")
    t_fit = int(np.quantile(t, fit_quantile, method="lower"))
    t_train = int(np.quantile(t, train_quantile, method="lower"))
    fu, fv, ft = _first_contacts(s, d, t, n)

    def graph_before(cut: int) -> tuple[np.ndarray, np.ndarray]:
        sel = ft < cut
        return fu[sel], fv[sel]

    def new_after(
        cut: int, until: int | None, g: tuple[np.ndarray, np.ndarray]
    ) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        sel = ft >= cut if until is None else (ft >= cut) & (ft < until)
        deg = np.bincount(np.concatenate(g), minlength=n)
        reach = (deg[fu] > 0) & (deg[fv] > 0)
        return (fu[sel & reach], fv[sel & reach]), int((sel & ~reach).sum())

    train = graph_before(t_train)
    fit = graph_before(t_fit)
    test, dropped = new_after(t_train, None, train)
    fit_pos, _ = new_after(t_fit, t_train, fit)
    earlier: tuple[np.ndarray, np.ndarray] | None = None
    earlier_pos: tuple[np.ndarray, np.ndarray] | None = None
    t_earlier: int | None = None
    if 2.0 * fit_quantile - train_quantile > 0.0:
        t_earlier = int(np.quantile(t, 2.0 * fit_quantile - train_quantile, method="lower"))
        earlier = graph_before(t_earlier)
        earlier_pos, _ = new_after(t_earlier, t_fit, earlier)
    return Split(
        name,
        n,
        train,
        test,
        fit,
        fit_pos,
        contacts=dict(contacts or {}),
        messages=(s, d, t),
        fit_before=t_fit,
        train_before=t_train,
        cold_max_degree=cold_max_degree,
        notes={
            "train_edges": int(train[0].size),
            "test_edges": int(test[0].size),
            "test_dropped_new_user": dropped,
            "fit_before": t_fit,
            "train_before": t_train,
        },
        earlier=earlier,
        earlier_positives=earlier_pos,
        earlier_before=t_earlier,
    )


# ---------------------------------------------------------------------------------------------
# signals and metrics


def build_signals(
    adj: sp.csr_matrix,
    pool: sp.csr_matrix,
    profiles: Profiles,
    *,
    contacts: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    interactions: sp.csr_matrix | None = None,
    app: str = "douyin",
    structural: bool = True,
    global_features: bool = False,
    seed: int = 7,
) -> list[Signal]:
    """Every signal of the protocol on one graph, each with its category and origins.

    Graph (origin ``{app}``): common neighbours, Adamic–Adar, resource allocation, preferential
    attachment on the pool; with ``structural`` also the ranker's structural features of
    :mod:`provguard.recommend.features` (Jaccard, min/max degree, length-3 paths, reciprocal
    rank of the pair in each end's resource-allocation list). Profile (origins = the compared
    values' origins, plus ``{app}`` for the pool): handle similarity and picture similarity,
    split by origin. Provider contacts (origin = the provider). Interaction paths (origin
    ``{app}``) when ``interactions`` is given. With ``global_features`` also the non-local
    features of :mod:`provguard.recommend.global_features` (Louvain same-community, RA degree
    exponents, personalised PageRank, spectral cosine; origin ``{app}``, ``seed`` seeds the
    Louvain partition) and the common-neighbourhood clustering signals of
    :func:`~provguard.recommend.features.common_neighbour_links` (LCL, CAR, CRA; round 5).

    Raises:
        InputError: shapes disagree.
    """
    if profiles.n != adj.shape[0]:
        raise InputError(f"profiles cover {profiles.n} users, the graph {adj.shape[0]}")
    g = frozenset({app})
    ra = resource_allocation(adj, origins=g)
    out = [
        common_neighbours(adj, origins=g),
        adamic_adar(adj, origins=g),
        ra,
        preferential_attachment(adj, pool, origins=g),
    ]
    if structural:
        out += [
            jaccard(adj, pool, origins=g),
            degree_min(adj, pool, origins=g),
            degree_max(adj, pool, origins=g),
            paths_of_length_3(adj, pool, origins=g),
            *reciprocal_rank_features(ra),
        ]
    if global_features:
        out += global_signals(adj, pool, origins=g, seed=seed)
        out += common_neighbour_links(adj, pool, origins=g)
    out += handle_similarity_by_origin(
        pool, list(profiles.handles), list(profiles.handle_origins), pool_origins=g
    )
    out += picture_similarity(
        pool, profiles.hashes, profiles.has_hash, list(profiles.picture_origins), pool_origins=g
    )
    if contacts:
        out += provider_contacts(adj, contacts)
    if interactions is not None:
        out.append(interaction_paths(adj, interactions, origins=g))
    return out


@dataclass(frozen=True)
class SliceMetrics:
    """Metrics of one recommendation run on one slice of queries (module docstring)."""

    recall_at_k: float
    mrr: float
    hits: float
    coverage: float
    queries: int
    users: int
    recall_capped: float = float("nan")
    """Per-user Recall@k normalised by ``min(k, |T_u|)`` (Liang et al., "Variational
    autoencoders for collaborative filtering", WWW 2018), averaged over querying users."""
    catalogue_coverage: float = float("nan")
    """Catalogue (item) coverage@k: share of all ``n`` users that appear in at least one top-k
    list of the slice's users (Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy", RecSys
    2010). Unlike :attr:`coverage` (share of querying users with any recommendation, equal for
    every method ranking the same pool) it depends on the ranking."""


def slice_metrics(
    recs: Recommendations,
    test: tuple[np.ndarray, np.ndarray],
    *,
    k: int = 10,
    hits_k: int = 50,
    users: np.ndarray | None = None,
) -> SliceMetrics:
    """Recall@k, MRR@hits_k, Hits@hits_k and coverage over the queries of a slice.

    Each test pair ``{u, v}`` is two queries (u -> v, v -> u); with ``users`` only queries from
    those users count. Recall@k: share of queries whose target is in the user's top k. MRR: per
    querying user, ``1/rank`` of the first held-out friend in the top ``hits_k`` (0 if none),
    averaged over users. Hits@hits_k: share of querying users with at least one held-out friend
    in their top ``hits_k``. Coverage (*user* coverage): share of querying users with at least
    one recommendation. Catalogue coverage@k: share of all ``recs.n_users`` users that appear in
    the top-k list of at least one list holder -- the slice's ``users`` (every one of them, with
    or without a query), or every user when ``users`` is None (Ge, Delgado-Battenfeld & Jannach,
    "Beyond accuracy", RecSys 2010).
    ``recall_capped``: per querying user, held-out friends in the top k divided by
    ``min(k, |T_u|)``, averaged over users (the normalised recall of Liang et al., WWW 2018;
    the reading of "Recall@10" under which resource allocation gives about 0.62 on
    ego-Facebook, docs/recommendation.md).
    On the full slice, Recall@k and MRR equal :func:`~provguard.recommend.evaluate.recall_at_k`
    and :func:`~provguard.recommend.evaluate.mrr` (tested).

    Returns:
        :class:`SliceMetrics` (``nan`` metrics for an empty slice).

    Raises:
        InputError: ``k > hits_k``, ``hits_k > recs.k`` or test pairs outside the users.
    """
    if not 1 <= k <= hits_k <= recs.k:
        raise InputError(f"need 1 <= k <= hits_k <= recs.k, got {k}, {hits_k}, {recs.k}")
    ts = np.asarray(test[0], dtype=np.int64)
    td = np.asarray(test[1], dtype=np.int64)
    q_user = np.concatenate([ts, td])
    q_target = np.concatenate([td, ts])
    if q_user.size and (q_user.min() < 0 or q_user.max() >= recs.n_users):
        raise InputError(f"a test pair names a user outside 0..{recs.n_users - 1}")
    if users is not None:
        sel = np.isin(q_user, np.asarray(users, dtype=np.int64))
        q_user, q_target = q_user[sel], q_target[sel]
    catalogue = catalogue_coverage(recs, k, users)
    if q_user.size == 0:
        nan = float("nan")
        return SliceMetrics(nan, nan, nan, nan, 0, 0, nan, catalogue)
    match = recs.candidates[q_user, :hits_k] == q_target[:, None]
    found = match.any(axis=1)
    rank = np.where(found, match.argmax(axis=1) + 1, hits_k + 1)
    recall = float((rank <= k).mean())
    best = np.full(recs.n_users, hits_k + 1, dtype=np.int64)
    np.minimum.at(best, q_user, rank)
    qu = np.unique(q_user)
    r = best[qu]
    rr = np.where(r <= hits_k, 1.0 / r, 0.0)
    covered = recs.candidates[qu, 0] >= 0
    _, inv = np.unique(q_user, return_inverse=True)
    per_hits = np.bincount(inv, weights=(rank <= k).astype(np.float64))
    per_targets = np.bincount(inv).astype(np.float64)
    capped = per_hits / np.minimum(per_targets, k)
    return SliceMetrics(
        recall,
        float(rr.mean()),
        float((r <= hits_k).mean()),
        float(covered.mean()),
        int(q_user.size),
        int(qu.size),
        float(capped.mean()),
        catalogue,
    )


def catalogue_coverage(recs: Recommendations, k: int, users: np.ndarray | None = None) -> float:
    """Catalogue (item) coverage@k: share of all ``recs.n_users`` users that appear in at
    least one top-k list of ``users`` (default: every user's list).

    Ge, Delgado-Battenfeld & Jannach, "Beyond accuracy: evaluating recommender systems by
    coverage and serendipity", RecSys 2010 (catalog coverage ``|I_L| / |I|``; here the catalogue
    ``I`` is every user of the graph, including users no method can recommend).

    Args:
        recs: recommendations, ``(n, K)`` with ``-1`` padding.
        k: cut-off, ``1 <= k <= recs.k``.
        users: ``(u,) int`` list holders; ids outside ``0..n-1`` are an error.

    Returns:
        Coverage in [0, 1]; ``nan`` when there are no users.

    Raises:
        InputError: bad ``k`` or user ids.
    """
    if isinstance(k, bool) or not 1 <= k <= recs.k:
        raise InputError(f"k must be in 1..{recs.k}, got {k!r}")
    n = recs.n_users
    if n == 0:
        return float("nan")
    if users is None:
        lists = recs.candidates[:, :k]
    else:
        u = np.unique(np.asarray(users, dtype=np.int64))
        if u.size and (u[0] < 0 or u[-1] >= n):
            raise InputError(f"a list holder is outside 0..{n - 1}")
        lists = recs.candidates[u, :k]
    seen = np.zeros(n, dtype=bool)
    ids = lists[lists >= 0]
    seen[ids] = True
    return float(seen.mean())


@dataclass(frozen=True)
class ComplianceRow:
    """One row of the cost-of-compliance table (``coverage`` is *user* coverage, see
    :func:`slice_metrics`; ``catalogue_coverage_at_10`` the catalogue coverage at ``k``)."""

    dataset: str
    slice: str
    policy: str
    method: str
    recall_at_10: float
    mrr: float
    hits_at_50: float
    coverage: float
    queries: int
    users: int
    signals_used: tuple[str, ...]
    signals_removed: tuple[str, ...]
    catalogue_coverage_at_10: float = float("nan")
    """Catalogue coverage at the table's Recall cut-off ``k`` (10 by default): share of all
    users appearing in at least one top-k list of the slice's users
    (:func:`catalogue_coverage`). ``coverage`` above is *user* coverage."""

    def as_dict(self) -> dict[str, object]:
        """Plain dict (tuples as lists) for JSON/CSV output."""
        out = dict(self.__dict__)
        out["signals_used"] = list(self.signals_used)
        out["signals_removed"] = list(self.signals_removed)
        return out


@dataclass(frozen=True, eq=False)
class View:
    """The graph a method is given and every signal on it (see :func:`view`).

    Attributes:
        adj: ``(n, n)`` adjacency.
        pool: ``(n, n)`` friends-of-friends candidate mask of ``adj``.
        signals: :func:`build_signals` on ``adj``.
    """

    adj: sp.csr_matrix
    pool: sp.csr_matrix
    signals: tuple[Signal, ...]


def view(
    n: int,
    edges: tuple[np.ndarray, np.ndarray],
    profiles: Profiles,
    *,
    contacts: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    messages: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    before: int | None = None,
    app: str = "douyin",
    global_features: bool = False,
    seed: int = 7,
) -> View:
    """Adjacency, pool and :func:`build_signals` of the graph ``edges`` over ``n`` users
    (interaction weights from the ``messages`` before ``before``, if given; the non-local
    features with ``global_features``, Louvain seeded with ``seed``).

    Raises:
        InputError: bad edges or sizes.
    """
    adj = adjacency(edges[0], edges[1], n)
    pool = two_hop_candidates(adj)
    inter = None
    if messages is not None:
        inter = interaction_weights(messages[0], messages[1], n, time=messages[2], before=before)
    sigs = build_signals(
        adj,
        pool,
        profiles,
        contacts=contacts,
        interactions=inter,
        app=app,
        global_features=global_features,
        seed=seed,
    )
    return View(adj, pool, tuple(sigs))


def split_views(
    split: Split,
    profiles: Profiles,
    *,
    app: str = "douyin",
    global_features: bool = False,
    seed: int = 7,
) -> tuple[View, View]:
    """The ``(train, fit)`` views of a split: the training graph (scored at test time) and the
    fitting graph (the ranker's training features), each with its signals and message cut-off
    (``global_features`` / ``seed``: as :func:`view`).

    Raises:
        InputError: sizes disagree.
    """
    if profiles.n != split.n:
        raise InputError(f"profiles cover {profiles.n} users, the split {split.n}")
    out = []
    for edges, before in ((split.train, split.train_before), (split.fit, split.fit_before)):
        out.append(
            view(
                split.n,
                edges,
                profiles,
                contacts=split.contacts,
                messages=split.messages,
                before=before,
                app=app,
                global_features=global_features,
                seed=seed,
            )
        )
    return out[0], out[1]


def earlier_view(
    split: Split,
    profiles: Profiles,
    *,
    app: str = "douyin",
    global_features: bool = False,
    seed: int = 7,
) -> View | None:
    """The view of the split's earlier graph (``Split.earlier``, the forward validation of
    ``"lgbm-fwd"``), built like :func:`split_views`; None when the split has none.

    Raises:
        InputError: sizes disagree.
    """
    if profiles.n != split.n:
        raise InputError(f"profiles cover {profiles.n} users, the split {split.n}")
    if split.earlier is None:
        return None
    return view(
        split.n,
        split.earlier,
        profiles,
        contacts=split.contacts,
        messages=split.messages,
        before=split.earlier_before,
        app=app,
        global_features=global_features,
        seed=seed,
    )


def _fixed(answer: GateResult) -> Callable[[Signal], GateResult]:
    def gate(_signal: Signal) -> GateResult:
        return answer

    return gate


GateFactory = Callable[[str, PolicySet], Gate]
"""``(policy display name, policy) -> gate``; default :func:`decision_gate` on a fresh
:class:`~provguard.decide.DecisionPoint` (a caller may record every decision instead)."""


def cost_of_compliance(
    split: Split,
    profiles: Profiles,
    policies: Mapping[str, PolicySet | None],
    *,
    at: datetime,
    app: str = "douyin",
    k: int = 10,
    hits_k: int = 50,
    heuristics: Sequence[str] = HEURISTICS,
    ranker: str = "logistic",
    seed: int = 7,
    negatives_per_positive: int = 20,
    gate_for: GateFactory | None = None,
    query_users: np.ndarray | None = None,
    views: tuple[View, View] | None = None,
    keep_recs: dict[tuple[str, str], Recommendations] | None = None,
    rerank_top: int | None = None,
    keep_models: dict[str, LearnedRanker] | None = None,
    earlier: View | None = None,
) -> list[ComplianceRow]:
    """The table policy bundle x method x slice -> metrics on one split.

    For every policy (``None`` = no policy, every signal permitted) a gate is built
    (``gate_for``, default :func:`decision_gate`); every signal passes through it. Methods: each
    heuristic in ``heuristics`` alone (ranked by its own score) and ``learned_ranker`` (trained on
    the fitting view with the permitted signals only, scored on the training view). Slices:
    ``all`` and ``cold_start``. A heuristic permitted under several policies is ranked once
    (same signal, same result); the gate is still asked once per policy.

    Args:
        split: from :func:`random_edge_split` or :func:`time_split`.
        profiles: per-user profile data (``profiles.n == split.n``).
        policies: display name -> PolicySet or None, in table order.
        at: time the policy is evaluated at (timezone-aware).
        app: the app whose recommendations are evaluated.
        k, hits_k: cut-offs (Recall@k, MRR/Hits@hits_k).
        heuristics: names among ``common_neighbours``, ``adamic_adar``, ``resource_allocation``,
            ``preferential_attachment``.
        ranker: ``"logistic"`` (default), ``"hgb"``, ``"lgbm"`` (LightGBM re-ranking
            resource allocation's top ``rerank_top`` per user, with the non-local features of
            :mod:`provguard.recommend.global_features`; build ``views`` with
            ``split_views(..., global_features=True)`` for it, as the default does) or
            ``"lgbm-cv"`` (round 5: LightGBM on directed entries with per-user rank features,
            ``CV_FOLDS``-fold cross-fitted validation of the fusion weight and of the exposure
            penalty for catalogue coverage; same views as ``"lgbm"``) or ``"lgbm-fwd"`` (round
            6: the same model and features, ``beta`` and the penalty chosen by forward
            validation on the split's earlier graph, see ``earlier``) or ``"lgbm-fwd-ens"``
            (the same with a pointwise and a LambdaRank model whose per-user ranks are fused,
            ``LearnedRanker(..., objective="ensemble")``; round 6's final choice) or
            ``"lgbm-fwd-head"`` (round 7: the ensemble with ``anchor_head=True``, resource
            allocation's top ``head`` candidates kept in place, ``head`` and ``beta`` chosen
            together on forward validation) or ``"lgbm-fwd-head1"`` (round 8: the same with
            ``head`` in :data:`~provguard.recommend.ranker.HEADS_LOCKED`, never 0).
        earlier: with ``"lgbm-fwd"``, the :func:`earlier_view` of the split if the caller
            already has it (default: built here when the split has an earlier graph; without
            one the ranker runs no validation, ``beta = 1``).
        keep_models: if given, filled with ``policy -> fitted LearnedRanker`` (to read the
            chosen ``beta`` / ``strength`` and the validation numbers).
        seed: ranker seed (also the Louvain partition's).
        negatives_per_positive: the ranker's negative sampling rate.
        gate_for: gate factory for the non-``None`` policies.
        query_users: evaluate only the queries of these users (a sample, to bound run time);
            default every user.
        views: ``(train, fit)`` from :func:`split_views` if the caller already has them.
        keep_recs: if given, filled with ``(policy, method) -> Recommendations`` (for
            :func:`paired_bootstrap`).
        rerank_top: the ranker's re-ranked depth (``LearnedRanker(rerank_top=...)``); default
            150 for ``"lgbm"``, None (whole pool) otherwise.

    Returns:
        Rows in order policy, method, slice.

    Raises:
        InputError: sizes disagree or an unknown heuristic.
    """
    if profiles.n != split.n:
        raise InputError(f"profiles cover {profiles.n} users, the split {split.n}")
    known = {"common_neighbours", "adamic_adar", "resource_allocation", "preferential_attachment"}
    bad = [h for h in heuristics if h not in known]
    if bad:
        raise InputError(f"unknown heuristic(s) {bad}; known: {sorted(known)}")
    if ranker not in RANKERS:
        raise InputError(f"ranker must be one of {RANKERS}, got {ranker!r}")
    if rerank_top is None and ranker == "lgbm":
        rerank_top = LGBM_RERANK_TOP
    train, fit = views or split_views(
        split,
        profiles,
        app=app,
        global_features=ranker != "logistic" and ranker != "hgb",
        seed=seed,
    )
    fwd = ranker in ("lgbm-fwd", "lgbm-fwd-ens", "lgbm-fwd-head", "lgbm-fwd-head1")
    head_lock = ranker in ("lgbm-fwd-head", "lgbm-fwd-head1")
    if fwd and earlier is None:
        earlier = earlier_view(split, profiles, app=app, global_features=True, seed=seed)
    deg = np.diff(train.adj.indptr)
    everyone = np.arange(split.n) if query_users is None else np.asarray(query_users, np.int64)
    cold = everyone[(deg[everyone] >= 1) & (deg[everyone] <= split.cold_max_degree)]
    by_name = {s.name: s for s in train.signals}
    make_gate = gate_for or (lambda _name, p: decision_gate(DecisionPoint(p), app, at))
    ranked: dict[str, Recommendations] = {}
    rows: list[ComplianceRow] = []
    for policy_name, policy in policies.items():
        gate: Gate = allow_all if policy is None else make_gate(policy_name, policy)
        runs: list[tuple[str, Recommendations]] = []
        for h in heuristics:
            answer = _as_gate_result(gate(by_name[h]), h)
            if answer.allowed and h in ranked:
                r = ranked[h]
                runs.append(
                    (h, Recommendations(r.candidates, r.scores, (h,), (), {h: answer}, r.origins))
                )
                continue
            recs = recommend(train.adj, [by_name[h]], _fixed(answer), hits_k)
            if answer.allowed:
                ranked[h] = recs
            runs.append((h, recs))
        cv = ranker == "lgbm-cv"
        model = LearnedRanker(
            "lgbm" if cv or fwd else ranker,  # type: ignore[arg-type]
            seed=seed,
            negatives_per_positive=negatives_per_positive,
            rerank_top=None if cv or fwd else rerank_top,
            directed=cv or fwd,
            folds=CV_FOLDS if cv else None,
            coverage_rerank=cv or fwd,
            forward=fwd,
            objective="ensemble" if ranker == "lgbm-fwd-ens" or head_lock else "binary",
            anchor_head=head_lock,
            heads=HEADS_LOCKED if ranker == "lgbm-fwd-head1" else HEADS,
        )
        step = None
        if fwd and earlier is not None and split.earlier_positives is not None:
            step = (earlier.pool, earlier.signals, split.earlier_positives)
        model.fit(fit.pool, fit.signals, gate, split.fit_positives, earlier=step)
        if keep_models is not None:
            keep_models[policy_name] = model
        runs.append(
            (
                "learned_ranker",
                model.recommend(train.pool, train.signals, gate, hits_k, users=query_users),
            )
        )
        for method, recs in runs:
            if keep_recs is not None:
                keep_recs[(policy_name, method)] = recs
            for slice_name, users in (("all", query_users), ("cold_start", cold)):
                m = slice_metrics(recs, split.test, k=k, hits_k=hits_k, users=users)
                rows.append(
                    ComplianceRow(
                        split.name,
                        slice_name,
                        policy_name,
                        method,
                        m.recall_at_k,
                        m.mrr,
                        m.hits,
                        m.coverage,
                        m.queries,
                        m.users,
                        recs.used,
                        recs.removed,
                        m.catalogue_coverage,
                    )
                )
    return rows


@dataclass(frozen=True)
class DeltaInterval:
    """Paired-bootstrap interval of ``metric(a) - metric(b)`` over querying users."""

    metric: str
    delta: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """The interval excludes 0 on the positive side (``a`` better)."""
        return self.low > 0.0


def _per_user(
    recs: Recommendations,
    test: tuple[np.ndarray, np.ndarray],
    users: np.ndarray,
    k: int,
    hits_k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    q_user = np.concatenate([test[0], test[1]]).astype(np.int64)
    q_target = np.concatenate([test[1], test[0]]).astype(np.int64)
    idx = np.searchsorted(users, q_user)
    idx = np.clip(idx, 0, max(users.size - 1, 0))
    sel = users[idx] == q_user
    q_user, q_target, idx = q_user[sel], q_target[sel], idx[sel]
    match = recs.candidates[q_user, :hits_k] == q_target[:, None]
    rank = np.where(match.any(axis=1), match.argmax(axis=1) + 1, hits_k + 1)
    found = np.bincount(idx, weights=(rank <= k).astype(np.float64), minlength=users.size)
    queries = np.bincount(idx, minlength=users.size).astype(np.float64)
    best = np.full(users.size, hits_k + 1, dtype=np.int64)
    np.minimum.at(best, idx, rank)
    rr = np.where(best <= hits_k, 1.0 / best, 0.0)
    return found, queries, rr, (best <= hits_k).astype(np.float64)


def paired_bootstrap(
    a: Recommendations,
    b: Recommendations,
    test: tuple[np.ndarray, np.ndarray],
    *,
    users: np.ndarray | None = None,
    k: int = 10,
    hits_k: int = 50,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[DeltaInterval]:
    """Percentile intervals of ``a - b`` for Recall@k, MRR and Hits@hits_k (the definitions of
    :func:`slice_metrics`) by a paired bootstrap over querying users (Efron & Tibshirani, "An
    Introduction to the Bootstrap", 1993, ch. 13; users are resampled with replacement together
    with all their queries, the same resample for ``a`` and ``b``).

    Args:
        a, b: recommendations of the same users, ``k <= hits_k <= a.k, b.k``.
        test: ``(src, dst)`` held-out pairs (two queries each).
        users: restrict to the queries of these users (default: every querying user).
        n_boot: bootstrap resamples (>= 100).
        level: two-sided coverage in (0, 1).

    Returns:
        Three :class:`DeltaInterval` (``recall_at_10``, ``mrr``, ``hits_at_50``); ``delta`` is the
        full-sample difference (equal to the :func:`slice_metrics` difference, tested).

    Raises:
        InputError: bad ``k``/``hits_k``/``n_boot``/``level`` or no querying user.
    """
    if not 1 <= k <= hits_k <= min(a.k, b.k):
        raise InputError(f"need 1 <= k <= hits_k <= recs.k, got {k}, {hits_k}")
    if n_boot < 100 or not 0.0 < level < 1.0:
        raise InputError("need n_boot >= 100 and 0 < level < 1")
    q = np.unique(np.concatenate([test[0], test[1]]).astype(np.int64))
    if users is not None:
        q = np.intersect1d(q, np.asarray(users, dtype=np.int64))
    if q.size == 0:
        raise InputError("no querying user")
    fa, qa, rra, ha = _per_user(a, test, q, k, hits_k)
    fb, _qb, rrb, hb = _per_user(b, test, q, k, hits_k)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(q.size, np.full(q.size, 1.0 / q.size), size=n_boot).astype(np.float64)
    nw = w.sum(axis=1)
    draws = {
        "recall_at_10": (w @ (fa - fb)) / (w @ qa),
        "mrr": (w @ (rra - rrb)) / nw,
        "hits_at_50": (w @ (ha - hb)) / nw,
    }
    full = {
        "recall_at_10": float((fa - fb).sum() / qa.sum()),
        "mrr": float((rra - rrb).mean()),
        "hits_at_50": float((ha - hb).mean()),
    }
    lo_q, hi_q = (1.0 - level) / 2.0, 1.0 - (1.0 - level) / 2.0
    return [
        DeltaInterval(name, full[name], float(np.quantile(d, lo_q)), float(np.quantile(d, hi_q)))
        for name, d in draws.items()
    ]


def pool_recall(split: Split) -> float:
    """Share of test pairs that lie in the training pool (friends of friends): the ceiling of
    every method's recall. ``nan`` with no test pairs."""
    adj = adjacency(split.train[0], split.train[1], split.n)
    pool = two_hop_candidates(adj)
    ts, td = split.test
    if ts.size == 0:
        return float("nan")
    return float(np.asarray(pool[ts, td]).ravel().astype(bool).mean())


def sandbox_contacts_for(
    src: np.ndarray, dst: np.ndarray, profiles: Profiles, *, keep: float = 0.5, seed: int = 7
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`~provguard.recommend.platform_signals.sandbox_provider_contacts` with the logins
    of ``profiles`` (the full graph's undirected pairs in ``src``/``dst``)."""
    return sandbox_provider_contacts(src, dst, list(profiles.login), keep=keep, seed=seed)
