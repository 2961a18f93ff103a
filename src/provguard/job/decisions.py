"""Recording decisions for the audit log: one compact, canonical payload per decision."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from provguard.decide import Decision


@dataclass
class DecisionRecorder:
    """Collects every decision of a run as audit payloads plus counts per (rule, app, purpose,
    action, effect) for the report. ``context`` says what the decision was about (subject ids,
    stage), never raw handles or tokens."""

    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    counts: Counter[tuple[str | None, str, str | None, str, str]] = field(default_factory=Counter)

    def record(self, decision: Decision, stage: str, context: Mapping[str, Any]) -> None:
        req = decision.request
        rules = [r.rule_id for r in decision.determining]
        payload: dict[str, Any] = {
            "stage": stage,
            "effect": decision.effect,
            "excepted": decision.excepted,
            "rules": rules,
            "instruments": sorted({r.instrument_id for r in decision.determining}),
            "request": req.as_dict(),
            "shadow": [r.rule_id for r in decision.shadow],
            "context": dict(context),
        }
        self.entries.append(("decision", payload))
        keys: list[str | None] = list(rules) if rules else [None]
        for rule in keys:
            self.counts[(rule, req.app, req.purpose, req.action, decision.effect)] += 1

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out, self.entries = self.entries, []
        return out

    def count_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "rule_id": k[0],
                "app": k[1],
                "purpose": k[2],
                "action": k[3],
                "effect": k[4],
                "count": n,
            }
            for k, n in sorted(self.counts.items(), key=lambda kv: (str(kv[0]), kv[1]))
        ]
