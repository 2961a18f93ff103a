"""The policy decision point (PDP).

:func:`decide` is the reference interpreter: it walks every rule in force and is meant to be
obviously correct. :class:`CompiledPolicy` is the decision index (a few dict lookups per decision)
that property tests keep equal to it; :class:`DecisionPoint` wraps the index with a memo keyed by
the request, which is what enforcement points call on hot paths. :func:`decide_batch` decides
columns of requests (numpy / Arrow) for pipelines.
"""

from provguard.decide.batch import BatchDecisions, decide_batch
from provguard.decide.compiled import CompiledPolicy
from provguard.decide.model import (
    Attrs,
    ConsentRecord,
    Decision,
    Effect,
    GrantFacts,
    Obligation,
    Reason,
    Request,
    check_grant_times,
)
from provguard.decide.point import DecisionPoint
from provguard.decide.reference import decide

__all__ = [
    "Attrs",
    "BatchDecisions",
    "CompiledPolicy",
    "ConsentRecord",
    "Decision",
    "DecisionPoint",
    "Effect",
    "GrantFacts",
    "Obligation",
    "Reason",
    "Request",
    "check_grant_times",
    "decide",
    "decide_batch",
]
