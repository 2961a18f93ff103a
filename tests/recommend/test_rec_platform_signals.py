"""Provenance-split profile signals, provider contacts, interaction paths."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from provguard.errors import InputError
from provguard.recommend.graph import adjacency
from provguard.recommend.platform_signals import (
    family,
    handle_similarity_by_origin,
    interaction_paths,
    interaction_weights,
    picture_similarity,
    provider_contacts,
    sandbox_provider_contacts,
    split_by_origin,
)
from provguard.recommend.signals import two_hop_candidates
from provguard.similarity.pictures import PDQ_BYTES

# 0-1, 0-2, 1-2, 1-3, 2-3, 3-4 ; node 5 isolated
SRC = np.array([0, 0, 1, 1, 2, 3])
DST = np.array([1, 2, 2, 3, 3, 4])
W, Q, U = frozenset({"wechat"}), frozenset({"qq"}), frozenset({"user_input"})


def test_split_by_origin_partitions_the_scores() -> None:
    scores = sp.csr_matrix(np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], float))
    parts = split_by_origin("x", "user.avatar", scores, [W, U, frozenset()], extra_origins=U)
    names = [p.name for p in parts]
    assert names == ["x[unknown+user_input]", "x[unknown+wechat]", "x[user_input+wechat]"]
    total = sum((p.scores for p in parts), sp.csr_matrix((3, 3)))
    assert np.array_equal(total.toarray(), scores.toarray())
    by = {p.name: p for p in parts}
    assert by["x[user_input+wechat]"].origins == {"wechat", "user_input"}
    assert by["x[unknown+wechat]"].scores.toarray()[0, 2] == 2.0
    assert by["x[unknown+wechat]"].origins == {"unknown", "wechat", "user_input"}
    assert family("x[unknown+wechat]") == "x" and family("plain") == "plain"
    assert split_by_origin("x", "user.avatar", sp.csr_matrix((3, 3)), [W, W, W]) == []
    with pytest.raises(InputError):
        split_by_origin("x", "user.avatar", scores, [W])


def test_handle_similarity_by_origin() -> None:
    a = adjacency(SRC, DST, n=6)
    pool = two_hop_candidates(a)
    handles = ["王小明", "li na", "x", "王芳", "li lei", None]
    origins = [W, U, U, U, U, frozenset()]
    parts = {p.name: p for p in handle_similarity_by_origin(pool, handles, origins)}
    # 0-3 (王/王): wechat handle vs typed handle; 1-4 (li/li): both typed
    assert set(parts) == {"handle_similarity[user_input+wechat]", "handle_similarity[user_input]"}
    assert parts["handle_similarity[user_input]"].scores.toarray()[1, 4] == 1
    assert parts["handle_similarity[user_input+wechat]"].scores.toarray()[0, 3] == 1
    assert parts["handle_similarity[user_input]"].origins == {"user_input", "douyin"}
    assert all(p.category == "user.name.nickname" for p in parts.values())


def test_picture_similarity_threshold_and_origins() -> None:
    a = adjacency(SRC, DST, n=6)
    pool = two_hop_candidates(a)
    hashes = np.zeros((6, PDQ_BYTES), np.uint8)
    hashes[3, :2] = 0xFF  # 16 bits from node 0's all-zero hash
    hashes[4] = 0xFF  # 256 bits away from nodes 1, 2
    has = np.array([True, True, True, True, True, False])
    parts = picture_similarity(pool, hashes, has, [Q, U, U, U, U, frozenset()])
    assert [p.name for p in parts] == ["picture_similarity[qq+user_input]"]
    assert parts[0].scores.toarray()[0, 3] == pytest.approx(1 - 16 / 64)
    assert parts[0].scores.nnz == 2  # (0, 3) and (3, 0); 1-4 / 2-4 too far
    assert parts[0].category == "user.avatar" and parts[0].origins == {"qq", "user_input", "douyin"}
    with pytest.raises(InputError):
        picture_similarity(pool, hashes[:3], has, [Q] * 6)
    with pytest.raises(InputError):
        picture_similarity(pool, hashes, has, [Q] * 6, max_distance=0)


def test_provider_contacts() -> None:
    a = adjacency(SRC, DST, n=6)
    contacts = {
        "wechat": (np.array([0, 0, 4, 4]), np.array([1, 3, 0, 0])),
        "qq": (np.array([], int), np.array([], int)),
    }
    sigs = provider_contacts(a, contacts)
    assert [s.name for s in sigs] == ["provider_contacts[qq]", "provider_contacts[wechat]"]
    wechat = sigs[1]
    assert wechat.origins == {"wechat"} and wechat.category == "user.social.friend_list"
    dense = wechat.scores.toarray()
    # 0-1 already friends -> dropped; 0-3 and 0-4 (duplicate) are contacts
    assert {(int(r), int(c)) for r, c in zip(*np.nonzero(dense), strict=True)} == {
        (0, 3),
        (3, 0),
        (0, 4),
        (4, 0),
    }
    assert sigs[0].scores.nnz == 0
    with pytest.raises(InputError):
        provider_contacts(a, {"wechat": (np.array([0]), np.array([9]))})


def test_sandbox_provider_contacts() -> None:
    src = np.array([0, 0, 1, 2, 3])
    dst = np.array([1, 2, 2, 3, 4])
    login = ["wechat", "wechat", "qq", "qq", None]
    full = sandbox_provider_contacts(src, dst, login, keep=1.0)
    assert full["wechat"][0].tolist() == [0] and full["wechat"][1].tolist() == [1]
    assert full["qq"][0].tolist() == [2] and full["qq"][1].tolist() == [3]
    none = sandbox_provider_contacts(src, dst, login, keep=0.0)
    assert none["wechat"][0].size == 0 and none["qq"][0].size == 0
    again = sandbox_provider_contacts(src, dst, login, keep=0.5, seed=3)
    assert all(
        np.array_equal(x, y)
        for p in again
        for x, y in zip(
            again[p], sandbox_provider_contacts(src, dst, login, keep=0.5, seed=3)[p], strict=True
        )
    )
    with pytest.raises(InputError):
        sandbox_provider_contacts(src, dst, login, keep=1.5)
    with pytest.raises(InputError):
        sandbox_provider_contacts(src, dst, login[:3])


def test_interaction_weights_and_paths() -> None:
    # messages: 0->1 twice, 1->0 once, 1->2 once (at t=5), 2->2 self, 3->2 at t=20
    s = np.array([0, 0, 1, 1, 2, 3])
    d = np.array([1, 1, 0, 2, 2, 2])
    t = np.array([1, 2, 3, 5, 6, 20])
    w = interaction_weights(s, d, 4, time=t, before=10)
    assert w[0, 1] == pytest.approx(np.log1p(3)) and w[1, 0] == w[0, 1]
    assert w[1, 2] == pytest.approx(np.log1p(1)) and w[2, 2] == 0 and w[2, 3] == 0
    adj = adjacency(np.array([0, 1]), np.array([1, 2]), 4)
    sig = interaction_paths(adj, w)
    assert sig.category == "user.social.interaction"
    assert sig.scores[0, 2] == pytest.approx(np.log1p(3) * np.log1p(1))
    assert sig.scores.nnz == 2
    with pytest.raises(InputError):
        interaction_weights(s, d, 4, before=10)
    with pytest.raises(InputError):
        interaction_weights(s, d, 3)
