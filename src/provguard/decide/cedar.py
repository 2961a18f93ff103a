"""Translate policy sets to Cedar (https://www.cedarpolicy.com) for a differential oracle.

Encoding: principal ``App::"<app>"``, action ``Action::"<action>"``, resource ``Data::"value"``.
The request context carries ``purposes`` / ``categories`` (the request key and its ancestors, so a
rule key covers a request key iff it is in that set: Cedar's descendant-only ``in``), the request
keys themselves as ``purpose`` (when present) / ``category`` (a ``forbid``'s keys also match
their ancestors, provguard's deny semantics: its strict ancestors are listed in the policy text
and compared with these), ``origins``, ``time`` (UTC seconds),
optional ``controller``, ``recipient``, ``first_used``, ``granted`` (UTC seconds),
``grant_status``, ``scopes``, and the records ``subject`` and ``ctx``.

Each enforced rule becomes a ``forbid`` (deny) or ``permit``; a deny with an ``unless`` becomes a
``forbid ... unless {exception}`` plus a ``permit ... when {exception}`` (the exception permits,
as in provguard). A bundle default becomes a policy that applies when the instrument is in force
and none of its enforced rules matches. Shadow rules are left out (they never decide).

Consent conditions: Cedar has no quantifier over a set, so a request's consent records travel as
``consent0`` .. ``consent3`` (records: ``categories`` / ``purposes`` sets, optional ``recipient``,
``method``, ``given`` and ``withdrawn`` in UTC microseconds, ``separate``) and a consent condition
is the disjunction over them; ``time_us`` is the request time in microseconds, so "given at or
before the request, not withdrawn by then" is exact.

Cedar answers Allow / Deny with the policies that determined it; provguard's ``deny`` is Cedar's
Deny with forbids, ``permit`` is Allow, ``not_applicable`` is Deny with no policy. Non-integer
number bounds, ``equals`` on a number or date, and more than four consent records per request have
no Cedar counterpart here: :class:`NotTranslatable`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from provguard.decide.conditions import day_start
from provguard.decide.model import ConsentRecord, Request
from provguard.policy.model import (
    ConsentCondition,
    ConsentRequirement,
    FieldCondition,
    PolicySet,
    Rule,
    Selector,
)
from provguard.taxonomy.keys import ancestors


class NotTranslatable(ValueError):
    """The policy uses a construct this translation does not cover."""


@dataclass(frozen=True)
class CedarPolicy:
    """Cedar source text and, per policy (``policy0``, ``policy1``, ...), its provguard reason
    ``(rule id, instrument id, kind)`` with kind ``forbid`` | ``permit`` | ``exception``."""

    text: str
    reasons: tuple[tuple[str, str, str], ...]


def _q(s: str) -> str:
    return json.dumps(s)


def _secs(d: date, zone: str | None = None) -> int:
    """Unix seconds of local midnight of ``d`` in ``zone`` (UTC by default)."""
    return int(day_start(d, zone).timestamp())


def _list(values: tuple[str, ...] | frozenset[str]) -> str:
    return "[" + ", ".join(_q(v) for v in sorted(values)) + "]"


def _selector(sel: Selector, expr: str, attr: str | None) -> str | None:
    """Cedar test for a selector; ``attr`` None means the principal."""
    if not sel.constrained:
        return None
    if attr is None:
        if sel.values is not None:
            return "principal in [" + ", ".join(f"App::{_q(v)}" for v in sel.values) + "]"
        return "!(principal in [" + ", ".join(f"App::{_q(v)}" for v in sel.excluded) + "])"
    has = f"context has {attr}"
    if sel.values is not None:
        return f"({has} && {_list(sel.values)}.contains({expr}))"
    return f"({has} && !({_list(sel.excluded)}.contains({expr})))"


_TIME_ATTR = {"grant.granted_at": "granted", "grant.first_used_by_recipient_at": "first_used"}


MAX_CONSENTS = 4  # consent records per request the translation unrolls (Cedar has no "exists")


def _us(t: datetime) -> int:
    """Microseconds since the Unix epoch (UTC), the precision of Python datetimes."""
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _consent_covers(c: str, need: ConsentRequirement) -> str:
    """Cedar test that the consent record at path ``c`` covers the request and states what
    ``need`` requires (:func:`provguard.decide.conditions.consent_covers`)."""
    tests = [
        f"{c}.categories.containsAny(context.categories)",
        f"(context.purposes == [] || {c}.purposes.containsAny(context.purposes))",
        f"(!(context has recipient) || ({c} has recipient && {c}.recipient == context.recipient))",
    ]
    if need.separate:
        tests.append(f"{c}.separate")
    for name in need.names:
        if name in ("recipient", "method"):
            tests.append(f'({c} has {name} && {c}.{name} != "")')
        else:  # purpose(s), categories: the set is not empty
            tests.append(f"{c}.{'purposes' if name == 'purpose' else name} != []")
    return " && ".join(tests)


def _consent(cond: ConsentCondition) -> str:
    """``any`` over the request's consent records, unrolled over ``context.consent0`` ..
    ``consent{MAX_CONSENTS - 1}`` (present ones only)."""
    need = cond.consent
    active: list[str] = []
    withdrawn: list[str] = []
    for i in range(MAX_CONSENTS):
        c = f"context.consent{i}"
        cover = f"context has consent{i} && {_consent_covers(c, need)}"
        active.append(
            f"({cover} && {c} has given && {c}.given <= context.time_us && "
            f"(!({c} has withdrawn) || context.time_us < {c}.withdrawn))"
        )
        withdrawn.append(f"({cover} && {c} has withdrawn && {c}.withdrawn <= context.time_us)")
    any_active = "(" + " || ".join(active) + ")"
    if need.state == "active":
        return any_active
    return f"!{any_active} && (" + " || ".join(withdrawn) + ")"


def _condition(c: FieldCondition | ConsentCondition) -> str:
    if isinstance(c, ConsentCondition):
        return _consent(c)
    parts: list[str] = []
    if c.field in _TIME_ATTR:
        attr, path = _TIME_ATTR[c.field], f"context.{_TIME_ATTR[c.field]}"
    elif c.field == "grant.status":
        attr, path = "grant_status", "context.grant_status"
    elif c.field == "grant.scopes":
        attr, path = "scopes", "context.scopes"
    else:
        scope, name = c.field.split(".", 1)
        rec = "subject" if scope == "subject" else "ctx"
        attr, path = name, f"context.{rec}.{name}"
    has = (
        f"context has {attr}" if "." not in path[8:] else f"context.{path.split('.')[1]} has {attr}"
    )
    if c.exists is not None:
        parts.append(has if c.exists else f"!({has})")
    if c.exists is False:
        return " && ".join(parts)
    body: list[str] = []
    if c.before is not None:
        body.append(f"{path} < {_secs(c.before, c.timezone)}")
    if c.on_or_after is not None:
        body.append(f"{path} >= {_secs(c.on_or_after, c.timezone)}")
    if isinstance(c.equals, bool):
        body.append(f"{path} == {'true' if c.equals else 'false'}")
    elif isinstance(c.equals, str):
        body.append(f"{path} == {_q(c.equals)}")
    elif c.equals is not None:
        raise NotTranslatable("equals on a number or date")
    if c.in_ is not None:
        body.append(f"{_list(c.in_)}.contains({path})")
    if c.not_in is not None:
        body.append(f"!({_list(c.not_in)}.contains({path}))")
    for op, bound in (("at_least", c.at_least), ("below", c.below)):
        if bound is None:
            continue
        if bound != int(bound):
            raise NotTranslatable("non-integer number bounds")
        body.append(f"{path} {'>=' if op == 'at_least' else '<'} {int(bound)}")
    if c.contains is not None:
        body.append(f"{path}.contains({_q(c.contains)})")
    if body:
        parts.append(f"({has} && " + " && ".join(body) + ")")
    return " && ".join(parts) if parts else "true"


def _strict_ancestors(keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset(a for k in keys for a in ancestors(k) if a != k)


def _keys(rule: Rule, keys: tuple[str, ...], many: str, one: str) -> str:
    """Cedar test that the request key matches one of the rule's ``keys``
    (:func:`provguard.decide.reference.key_matches`). ``context.<many>`` holds the request key
    and its ancestors, so ``containsAny`` is "a rule key covers the request key" (Cedar's
    descendant-only ``in``). A deny also matches a request key *above* one of its keys: the
    strict ancestors of its keys are listed explicitly and compared with ``context.<one>``, the
    request key itself."""
    test = f"context.{many}.containsAny({_list(keys)})"
    up = _strict_ancestors(keys) if rule.effect == "deny" else frozenset()
    if not up:
        return test
    return f"({test} || (context has {one} && {_list(up)}.contains(context.{one})))"


def _match(rule: Rule) -> str:
    tests = ["action in [" + ", ".join(f"Action::{_q(a)}" for a in sorted(rule.actions)) + "]"]
    if rule.purposes is not None:
        tests.append(_keys(rule, rule.purposes, "purposes", "purpose"))
    for sel, attr in (
        (rule.apps, None),
        (rule.controllers, "controller"),
        (rule.recipients, "recipient"),
    ):
        t = _selector(sel, f"context.{attr}", attr)
        if t is not None:
            tests.append(t)
    if rule.categories is not None:
        tests.append(_keys(rule, rule.categories, "categories", "category"))
    if rule.origins is not None:
        tests.append(f"context.origins.containsAny({_list(rule.origins)})")
    tests.extend(f"({_condition(c)})" for c in rule.when)
    return " && ".join(tests)


def _exception(rule: Rule) -> str | None:
    parts: list[str] = []
    if rule.unless is not None:
        if rule.unless.grant_first_used_by_recipient_before is not None:
            parts.append(
                "(context has first_used && context.first_used < "
                f"{_secs(rule.unless.grant_first_used_by_recipient_before, rule.unless.timezone)})"
            )
        if rule.unless.grant_granted_before is not None:
            cut = _secs(rule.unless.grant_granted_before, rule.unless.timezone)
            parts.append(f"(context has granted && context.granted < {cut})")
        # a revoked or expired grant is never excepted (reference.ENDED_GRANT_STATUSES)
        parts.append(
            '(!(context has grant_status) || (context.grant_status != "revoked" && '
            'context.grant_status != "expired"))'
        )
    parts.extend(f"({_condition(c)})" for c in rule.unless_conditions)
    return " && ".join(parts) if parts else None


def to_cedar(policy: PolicySet) -> CedarPolicy:
    """Translate ``policy`` (see the module docstring); raises :class:`NotTranslatable`."""
    chunks: list[str] = []
    reasons: list[tuple[str, str, str]] = []
    for bundle in policy.bundles:
        inst = bundle.instrument
        start, end = inst.validity_bounds(policy.events)
        live = f"context.time >= {_secs(start, inst.timezone)}"
        if end is not None:
            live += f" && context.time < {_secs(end, inst.timezone)}"
        enforced = [r for r in bundle.rules if r.mode == "enforce"]
        for rule in enforced:
            cond = f"{live} && {_match(rule)}"
            exc = _exception(rule) if rule.effect == "deny" else None
            if rule.effect == "permit":
                chunks.append(f"permit(principal, action, resource) when {{ {cond} }};")
                reasons.append((rule.id, inst.id, "permit"))
            elif exc is None:
                chunks.append(f"forbid(principal, action, resource) when {{ {cond} }};")
                reasons.append((rule.id, inst.id, "forbid"))
            else:
                chunks.append(
                    f"forbid(principal, action, resource) when {{ {cond} }} unless {{ {exc} }};"
                )
                reasons.append((rule.id, inst.id, "forbid"))
                chunks.append(f"permit(principal, action, resource) when {{ {cond} && {exc} }};")
                reasons.append((rule.id, inst.id, "exception"))
        if bundle.default != "not_applicable":
            none = " || ".join(f"({_match(r)})" for r in enforced) or "false"
            kind = "forbid" if bundle.default == "deny" else "permit"
            chunks.append(f"{kind}(principal, action, resource) when {{ {live} && !({none}) }};")
            reasons.append(("(default)", inst.id, kind))
    return CedarPolicy("\n".join(chunks), tuple(reasons))


def _attr_value(v: object) -> Any:
    if isinstance(v, bool | str):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, frozenset):
        return sorted(v)
    raise NotTranslatable(f"attribute value {v!r}")


def _consent_record(c: ConsentRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "categories": sorted(c.categories),
        "purposes": sorted(c.purposes),
        "separate": c.separate,
    }
    for name in ("recipient", "method"):
        value = getattr(c, name)
        if value is not None:
            out[name] = value
    for name, t in (("given", c.given_at), ("withdrawn", c.withdrawn_at)):
        if t is not None:
            out[name] = _us(t)
    return out


def cedar_request(req: Request) -> dict[str, Any]:
    """The cedarpy request dict for ``req``; raises :class:`NotTranslatable` for more than
    :data:`MAX_CONSENTS` consent records."""
    if len(req.consents) > MAX_CONSENTS:
        raise NotTranslatable(f"more than {MAX_CONSENTS} consent records")
    ctx: dict[str, Any] = {
        "purposes": list(ancestors(req.purpose)) if req.purpose else [],
        "categories": list(ancestors(req.category)),
        "category": req.category,
        "origins": sorted(req.origins),
        "time": int(req.at.astimezone(UTC).timestamp() // 1),
        "time_us": _us(req.at),
        "subject": {k: _attr_value(v) for k, v in req.subject.items()},
        "ctx": {k: _attr_value(v) for k, v in req.context.items()},
    }
    if req.purpose is not None:
        ctx["purpose"] = req.purpose
    if req.controller is not None:
        ctx["controller"] = req.controller
    if req.recipient is not None:
        ctx["recipient"] = req.recipient
    for name, t in (
        ("first_used", req.grant_first_used_by_recipient_at),
        ("granted", req.grant_granted_at),
    ):
        if t is not None:
            ctx[name] = int(t.timestamp() // 1)
    if req.grant_status is not None:
        ctx["grant_status"] = req.grant_status
    if req.grant_scopes is not None:
        ctx["scopes"] = sorted(req.grant_scopes)
    for i, c in enumerate(req.consents):
        ctx[f"consent{i}"] = _consent_record(c)
    return {
        "principal": f"App::{_q(req.app)}",
        "action": f"Action::{_q(req.action)}",
        "resource": 'Data::"value"',
        "context": ctx,
    }


def expected_cedar(
    effect: str, reason_ids: set[tuple[str, str]]
) -> tuple[str, set[tuple[str, str]]]:
    """What Cedar must answer for a provguard decision: (Allow|Deny, determining (rule, inst))."""
    if effect == "permit":
        return "Allow", reason_ids
    return "Deny", reason_ids if effect == "deny" else set()
