"""The reference interpreter: every rule of every instrument in force, one at a time.

Semantics (written down in docs/policy-language.md):
- an instrument applies at ``request.at`` when :meth:`Instrument.in_force` says so;
- a rule matches when every axis it names matches: action in ``actions``; the request purpose is
  covered by one of ``purposes`` (hierarchical; a rule with purposes never matches a request
  without one); app / controller / recipient selectors; the request category is covered by one of
  ``categories``; the request's origins overlap ``origins``;
- a matching rule whose ``unless`` exception holds is *excepted*: it counts as a permit;
- combining: deny overrides permit; no matching rule gives ``not_applicable``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from provguard.decide.model import Decision, Obligation, Reason, Request
from provguard.policy.model import ObligationSource, PolicySet, Rule, Unless
from provguard.taxonomy import covers


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def matches(rule: Rule, req: Request) -> bool:
    """True when ``rule`` targets ``req`` (ignoring validity and ``unless``)."""
    if req.action not in rule.actions:
        return False
    if rule.purposes is not None and (
        req.purpose is None or not any(covers(p, req.purpose) for p in rule.purposes)
    ):
        return False
    if not rule.apps.matches(req.app):
        return False
    if (
        rule.controllers.values is not None or rule.controllers.excluded
    ) and not rule.controllers.matches(req.controller):
        return False
    if (
        rule.recipients.values is not None or rule.recipients.excluded
    ) and not rule.recipients.matches(req.recipient):
        return False
    if rule.categories is not None and not any(covers(c, req.category) for c in rule.categories):
        return False
    return not (rule.origins is not None and not (rule.origins & req.origins))


def exception_holds(unless: Unless | None, req: Request) -> str | None:
    """The text of the exception that holds for ``req``, or None. Missing context never holds
    (fail closed: an unknown first-use time is not grandfathered)."""
    if unless is None:
        return None
    held: list[str] = []
    if unless.grant_first_used_by_recipient_before is not None:
        t = req.grant_first_used_by_recipient_at
        if t is None or t >= _day_start(unless.grant_first_used_by_recipient_before):
            return None
        held.append(
            f"recipient first used the grant at {t.isoformat()}, before "
            f"{unless.grant_first_used_by_recipient_before.isoformat()}"
        )
    if unless.grant_granted_before is not None:
        t = req.grant_granted_at
        if t is None or t >= _day_start(unless.grant_granted_before):
            return None
        held.append(
            f"grant given at {t.isoformat()}, before {unless.grant_granted_before.isoformat()}"
        )
    return "; ".join(held)


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def duration_seconds(text: str) -> int:
    """Seconds in an ISO-8601 duration of days/hours/minutes/seconds (``P30D``, ``PT12H``)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not an ISO-8601 day/time duration: {text!r}")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def _obligations(rule: Rule, instrument_id: str) -> list[Obligation]:
    def one(o: ObligationSource) -> Obligation:
        return Obligation(
            o.kind,
            rule.id,
            instrument_id,
            strategy=o.strategy,
            within_seconds=duration_seconds(o.within) if o.within else None,
            target=o.target,
        )

    return [one(o) for o in rule.obligations]


def decide(policy: PolicySet, req: Request) -> Decision:
    """Decide ``req`` under ``policy`` (deny overrides permit); see the module docstring.

    Obligations: those of the rules that determine the effect (the applied denies for ``deny``;
    the applied permits for ``permit``), in rule order.
    """
    denies: list[Reason] = []
    permits: list[Reason] = []
    deny_obligations: list[Obligation] = []
    permit_obligations: list[Obligation] = []
    for instrument, rule in policy.rules():
        if not instrument.in_force(req.at, policy.events) or not matches(rule, req):
            continue
        why = rule.description.split(".")[0] if rule.description else rule.summary()
        exception = exception_holds(rule.unless, req) if rule.effect == "deny" else None
        if exception is not None:
            permits.append(
                Reason(rule.id, instrument.id, "permit", "excepted", f"exception: {exception}")
            )
        elif rule.effect == "deny":
            denies.append(Reason(rule.id, instrument.id, "deny", "applied", why))
            deny_obligations.extend(_obligations(rule, instrument.id))
        else:
            permits.append(Reason(rule.id, instrument.id, "permit", "applied", why))
            permit_obligations.extend(_obligations(rule, instrument.id))
    if denies:
        return Decision("deny", req, tuple(denies + permits), tuple(deny_obligations))
    if permits:
        return Decision("permit", req, tuple(permits), tuple(permit_obligations))
    return Decision("not_applicable", req, ())
