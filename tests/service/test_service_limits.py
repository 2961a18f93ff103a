"""Session 6 (fresh-user findings F4, F5, F6): the service answers no decision it cannot audit,
refuses non-standard and duplicate-key JSON, and bounds what it accepts.

Every case goes through real HTTP requests (the app's TestClient) and checks the status, the
PG code and what the audit log got: no ``decision`` entry for a refused request, the chain
still verifies, and the writer reports no failed entry (the F4 symptom was ``failed`` +1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.decide import Request as PdpRequest
from provguard.decide import decide
from provguard.errors import RequestError
from provguard.policy import load_policy_dir
from provguard.service import ServiceSettings, create_app
from provguard.service.app import REJECTED_KIND
from provguard.service.limits import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_SAFE_INTEGER,
    MAX_VALUE_LENGTH,
    StrictJSONError,
    ensure_auditable,
    strict_loads,
)

from .conftest import DENY_BODY, api_keys, hdr

ROOT = Path(__file__).parents[2]


def _kinds(store: Path) -> dict[str, int]:
    with SqliteAuditLog(store / "control.db", create=False) as log:
        out: dict[str, int] = {}
        for e in log.entries():
            out[e.kind] = out.get(e.kind, 0) + 1
        assert log.verify().ok
        return out


def _flush(c: TestClient) -> None:
    writer = c.app.state.provguard.writer  # type: ignore[attr-defined]
    if writer is not None:
        assert writer.flush(10)


def _body(**extra: Any) -> str:
    """DENY_BODY as JSON text with ``extra`` fields spliced in as raw JSON text."""
    text = json.dumps(DENY_BODY)[:-1]
    for name, raw in extra.items():
        text += f', "{name}": {raw}'
    return text + "}"


JSON = {"content-type": "application/json"}


def _post(c: TestClient, path: str, text: str, who: str = "douyin") -> Any:
    return c.post(path, content=text.encode("utf-8"), headers={**hdr(who), **JSON})


@pytest.fixture(params=["queued", "committed"])
def acked(request: pytest.FixtureRequest, store: Path) -> Iterator[TestClient]:
    settings_ = ServiceSettings(
        store=store, policy=ROOT / "policies", api_keys=api_keys(), ack=request.param
    )
    with TestClient(create_app(settings_)) as c:
        yield c


# ------------------------------------------------------------------------------ F4


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused_before_deciding(
    acked: TestClient, store: Path, constant: str
) -> None:
    """F4: NaN / Infinity / -Infinity anywhere (context, subject, audit_context; single and
    batch) is 422 PG140; nothing is decided or logged as a decision; the writer fails nothing.
    The finding's permit (a grandfathered transfer asserted by the caller) included."""
    c = acked
    _flush(c)
    before = _kinds(store)
    permit = json.dumps(
        {
            "action": "transfer",
            "category": "grant.login",
            "origins": ["wechat"],
            "recipient": "duoshan",
            "grant_first_used_by_recipient_at": "2019-01-01T00:00:00Z",
        }
    )[:-1]
    cases = 0
    for field in ("context", "subject", "audit_context"):
        for base in (_body(), permit + "}"):
            single = base[:-1] + f', "{field}": {{"x": {constant}}}}}'
            r = _post(c, "/v1/decisions", single)
            assert r.status_code == 422, r.text
            err = r.json()["error"]
            assert err["code"] == "PG140"
            assert constant.lstrip("-") in err["message"] and "RFC 8259" in err["message"]
            batch = '{"requests": [' + _body() + ", " + single + ", " + _body() + "]}"
            r = _post(c, "/v1/decisions/batch", batch)
            assert r.status_code == 422 and r.json()["error"]["code"] == "PG140", r.text
            cases += 2
    _flush(c)
    after = _kinds(store)
    assert after.get("decision", 0) == before.get("decision", 0)  # nothing decided
    assert after.get(REJECTED_KIND, 0) == before.get(REJECTED_KIND, 0) + cases
    health = c.get("/healthz").json()["audit"]
    assert health["failed"] == 0
    # the same request with a finite number is decided and recorded
    r = _post(c, "/v1/decisions", _body(audit_context='{"x": 1.5}'))
    assert r.status_code == 200 and r.json()["audit"]["submission"] is not None
    _flush(c)
    assert _kinds(store)["decision"] == before.get("decision", 0) + 1


def test_audit_off_refuses_the_same(store: Path) -> None:
    """With the audit log off nothing is recorded, but the answers are the same: the body is
    refused, not decided."""
    settings_ = ServiceSettings(
        store=store, policy=ROOT / "policies", api_keys=api_keys(), audit_mode="off"
    )
    before = _kinds(store)
    with TestClient(create_app(settings_)) as c:
        r = _post(c, "/v1/decisions", _body(audit_context='{"x": NaN}'))
        assert r.status_code == 422 and r.json()["error"]["code"] == "PG140"
        r = _post(c, "/v1/decisions", _body(audit_context='{"x": 1}'))
        assert r.status_code == 200 and r.json()["audit"]["mode"] == "off"
    # the decision is not recorded, but the log says the service answered unaudited (G18)
    after = _kinds(store)
    assert after.get("decision", 0) == before.get("decision", 0)
    assert after.get("service.audit_off", 0) == before.get("service.audit_off", 0) + 1


def test_overflowing_and_unsafe_numbers_are_refused(client: TestClient, store: Path) -> None:
    """``1e400`` parses to inf in Python's json; integers beyond 2**53 - 1 are not I-JSON."""
    before = _kinds(store).get("decision", 0)
    for raw in ("1e400", "-1e400", str(MAX_SAFE_INTEGER + 1), "1" + "0" * 5000):
        r = _post(client, "/v1/decisions", _body(context=f'{{"x": {raw}}}'))
        assert r.status_code == 422 and r.json()["error"]["code"] == "PG140", (raw, r.text)
    r = _post(client, "/v1/decisions", _body(context=f'{{"x": {MAX_SAFE_INTEGER}}}'))
    assert r.status_code == 200
    _flush(client)
    assert _kinds(store)["decision"] == before + 1


def test_unpaired_surrogates_are_refused(client: TestClient, store: Path) -> None:
    """A lone ``\\ud800`` escape is not text: the audit entry could not be UTF-8 encoded."""
    before = _kinds(store).get("decision", 0)
    for raw in ('"\\ud800"', '"a\\udfffb"', '"\\ude00\\ud83d"'):
        r = _post(client, "/v1/decisions", _body(audit_context=f'{{"req": {raw}}}'))
        assert r.status_code == 422 and "surrogate" in r.json()["error"]["message"], r.text
    r = _post(client, "/v1/decisions", _body(audit_context='{"req": "\\ud83d\\ude00"}'))
    assert r.status_code == 200  # a proper pair is an emoji
    _flush(client)
    with SqliteAuditLog(store / "control.db", create=False) as log:
        entries = list(log.entries(kind="decision"))
    assert len(entries) == before + 1
    assert entries[-1].payload["context"]["req"] == "\U0001f600"


def test_no_key_still_comes_first(client: TestClient, store: Path) -> None:
    """A malformed body from a caller without a key is 401 PG510 (no hint about the body) and
    writes nothing."""
    before = _kinds(store)
    r = client.post("/v1/decisions", content=_body(context='{"x": NaN}').encode(), headers=JSON)
    assert r.status_code == 401 and r.json()["error"]["code"] == "PG510"
    _flush(client)
    assert _kinds(store) == before


def test_an_unencodable_decision_is_never_answered(store: Path) -> None:
    """The backstop (every ack mode, audit on or off): a decision whose entry the writer's own
    encoder refuses raises PG140 before it is submitted."""
    policy = load_policy_dir(ROOT / "policies")
    from datetime import UTC, datetime

    req = PdpRequest(
        app="douyin",
        action="use",
        category="user.avatar",
        origins=frozenset({"wechat"}),
        at=datetime(2020, 1, 1, tzinfo=UTC),
        purpose="social.friend_recommendation",
        context={"x": float("nan")},
    )
    decision = decide(policy, req)
    with pytest.raises(RequestError, match="cannot be encoded"):
        ensure_auditable(decision, stage="service", context={})
    plain = decide(policy, PdpRequest(**{**req.__dict__, "context": {}}))
    ensure_auditable(plain, stage="service", context={"req": "ok"})
    with pytest.raises(RequestError, match="cannot be encoded"):
        ensure_auditable(plain, stage="service", context={"req": "\ud800"})
    with pytest.raises(RequestError, match="cannot be encoded"):
        ensure_auditable(plain, stage="service", context={"req": math.inf})


# ------------------------------------------------------------------------------ F5


def test_duplicate_keys_are_refused(client: TestClient, store: Path) -> None:
    """F5: ``"origins":["wechat"], "origins":["douyin"]`` used to be decided as douyin."""
    before = _kinds(store).get("decision", 0)
    text = (
        '{"action":"use","category":"user.avatar","origins":["wechat"],"origins":["douyin"],'
        '"purpose":"social.friend_recommendation"}'
    )
    r = _post(client, "/v1/decisions", text)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "PG140" and "duplicate key 'origins'" in err["message"]
    nested = _body(context='{"k": 1, "k": 2}')
    assert _post(client, "/v1/decisions", nested).status_code == 422
    batch = '{"requests": [' + _body() + "], " + '"requests": [' + _body() + "]}"
    r = _post(client, "/v1/decisions/batch", batch)
    assert r.status_code == 422 and "duplicate key 'requests'" in r.json()["error"]["message"]
    _flush(client)
    assert _kinds(store).get("decision", 0) == before


# ------------------------------------------------------------------------------ F6


def test_a_body_over_the_limit_is_413(client: TestClient, store: Path) -> None:
    """F6: a 2 MiB body (the finding's 30 MB audit_context, smaller) is refused 413 PG560
    before it is parsed; nothing is logged; a body under the limit is served."""
    _flush(client)
    before = _kinds(store)
    big = _body(audit_context=json.dumps({"x": "A" * (2 << 20)}))
    assert len(big) > DEFAULT_MAX_BODY_BYTES
    for who in ("douyin", "auditor"):
        r = _post(client, "/v1/decisions", big, who)
        assert r.status_code == 413, r.text[:200]
        err = r.json()["error"]
        assert err["code"] == "PG560" and err["type"] == "BodyTooLargeError"
        assert "1,048,576 bytes" in err["message"]
    # without a key too (the body is not read, so nothing about it is revealed)
    r = client.post("/v1/decisions", content=big.encode(), headers=JSON)
    assert r.status_code == 413
    # a chunked body (no Content-Length) is cut off at the limit as well
    chunks = [big.encode()[i : i + 65536] for i in range(0, len(big), 65536)]
    r = client.post("/v1/decisions", content=iter(chunks), headers={**hdr("douyin"), **JSON})
    assert r.status_code == 413 and r.json()["error"]["code"] == "PG560"
    # the scans and the dashboard login are bounded too
    r = client.post("/v1/scans", content=big.encode(), headers={**hdr("douyin"), **JSON})
    assert r.status_code == 413
    r = client.post("/dashboard/login", content=b"key=" + b"A" * (2 << 20))
    assert r.status_code == 413
    _flush(client)
    assert _kinds(store) == before


def test_the_limit_is_configurable(store: Path) -> None:
    """``max_body_bytes`` (``serve --max-body-bytes``): one byte over is 413, at it is served."""
    text = _body(audit_context='{"req": "' + "r" * 100 + '"}')
    settings_ = ServiceSettings(
        store=store, policy=ROOT / "policies", api_keys=api_keys(), max_body_bytes=len(text)
    )
    with TestClient(create_app(settings_)) as c:
        assert _post(c, "/v1/decisions", text).status_code == 200
        r = _post(c, "/v1/decisions", text[:-1] + " }")
        assert r.status_code == 413 and f"{len(text):,} bytes" in r.json()["error"]["message"]


def test_long_values_and_keys_are_refused(client: TestClient, store: Path) -> None:
    """F6: a 10,000-character context value (and any string value over 256 characters in
    subject / context / audit_context, a key over 128, an origin or scope over 128) is 422
    PG140; 256 characters are accepted and recorded verbatim."""
    _flush(client)
    before = _kinds(store)
    long_value = json.dumps({"x": "v" * 10_000})
    for field in ("context", "subject", "audit_context"):
        r = _post(client, "/v1/decisions", _body(**{field: long_value}))
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "PG140" and "at most 256 characters" in err["message"]
        assert field in err["message"]
    just_over = json.dumps({"x": "v" * (MAX_VALUE_LENGTH + 1)})
    assert _post(client, "/v1/decisions", _body(audit_context=just_over)).status_code == 422
    long_key = json.dumps({"k" * 129: 1})
    assert _post(client, "/v1/decisions", _body(context=long_key)).status_code == 422
    long_scope = json.dumps(["s" * 129])
    assert _post(client, "/v1/decisions", _body(grant_scopes=long_scope)).status_code == 422
    batch = '{"requests": [' + _body() + ", " + _body(context=long_value) + "]}"
    assert _post(client, "/v1/decisions/batch", batch).status_code == 422
    _flush(client)
    after = _kinds(store)
    assert after.get("decision", 0) == before.get("decision", 0)
    assert after.get(REJECTED_KIND, 0) == before.get(REJECTED_KIND, 0) + 7
    # at the limit: decided, and the value is in the entry as sent
    at_limit = "v" * MAX_VALUE_LENGTH
    r = _post(client, "/v1/decisions", _body(audit_context=json.dumps({"x": at_limit})))
    assert r.status_code == 200
    _flush(client)
    with SqliteAuditLog(store / "control.db", create=False) as log:
        last = list(log.entries(kind="decision"))[-1]
    assert last.payload["context"]["x"] == at_limit


# ------------------------------------------------------------------------------ strict JSON


_finite = st.floats(allow_nan=False, allow_infinity=False)
_safe_ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_values = st.recursive(
    st.none() | st.booleans() | _safe_ints | _finite | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_values, st.booleans())
def test_strict_loads_agrees_with_json_on_ijson(value: Any, ascii_only: bool) -> None:
    """Differential: on I-JSON (finite numbers, safe integers, unique keys, real text) the
    strict decoder gives exactly what ``json.loads`` gives."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert strict_loads(text.encode("utf-8")) == json.loads(text)


@settings(max_examples=200, deadline=None)
@given(_values, st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9007199254740992"]))
def test_strict_loads_refuses_a_bad_number_anywhere(value: Any, bad: str) -> None:
    """Property: a non-finite / overflowing / unsafe number placed anywhere is refused."""
    text = json.dumps({"wrapper": [value, {"bad": "@@"}]}).replace('"@@"', bad)
    with pytest.raises(StrictJSONError):
        strict_loads(text.encode("utf-8"))


def test_strict_loads_refuses_non_utf8_and_bom() -> None:
    with pytest.raises(StrictJSONError, match="not UTF-8"):
        strict_loads('{"a": "é"}'.encode("latin-1"))
    with pytest.raises(StrictJSONError, match="byte order mark"):
        strict_loads("\ufeff{}".encode())
    with pytest.raises(StrictJSONError):
        strict_loads(b"[" * 100_000 + b"]" * 100_000)  # too deep: refused, not a crash


@settings(max_examples=200, deadline=None)
@given(_values, st.integers(0xD800, 0xDFFF), st.booleans())
def test_strict_loads_refuses_a_lone_surrogate_anywhere(
    value: Any, code: int, as_key: bool
) -> None:
    """Property: one unpaired surrogate escape (upper or lower case hex) anywhere -- value or
    key, at any depth -- is refused; the same document without it is accepted."""
    lone = chr(code)
    doc = {("k" + lone if as_key else "k"): ("v" if as_key else "v" + lone), "rest": value}
    text = json.dumps([value, doc], ensure_ascii=True)
    if code % 2:
        text = text.replace(f"\\u{code:04x}", f"\\u{code:04X}")
    with pytest.raises(StrictJSONError, match="surrogate"):
        strict_loads(text.encode("ascii"))
    assert strict_loads(json.dumps([value]).encode()) == [value]
