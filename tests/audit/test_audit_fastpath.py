"""The audit writer's fast path gives byte-for-byte the chain of the generic path.

Differential tests: ``decision_json`` against ``canonical_payload(decision_payload(...))``,
``format_at_ns`` against ``format_at``, ``append_canonical`` against ``append_batch``, and a
writer on the fast path against one forced onto the dict path (a log with a masker).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import AuditEntry, canonical_payload, format_at, format_at_ns
from provguard.audit.masking import Masker
from provguard.audit.records import decision_json, decision_payload
from provguard.audit.writer import AuditWriter
from provguard.decide import ConsentRecord, Decision, Reason, Request
from provguard.errors import AuditError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ORIGINS = ["apple", "douyin", "duoshan", "google", "qq", "unknown", "user_input", "wechat"]
# any text, including quotes, backslashes, control and non-ASCII characters (no surrogates:
# those cannot be stored as UTF-8 by either path)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
AWARE = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)
) | st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2040, 1, 1),
    timezones=st.timezones(),
)
ATTR = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
    st.dates(),
    st.frozensets(TEXT, max_size=3),
)
CONTEXT_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    TEXT,
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(TEXT, st.integers(), max_size=2),
    st.dates(),
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    action = draw(st.sampled_from(["use", "display", "derive", "store", "transfer"]))
    purpose = draw(
        st.sampled_from(["social.friend_recommendation", "profile.display"])
        if action in ("use", "display", "derive")
        else st.none() | st.just("profile.display")
    )
    optional = st.none() | TEXT.filter(bool)
    consents = draw(
        st.lists(
            st.builds(
                ConsentRecord,
                consent_id=TEXT,
                categories=st.frozensets(st.just("user.avatar"), max_size=1),
                recipient=st.none() | TEXT,
                given_at=st.none() | AWARE,
            ),
            max_size=2,
        )
    )
    return Request(
        app=draw(TEXT),
        action=action,
        category=draw(st.sampled_from(["user.avatar", "user.name.nickname", "grant.login"])),
        origins=frozenset(draw(st.lists(st.sampled_from(ORIGINS), min_size=1, max_size=3))),
        at=draw(AWARE),
        purpose=purpose,
        recipient=draw(TEXT.filter(bool)) if action == "transfer" else draw(optional),
        controller=draw(optional),
        grant_first_used_by_recipient_at=draw(st.none() | AWARE),
        grant_granted_at=draw(st.none() | AWARE),
        grant_status=draw(st.none() | st.sampled_from(["active", "revoked", "expired"])),
        grant_scopes=draw(st.none() | st.frozensets(TEXT, max_size=3)),
        subject=draw(st.one_of(st.just({}), st.dictionaries(TEXT, ATTR, max_size=3))),
        context=draw(st.one_of(st.just({}), st.dictionaries(TEXT, ATTR, max_size=2))),
        consents=tuple(consents),
    )


REASONS = st.builds(
    Reason,
    rule_id=TEXT,
    instrument_id=st.sampled_from(["cn-tj-binhai-2019-douyin-duoshan", "pipl", "x\u00e9\n"]),
    effect=st.sampled_from(["deny", "permit"]),
    outcome=st.sampled_from(["applied", "excepted", "shadow"]),
    explanation=TEXT,
)


@settings(max_examples=300, deadline=None)
@given(
    requests(),
    st.sampled_from(["permit", "deny", "not_applicable"]),
    st.lists(REASONS, max_size=3),
    TEXT,
    st.none() | st.dictionaries(TEXT, CONTEXT_VALUE, max_size=4),
)
def test_decision_json_is_the_canonical_payload(
    request: Request,
    effect: Any,
    reasons: list[Reason],
    stage: str,
    context: dict[str, Any] | None,
) -> None:
    decision = Decision(effect=effect, request=request, reasons=tuple(reasons))
    expected = canonical_payload(decision_payload(decision, stage=stage, context=context))
    assert decision_json(decision, stage=stage, context=context) == expected


def test_decision_json_refuses_what_the_generic_encoder_refuses() -> None:
    decision = Decision(
        effect="permit",
        request=Request(
            app="douyin",
            action="store",
            category="user.avatar",
            origins=frozenset({"wechat"}),
            at=datetime(2019, 6, 30, tzinfo=UTC),
        ),
    )
    bads: list[dict[Any, Any]] = [{"x": object()}, {1: "a"}, {"f": float("nan")}]
    for bad in bads:
        with pytest.raises(AuditError):
            canonical_payload(decision_payload(decision, stage="s", context=bad))
        with pytest.raises(AuditError):
            decision_json(decision, stage="s", context=bad)


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**62), 2**62))
def test_format_at_ns_matches_format_at(ns: int) -> None:
    assert format_at_ns(ns) == format_at(EPOCH + timedelta(microseconds=ns // 1000))


def test_format_at_ns_across_second_boundaries() -> None:
    base = 1_561_852_800 * 10**9  # 2019-06-30T00:00:00Z
    got = [format_at_ns(base + k * 400_000_000) for k in range(-3, 4)]
    assert got == [
        "2019-06-29T23:59:58.800000Z",
        "2019-06-29T23:59:59.200000Z",
        "2019-06-29T23:59:59.600000Z",
        "2019-06-30T00:00:00.000000Z",
        "2019-06-30T00:00:00.400000Z",
        "2019-06-30T00:00:00.800000Z",
        "2019-06-30T00:00:01.200000Z",
    ]


def test_append_canonical_equals_append_batch(tmp_path: Path) -> None:
    at = datetime(2019, 6, 30, 8, 30, tzinfo=UTC)
    payloads = [
        {"i": i, "s": 'wechat \u5fae\u4fe1 "q"\n', "d": date(2019, 7, 1).isoformat()}
        for i in range(7)
    ]
    generic = SqliteAuditLog(tmp_path / "g.db")
    fast = SqliteAuditLog(tmp_path / "f.db")
    generic.append_batch(
        [("decision", p, at + timedelta(seconds=i)) for i, p in enumerate(payloads)]
    )
    last = fast.append_canonical(
        [
            ("decision", format_at(at + timedelta(seconds=i)), canonical_payload(p))
            for i, p in enumerate(payloads)
        ]
    )
    a, b = list(generic.entries()), list(fast.entries())
    assert [(e.seq, e.stored_at(), e.stored_payload(), e.prev_hash, e.hash) for e in a] == [
        (e.seq, e.stored_at(), e.stored_payload(), e.prev_hash, e.hash) for e in b
    ]
    assert last == (7, b[-1].hash)
    assert fast.verify().ok
    # appends continue the chain from the stored head; an empty kind writes nothing
    fast.append("decision", {"i": 7}, at)
    with pytest.raises(AuditError):
        fast.append_canonical([("decision", format_at(at), "{}"), ("", format_at(at), "{}")])
    assert fast.count() == 8 and fast.verify().ok

    def broken() -> Iterator[tuple[str, str, str]]:  # a producer that fails half-way
        for i in range(600):  # past one executemany chunk (512 rows)
            yield ("decision", format_at(at), canonical_payload({"i": i}))
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError):
        fast.append_canonical(broken())
    assert fast.count() == 8 and fast.verify().ok  # all or nothing


def _decisions(n: int) -> list[Decision]:
    from provguard.decide import DecisionPoint
    from provguard.policy import load_policy_dir

    pdp = DecisionPoint(load_policy_dir(Path(__file__).parents[2] / "policies"))
    return [
        pdp.decide(
            Request(
                app="douyin",
                action="use",
                category="user.avatar",
                origins=frozenset({ORIGINS[i % len(ORIGINS)]}),
                at=datetime(2019, 6, 30, tzinfo=UTC) + timedelta(seconds=i),
                purpose="social.friend_recommendation",
            )
        )
        for i in range(n)
    ]


class DictPathLog:
    """A sink with only ``append_batch``: forces the writer's dict path (decision_payload, then
    the log masks and encodes)."""

    def __init__(self, inner: SqliteAuditLog) -> None:
        self.inner = inner

    def append_batch(
        self, items: Iterable[tuple[str, Mapping[str, object], datetime | None]]
    ) -> list[AuditEntry]:
        return self.inner.append_batch(items)

    def sign_checkpoint(self, private_key: Any) -> Any:
        return self.inner.sign_checkpoint(private_key)


@pytest.mark.parametrize("masked", [False, True])
def test_writer_fast_path_writes_the_same_chain_as_the_dict_path(
    tmp_path: Path, masked: bool
) -> None:
    decisions = _decisions(40)
    at = datetime(2019, 6, 30, 9, tzinfo=UTC)
    masker = Masker.for_deployment(mask_handles=True, secret=b"k") if masked else None
    fast_log = SqliteAuditLog(tmp_path / "f.db", masker=masker)
    dict_log = SqliteAuditLog(tmp_path / "d.db", masker=masker)
    for sink in (fast_log, DictPathLog(dict_log)):
        # gil_slice=3: the writer releases the GIL every 3 entries it encodes
        with AuditWriter(sink, batch_max=7, gil_slice=3) as w:
            assert (w._fast_append is None) == isinstance(sink, DictPathLog)
            for i, d in enumerate(decisions):
                context: dict[str, object] = {"i": i, "ok": i % 2 == 0}
                if i % 4 == 1:
                    context["access_token"] = f"tok-{i}"
                if i % 4 == 2:
                    context["note"] = f"Bearer abc{i}"
                if i % 4 == 3:
                    context["handle"] = f"wx_{i}"
                w.submit_decision(d, stage="t", context=context, at=at)
                if i % 10 == 0:
                    w.submit("note", {"i": i, "when": at, "token": "t"}, at=at)
            assert w.flush(10)
    fast, slow = list(fast_log.entries()), list(dict_log.entries())
    assert len(fast) == 44 and [e.hash for e in fast] == [e.hash for e in slow]
    assert fast_log.verify().ok
    stored = " ".join(e.stored_payload() for e in fast)
    for secret in ("tok-1", "Bearer abc2", "wx_3", '"token":"t"'):
        assert (secret in stored) is not masked
    assert ("masked:hmac-sha256:" in stored) is masked
    with pytest.raises(ValueError, match="gil_slice"):
        AuditWriter(fast_log, gil_slice=-1)


def test_writer_fast_path_fails_a_bad_entry_alone(tmp_path: Path) -> None:
    decisions = _decisions(5)
    log = SqliteAuditLog(tmp_path / "a.db")
    with AuditWriter(log, batch_max=100) as w:
        numbers = [
            w.submit_decision(d, stage="t", context={"bad": object()} if i == 2 else {"i": i})
            for i, d in enumerate(decisions)
        ]
        assert not w.flush(10)  # one entry failed
        assert [w.wait(n or 0, timeout=1) for n in numbers] == [True, True, False, True, True]
    stats = w.stats()
    assert (stats.committed, stats.failed) == (4, 1)
    assert [e.payload["context"] for e in log.entries()] == [{"i": i} for i in (0, 1, 3, 4)]
    assert log.verify().ok


def test_closure_and_method_submit_alike(tmp_path: Path) -> None:
    (d,) = _decisions(1)
    log = SqliteAuditLog(tmp_path / "a.db")
    w = AuditWriter(log).start()
    assert w.submit_decision(d, stage="t") == 1
    assert AuditWriter.submit_decision(w, d, stage="t") == 2  # the reference method
    assert w.submit("note", {"x": 1}) == 3
    w.close()
    with pytest.raises(AuditError, match="closed"):
        w.submit_decision(d, stage="t")
    with pytest.raises(AuditError, match="closed"):
        AuditWriter.submit_decision(w, d, stage="t")
    assert [e.kind for e in log.entries()] == ["decision", "decision", "note"]
    assert log.verify().ok


def test_outcome_cache_keys_on_the_reasons_object_and_the_effect() -> None:
    request = Request(
        app="douyin",
        action="store",
        category="user.avatar",
        origins=frozenset({"wechat"}),
        at=datetime(2019, 6, 30, tzinfo=UTC),
    )
    reasons = (
        Reason("r-deny", "inst-a", "deny", "applied", ""),
        Reason("r-permit", "inst-b", "permit", "excepted", ""),
    )
    for effect in ("deny", "permit", "deny", "not_applicable"):  # one tuple, several effects
        decision = Decision(effect=effect, request=request, reasons=reasons)
        text = decision_json(decision, stage="s")
        assert text == canonical_payload(decision_payload(decision, stage="s"))
    deny = Decision(effect="deny", request=request, reasons=reasons)
    permit = Decision(effect="permit", request=request, reasons=reasons)
    assert '"rules":["r-deny"]' in decision_json(deny, stage="s")
    assert '"excepted":true' in decision_json(permit, stage="s")
    assert '"rules":["r-deny","r-permit"]' in decision_json(permit, stage="s")


@settings(max_examples=100, deadline=None)
@given(requests(), st.lists(st.tuples(AWARE, st.none() | AWARE, st.none() | AWARE), max_size=4))
def test_request_text_cache_keeps_each_requests_own_times(
    request: Request, times: list[tuple[datetime, datetime | None, datetime | None]]
) -> None:
    # requests that share everything but their times hit one cached text: each keeps its times
    for at, first_used, granted in times:
        variant = dataclasses.replace(
            request,
            at=at,
            grant_first_used_by_recipient_at=first_used,
            grant_granted_at=granted,
        )
        decision = Decision(effect="permit", request=variant)
        expected = canonical_payload(decision_payload(decision, stage="s"))
        assert decision_json(decision, stage="s") == expected


def test_a_dropped_writer_is_freed_without_the_cyclic_gc(tmp_path: Path) -> None:
    # the instance closure must not make a reference cycle with its writer (and queue)
    import gc
    import weakref

    (d,) = _decisions(1)
    log = SqliteAuditLog(tmp_path / "a.db")
    gc.disable()
    try:
        w = AuditWriter(log, capacity=1)
        assert w.submit_decision(d, stage="t") == 1
        ref = weakref.ref(w)
        submit = w.submit_decision
        del w
        assert ref() is None
        with pytest.raises(AuditError, match="gone"):  # queue full, nobody to wait for
            submit(d, stage="t")
    finally:
        gc.enable()
