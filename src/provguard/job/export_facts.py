"""The platform export's transfer facts, checked before the main job writes anything.

Under the 2019 injunction a Douyin → Duoshan transfer of a WeChat/QQ login grant is permitted
by exception (*grandfathered*) when the recipient first used the grant before the order; the
first use comes from the export's ``transfers.first_used_at``. The export's word is not taken
for facts the export itself contradicts (fresh user 12, M4): :func:`transfer_fact_problems`
names every ``transfers`` row whose facts cannot all be true, and :func:`check_transfer_facts`
refuses the export with :class:`ImpossibleExportFactsError` (PG141, the code of the grant
registry's own check, :class:`~provguard.grants.errors.ImpossibleGrantFactsError`) before the
output folder is touched. A row is impossible when:

- its ``transfer_id`` is on an earlier row too;
- its ``grant_id`` is no grant of ``grants``, or the grant's ``subject_id`` / ``provider`` /
  ``app_id`` differ from the row's ``subject_id`` / ``provider`` / ``from_app``, or
  ``to_app`` is the grant's own app;
- ``first_used_at`` precedes the grant's ``granted_at`` (the recipient cannot have used the
  grant before it was given; :func:`provguard.decide.check_grant_times`) or lies after the time
  the run decides at (``--as-of``: a use that had not happened yet);
- the recipient has no account of the subject in ``app_profiles`` (``app_id = to_app``), or
  ``first_used_at`` is more than :data:`ACCOUNT_CLOCK_SKEW` before that account's
  ``created_at``: the recipient cannot have used a login for an account it did not have yet.
  This is the backdating of the finding: moving ``first_used_at`` before the order while the
  export's own account table says the recipient account was created after it.

Rows are named as the Parquet reader names them: ``<dir>/transfers.parquet row N`` (1-based).
What this cannot see: a first use backdated to a time after the account's creation and the
grant, and before the order, is still taken on the export's word (docs/grants.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from provguard.grants.errors import ImpossibleGrantFactsError
from provguard.sandbox.platform import Platform

__all__ = [
    "ACCOUNT_CLOCK_SKEW",
    "FactProblem",
    "ImpossibleExportFactsError",
    "check_transfer_facts",
    "transfer_fact_problems",
]

ACCOUNT_CLOCK_SKEW = timedelta(minutes=5)
"""A first use up to this long before the recipient account's ``created_at`` is taken as the
two systems' clock difference (the sandbox records both at the same instant)."""

#: how many problems an error message lists (all are on :attr:`ImpossibleExportFactsError.problems`)
_SHOWN = 20


@dataclass(frozen=True)
class FactProblem:
    """One impossible ``transfers`` row: ``where`` (``<file> row N``, 1-based), its
    ``transfer_id``, the ``field`` at fault, a short ``kind`` (for counting) and ``reason``."""

    where: str
    transfer_id: str
    field: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} (transfer {self.transfer_id}) {self.field}: {self.reason}"


class ImpossibleExportFactsError(ImpossibleGrantFactsError):
    """The platform export's transfer facts cannot all be true (PG141); ``problems`` names
    every such row. Raised before the main job writes anything."""

    def __init__(self, message: str, problems: tuple[FactProblem, ...]) -> None:
        super().__init__(message)
        self.problems = problems


def _iso(t: datetime) -> str:
    return t.isoformat()


def transfer_fact_problems(
    platform: Platform, at: datetime, source: Path | None = None
) -> tuple[FactProblem, ...]:
    """Every impossible row of ``platform.transfers`` (see the module docstring), in row order
    (a row may be named more than once, for each fact at fault).

    ``at``: the timezone-aware time the run decides at (``RunSettings.as_of``); ``source``: the
    export folder (names the file in :attr:`FactProblem.where`; default ``transfers``).
    Raises ``ValueError`` for a naive ``at``."""
    if at.tzinfo is None:
        raise ValueError("'at' must be timezone-aware")
    file = str(source / "transfers.parquet") if source is not None else "transfers"
    grants: dict[str, dict[str, Any]] = {}
    for g in platform.grants.select(
        ["grant_id", "subject_id", "provider", "app_id", "granted_at"]
    ).to_pylist():
        grants.setdefault(g["grant_id"], g)
    profiles = platform.app_profiles.select(["app_id", "subject_id", "account_id", "created_at"])
    accounts: dict[tuple[str, int], tuple[str, datetime]] = {}
    for app, subject, account, created in zip(
        profiles.column("app_id").to_pylist(),
        profiles.column("subject_id").to_pylist(),
        profiles.column("account_id").to_pylist(),
        profiles.column("created_at").to_pylist(),
        strict=True,
    ):
        accounts.setdefault((app, subject), (account, created))
    seen: dict[str, int] = {}
    found: list[FactProblem] = []
    for n, row in enumerate(platform.transfers.to_pylist(), start=1):
        where, tid = f"{file} row {n}", str(row["transfer_id"])

        def problem(field: str, kind: str, reason: str, where: str = where, tid: str = tid) -> None:
            found.append(FactProblem(where, tid, field, kind, reason))

        if tid in seen:
            problem("transfer_id", "duplicate transfer", f"also on row {seen[tid]}")
        else:
            seen[tid] = n
        used: datetime = row["first_used_at"]
        grant = grants.get(row["grant_id"])
        if grant is None:
            problem("grant_id", "no such grant", f"'{row['grant_id']}' is no grant of grants")
        else:
            for field, mine, theirs in (
                ("subject_id", row["subject_id"], grant["subject_id"]),
                ("provider", row["provider"], grant["provider"]),
                ("from_app", row["from_app"], grant["app_id"]),
            ):
                if mine != theirs:
                    problem(
                        field,
                        "contradicts its grant",
                        f"'{mine}', but grant {row['grant_id']} has '{theirs}'",
                    )
            if row["to_app"] == grant["app_id"]:
                problem("to_app", "contradicts its grant", "the grant's own app")
            if used < grant["granted_at"]:
                problem(
                    "first_used_at",
                    "first use before the grant",
                    f"{_iso(used)} precedes the grant's granted_at {_iso(grant['granted_at'])}: "
                    "the recipient cannot have used the grant before it was given",
                )
        if used > at:
            problem(
                "first_used_at",
                "first use after --as-of",
                f"{_iso(used)} lies after {_iso(at)}, the time the run decides at (--as-of): a "
                "first use that had not happened yet",
            )
        account = accounts.get((row["to_app"], row["subject_id"]))
        if account is None:
            problem(
                "to_app",
                "no recipient account",
                f"subject {row['subject_id']} has no {row['to_app']} account in app_profiles: "
                "no account the recipient could have used the grant for",
            )
        elif used + ACCOUNT_CLOCK_SKEW < account[1]:
            problem(
                "first_used_at",
                "first use before the recipient's account was created",
                f"{_iso(used)} precedes the creation of subject {row['subject_id']}'s "
                f"{row['to_app']} account {account[0]} (app_profiles created_at "
                f"{_iso(account[1])}): the recipient cannot have used the login for an account "
                "it did not have yet",
            )
    return tuple(found)


def check_transfer_facts(platform: Platform, at: datetime, source: Path | None = None) -> None:
    """Refuse ``platform`` when :func:`transfer_fact_problems` finds any: raises
    :class:`ImpossibleExportFactsError` (PG141) counting the problems by kind and listing the
    first 20 (all on ``.problems``). Nothing is decided on an export that contradicts itself:
    a backdated first use would otherwise be grandfathered. Raises ``ValueError`` for a naive
    ``at``."""
    problems = transfer_fact_problems(platform, at, source)
    if not problems:
        return
    rows = len({p.where for p in problems})
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(p.kind for p in problems).items()))
    shown = "; ".join(str(p) for p in problems[:_SHOWN])
    more = f"; ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    raise ImpossibleExportFactsError(
        f"the platform export's transfer facts are impossible in {rows} row(s) ({kinds}); "
        f"nothing was written: {shown}{more}",
        problems,
    )
