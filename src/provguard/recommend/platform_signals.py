"""Signals computed from profile data and other sources, each split by the provenance it has.

A pair score computed from two users' values (two handles, two pictures) depends on **both**
values, so its provenance label is the union of the two values' origins (DESIGN.md: derived
values take the union of their inputs' labels). :func:`split_by_origin` therefore cuts one pair
score matrix into one :class:`~provguard.recommend.signals.Signal` per distinct pair label, named
``"<family>[<origin>+<origin>...]"``. The policy gate then removes exactly the pairs that touch a
forbidden origin and keeps the rest (two user-typed handles stay usable under the 2019
injunction; a user-typed handle compared with a WeChat one does not).

Signals here:

- :func:`handle_similarity_by_origin`: shared surname-like handle key
  (:func:`~provguard.recommend.signals.surname_key`) on a candidate pool, split by origin;
- :func:`picture_similarity`: PDQ-hash closeness of two profile pictures on a candidate pool
  (``1 - d / max_distance`` for a Hamming distance ``d < max_distance`` bits), split by origin;
- :func:`provider_contacts`: pairs that are friends on a provider's friend list (WeChat/QQ
  contacts imported through the login), one signal per provider, origin = that provider;
- :func:`sandbox_provider_contacts`: the synthetic provider friend lists used in evaluation;
- :func:`interaction_paths`: message-weighted friends of friends from an interaction log
  (CollegeMsg), category ``user.social.interaction``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.signals import (
    FRIEND_LIST,
    NICKNAME,
    Signal,
    _square,
    drop_self_and_friends,
    handle_similarity,
)
from provguard.similarity.pictures import PDQ_BYTES, hamming_rows

AVATAR = "user.avatar"
INTERACTION = "user.social.interaction"


def family(signal_name: str) -> str:
    """The family of a signal name: the part before ``[`` (``handle_similarity[wechat]`` ->
    ``handle_similarity``). The learned ranker has one feature per family."""
    return signal_name.split("[", 1)[0]


def split_by_origin(
    name: str,
    category: str,
    scores: sp.csr_matrix,
    value_origins: Sequence[frozenset[str]],
    *,
    weight: float = 1.0,
    extra_origins: frozenset[str] = frozenset(),
) -> list[Signal]:
    """Cut a pair score matrix into one signal per pair provenance label.

    The label of entry ``(u, v)`` is ``value_origins[u] | value_origins[v] | extra_origins``; a
    user with no recorded origin counts as ``{"unknown"}`` (a policy can deny unknown origins).

    Args:
        name: family name; each signal is named ``f"{name}[{'+'.join(sorted(value label))}]"``
            (the value label excludes ``extra_origins``).
        category: data category of the compared values (``user.name.nickname``, ``user.avatar``).
        scores: ``(n, n)`` sparse non-negative pair scores.
        value_origins: n origin sets, one per user's value.
        weight: copied into every signal.
        extra_origins: provenance of anything else the scores depend on (the candidate pool is
            derived from the app's friendship graph).

    Returns:
        Signals sorted by name, each ``(n, n)`` float64 CSR; their sum is ``scores``. No signal
        for a label with no entries; ``[]`` for an all-zero matrix.

    Raises:
        InputError: ``scores`` not square sparse or ``len(value_origins) != n``.
    """
    s = _square(scores, "scores").astype(np.float64)
    n = s.shape[0]
    if len(value_origins) != n:
        raise InputError(f"{len(value_origins)} origin sets for {n} users")
    s.eliminate_zeros()
    labels: dict[frozenset[str], int] = {}
    codes = np.empty(n, dtype=np.int64)
    for i, o in enumerate(value_origins):
        codes[i] = labels.setdefault(frozenset(o) or frozenset({"unknown"}), len(labels))
    by_code = list(labels)
    coo = s.tocoo()
    r, c = coo.row.astype(np.int64), coo.col.astype(np.int64)
    lo = np.minimum(codes[r], codes[c])
    hi = np.maximum(codes[r], codes[c])
    pair_code = lo * max(len(labels), 1) + hi
    groups: dict[frozenset[str], list[int]] = {}
    for code in np.unique(pair_code).tolist():
        label = by_code[code // len(labels)] | by_code[code % len(labels)]
        groups.setdefault(label, []).append(code)
    out: list[Signal] = []
    for label, codes_of_label in groups.items():
        sel = np.isin(pair_code, codes_of_label)
        part = sp.csr_matrix((coo.data[sel], (r[sel], c[sel])), shape=(n, n), dtype=np.float64)
        part.sort_indices()
        out.append(
            Signal(
                f"{name}[{'+'.join(sorted(label))}]",
                category,
                frozenset(label) | frozenset(extra_origins),
                float(weight),
                part,
            )
        )
    return sorted(out, key=lambda sig: sig.name)


def handle_similarity_by_origin(
    pool: sp.csr_matrix,
    handles_normalized: Sequence[str | None],
    handle_origins: Sequence[frozenset[str]],
    *,
    name: str = "handle_similarity",
    weight: float = 1.0,
    pool_origins: frozenset[str] = frozenset({"douyin"}),
) -> list[Signal]:
    """Shared surname-like handle key on the pool pairs, split by the two handles' origins.

    Scores as :func:`~provguard.recommend.signals.handle_similarity` (1 for a shared key), cut by
    :func:`split_by_origin`.

    Args:
        pool: ``(n, n)`` sparse candidate mask.
        handles_normalized: n normalised handles (``None``: no handle).
        handle_origins: n origin sets of those handles (``{"wechat"}``, ``{"user_input"}``).
        name, weight: family name and weight.
        pool_origins: provenance of the pool (added to every signal's origins).

    Returns:
        Signals of category ``user.name.nickname``.

    Raises:
        InputError: shapes or lengths disagree.
    """
    whole = handle_similarity(pool, handles_normalized, frozenset(), name=name, weight=weight)
    return split_by_origin(
        name, NICKNAME, whole.scores, handle_origins, weight=weight, extra_origins=pool_origins
    )


def picture_similarity(
    pool: sp.csr_matrix,
    hashes: np.ndarray,
    has_hash: np.ndarray,
    picture_origins: Sequence[frozenset[str]],
    *,
    max_distance: int = 64,
    name: str = "picture_similarity",
    weight: float = 1.0,
    pool_origins: frozenset[str] = frozenset({"douyin"}),
) -> list[Signal]:
    """Perceptual closeness of two users' profile pictures on the pool pairs, split by origin.

    Score of a pool pair ``(u, v)`` whose pictures both have a hash: ``1 - d / max_distance`` for
    the PDQ Hamming distance ``d < max_distance`` (of 256 bits), else no entry. Unrelated photos
    are ~128 bits apart; edited copies of one photo are <= 31 (Meta's PDQ guidance), so the default
    of 64 keeps only related pictures.

    Args:
        pool: ``(n, n)`` sparse candidate mask.
        hashes: ``(n, 32) uint8`` packed PDQ hashes
            (:func:`~provguard.similarity.pictures.pack_hashes`); rows without a hash are ignored.
        has_hash: ``(n,) bool``, whether row i holds a real hash.
        picture_origins: n origin sets of the pictures.
        max_distance: 1..257.
        name, weight, pool_origins: as :func:`handle_similarity_by_origin`.

    Returns:
        Signals of category ``user.avatar``, scores in (0, 1].

    Raises:
        InputError: shapes disagree or ``max_distance`` out of range.
    """
    mask = _square(pool, "pool")
    n = mask.shape[0]
    h = np.asarray(hashes)
    ok = np.asarray(has_hash, dtype=bool)
    if h.shape != (n, PDQ_BYTES) or h.dtype != np.uint8:
        raise InputError(f"hashes must be a ({n}, {PDQ_BYTES}) uint8 array, got {h.shape}")
    if ok.shape != (n,):
        raise InputError(f"has_hash must have shape ({n},), got {ok.shape}")
    if not 1 <= max_distance <= 257:
        raise InputError(f"max_distance must be in 1..257, got {max_distance}")
    coo = sp.csr_matrix(mask != 0).tocoo()
    r, c = coo.row.astype(np.int64), coo.col.astype(np.int64)
    keep = (r != c) & ok[r] & ok[c]
    r, c = r[keep], c[keep]
    d = np.empty(r.size, dtype=np.int64)
    step = 1 << 20
    for start in range(0, r.size, step):
        d[start : start + step] = hamming_rows(
            h[r[start : start + step]], h[c[start : start + step]]
        )
    close = d < max_distance
    vals = 1.0 - d[close] / float(max_distance)
    scores = sp.csr_matrix((vals, (r[close], c[close])), shape=(n, n), dtype=np.float64)
    return split_by_origin(
        name, AVATAR, scores, picture_origins, weight=weight, extra_origins=pool_origins
    )


def provider_contacts(
    adj: sp.csr_matrix,
    contacts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    name: str = "provider_contacts",
    weight: float = 1.0,
) -> list[Signal]:
    """One signal per provider: 1 for each pair on that provider's friend list who are not yet
    friends on the app.

    Args:
        adj: ``(n, n)`` app adjacency (existing friends and self pairs are dropped).
        contacts: provider -> ``(src, dst)`` int arrays of its friend-list edges (undirected;
            duplicates collapse; ids must be < n).
        name, weight: signals are named ``f"{name}[{provider}]"``.

    Returns:
        Signals of category ``user.social.friend_list`` with origins ``{provider}``, sorted by
        provider, symmetric scores in {1}.

    Raises:
        InputError: bad adjacency or an id outside ``0..n-1``.
    """
    a = _square(adj, "adj")
    n = a.shape[0]
    out: list[Signal] = []
    for provider in sorted(contacts):
        s, d = (np.asarray(x, dtype=np.int64) for x in contacts[provider])
        if s.shape != d.shape or s.ndim != 1:
            raise InputError(f"contacts of {provider}: src and dst must be 1-D of equal length")
        if s.size and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n):
            raise InputError(f"contacts of {provider} name a user outside 0..{n - 1}")
        m = sp.csr_matrix(
            (np.ones(2 * s.size), (np.concatenate([s, d]), np.concatenate([d, s]))), shape=(n, n)
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        scores = drop_self_and_friends(m, a)
        out.append(
            Signal(f"{name}[{provider}]", FRIEND_LIST, frozenset({provider}), weight, scores)
        )
    return out


def sandbox_provider_contacts(
    src: np.ndarray,
    dst: np.ndarray,
    login: Sequence[str | None],
    *,
    keep: float = 0.5,
    seed: int = 7,
    providers: Sequence[str] = ("wechat", "qq"),
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Synthetic provider friend lists for evaluation (a model, documented in
    ``docs/recommendation.md``).

    The provider (WeChat/QQ) knows the real social graph; its friend list of a user is modelled
    as the edges of the **full** graph (``src``, ``dst``) whose two endpoints both signed in with
    that provider, each kept independently with probability ``keep`` (seeded). Held-out edges
    can therefore appear on a provider list: that is what makes imported contacts valuable, and
    the value measured depends on ``keep``.

    Args:
        src, dst: ``(m,) int`` undirected edges of the full graph.
        login: n entries, the provider each user signed in with (``None``/other: none).
        keep: probability an edge appears on the provider list, in [0, 1].
        seed: RNG seed.
        providers: the providers to build lists for.

    Returns:
        provider -> ``(src, dst)`` int64 arrays (possibly empty).

    Raises:
        InputError: bad arrays, ids outside ``login``, ``keep`` outside [0, 1].
    """
    if not 0.0 <= keep <= 1.0:
        raise InputError(f"keep must be in [0, 1], got {keep}")
    s = np.asarray(src, dtype=np.int64)
    d = np.asarray(dst, dtype=np.int64)
    if s.shape != d.shape or s.ndim != 1:
        raise InputError("src and dst must be 1-D of equal length")
    n = len(login)
    if s.size and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n):
        raise InputError(f"an edge names a user outside 0..{n - 1}")
    draws = np.random.default_rng(seed).random(s.size) < keep
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    login_arr = np.array([x if isinstance(x, str) else "" for x in login], dtype=object)
    for p in providers:
        on = login_arr == p
        sel = on[s] & on[d] & draws
        out[p] = (s[sel].copy(), d[sel].copy())
    return out


def interaction_weights(
    src: np.ndarray,
    dst: np.ndarray,
    n: int,
    *,
    time: np.ndarray | None = None,
    before: int | None = None,
) -> sp.csr_matrix:
    """Symmetric message-count matrix of an interaction log, ``log1p``-damped.

    Args:
        src, dst: ``(m,) int`` sender / recipient per message (self messages are ignored).
        n: number of users; ids must be < n.
        time: optional ``(m,) int`` unix seconds; with ``before``, only messages with
            ``time < before`` count.
        before: cut-off time (exclusive).

    Returns:
        ``(n, n)`` float64 CSR ``W`` with ``W[u, v] = ln(1 + messages between u and v, both
        directions)``, symmetric, zero diagonal.

    Raises:
        InputError: bad arrays or ids.
    """
    s = np.asarray(src, dtype=np.int64)
    d = np.asarray(dst, dtype=np.int64)
    if s.shape != d.shape or s.ndim != 1:
        raise InputError("src and dst must be 1-D of equal length")
    if before is not None:
        if time is None:
            raise InputError("'before' needs 'time'")
        t = np.asarray(time, dtype=np.int64)
        if t.shape != s.shape:
            raise InputError("time must have the shape of src")
        s, d = s[t < before], d[t < before]
    if s.size and (min(s.min(), d.min()) < 0 or max(s.max(), d.max()) >= n):
        raise InputError(f"a message names a user outside 0..{n - 1}")
    keep = s != d
    s, d = s[keep], d[keep]
    w = sp.csr_matrix(
        (np.ones(2 * s.size), (np.concatenate([s, d]), np.concatenate([d, s]))), shape=(n, n)
    )
    w.sum_duplicates()
    w.data = np.log1p(w.data)
    w.sort_indices()
    return w


def interaction_paths(
    adj: sp.csr_matrix,
    weights: sp.csr_matrix,
    *,
    name: str = "interaction_paths",
    origins: frozenset[str] = frozenset({"douyin"}),
    weight: float = 1.0,
) -> Signal:
    """Interaction-weighted friends of friends: ``(W @ W)[u, v] = sum over w of W[u, w] W[w, v]``
    with the diagonal and existing friendships removed (a weighted common-neighbours score, Lü &
    Zhou 2011, section 5).

    Args:
        adj: ``(n, n)`` app adjacency.
        weights: ``(n, n)`` symmetric interaction weights (:func:`interaction_weights`).
        name, origins, weight: copied into the signal (``origins``: where the messages were
            recorded, the app by default).

    Returns:
        Signal of category ``user.social.interaction``.

    Raises:
        InputError: shapes disagree.
    """
    a = _square(adj, "adj")
    w = _square(weights, "weights").astype(np.float64)
    if w.shape != a.shape:
        raise InputError(f"weights shape {w.shape} differs from adj shape {a.shape}")
    scores = drop_self_and_friends(sp.csr_matrix(w @ w), a)
    return Signal(name, INTERACTION, frozenset(origins), float(weight), scores)
