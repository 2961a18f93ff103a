"""F3: grant facts a caller asserts must be possible (first use neither before the grant nor
after ``at``), and a revoked / expired grant is never grandfathered. Every decision path that
takes these facts -- Request + reference, compiled, DecisionPoint, batch, Cedar, the CLI, HTTP
single and batch -- refuses the same requests (PG140, naming the fields) and decides the others
alike."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from provguard.cli.policy import decide_cmd
from provguard.decide import (
    CompiledPolicy,
    DecisionPoint,
    Request,
    check_grant_times,
    decide,
    decide_batch,
)
from provguard.decide.batch import EFFECT_CODES, BatchDecisions
from provguard.decide.cedar import cedar_request, expected_cedar, to_cedar
from provguard.errors import RequestError
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import default_registry

from .conftest import hdr

POLICIES = Path(__file__).parents[2] / "policies"
AT = datetime(2019, 6, 30, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (first use by duoshan, grant given, status, expected: effect / "refused" + fields named)
CASES: list[tuple[str | None, str | None, str | None, str]] = [
    ("2019-01-01", "2019-05-01", None, "refused"),  # F3: used before it was given
    ("2019-01-01", "2019-05-01", "active", "refused"),
    ("2019-07-01", None, None, "refused"),  # used after the decision time
    ("2019-07-01", "2019-01-01", "active", "refused"),
    ("1970-01-01", None, "revoked", "deny"),  # F3: revoked is never grandfathered
    ("2019-01-01", "2018-12-01", "expired", "deny"),
    ("2019-01-01", "2018-12-01", "active", "permit"),  # grandfathered
    ("2019-01-01", "2018-12-01", None, "permit"),
    ("2019-01-01", "2019-01-01", None, "permit"),  # equal instants are consistent
    ("2019-06-30", "2019-04-01", "active", "deny"),  # first use == at, after the order
    ("2019-01-01", None, None, "permit"),
    (None, "2019-05-01", None, "deny"),  # no first use: not grandfathered (fail closed)
]


def _kw(first: str | None, granted: str | None, status: str | None) -> dict[str, object]:
    return {
        "grant_first_used_by_recipient_at": t(first) if first else None,
        "grant_granted_at": t(granted) if granted else None,
        "grant_status": status,
    }


def _request(first: str | None, granted: str | None, status: str | None, **kw: object) -> Request:
    return Request(
        "douyin",
        "transfer",
        "grant.login",
        frozenset({"qq"}),
        AT,
        recipient="duoshan",
        **_kw(first, granted, status),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


_NAMES = {v: k for k, v in EFFECT_CODES.items()}


def _effects(batch: BatchDecisions) -> list[str]:
    return [_NAMES[int(e)] for e in batch.effect]


@pytest.fixture(scope="module")
def policy() -> PolicySet:
    return load_policy_dir(POLICIES)


@pytest.mark.parametrize(("first", "granted", "status", "want"), CASES)
def test_every_python_path_refuses_the_same_requests_and_decides_the_rest_alike(
    policy: PolicySet, first: str | None, granted: str | None, status: str | None, want: str
) -> None:
    compiled = CompiledPolicy(policy)
    pdp = DecisionPoint(policy)
    batch_kw = {
        "app": "douyin",
        "action": "transfer",
        "category": "grant.login",
        "origins": np.array([default_registry().mask(["qq"])], np.uint64),
        "at": AT,
        "recipient": "duoshan",
        "grant_first_used_by_recipient_at": t(first) if first else None,
        "grant_granted_at": t(granted) if granted else None,
        "grant_status": status,
    }
    if want == "refused":
        with pytest.raises(RequestError) as info:
            _request(first, granted, status, grant_facts="asserted")
        assert info.value.code == "PG140"
        assert "'grant_first_used_by_recipient_at'" in info.value.message
        assert ("'grant_granted_at'" in info.value.message) or ("'at'" in info.value.message)
        with pytest.raises(RequestError) as binfo:
            decide_batch(compiled, grant_facts="asserted", **batch_kw)  # type: ignore[arg-type]
        assert binfo.value.message == f"row 0: {info.value.message}"
        # the registry's facts (recorded) are taken as stored: the request can be built
        recorded = _request(first, granted, status)
        assert decide(policy, recorded).effect == compiled.decide(recorded).effect
        return
    req = _request(first, granted, status, grant_facts="asserted")
    effects = {
        "reference": decide(policy, req).effect,
        "compiled": compiled.decide(req).effect,
        "point": pdp.decide(req).effect,
        "batch": _effects(decide_batch(compiled, grant_facts="asserted", **batch_kw))[0],  # type: ignore[arg-type]
        "batch-recorded": _effects(decide_batch(compiled, **batch_kw))[0],  # type: ignore[arg-type]
    }
    assert effects == dict.fromkeys(effects, want)
    excepted = decide(policy, req).excepted
    assert excepted == (want == "permit")


def test_cedar_agrees_on_the_grant_status_rule(policy: PolicySet) -> None:
    cedarpy = pytest.importorskip("cedarpy")
    reqs = [_request(f, g, s) for f, g, s, w in CASES if w != "refused"]
    cp = to_cedar(policy)
    results = cedarpy.is_authorized_batch(
        [cedar_request(r) for r in reqs], cedarpy.PolicySet.from_str(cp.text), []
    )
    for r, res in zip(reqs, results, strict=True):
        d = decide(policy, r)
        got = {cp.reasons[int(p.removeprefix("policy"))][:2] for p in res.diagnostics.reasons}
        want = expected_cedar(d.effect, {(x.rule_id, x.instrument_id) for x in d.determining})
        assert (res.decision.value, got) == want, r


def test_a_whole_batch_names_its_first_impossible_row(policy: PolicySet) -> None:
    first = np.array(["2019-01-01", "2019-01-01", "2019-07-02", "NaT"], dtype="datetime64[us]")
    granted = np.array(["2018-01-01", "2019-02-01", "NaT", "NaT"], dtype="datetime64[us]")
    kw = {
        "app": "douyin",
        "action": "transfer",
        "category": "grant.login",
        "origins": np.full(4, default_registry().mask(["wechat"]), np.uint64),
        "at": AT,
        "recipient": "duoshan",
        "grant_first_used_by_recipient_at": first,
        "grant_granted_at": granted,
    }
    with pytest.raises(RequestError, match=r"^\[PG140\] row 1: 'grant_first_used_by_recipient_at'"):
        decide_batch(CompiledPolicy(policy), grant_facts="asserted", **kw)  # type: ignore[arg-type]
    ok = decide_batch(CompiledPolicy(policy), **kw)  # type: ignore[arg-type]
    assert _effects(ok) == ["permit", "permit", "deny", "deny"]


def test_check_grant_times_compares_instants_across_zones() -> None:
    east = datetime.fromisoformat("2019-05-01T07:00:00+08:00")  # 2019-04-30T23:00Z
    check_grant_times(AT, east, t("2019-04-30T23:00:00"))  # equal instants
    with pytest.raises(RequestError, match="precedes 'grant_granted_at'"):
        check_grant_times(AT, east, t("2019-04-30T23:00:01"))


cli = typer.Typer()
cli.command("decide")(decide_cmd)
cli.command("other")(decide_cmd)


def _cli(first: str | None, granted: str | None, status: str | None) -> tuple[int, str]:
    args = ["decide", "--app", "douyin", "--action", "transfer", "--category", "grant.login"]
    args += ["--origin", "qq", "--recipient", "duoshan", "--at", "2019-06-30T00:00:00Z"]
    args += ["--policy", str(POLICIES)]
    if first:
        args += ["--first-used-at", f"{first}T00:00:00Z"]
    if granted:
        args += ["--granted-at", f"{granted}T00:00:00Z"]
    if status:
        args += ["--grant-status", status]
    res = CliRunner().invoke(cli, args, env={"COLUMNS": "200"})
    return res.exit_code, res.output


@pytest.mark.parametrize(("first", "granted", "status", "want"), CASES)
def test_cli_and_http_refuse_the_same_requests(
    client: TestClient, first: str | None, granted: str | None, status: str | None, want: str
) -> None:
    code, out = _cli(first, granted, status)
    body: dict[str, object] = {
        "app": "douyin",
        "action": "transfer",
        "category": "grant.login",
        "origins": ["qq"],
        "recipient": "duoshan",
        "at": "2019-06-30",
    }
    if first:
        body["grant_first_used_by_recipient_at"] = f"{first}T00:00:00Z"
    if granted:
        body["grant_granted_at"] = f"{granted}T00:00:00Z"
    if status:
        body["grant_status"] = status
    single = client.post("/v1/decisions", json=body, headers=hdr("auditor"))
    ok = {**body, "grant_first_used_by_recipient_at": None, "grant_granted_at": None}
    batch = client.post(
        "/v1/decisions/batch", json={"requests": [ok, body]}, headers=hdr("auditor")
    )
    if want == "refused":
        assert code == 2 and "PG140" in out and "grant_first_used_by_recipient_at" in out
        assert single.status_code == 422
        err = single.json()["error"]
        assert err["code"] == "PG140" and "'grant_first_used_by_recipient_at'" in err["message"]
        assert batch.status_code == 422
        assert batch.json()["error"]["message"].startswith("requests[1]: ")
        return
    assert code == (1 if want == "deny" else 0), out  # decide's exit code: 1 for a deny
    assert out.split()[0] == want.upper()
    assert single.status_code == 200 and single.json()["effect"] == want
    assert [d["effect"] for d in batch.json()["decisions"]] == ["deny", want]
