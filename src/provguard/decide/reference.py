"""The reference interpreter: every rule of every instrument in force, one at a time.

Semantics (written down in docs/policy-language.md):
- an instrument applies at ``request.at`` when :meth:`Instrument.in_force` says so;
- a rule matches when every axis it names matches: action in ``actions``; the request purpose
  matches one of ``purposes`` (a rule with purposes never matches a request without one); app /
  controller / recipient selectors; the request category matches one of ``categories``; the
  request's origins overlap ``origins``; and every ``when`` condition holds;
- purposes and data categories are hierarchical, and how a rule key matches a request key depends
  on the rule's effect (:func:`key_matches`), following Byun & Li, "Purpose based access control
  for privacy protection in relational database systems", VLDB Journal 17(4):603-619, 2008:
  an allowed (``permit``) key covers itself and its descendants only, a prohibited (``deny``,
  also in ``mode: shadow``) key covers itself, its descendants **and its ancestors**. A request
  for purpose ``social`` is a request for every social purpose, ``social.friend_recommendation``
  included, so a deny on ``social.friend_recommendation`` applies to it (fail closed upward);
  a permit on ``social.friend_recommendation`` does not permit it. Likewise a request for
  category ``user.name`` reads nicknames, so a deny on ``user.name.nickname`` applies to it.
  Actions are a flat vocabulary: they match exactly;
- a matching rule whose ``unless`` exception holds is *excepted*: it counts as a permit;
- a rule in ``mode: shadow`` never counts; if it would have denied, it is reported in
  ``Decision.shadow``;
- an instrument in force none of whose enforced rules matches contributes its bundle ``default``
  (reason ``(default)``) unless that default is ``not_applicable``;
- combining: deny overrides permit; no matching rule gives ``not_applicable``.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Literal

from provguard.decide.conditions import day_start, describe_held, holds
from provguard.decide.model import Decision, Obligation, Reason, Request
from provguard.policy.model import Bundle, ObligationSource, PolicySet, Rule, Unless
from provguard.taxonomy.keys import covers, related

DEFAULT_RULE_ID = "(default)"


def _day_start(d: date, zone: str | None = None) -> datetime:
    return day_start(d, zone)


def _day(d: date, zone: str | None) -> str:
    return d.isoformat() + (f" ({zone})" if zone not in (None, "UTC") else "")


def key_matches(effect: str, target: str, key: str) -> bool:
    """True when the rule key ``target`` (a purpose or data category) of a rule with ``effect``
    (``deny`` / ``permit``) matches the request key ``key``.

    ``permit``: ``key`` equals ``target`` or lies below it (allowed purposes propagate down).
    ``deny``: ``key`` equals ``target``, lies below it, or lies **above** it (prohibited purposes
    propagate down and up: Byun & Li, VLDB Journal 17(4), 2008), because a request
    under a broader key includes the narrower, prohibited one.
    """
    return related(target, key) if effect == "deny" else covers(target, key)


def keys_match(effect: str, targets: tuple[str, ...] | None, key: str | None) -> bool:
    """True when one of ``targets`` matches ``key`` (:func:`key_matches`) for a rule with
    ``effect``. ``targets`` None (the rule names no keys on this axis) matches any key, None
    included; a ``key`` None (a request without a purpose) matches no listed keys."""
    if targets is None:
        return True
    if key is None:
        return False
    if effect == "deny":
        return any(related(t, key) for t in targets)
    return any(covers(t, key) for t in targets)


def target_matches(rule: Rule, req: Request) -> bool:
    """True when the target of ``rule`` (every axis, not ``when``) matches ``req``; purposes and
    categories as :func:`key_matches` says for the rule's effect."""
    if req.action not in rule.actions:
        return False
    if not keys_match(rule.effect, rule.purposes, req.purpose):
        return False
    if not rule.apps.matches(req.app):
        return False
    if rule.controllers.constrained and not rule.controllers.matches(req.controller):
        return False
    if rule.recipients.constrained and not rule.recipients.matches(req.recipient):
        return False
    if not keys_match(rule.effect, rule.categories, req.category):
        return False
    return not (rule.origins is not None and not (rule.origins & req.origins))


def matches(rule: Rule, req: Request) -> bool:
    """True when ``rule`` targets ``req`` and its ``when`` conditions hold (ignoring validity and
    ``unless``)."""
    return target_matches(rule, req) and all(holds(c, req) for c in rule.when)


ENDED_GRANT_STATUSES = frozenset({"revoked", "expired"})
"""Grant statuses under which a grant-time exception (``unless: {grant_first_used_by_recipient_
before | grant_granted_before: D}``) never holds: the exception keeps an existing login working,
and a revoked or expired grant is no working login (docs/policy-language.md, "Grant facts")."""


def _legacy_exception(unless: Unless, req: Request) -> str | None:
    if req.grant_status in ENDED_GRANT_STATUSES:
        return None
    held: list[str] = []
    if unless.grant_first_used_by_recipient_before is not None:
        t = req.grant_first_used_by_recipient_at
        if t is None or t >= unless.cut(unless.grant_first_used_by_recipient_before):
            return None
        held.append(
            f"recipient first used the grant at {t.isoformat()}, before "
            f"{_day(unless.grant_first_used_by_recipient_before, unless.timezone)}"
        )
    if unless.grant_granted_before is not None:
        t = req.grant_granted_at
        if t is None or t >= unless.cut(unless.grant_granted_before):
            return None
        held.append(
            f"grant given at {t.isoformat()}, before "
            f"{_day(unless.grant_granted_before, unless.timezone)}"
        )
    return "; ".join(held)


def exception_holds(unless: Unless | None, req: Request) -> str | None:
    """The text of the legacy exception that holds for ``req``, or None. Missing context never
    holds (fail closed: an unknown first-use time is not grandfathered), and a grant whose
    status is ``revoked`` or ``expired`` is never excepted (:data:`ENDED_GRANT_STATUSES`)."""
    if unless is None:
        return None
    return _legacy_exception(unless, req)


def rule_exception(rule: Rule, req: Request) -> str | None:
    """The text of the ``unless`` exception of ``rule`` that holds for ``req`` (every part of it:
    legacy keys and conditions), or None."""
    if not rule.has_exception:
        return None
    held: list[str] = []
    if rule.unless is not None:
        text = _legacy_exception(rule.unless, req)
        if text is None:
            return None
        held.append(text)
    for cond in rule.unless_conditions:
        if not holds(cond, req):
            return None
        held.append(describe_held(cond, req))
    return "; ".join(held)


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def duration_seconds(text: str) -> int:
    """Seconds in an ISO-8601 duration of days/hours/minutes/seconds (``P30D``, ``PT12H``)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not an ISO-8601 day/time duration: {text!r}")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def rule_obligations(rule: Rule, instrument_id: str) -> list[Obligation]:
    """The obligations ``rule`` attaches, with durations in seconds."""

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


_obligations = rule_obligations


def rule_why(rule: Rule) -> str:
    """The explanation of an applied rule: its description's first sentence, or its summary."""
    return rule.description.split(".")[0] if rule.description else rule.summary()


def default_reason(bundle: Bundle) -> Reason:
    """The reason a bundle's default effect gives (``default`` must not be not_applicable)."""
    effect: Literal["deny", "permit"] = "deny" if bundle.default == "deny" else "permit"
    return Reason(
        DEFAULT_RULE_ID,
        bundle.instrument.id,
        effect,
        "applied",
        f"no rule of this instrument matches; its default is {bundle.default}",
    )


def shadow_reason(rule: Rule, instrument_id: str) -> Reason:
    return Reason(rule.id, instrument_id, "deny", "shadow", f"would deny: {rule_why(rule)}")


def decide(policy: PolicySet, req: Request) -> Decision:
    """Decide ``req`` under ``policy`` (deny overrides permit); see the module docstring.

    Obligations: those of the rules that determine the effect (the applied denies for ``deny``;
    the applied permits for ``permit``), in rule order. Bundle defaults carry none.
    """
    denies: list[Reason] = []
    permits: list[Reason] = []
    shadow: list[Reason] = []
    deny_obligations: list[Obligation] = []
    permit_obligations: list[Obligation] = []
    for bundle in policy.bundles:
        instrument = bundle.instrument
        if not instrument.in_force(req.at, policy.events):
            continue
        matched = False
        for rule in bundle.rules:
            if not matches(rule, req):
                continue
            exception = rule_exception(rule, req) if rule.effect == "deny" else None
            if rule.mode == "shadow":
                if rule.effect == "deny" and exception is None:
                    shadow.append(shadow_reason(rule, instrument.id))
                continue
            matched = True
            if exception is not None:
                permits.append(
                    Reason(rule.id, instrument.id, "permit", "excepted", f"exception: {exception}")
                )
            elif rule.effect == "deny":
                denies.append(Reason(rule.id, instrument.id, "deny", "applied", rule_why(rule)))
                deny_obligations.extend(rule_obligations(rule, instrument.id))
            else:
                permits.append(Reason(rule.id, instrument.id, "permit", "applied", rule_why(rule)))
                permit_obligations.extend(rule_obligations(rule, instrument.id))
        if not matched and bundle.default != "not_applicable":
            reason = default_reason(bundle)
            (denies if reason.effect == "deny" else permits).append(reason)
    sh = tuple(shadow)
    if denies:
        return Decision("deny", req, tuple(denies + permits), tuple(deny_obligations), sh)
    if permits:
        return Decision("permit", req, tuple(permits), tuple(permit_obligations), sh)
    return Decision("not_applicable", req, (), (), sh)
