"""The decision point enforcement points call: the compiled index plus a memo."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from provguard.decide.compiled import CompiledPolicy
from provguard.decide.model import Decision, Request
from provguard.decide.reference import decide
from provguard.policy.model import PolicySet

if TYPE_CHECKING:  # the audit package is an adapter-side consumer; no import at run time
    from provguard.audit.writer import DecisionLane


class AuditLaneSource(Protocol):
    """What ``DecisionPoint(audit=...)`` needs: :class:`provguard.audit.writer.AuditWriter`."""

    def decision_lane(self, stage: str) -> DecisionLane: ...


class DecisionPoint:
    """Answers :class:`Request` s under one immutable :class:`PolicySet`.

    Decisions come from the compiled index (:class:`CompiledPolicy`), which property tests keep
    equal to the reference interpreter; ``engine="reference"`` uses the reference interpreter.
    Requests are hashable, so identical requests are decided once (the policy cannot change under a
    ``DecisionPoint``: swap in a new one to change policy). ``on_decision`` is called for every
    decision, memoised or not, so the audit log sees each one.

    ``audit`` (an :class:`~provguard.audit.writer.AuditWriter`) logs every decision the cheapest
    way Python allows: ``decide`` itself appends the entry tuple to the writer's queue (a bound
    check, a counter and a clock read, all C calls: no Python call per decision), kind
    ``"decision"``, stage ``audit_stage``. The writer builds, hashes and commits the entries in
    its thread, with its mode's back-pressure or drop counting (``bench/bench_audit.py``).
    """

    def __init__(
        self,
        policy: PolicySet,
        on_decision: Callable[[Decision], None] | None = None,
        *,
        engine: str = "compiled",
        audit: AuditLaneSource | None = None,
        audit_stage: str = "decision",
    ) -> None:
        if engine not in ("compiled", "reference"):
            raise ValueError(f"engine is 'compiled' or 'reference', not {engine!r}")
        self.policy = policy
        self.compiled = CompiledPolicy(policy)
        self._decide: Callable[[Request], Decision] = (
            self.compiled.decide if engine == "compiled" else (lambda r: decide(policy, r))
        )
        self._memo: dict[Request, Decision] = {}
        self._on_decision = on_decision
        self.count = 0
        # the lane's handles as one tuple: one attribute read and an unpack per decision
        self._audit: tuple[Any, list[int], Any, str, Callable[[], Any], Any] | None = None
        if audit is not None:
            lane = audit.decision_lane(audit_stage)
            self._audit = (lane.queue, lane.limit, lane.numbers, lane.stage, lane.stamp, lane.slow)

    def decide(self, req: Request) -> Decision:
        decision = self._memo.get(req)
        if decision is None:
            decision = self._decide(req)
            self._memo[req] = decision
        self.count += 1
        if self._audit is not None:
            q, limit, numbers, stage, stamp, slow = self._audit
            if len(q) < limit[0]:
                q.append((next(numbers), "decision", decision, stage, None, stamp()))
            else:
                slow(decision)
        if self._on_decision is not None:
            self._on_decision(decision)
        return decision
