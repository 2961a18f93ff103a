"""Errors of policy-aware SQL (codes PG160-PG162, under :class:`~provguard.errors.InputError`)."""

from __future__ import annotations

from provguard.errors import InputError


class QueryError(InputError):
    """A query that cannot be run under a policy: unparsable, or naming unknown tables/columns."""

    code = "PG160"


class LineageError(QueryError):
    """A construct whose provenance lineage cannot be computed (the query is refused: provguard
    never returns unlabelled output)."""

    code = "PG161"


class QueryRefused(QueryError):
    """The policy forbids an output column, or a column in control position (``WHERE``, ``JOIN
    ... ON``, ``GROUP BY``, ``HAVING``, ``ORDER BY``, ``QUALIFY``, ``IN``/``EXISTS`` predicates),
    for some origin and its deny rule carries no ``mask`` obligation: the whole query is refused.
    A table whose *row label* (it was made by ``CREATE TABLE AS`` from such control positions)
    is hit is refused with ``clause`` = ``FROM <table>``.
    ``rules`` holds the ids of the refusing rules, ``column`` the output column (or the control
    columns), ``clause`` the control clause (None for an output column)."""

    code = "PG162"

    def __init__(
        self, message: str, *, column: str, rules: tuple[str, ...], clause: str | None = None
    ) -> None:
        self.column = column
        self.rules = rules
        self.clause = clause
        super().__init__(message)
