"""The decision point enforcement points call: the compiled index plus a memo."""

from __future__ import annotations

from collections.abc import Callable

from provguard.decide.compiled import CompiledPolicy
from provguard.decide.model import Decision, Request
from provguard.decide.reference import decide
from provguard.policy.model import PolicySet


class DecisionPoint:
    """Answers :class:`Request` s under one immutable :class:`PolicySet`.

    Decisions come from the compiled index (:class:`CompiledPolicy`), which property tests keep
    equal to the reference interpreter; ``engine="reference"`` uses the reference interpreter.
    Requests are hashable, so identical requests are decided once (the policy cannot change under a
    ``DecisionPoint``: swap in a new one to change policy). ``on_decision`` is called for every
    decision, memoised or not, so the audit log sees each one.
    """

    def __init__(
        self,
        policy: PolicySet,
        on_decision: Callable[[Decision], None] | None = None,
        *,
        engine: str = "compiled",
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

    def decide(self, req: Request) -> Decision:
        decision = self._memo.get(req)
        if decision is None:
            decision = self._decide(req)
            self._memo[req] = decision
        self.count += 1
        if self._on_decision is not None:
            self._on_decision(decision)
        return decision
