"""Evaluating ``when`` / ``unless`` conditions against a request (shared by every engine).

Semantics (docs/policy-language.md, "Conditions"): a :class:`FieldCondition` holds when every
operator it gives holds; days compare as calendar-day starts in the condition's ``timezone``
(the bundle's; UTC by default): ``before: 2019-03-20`` means strictly before 2019-03-20T00:00Z, or
before 2019-03-20T00:00+08:00 in a bundle with ``timezone: Asia/Shanghai``; a date *value* of a
subject / context attribute is read as the start of that day in the same zone; a missing or
mistyped value makes every operator false except ``exists: false`` (fail closed). A
:class:`ConsentCondition` is read from ``Request.consents``.
"""

from __future__ import annotations

from datetime import date, datetime

from provguard.decide.model import AttrValue, ConsentRecord, Request
from provguard.policy.model import (
    ConsentCondition,
    ConsentRequirement,
    FieldCondition,
    day_start,
)
from provguard.taxonomy import covers

__all__ = [
    "Condition",
    "consent_covers",
    "consent_holds",
    "day_start",
    "describe_held",
    "field_holds",
    "field_value",
    "holds",
]

Condition = FieldCondition | ConsentCondition
_MISSING = object()


def field_value(req: Request, name: str) -> object:
    """The request's value for a condition field, or a private sentinel when absent."""
    value: object
    if name == "grant.granted_at":
        value = req.grant_granted_at
    elif name == "grant.first_used_by_recipient_at":
        value = req.grant_first_used_by_recipient_at
    elif name == "grant.status":
        value = req.grant_status
    elif name == "grant.scopes":
        value = req.grant_scopes
    elif name.startswith("subject."):
        value = req.subject.get(name[8:], _MISSING)
    elif name.startswith("context."):
        value = req.context.get(name[8:], _MISSING)
    else:  # the model's pattern admits no other field
        raise ValueError(f"unknown condition field {name!r}")
    return _MISSING if value is None else value


def _as_time(value: object, zone: str | None) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    if isinstance(value, date):
        return day_start(value, zone)
    return None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def field_holds(cond: FieldCondition, req: Request) -> bool:
    """True when every operator of ``cond`` holds for ``req``."""
    value = field_value(req, cond.field)
    if cond.exists is not None and (value is not _MISSING) != cond.exists:
        return False
    if value is _MISSING:
        # only ``exists: false`` (checked above) can hold for a missing value
        return cond.exists is False and len(cond.operators()) == 1
    if cond.equals is not None and not _equal(value, cond.equals):
        return False
    if cond.in_ is not None and not (isinstance(value, str) and value in cond.in_):
        return False
    if cond.not_in is not None and not (isinstance(value, str) and value not in cond.not_in):
        return False
    if cond.before is not None or cond.on_or_after is not None:
        t = _as_time(value, cond.timezone)
        if t is None:
            return False
        if cond.before is not None and not t < cond.cut(cond.before):
            return False
        if cond.on_or_after is not None and not t >= cond.cut(cond.on_or_after):
            return False
    if cond.at_least is not None or cond.below is not None:
        n = _number(value)
        if n is None:
            return False
        if cond.at_least is not None and not n >= cond.at_least:
            return False
        if cond.below is not None and not n < cond.below:
            return False
    return cond.contains is None or (isinstance(value, frozenset) and cond.contains in value)


def _equal(value: object, expected: AttrValue) -> bool:
    # bool is an int in Python: never let True equal 1
    if isinstance(value, bool) or isinstance(expected, bool):
        return isinstance(value, bool) and isinstance(expected, bool) and value == expected
    n, m = _number(value), _number(expected)
    if n is not None and m is not None:
        return n == m
    if isinstance(value, datetime) or isinstance(expected, datetime):
        return False
    return type(value) is type(expected) and value == expected


def consent_covers(c: ConsentRecord, req: Request, need: ConsentRequirement) -> bool:
    """True when consent ``c`` covers ``req`` and states what ``need`` requires."""
    if need.separate and not c.separate:
        return False
    if not any(covers(k, req.category) for k in c.categories):
        return False
    if req.purpose is not None and not any(covers(p, req.purpose) for p in c.purposes):
        return False
    if req.recipient is not None and c.recipient != req.recipient:
        return False
    for name in need.names:
        if name == "recipient" and not c.recipient:
            return False
        if name == "purpose" and not c.purposes:
            return False
        if name == "method" and not c.method:
            return False
        if name == "categories" and not c.categories:
            return False
    return True


def consent_holds(cond: ConsentCondition, req: Request) -> bool:
    need = cond.consent
    covering = [c for c in req.consents if consent_covers(c, req, need)]
    if need.state == "active":
        return any(c.active_at(req.at) for c in covering)
    if any(c.active_at(req.at) for c in covering):
        return False
    return any(c.withdrawn_at is not None and c.withdrawn_at <= req.at for c in covering)


def holds(cond: Condition, req: Request) -> bool:
    """True when ``cond`` holds for ``req``."""
    if isinstance(cond, FieldCondition):
        return field_holds(cond, req)
    return consent_holds(cond, req)


def describe_held(cond: Condition, req: Request) -> str:
    """A sentence saying that ``cond`` held, with the request's value."""
    if isinstance(cond, ConsentCondition):
        return cond.describe()
    value = field_value(req, cond.field)
    if isinstance(value, datetime | date):
        shown: object = value.isoformat()
    elif isinstance(value, frozenset):
        shown = ", ".join(sorted(value))
    else:
        shown = "absent" if value is _MISSING else value
    return f"{cond.describe()} ({cond.field} = {shown})"
