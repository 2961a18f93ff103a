"""Cross-check of the control store's mutable tables against the hash-chained audit log (pure).

The report and the decision points read three control-store tables that the audit chain also
records; a hand edit of the table must not pass for evidence while ``audit verify`` says
"chain intact". This module compares the rows with the chained entries, field by field:

=====================  =======================================================================
table                  chained entry it must match (the newest one for its key, by seq)
=====================  =======================================================================
``instrument_events``  kind ``instrument_event``, payload ``{"instrument", "event", "date",
                       "replaces"}`` (``provguard instrument event`` /
                       :meth:`provguard.adapters.control_sqlite.SqlControlStore.record_event`);
                       key ``instrument/event``; fields ``on_date`` ↔ ``date``
``transfers``          kind ``decision`` with ``stage == "transfer_audit"`` (the main job's
                       transfer audit, :mod:`provguard.job.transfers`); key ``transfer_id`` =
                       ``context.transfer_id``; fields ``decision`` ↔ ``effect``, ``excepted``,
                       ``rule_id`` ↔ ``rules[0]``, ``first_used_at`` ↔
                       ``request.grant_first_used_by_recipient_at``, ``grant_id`` /
                       ``subject_id`` ↔ ``context``, ``provider`` ↔ ``request.origins``,
                       ``from_app`` ↔ ``request.app``, ``to_app`` ↔ ``request.recipient``
``campaigns``          kind ``campaign`` (the job's last entry of a run); key ``campaign_id``;
                       fields ``rule_id``, ``instrument_id``, ``targets`` (rows of
                       ``campaign_targets``) and ``history`` (the chained ``states`` must be one
                       of the campaign's ``campaign_progress`` snapshots)
=====================  =======================================================================

Both directions count: a row without its chained entry, and a chained entry whose row is gone
(for ``campaigns`` only the first: a campaign started with ``provguard campaign start`` has no
chain record, so it is reported as *not chain-backed*, not as a discrepancy). A matching entry
must also lie inside the verified part of the chain (:class:`VerifiedRange`): an entry after a
break, or outside the range the caller verified, does not vouch for anything.

:data:`NOT_IN_CHAIN` lists what the chain does not record (the instruments' text and rules,
the control store's sandbox grants, campaign states after the last chained snapshot, the
scan, the grant registry): a report section built from them is not chain-backed and says so.

The comparison is pure (rows and entries in, a :class:`CrossCheckResult` out); the SQL that
reads the rows and entries is in :mod:`provguard.adapters.control_sqlite`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from provguard.audit.chain import AuditEntry
from provguard.errors import AuditError

__all__ = [
    "CHECKED_TABLES",
    "NOT_IN_CHAIN",
    "CampaignRow",
    "ChainRecords",
    "CrossCheckResult",
    "Discrepancy",
    "EventRow",
    "StoreChainMismatchError",
    "StoreTables",
    "TableCheck",
    "TransferRow",
    "VerifiedRange",
    "check_campaigns",
    "check_instrument_events",
    "check_transfers",
    "crosscheck",
]

EVENT_KIND = "instrument_event"
CAMPAIGN_KIND = "campaign"
TRANSFER_STAGE = "transfer_audit"

CHECKED_TABLES: Mapping[str, str] = {
    "instrument_events": "1. Legal instruments (status in force / ended)",
    "transfers": "3. Login-grant transfers",
    "campaigns": "3c. Remediation campaign",
}
"""The tables :func:`crosscheck` compares, and the report section each one feeds."""

NOT_IN_CHAIN: Mapping[str, str] = {
    "instruments, rules": "1. the instruments' text and rules (the policy files; query entries "
    "record their digest)",
    "grants": "the control store's sandbox grants (not shown as figures)",
    "campaign_targets, campaign_progress after the last chained snapshot": "3c. campaign "
    "states changed by later rescans",
    "data/profile_scan.parquet": "4. Profile-match scan",
    "evidence.json (carried over)": "5. Recommendation quality, data source",
    "grants.db (grant registry)": "3a. Sign-ins and token exchanges, 3b. Revocations (the "
    "chain holds grant.* events; they are not cross-checked with the registry's tables)",
}
"""What the chain does not record (or this check does not compare), with the report sections
built from it."""


class StoreChainMismatchError(AuditError):
    """A control-store table disagrees with the hash-chained audit log (a row without its
    chained entry, a field that differs, or an entry outside the verified chain).

    ``discrepancies`` holds every one found; the message names the first few and the count."""

    code = "PG340"

    def __init__(self, message: str, discrepancies: Sequence[Discrepancy] = ()) -> None:
        self.discrepancies = tuple(discrepancies)
        super().__init__(message)


@dataclass(frozen=True)
class Discrepancy:
    """One disagreement: in ``table``, the row with ``key`` has ``table_value`` in ``field``
    where the chained entry (``seq``, ``None`` when there is none) has ``chain_value``. Values
    are text (ISO-8601 for dates and times); ``None`` means "absent" (no row, no entry)."""

    table: str
    key: str
    field: str
    table_value: str | None
    chain_value: str | None
    seq: int | None = None

    def __str__(self) -> str:
        where = f"entry #{self.seq}" if self.seq is not None else "the chain"
        return (
            f"{self.table}[{self.key}].{self.field}: table has {_shown(self.table_value)}, "
            f"{where} has {_shown(self.chain_value)}"
        )


def _shown(value: str | None) -> str:
    return "nothing" if value is None else repr(value)


@dataclass(frozen=True)
class VerifiedRange:
    """Entries ``first``..``last`` (1-based seqs, inclusive) were verified to be in the chain
    (hashes recomputed and linked); ``last = 0`` means nothing was verified."""

    first: int
    last: int

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and self.first <= seq <= self.last


@dataclass(frozen=True)
class EventRow:
    """A row of ``instrument_events``: ``on_date`` is the day the event happened."""

    instrument_id: str
    event: str
    on_date: date


@dataclass(frozen=True)
class TransferRow:
    """A row of ``transfers`` (``first_used_at`` naive values are UTC)."""

    transfer_id: str
    grant_id: str
    subject_id: int
    provider: str
    from_app: str
    to_app: str
    first_used_at: datetime | None
    decision: str | None
    rule_id: str | None
    excepted: bool | None


@dataclass(frozen=True)
class CampaignRow:
    """A campaign of ``campaigns`` with ``targets`` rows in ``campaign_targets`` and its
    ``campaign_progress`` snapshots (counts per state, oldest first)."""

    campaign_id: str
    rule_id: str
    instrument_id: str
    targets: int
    history: tuple[Mapping[str, int], ...] = ()


@dataclass(frozen=True)
class StoreTables:
    """The rows to check; ``None`` for a table the store does not have."""

    events: tuple[EventRow, ...] | None = ()
    transfers: tuple[TransferRow, ...] | None = ()
    campaigns: tuple[CampaignRow, ...] | None = ()


@dataclass
class ChainRecords:
    """The chained entries the check needs, newest per key (fed one entry at a time, so the
    report collects them in the same pass that tallies decisions)."""

    events: dict[tuple[str, str], AuditEntry] = field(default_factory=dict)
    transfers: dict[str, AuditEntry] = field(default_factory=dict)
    campaigns: dict[str, AuditEntry] = field(default_factory=dict)

    def add(self, entry: AuditEntry) -> None:
        """Keep ``entry`` if it is one the check compares (later entries replace earlier)."""
        p = entry.payload
        if entry.kind == EVENT_KIND:
            inst, ev = p.get("instrument"), p.get("event")
            if isinstance(inst, str) and isinstance(ev, str):
                self.events[(inst, ev)] = entry
        elif entry.kind == "decision":
            if p.get("stage") == TRANSFER_STAGE:
                ctx = p.get("context")
                tid = ctx.get("transfer_id") if isinstance(ctx, Mapping) else None
                if isinstance(tid, str):
                    self.transfers[tid] = entry
        elif entry.kind == CAMPAIGN_KIND:
            cid = p.get("campaign_id")
            if isinstance(cid, str):
                self.campaigns[cid] = entry

    @classmethod
    def of(cls, entries: Iterable[AuditEntry]) -> ChainRecords:
        """The records of ``entries`` (in seq order)."""
        out = cls()
        for e in entries:
            out.add(e)
        return out


@dataclass(frozen=True)
class TableCheck:
    """The check of one ``table``: ``rows`` read, ``entries`` chained entries compared,
    ``matched`` rows equal to their entry; ``unchained`` rows with no chain record that are
    legitimately so (campaigns started outside the job); ``present``: the store has the
    table."""

    table: str
    rows: int
    entries: int
    matched: int
    discrepancies: tuple[Discrepancy, ...] = ()
    unchained: tuple[str, ...] = ()
    present: bool = True

    @property
    def ok(self) -> bool:
        return not self.discrepancies


@dataclass(frozen=True)
class CrossCheckResult:
    """The tables checked (:data:`CHECKED_TABLES` order) and what the chain does not cover."""

    tables: tuple[TableCheck, ...]
    not_in_chain: Mapping[str, str] = field(default_factory=lambda: dict(NOT_IN_CHAIN))

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tables)

    @property
    def discrepancies(self) -> tuple[Discrepancy, ...]:
        return tuple(d for t in self.tables for d in t.discrepancies)

    def table(self, name: str) -> TableCheck | None:
        return next((t for t in self.tables if t.table == name), None)

    def failed_tables(self) -> tuple[str, ...]:
        return tuple(t.table for t in self.tables if not t.ok)

    def message(self, limit: int = 5) -> str:
        """One paragraph: how many discrepancies in which tables, the first ``limit``."""
        found = self.discrepancies
        if not found:
            return "every checked table agrees with the audit chain"
        per = ", ".join(f"{t.table} {len(t.discrepancies)}" for t in self.tables if not t.ok)
        shown = "; ".join(str(d) for d in found[:limit])
        more = f"; and {len(found) - limit} more" if len(found) > limit else ""
        noun = "discrepancy" if len(found) == 1 else "discrepancies"
        return (
            f"the control store disagrees with the signed audit chain ({len(found)} {noun}: "
            f"{per}): {shown}{more}"
        )

    def raise_for_failure(self) -> None:
        """Raise :class:`StoreChainMismatchError` (PG340) when any table disagrees."""
        if not self.ok:
            raise StoreChainMismatchError(self.message(), self.discrepancies)


# ------------------------------------------------------------------------------ value texts


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _chain_time(value: Any) -> datetime | str | None:
    """A chained ISO-8601 time as an aware datetime (unparseable text stays text)."""
    if not isinstance(value, str):
        return None
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        return value


def _chain_day(value: Any) -> date | str | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return value


def _outside(table: str, key: str, e: AuditEntry, verified: VerifiedRange) -> Discrepancy | None:
    if e.seq in verified:
        return None
    return Discrepancy(
        table,
        key,
        "chain",
        "recorded",
        f"entry #{e.seq} is outside the verified chain (#{verified.first}–#{verified.last})",
        e.seq,
    )


# ------------------------------------------------------------------------------ the checks


def check_instrument_events(
    rows: Iterable[EventRow] | None,
    chained: Mapping[tuple[str, str], AuditEntry],
    verified: VerifiedRange,
) -> TableCheck:
    """Compare ``instrument_events`` rows with the newest chained ``instrument_event`` entry per
    (instrument, event) (``chained``, as :class:`ChainRecords` keeps them); entries must lie in
    ``verified``. ``rows=None``: the store has no such table (every chained entry is then a
    row that is missing)."""
    table = "instrument_events"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[tuple[str, str]] = set()
    listed = list(rows or ())
    for r in listed:
        key = (r.instrument_id, r.event)
        name = f"{r.instrument_id}/{r.event}"
        seen.add(key)
        e = chained.get(key)
        if e is None:
            found.append(
                Discrepancy(table, name, "on_date", _text(r.on_date), None)  # no entry at all
            )
            continue
        before = len(found)
        outside = _outside(table, name, e, verified)
        if outside is not None:
            found.append(outside)
        day = _chain_day(e.payload.get("date"))
        if day != r.on_date:
            found.append(Discrepancy(table, name, "on_date", _text(r.on_date), _text(day), e.seq))
        matched += len(found) == before
    for key, e in sorted(chained.items()):
        if key not in seen:
            found.append(
                Discrepancy(
                    table,
                    f"{key[0]}/{key[1]}",
                    "on_date",
                    None,
                    _text(_chain_day(e.payload.get("date"))),
                    e.seq,
                )
            )
    return TableCheck(table, len(listed), len(chained), matched, tuple(found), (), rows is not None)


def _transfer_fields(e: AuditEntry) -> dict[str, Any]:
    p = e.payload
    request = p.get("request") if isinstance(p.get("request"), Mapping) else {}
    context = p.get("context") if isinstance(p.get("context"), Mapping) else {}
    assert isinstance(request, Mapping) and isinstance(context, Mapping)
    rules = p.get("rules")
    origins = request.get("origins")
    return {
        "decision": p.get("effect"),
        "excepted": p.get("excepted"),
        "rule_id": rules[0] if isinstance(rules, list) and rules else None,
        "first_used_at": _chain_time(request.get("grant_first_used_by_recipient_at")),
        "grant_id": context.get("grant_id"),
        "subject_id": context.get("subject_id"),
        "provider": ",".join(sorted(origins)) if isinstance(origins, list) else None,
        "from_app": request.get("app"),
        "to_app": request.get("recipient"),
    }


def check_transfers(
    rows: Iterable[TransferRow] | None,
    chained: Mapping[str, AuditEntry],
    verified: VerifiedRange,
) -> TableCheck:
    """Compare ``transfers`` rows with the newest chained transfer-audit decision per
    ``transfer_id`` (see the module docstring for the fields); entries must lie in
    ``verified``."""
    table = "transfers"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[str] = set()
    listed = list(rows or ())
    for r in listed:
        seen.add(r.transfer_id)
        e = chained.get(r.transfer_id)
        if e is None:
            found.append(Discrepancy(table, r.transfer_id, "decision", _text(r.decision), None))
            continue
        before = len(found)
        outside = _outside(table, r.transfer_id, e, verified)
        if outside is not None:
            found.append(outside)
        want = _transfer_fields(e)
        have: dict[str, Any] = {
            "decision": r.decision,
            "excepted": None if r.excepted is None else bool(r.excepted),
            "rule_id": r.rule_id,
            "first_used_at": _utc(r.first_used_at) if r.first_used_at is not None else None,
            "grant_id": r.grant_id,
            "subject_id": r.subject_id,
            "provider": r.provider,
            "from_app": r.from_app,
            "to_app": r.to_app,
        }
        for name, value in have.items():
            if value != want[name]:
                found.append(
                    Discrepancy(table, r.transfer_id, name, _text(value), _text(want[name]), e.seq)
                )
        matched += len(found) == before
    for tid, e in sorted(chained.items()):
        if tid not in seen:
            found.append(
                Discrepancy(table, tid, "decision", None, _text(e.payload.get("effect")), e.seq)
            )
    return TableCheck(table, len(listed), len(chained), matched, tuple(found), (), rows is not None)


def check_campaigns(
    rows: Iterable[CampaignRow] | None,
    chained: Mapping[str, AuditEntry],
    verified: VerifiedRange,
) -> TableCheck:
    """Compare ``campaigns`` (with their target counts and progress snapshots) with the newest
    chained ``campaign`` entry per campaign id. A campaign without a chained entry is listed in
    ``unchained`` (not an error); a chained campaign without its row is a discrepancy."""
    table = "campaigns"
    found: list[Discrepancy] = []
    unchained: list[str] = []
    matched = 0
    seen: set[str] = set()
    listed = list(rows or ())
    for r in listed:
        seen.add(r.campaign_id)
        e = chained.get(r.campaign_id)
        if e is None:
            unchained.append(r.campaign_id)
            continue
        before = len(found)
        outside = _outside(table, r.campaign_id, e, verified)
        if outside is not None:
            found.append(outside)
        p = e.payload
        for name, value in (
            ("rule_id", r.rule_id),
            ("instrument_id", r.instrument_id),
            ("targets", r.targets),
        ):
            if value != p.get(name):
                found.append(
                    Discrepancy(table, r.campaign_id, name, _text(value), _text(p.get(name)), e.seq)
                )
        states = p.get("states")
        if isinstance(states, Mapping):
            want = {str(k): v for k, v in states.items()}
            if not any(dict(h) == want for h in r.history):
                shown = "; ".join(_states_text(h) for h in r.history[-3:]) or None
                found.append(
                    Discrepancy(table, r.campaign_id, "history", shown, _states_text(want), e.seq)
                )
        matched += len(found) == before
    for cid, e in sorted(chained.items()):
        if cid not in seen:
            found.append(
                Discrepancy(table, cid, "targets", None, _text(e.payload.get("targets")), e.seq)
            )
    return TableCheck(
        table, len(listed), len(chained), matched, tuple(found), tuple(unchained), rows is not None
    )


def _states_text(states: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(states.items()))


def crosscheck(
    tables: StoreTables,
    entries: ChainRecords | Iterable[AuditEntry],
    verified: VerifiedRange,
) -> CrossCheckResult:
    """Check every table of :data:`CHECKED_TABLES` against the chain.

    ``entries``: the chain's entries in seq order (or :class:`ChainRecords` already collected
    from them); ``verified``: the seqs verified to be in the chain (e.g. ``VerifiedRange(1,
    result.count)`` after :func:`provguard.audit.chain.verify_chain` returned ``ok``). Time
    O(rows + entries); no I/O."""
    records = entries if isinstance(entries, ChainRecords) else ChainRecords.of(entries)
    return CrossCheckResult(
        (
            check_instrument_events(tables.events, records.events, verified),
            check_transfers(tables.transfers, records.transfers, verified),
            check_campaigns(tables.campaigns, records.campaigns, verified),
        )
    )
