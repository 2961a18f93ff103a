"""A store's recorded instruments bind every decision point that reads the store.

The main job records, in its control store, the instruments it enforced (``instruments``
table). Any later decision about that store's data -- ``provguard query``, ``provguard
decide --store``, ``provguard serve --store`` -- must be evaluated under every one of them: a
``--policy`` folder may add bundles, never drop one (otherwise pointing ``--policy`` at any other
valid bundle answers ``not_applicable`` where the court order says deny).
"""

from __future__ import annotations

from collections.abc import Iterable

from provguard.errors import InputError
from provguard.policy.model import PolicySet


def missing_instruments(policy_set: PolicySet, recorded: Iterable[str]) -> list[str]:
    """The ids in ``recorded`` that ``policy_set`` does not load, sorted."""
    return sorted(set(recorded) - {b.instrument.id for b in policy_set.bundles})


def require_instruments(policy_set: PolicySet, recorded: Iterable[str], *, store: str) -> None:
    """Raise :class:`~provguard.errors.InputError` (``PG100``) naming the instruments recorded
    in the control store ``store`` that ``policy_set`` leaves out."""
    missing = missing_instruments(policy_set, recorded)
    if missing:
        raise InputError(
            f"the control store {store} records instrument(s) {', '.join(missing)}, and the"
            " policy given does not load them: decisions about this store are made under every"
            " recorded instrument (a policy may add bundles, not drop one; give the folder with"
            " them, e.g. --policy policies)"
        )
