"""The policy decision point (PDP).

:func:`decide` is the reference interpreter: it walks every rule in force and is meant to be
obviously correct. :class:`DecisionPoint` wraps it with a memo keyed by the request, which is what
enforcement points call on hot paths (the compiled index is a later step and must agree with
:func:`decide`).
"""

from provguard.decide.model import Decision, Effect, Obligation, Reason, Request
from provguard.decide.point import DecisionPoint
from provguard.decide.reference import decide

__all__ = [
    "Decision",
    "DecisionPoint",
    "Effect",
    "Obligation",
    "Reason",
    "Request",
    "decide",
]
