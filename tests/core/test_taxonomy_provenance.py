from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provguard.errors import InputError, TaxonomyError
from provguard.provenance import ProvenanceLabel, declassify, default_registry, union
from provguard.taxonomy import DATA_CATEGORIES, PURPOSES, Taxonomy, covers


def test_covers_is_hierarchical_not_prefix() -> None:
    assert covers("user.name", "user.name.nickname")
    assert covers("user.name", "user.name")
    assert not covers("user.name", "user.namespace")
    assert not covers("user.name.nickname", "user.name")


def test_unknown_key_names_siblings() -> None:
    with pytest.raises(TaxonomyError, match=r"known keys here: .*user\.name\.nickname"):
        DATA_CATEGORIES.check("user.name.nick")
    assert PURPOSES.check("social.friend_recommendation") == "social.friend_recommendation"


def test_taxonomy_rejects_orphans() -> None:
    with pytest.raises(TaxonomyError, match="before its parent"):
        Taxonomy.from_entries("x", [("a", ""), ("b.c", "")])
    with pytest.raises(TaxonomyError, match="malformed"):
        Taxonomy.from_entries("x", [("a..b", "")])


def test_registry_bits_are_stable() -> None:
    r = default_registry()
    assert r.bit("unknown") == 0
    assert r.names[:4] == ("unknown", "user_input", "wechat", "qq")
    assert r.mask(["wechat", "qq"]) == 0b1100
    new = r.intern("apple_music")
    assert r.bit("apple_music") == new == len(r.names) - 1
    with pytest.raises(InputError, match="unknown origin"):
        r.bit("weibo")


def test_registry_caps_at_64() -> None:
    r = default_registry()
    for i in range(64 - len(r.names)):
        r.intern(f"o{i}")
    with pytest.raises(InputError, match="too many origins"):
        r.intern("one_too_many")


ORIGINS = ["unknown", "user_input", "wechat", "qq", "apple", "google", "douyin"]


@given(st.lists(st.lists(st.sampled_from(ORIGINS), max_size=4), max_size=6))
def test_union_is_the_set_union(parts: list[list[str]]) -> None:
    r = default_registry()
    labels = [ProvenanceLabel.of(r, p, [f"g{i}"]) for i, p in enumerate(parts)]
    merged = union(labels)
    assert merged.origins(r) == frozenset(o for p in parts for o in p)
    assert merged.grants == frozenset(f"g{i}" for i in range(len(parts)))


def test_declassify_removes_one_origin_and_records_who() -> None:
    r = default_registry()
    label = ProvenanceLabel.of(r, ["wechat", "user_input"], ["g1"])
    at = datetime(2019, 4, 1, tzinfo=UTC)
    new, record = declassify(
        label, r, "wechat", actor="dpo@douyin", reason="re-entered by user", at=at
    )
    assert new.origins(r) == {"user_input"}
    assert new.grants == {"g1"}
    assert (record.before, record.after) == (label.mask, new.mask)
    with pytest.raises(InputError, match="does not carry"):
        declassify(new, r, "wechat", actor="x", reason="y", at=at)
    with pytest.raises(InputError, match="actor and a reason"):
        declassify(label, r, "wechat", actor=" ", reason="y", at=at)


def test_extend_adds_keys_below_existing_ones_without_touching_the_original() -> None:
    ext = DATA_CATEGORIES.extend(
        [("user.avatar.thumb.small", "a small thumbnail"), ("user.avatar.thumb", "thumbnail")]
    )
    assert ext.keys == DATA_CATEGORIES.keys | {"user.avatar.thumb", "user.avatar.thumb.small"}
    assert ext.descriptions["user.avatar.thumb"] == "thumbnail"
    assert "user.avatar.thumb" not in DATA_CATEGORIES
    assert ext.descendants("user.avatar") == {
        "user.avatar",
        "user.avatar.thumb",
        "user.avatar.thumb.small",
    }
    assert ext.check("user.avatar.thumb.small") == "user.avatar.thumb.small"
    with pytest.raises(TaxonomyError, match="already exists"):
        DATA_CATEGORIES.extend([("user.avatar", "")])
    with pytest.raises(TaxonomyError, match="already exists"):
        DATA_CATEGORIES.extend([("user.x", ""), ("user.x", "")])
    with pytest.raises(TaxonomyError, match=r"no known parent \('user\.nope' is unknown\)"):
        DATA_CATEGORIES.extend([("user.nope.x", "")])
    with pytest.raises(TaxonomyError, match="new roots are not allowed"):
        PURPOSES.extend([("hobby", "")])
    with pytest.raises(TaxonomyError, match="malformed"):
        PURPOSES.extend([("social..x", "")])
