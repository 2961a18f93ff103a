"""Hypothesis strategies for random bundles and requests, shared by the policy tests."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
from hypothesis import strategies as st

from provguard.decide import ConsentRecord, Request
from provguard.policy import PolicySet, load_bundle_text

APPS = ["douyin", "duoshan", "toutiao"]
CONTROLLERS = ["bytedance", "duoshan_co"]
ORIGINS = ["wechat", "qq", "user_input", "unknown"]
# keys on one branch at several depths (a rule on a leaf, a request on its ancestor and the other
# way round) and siblings (user.name.legal / user.name.nickname, social.messaging /
# social.friend_recommendation), so that the deny-matches-ancestors semantics is exercised
CATS = ["user", "user.avatar", "user.name.nickname", "user.name", "grant.login", "user.name.legal"]
PURPOSES = [
    "social.friend_recommendation",
    "profile.display",
    "social",
    "marketing",
    "social.messaging",
]
ACTIONS = ["use", "transfer", "derive", "store", "display"]
SCOPES = ["snsapi_userinfo", "get_user_info"]
DAYS = [date(2019, 1, 1), date(2019, 3, 20), date(2019, 9, 1), date(2020, 1, 1)]


def _items(draw: st.DrawFn, pool: list[str], lo: int = 1, hi: int = 2) -> str:
    return ", ".join(draw(st.lists(st.sampled_from(pool), min_size=lo, max_size=hi, unique=True)))


def _selector(draw: st.DrawFn, pool: list[str]) -> str | None:
    kind = draw(st.sampled_from(["none", "list", "not", "any"]))
    if kind == "none":
        return None
    if kind == "any":
        return "any"
    if kind == "list":
        return f"[{_items(draw, pool)}]"
    return f"{{not: [{_items(draw, pool)}]}}"


def _condition(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 6))
    d = draw(st.sampled_from(DAYS)).isoformat()
    if kind == 0:
        op = draw(st.sampled_from(["before", "on_or_after"]))
        return f"{{field: grant.granted_at, {op}: {d}}}"
    if kind == 1:
        return f"{{field: grant.first_used_by_recipient_at, before: {d}}}"
    if kind == 2:
        return f"{{field: grant.status, in: [{_items(draw, ['active', 'revoked', 'expired'])}]}}"
    if kind == 3:
        return f"{{field: subject.age, at_least: {draw(st.integers(10, 20))}}}"
    if kind == 4:
        return "{field: context.channel, equals: app}"
    if kind == 6:
        return f"{{field: grant.scopes, contains: {draw(st.sampled_from(SCOPES))}}}"
    return "{consent: {separate: true, names: [recipient, method]}}"


@st.composite
def bundle_texts(draw: st.DrawFn, bundle_id: str = "b0", max_rules: int = 6) -> str:
    start = draw(st.sampled_from(DAYS[:3]))
    until = draw(st.sampled_from(["", "date", "event"]))
    head = f"{{id: {bundle_id}, kind: internal_policy, issuer: t, effective_from: {start}"
    if until == "date":
        end = draw(st.sampled_from([d for d in DAYS if d > start]))
        head += f", effective_until: {end}"
    elif until == "event":
        head += ", effective_until: {event: final_judgment}"
    lines = [f"instrument: {head}}}"]
    default = draw(st.sampled_from(["", "", "deny", "permit", "not_applicable"]))
    if default:
        lines.append(f"default: {default}")
    # absent: fail closed (unless a rule names `unknown` itself); both explicit forms too
    unknown_origin = draw(st.sampled_from(["", "", "fail_closed", "as_written"]))
    if unknown_origin:
        lines.append(f"unknown_origin: {unknown_origin}")
    lines.append("rules:")
    for k in range(draw(st.integers(1, max_rules))):
        parts = [f"id: r{k}", f"effect: {draw(st.sampled_from(['deny', 'permit']))}"]
        if draw(st.booleans()) and draw(st.booleans()):
            parts.append("mode: shadow")
        parts.append(
            "actions: any"
            if draw(st.integers(0, 5)) == 0
            else f"actions: [{_items(draw, ACTIONS)}]"
        )
        if draw(st.booleans()):
            parts.append(f"purposes: [{_items(draw, PURPOSES)}]")
        for axis, pool in (("apps", APPS), ("controllers", CONTROLLERS), ("recipients", APPS)):
            sel = _selector(draw, pool) if axis == "apps" or draw(st.booleans()) else None
            if sel is not None:
                parts.append(f"{axis}: {sel}")
        data = []
        if draw(st.booleans()):
            data.append(f"categories: [{_items(draw, CATS)}]")
        if draw(st.booleans()):
            data.append(f"origins: [{_items(draw, ORIGINS)}]")
        if data:
            parts.append(f"data: {{{', '.join(data)}}}")
        if draw(st.integers(0, 3)) == 0:
            parts.append(f"when: [{_condition(draw)}]")
        u = draw(st.integers(0, 4))
        if u == 0:
            parts.append(
                f"unless: {{grant_first_used_by_recipient_before: {draw(st.sampled_from(DAYS))}}}"
            )
        elif u == 1:
            parts.append(f"unless: [{_condition(draw)}]")
        if draw(st.integers(0, 3)) == 0:
            parts.append("obligations: [{kind: mask, strategy: hash}, {kind: purge, within: P7D}]")
        lines.append(f"  - {{{', '.join(parts)}}}")
    return "\n".join(lines) + "\n"


@st.composite
def policy_sets(draw: st.DrawFn, max_bundles: int = 3, max_rules: int = 6) -> PolicySet:
    n = draw(st.integers(1, max_bundles))
    bundles = [
        load_bundle_text(draw(bundle_texts(f"b{i}", max_rules)), f"b{i}.yaml") for i in range(n)
    ]
    ps = PolicySet.of(bundles)
    for b in bundles:
        if draw(st.booleans()):
            ps = ps.with_event(b.instrument.id, "final_judgment", draw(st.sampled_from(DAYS)))
    return ps


def _time(draw: st.DrawFn) -> datetime | None:
    if draw(st.integers(0, 3)) == 0:
        return None
    d = draw(st.sampled_from(DAYS))
    return datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(
        seconds=draw(st.sampled_from([-1, 0, 1, 3600]))
    )


@st.composite
def requests(draw: st.DrawFn, rich: bool = True) -> Request:
    action = draw(st.sampled_from(ACTIONS))
    purpose = draw(st.sampled_from([None, *PURPOSES]))
    if action in ("use", "derive", "display") and purpose is None:
        purpose = PURPOSES[0]
    recipient = draw(st.sampled_from([None, *APPS, "other_app"]))
    if action == "transfer" and recipient is None:
        recipient = "duoshan"
    at = _time(draw) or datetime(2019, 6, 1, tzinfo=UTC)
    kw: dict[str, object] = {}
    if rich:
        kw = {
            "grant_status": draw(st.sampled_from([None, "active", "revoked", "expired"])),
            "subject": {"age": draw(st.integers(8, 30))} if draw(st.booleans()) else {},
            "context": {"channel": draw(st.sampled_from(["app", "web"]))}
            if draw(st.booleans())
            else {},
            "grant_granted_at": _time(draw),
            "grant_scopes": draw(
                st.one_of(st.none(), st.frozensets(st.sampled_from(SCOPES), max_size=2))
            ),
            "consents": tuple(
                ConsentRecord(
                    "c1",
                    frozenset({draw(st.sampled_from(CATS))}),
                    frozenset({draw(st.sampled_from(PURPOSES))}),
                    recipient=draw(st.sampled_from([None, *APPS])),
                    method=draw(st.sampled_from([None, "api"])),
                    separate=draw(st.booleans()),
                    given_at=datetime(2019, 2, 1, tzinfo=UTC),
                    withdrawn_at=_time(draw),
                )
                for _ in range(draw(st.integers(0, 1)))
            ),
        }
    return Request(
        app=draw(st.sampled_from([*APPS, "other_app"])),
        action=action,
        category=draw(st.sampled_from(CATS)),
        origins=frozenset(draw(st.sets(st.sampled_from([*ORIGINS, "apple"]), min_size=1))),
        at=at,
        purpose=purpose,
        recipient=recipient,
        controller=draw(st.sampled_from([None, *CONTROLLERS, "other_co"])),
        grant_first_used_by_recipient_at=_time(draw),
        **kw,  # type: ignore[arg-type]
    )


def time_column(reqs: list[Request], name: str) -> np.ndarray:
    """The ``datetime64[ns]`` column (UTC, NaT = absent) of attribute ``name`` of ``reqs``,
    as ``decide_batch`` takes it."""
    return np.array(
        [
            np.datetime64(getattr(r, name).astimezone(UTC).replace(tzinfo=None), "ns")
            if getattr(r, name) is not None
            else np.datetime64("NaT", "ns")
            for r in reqs
        ],
        dtype="datetime64[ns]",
    )
