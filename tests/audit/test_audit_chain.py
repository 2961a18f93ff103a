"""The pure hash chain: canonical encoding, hashing, and verify_chain on in-memory tampering."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    Checkpoint,
    build_entry,
    canonical_json,
    canonical_payload,
    entry_hash,
    format_at,
    make_entry,
    parse_at,
    verify_chain,
)
from provguard.errors import AuditChainError, AuditError

T0 = datetime(2019, 3, 20, 8, 30, tzinfo=UTC)


def chain(payloads: Sequence[Mapping[str, object]], kind: str = "decision") -> list[AuditEntry]:
    out: list[AuditEntry] = []
    for i, p in enumerate(payloads):
        out.append(make_entry(out[-1] if out else None, kind, p, T0 + timedelta(seconds=i)))
    return out


def test_entry_hash_is_sha256_of_the_canonical_document() -> None:
    payload = {"rule": "no-platform-profile-in-friend-recommendation", "handle": "小明 ✨", "n": 3}
    expected_doc = json.dumps(
        {
            "seq": 1,
            "at": "2019-03-20T08:30:00.000000Z",
            "kind": "decision",
            "payload": payload,
            "prev": GENESIS_HASH,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    assert " " not in expected_doc.replace("小明 ✨", "")
    digest = hashlib.sha256(expected_doc.encode("utf-8")).hexdigest()
    assert entry_hash(GENESIS_HASH, 1, T0, "decision", payload) == digest
    # the same instant in another zone hashes the same
    cst = timezone(timedelta(hours=8))
    assert entry_hash(GENESIS_HASH, 1, T0.astimezone(cst), "decision", payload) == digest


def test_canonical_encoding_rules() -> None:
    assert (
        canonical_json({"b": 1, "a": [1, (2, 3)], "c": "微信"})
        == '{"a":[1,[2,3]],"b":1,"c":"微信"}'
    )
    assert canonical_payload(
        {"t": datetime(2019, 3, 20, 16, 0, tzinfo=timezone(timedelta(hours=8)))}
    ) == ('{"t":"2019-03-20T08:00:00.000000Z"}')
    assert canonical_payload({"d": date(2019, 3, 20)}) == '{"d":"2019-03-20"}'
    with pytest.raises(AuditError):
        canonical_payload({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(AuditError):
        canonical_payload({"x": float("nan")})
    with pytest.raises(AuditError):
        canonical_payload({"x": {1, 2}})
    with pytest.raises(AuditError):
        format_at(datetime(2019, 3, 20))  # naive
    assert parse_at(format_at(T0)) == T0
    with pytest.raises(AuditError):
        parse_at("2019-03-20 08:30")


def test_make_entry_normalises_payload_as_a_reader_sees_it() -> None:
    e = make_entry(None, "decision", {"at": T0, "rules": ("a", "b")}, T0)
    assert e.payload == {"at": "2019-03-20T08:30:00.000000Z", "rules": ["a", "b"]}
    assert e.seq == 1 and e.prev_hash == GENESIS_HASH and e.recompute_hash() == e.hash
    with pytest.raises(AuditError):
        build_entry(1, GENESIS_HASH, "", {}, T0)


def test_intact_chain_and_empty_chain() -> None:
    entries = chain([{"i": i} for i in range(10)])
    r = verify_chain(entries)
    assert r.ok and r.count == 10 and r.head_hash == entries[-1].hash and r.first_bad_seq is None
    r.raise_for_failure()
    empty = verify_chain([])
    assert empty.ok and empty.count == 0 and empty.head_hash == GENESIS_HASH
    assert verify_chain([], Checkpoint(0, GENESIS_HASH)).ok


def test_edited_entry_is_named() -> None:
    entries = chain([{"i": i} for i in range(10)])
    entries[4] = dataclasses.replace(entries[4], payload={"i": 99}, payload_json=None)
    r = verify_chain(entries)
    assert not r.ok and r.first_bad_seq == 5 and r.count == 4
    assert "edited" in (r.reason or "")
    with pytest.raises(AuditChainError) as info:
        r.raise_for_failure()
    assert info.value.seq == 5 and info.value.code == "PG310"


def test_removed_and_reordered_entries_are_told_apart() -> None:
    entries = chain([{"i": i} for i in range(10)])
    removed = entries[:3] + entries[4:]
    r = verify_chain(removed)
    assert r.first_bad_seq == 4 and "missing" in (r.reason or "")
    reordered = [*entries[:3], entries[4], entries[3], *entries[5:]]
    r = verify_chain(reordered)
    assert r.first_bad_seq == 4 and "out of order" in (r.reason or "")


def test_rewritten_entry_with_recomputed_hash_is_named_through_its_successor() -> None:
    entries = chain([{"i": i} for i in range(10)])
    entries[2] = build_entry(3, entries[1].hash, "decision", {"i": "forged"}, entries[2].at)
    r = verify_chain(entries)
    assert r.first_bad_seq == 3 and "rewritten" in (r.reason or "")


def test_non_canonical_stored_payload_that_hashes_is_flagged() -> None:
    # a forger who hashes non-canonical bytes did not use provguard to write them
    e = make_entry(None, "decision", {"a": 1}, T0)
    text = '{"a": 1}'
    forged = dataclasses.replace(
        e,
        payload_json=text,
        hash=hashlib.sha256(
            (
                f'{{"at":"{e.stored_at()}","kind":"decision","payload":{text},"prev":"{GENESIS_HASH}","seq":1}}'
            ).encode()
        ).hexdigest(),
    )
    r = verify_chain([forged])
    assert r.first_bad_seq == 1 and "canonical" in (r.reason or "")


def test_truncation_and_tail_rewrite_need_a_checkpoint() -> None:
    entries = chain([{"i": i} for i in range(10)])
    cp = Checkpoint(10, entries[-1].hash)
    assert verify_chain(entries[:7]).ok  # undetectable alone
    r = verify_chain(entries[:7], cp)
    assert not r.ok and r.first_bad_seq == 8 and "truncated" in (r.reason or "")
    rewritten = [*entries[:9], build_entry(10, entries[8].hash, "decision", {"x": 1}, T0)]
    r = verify_chain(rewritten, cp)
    assert not r.ok and r.first_bad_seq == 10 and "checkpoint" in (r.reason or "")
    longer = chain([{"i": i} for i in range(12)])
    assert verify_chain(longer, Checkpoint(10, longer[9].hash)).ok  # later appends are fine


# ---------------------------------------------------------------------------- property test

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63),
    st.text(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)
payloads = st.dictionaries(
    st.text(max_size=8),
    st.recursive(
        json_scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=6,
    ),
    max_size=5,
)
TAMPERS = [
    "edit_payload",
    "edit_kind",
    "edit_at",
    "rewrite",
    "delete",
    "swap_positions",
    "swap_seq",
    "insert_renumber",
    "insert_duplicate",
    "truncate",
    "rewrite_last",
]


@st.composite
def tampered_chains(draw: st.DrawFn) -> tuple[list[AuditEntry], Checkpoint, int, str]:
    items = draw(st.lists(payloads, min_size=2, max_size=25))
    entries = chain(items, kind=draw(st.sampled_from(["decision", "grant.transfer", "决定"])))
    n = len(entries)
    cp = Checkpoint(n, entries[-1].hash)
    tamper = draw(st.sampled_from(TAMPERS))
    i = draw(st.integers(0, n - 2))  # 0-based position, never the last unless stated
    seq = i + 1
    if tamper == "edit_payload":
        new = dict(entries[i].payload)
        new["__tampered__"] = draw(json_scalars)
        entries[i] = dataclasses.replace(entries[i], payload=new, payload_json=None)
        return entries, cp, seq, tamper
    if tamper == "edit_kind":
        entries[i] = dataclasses.replace(entries[i], kind=entries[i].kind + "x")
        return entries, cp, seq, tamper
    if tamper == "edit_at":
        at = entries[i].at + timedelta(microseconds=draw(st.integers(1, 10**9)))
        entries[i] = dataclasses.replace(entries[i], at=at, at_text=None)
        return entries, cp, seq, tamper
    if tamper == "rewrite":
        entries[i] = build_entry(seq, entries[i].prev_hash, "forged", {"f": 1}, T0)
        return entries, cp, seq, tamper
    if tamper == "delete":
        del entries[i]
        return entries, cp, seq, tamper
    if tamper == "swap_positions":
        j = draw(st.integers(i + 1, n - 1))
        entries[i], entries[j] = entries[j], entries[i]
        return entries, cp, seq, tamper
    if tamper == "swap_seq":
        j = draw(st.integers(i + 1, n - 1))
        a, b = entries[i], entries[j]
        entries[i] = dataclasses.replace(b, seq=a.seq)
        entries[j] = dataclasses.replace(a, seq=b.seq)
        return entries, cp, seq, tamper
    if tamper in ("insert_renumber", "insert_duplicate"):
        forged = build_entry(seq, entries[i].prev_hash, "forged", {"f": 1}, T0)
        rest = entries[i:]
        if tamper == "insert_renumber":
            rest = [dataclasses.replace(e, seq=e.seq + 1) for e in rest]
        return [*entries[:i], forged, *rest], cp, seq, tamper
    if tamper == "truncate":
        return entries[: i + 1], cp, seq + 1, tamper
    assert tamper == "rewrite_last"
    entries[-1] = build_entry(n, entries[-1].prev_hash, "forged", {"f": 1}, T0)
    return entries, cp, n, tamper


@settings(max_examples=400, deadline=None)
@given(tampered_chains())
def test_any_single_tamper_is_named_at_its_position(
    case: tuple[list[AuditEntry], Checkpoint, int, str],
) -> None:
    entries, cp, expected_seq, tamper = case
    r = verify_chain(entries, cp)
    assert not r.ok, tamper
    assert r.first_bad_seq == expected_seq, (tamper, r.reason)
    assert r.reason


@settings(max_examples=200, deadline=None)
@given(payloads, st.text(min_size=1, max_size=10), st.integers(1, 10**9))
def test_spliced_hash_equals_full_canonical_encoding(
    payload: dict[str, object], kind: str, seq: int
) -> None:
    doc = {"seq": seq, "at": T0, "kind": kind, "payload": payload, "prev": GENESIS_HASH}
    digest = hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()
    assert entry_hash(GENESIS_HASH, seq, T0, kind, payload) == digest
    # and the stored text round-trips to itself
    text = canonical_payload(payload)
    assert canonical_payload(json.loads(text)) == text
