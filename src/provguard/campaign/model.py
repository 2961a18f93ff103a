"""Remediation campaign: who must change a copied handle/picture, and the per-subject states.

A *campaign* enforces one policy rule (for the 2019 injunction: ``duoshan-no-platform-profile``)
on the profile-match scan: every (app, subject, provider) whose handle or picture still matches
the provider's copy, and whose use the rule forbids, is a *target*. The state machine per target:

```
pending --notice sent--> notified --rescan: no match--> changed
   |                         |--rescan: match, notified >= ignore_after ago--> ignored
   |                         '--delivery failed max_attempts times--> escalated
   '--rescan: no match--> changed
ignored --rescan: still matching, >= ignore_after later--> escalated
changed --rescan: matches again (reverted to the copy)--> pending (a new notice is queued)
exempt: the handle is the subject's real name (Duoshan's notice) and the picture does not match
```

Every transition is kept per target (``SqlCampaignStore.events``), so a subject who changed,
reverted and was notified again shows the whole path.

Origins: a matched value whose app recorded the provider as its source has a *recorded* origin;
one whose recorded source is ``user_input`` (re-typed, re-uploaded) gets an *inferred* origin
(the provider) with the match score. The rule is evaluated with the provider as the value's
origin in both cases; ``recorded_only`` leaves inferred copies out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import pyarrow as pa

from provguard.decide import Request, decide
from provguard.errors import InputError
from provguard.policy import PolicySet
from provguard.similarity.names import detect_real_name

State = Literal["pending", "notified", "changed", "exempt", "ignored", "escalated"]
STATES: tuple[State, ...] = ("pending", "notified", "changed", "exempt", "ignored", "escalated")

_CATEGORY = {"handle": "user.name.nickname", "avatar": "user.avatar"}
_NO_RECIPIENT_ACTIONS = ("display", "use", "derive", "store")


@dataclass(frozen=True)
class Target:
    """One (app, subject, provider) the rule forbids, or exempts.

    ``fields``: the matched fields the rule denies (``handle``, ``avatar``), comma-joined;
    ``origin_kind``: ``recorded`` if every denied field's origin is recorded, else ``inferred``;
    ``score``: the handle similarity (0..1) or ``1 - picture_distance / 256``, the larger;
    ``exempt_reason``: a real-name reason (``verified_name``, ``chinese_name``, ``latin_name``)
    when only the handle matched and it is the subject's name, else None.
    """

    app_id: str
    subject_id: int
    provider: str
    fields: str
    origin_kind: str
    score: float
    exempt_reason: str | None

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.app_id, self.subject_id, self.provider)


@dataclass(frozen=True)
class OutboxMessage:
    """A notice to deliver; ``message_id`` is the idempotency key."""

    message_id: str
    campaign_id: str
    app_id: str
    subject_id: int
    provider: str
    payload: dict[str, object]
    attempts: int


def _rule(policy: PolicySet, rule_id: str) -> tuple[str, str, str | None]:
    """(instrument id, action, purpose) to ask the PDP about ``rule_id``."""
    for inst, rule in policy.rules():
        if rule.id == rule_id:
            actions = [a for a in _NO_RECIPIENT_ACTIONS if a in rule.actions]
            if not actions:
                raise InputError(f"rule '{rule_id}' has no display/use/derive/store action")
            action = actions[0]
            purpose = rule.purposes[0] if rule.purposes else "profile.display"
            return inst.id, action, purpose
    known = ", ".join(sorted({r.id for _, r in policy.rules()}))
    raise InputError(f"unknown rule '{rule_id}'; known: {known}")


def select_targets(
    scan: pa.Table,
    profiles: pa.Table,
    policy: PolicySet,
    rule_id: str,
    at: datetime,
    *,
    real_names: Mapping[int, str] | None = None,
    recorded_only: bool = False,
) -> tuple[str, list[Target]]:
    """The targets of a campaign enforcing ``rule_id``.

    Args:
        scan: :func:`provguard.similarity.scan.scan_profiles` output (v2 columns).
        profiles: app profiles with ``app_id``, ``subject_id``, ``handle``, ``handle_source``,
            ``avatar_source`` (``provider`` = recorded provider origin).
        policy: the policy set holding the rule.
        rule_id: the rule to enforce.
        at: decision time (timezone-aware).
        real_names: verified legal name per subject, when the platform holds them; otherwise
            the name-likeness test decides the exemption.
        recorded_only: leave out inferred (re-typed/re-uploaded) copies.

    Returns:
        ``(instrument_id, targets)`` sorted by (app, subject, provider).

    Raises:
        InputError: unknown rule, missing columns.
    """
    instrument_id, action, purpose = _rule(policy, rule_id)
    needed = {"app_id", "subject_id", "handle", "handle_source", "avatar_source"}
    if not needed <= set(profiles.column_names):
        raise InputError(
            f"profiles lack column(s) {', '.join(sorted(needed - set(profiles.column_names)))}"
        )
    for col in ("handle_match", "picture_match", "handle_similarity", "picture_distance_min"):
        if col not in scan.column_names:
            raise InputError(f"scan lacks column {col} (run the v2 scan)")
    prof = {(r["app_id"], r["subject_id"]): r for r in profiles.select(sorted(needed)).to_pylist()}
    memo: dict[tuple[str, str, str], bool] = {}

    def denied(app: str, category: str, origin: str) -> bool:
        k = (app, category, origin)
        if k not in memo:
            d = decide(
                policy,
                Request(
                    app=app,
                    action=action,
                    category=category,
                    origins=frozenset([origin]),
                    at=at,
                    purpose=purpose,
                ),
            )
            memo[k] = d.effect == "deny" and any(r.rule_id == rule_id for r in d.determining)
        return memo[k]

    out: list[Target] = []
    for row in scan.filter(scan.column("copy_match")).to_pylist():
        p = prof.get((row["app_id"], row["subject_id"]))
        if p is None:
            continue
        fields: list[str] = []
        kinds: list[str] = []
        scores: list[float] = []
        for name, hit, source, score in (
            ("handle", row["handle_match"], p["handle_source"], row["handle_similarity"]),
            (
                "avatar",
                row["picture_match"],
                p["avatar_source"],
                1.0 - (row["picture_distance_min"] or 0) / 256.0,
            ),
        ):
            if not hit:
                continue
            kind = "recorded" if source == "provider" else "inferred"
            if recorded_only and kind == "inferred":
                continue
            if denied(row["app_id"], _CATEGORY[name], row["provider"]):
                fields.append(name)
                kinds.append(kind)
                scores.append(float(score))
        if not fields:
            continue
        exempt: str | None = None
        if fields == ["handle"]:
            real = real_names.get(row["subject_id"]) if real_names is not None else None
            verdict = detect_real_name(p["handle"], real) if real_names is None or real else None
            if verdict is not None and verdict.is_name:
                exempt = verdict.reason
        out.append(
            Target(
                app_id=row["app_id"],
                subject_id=int(row["subject_id"]),
                provider=row["provider"],
                fields=",".join(fields),
                origin_kind="recorded" if all(k == "recorded" for k in kinds) else "inferred",
                score=max(scores),
                exempt_reason=exempt,
            )
        )
    out.sort(key=lambda t: t.key)
    return instrument_id, out
