"""The policy in force, replaced only by a bundle set that loads completely."""

from __future__ import annotations

import threading
from pathlib import Path

from provguard.errors import PolicyError, PolicyErrors
from provguard.policy.loader import load_policy_dir
from provguard.policy.model import PolicySet


class LivePolicy:
    """Holds the :class:`PolicySet` in force and reloads it from a file or folder.

    :meth:`reload` loads and checks everything first; on any error the set in force stays as it
    was (its recorded events too) and the errors are returned. Thread-safe.
    """

    def __init__(self, initial: PolicySet) -> None:
        self._current = initial
        self._lock = threading.Lock()

    @property
    def current(self) -> PolicySet:
        return self._current

    def reload(self, path: str | Path) -> list[PolicyError]:
        """Replace the set in force by the bundles at ``path``, keeping recorded events.

        Returns ``[]`` on success, else every error (and nothing changes).
        """
        try:
            fresh = load_policy_dir(path)
        except PolicyErrors as exc:
            return list(exc.errors)
        except PolicyError as exc:
            return [exc]
        with self._lock:
            self._current = fresh.with_events(self._current.events)
        return []
