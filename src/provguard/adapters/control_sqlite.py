"""The control-plane store on SQLAlchemy: instruments, rules, instrument events, grants, transfers.

SQLite by default (a file, no server); any SQLAlchemy URL works (PostgreSQL in production). Every
write runs in one transaction, so a crash mid-write leaves the previous state.

**Instrument events are evidence.** :meth:`SqlControlStore.record_event` writes the event row
and its hash-chained ``instrument_event`` audit entry (table ``audit_log``, the layout of
:mod:`provguard.adapters.audit_sqlite`) in ONE transaction, and :meth:`SqlControlStore.events`
-- what ``provguard decide --store``, ``provguard query`` and the main job apply -- returns the
events only when every row matches the newest chained entry for it and that entry is linked
into the chain (:func:`verify_event_entries`); otherwise it raises
:class:`~provguard.audit.crosscheck.StoreChainMismatchError` (PG340) naming the discrepancy, or
:class:`~provguard.errors.AuditChainError` (PG310) for a broken link, and nothing is applied.
:func:`read_store_tables`, :func:`read_chain_records` and :func:`check_store` read what
:mod:`provguard.audit.crosscheck` compares (docs/audit.md, "Store tables against the chain").
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters import campaign_sqlite as cq
from provguard.adapters.audit_sqlite import _row_to_entry, audit_log_table, checkpoint_table
from provguard.adapters.sql_engine import open_store, store_url
from provguard.audit.chain import (
    GENESIS_HASH,
    AuditEntry,
    build_entry,
    canonical_payload,
    link_hash,
    verify_chain,
)
from provguard.audit.crosscheck import (
    CAMPAIGN_OPERATION_KINDS,
    EVENT_KIND,
    GRANT_KINDS,
    POLICY_KIND,
    CampaignRow,
    ChainRecords,
    CrossCheckResult,
    Discrepancy,
    EventRow,
    GrantRow,
    InstrumentRow,
    RegistryTables,
    RevocationRow,
    RuleRow,
    StoreChainMismatchError,
    StoreTables,
    TransferRow,
    VerifiedRange,
    check_instrument_events,
    crosscheck,
    crosscheck_registry,
)
from provguard.audit.folder import CHECKPOINT_FILE, PUBLIC_KEY_FILE
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    load_public_key,
    verify_signed_checkpoint,
)
from provguard.errors import AuditChainError, AuditError, StoreError
from provguard.policy.model import Bundle

metadata = MetaData()

instruments = Table(
    "instruments",
    metadata,
    Column("id", String, primary_key=True),
    Column("kind", String, nullable=False),
    Column("issuer", String, nullable=False),
    Column("citation", Text),
    Column("effective_from", Date, nullable=False),
    Column("validity", String, nullable=False),
    Column("source", Text, nullable=False),  # the instrument as JSON
)
rules = Table(
    "rules",
    metadata,
    Column("instrument_id", String, primary_key=True),
    Column("rule_id", String, primary_key=True),
    Column("effect", String, nullable=False),
    Column("summary", Text, nullable=False),
    Column("location", String),
)
instrument_events = Table(
    "instrument_events",
    metadata,
    Column("instrument_id", String, primary_key=True),
    Column("event", String, primary_key=True),
    Column("on_date", Date, nullable=False),
)
grants = Table(
    "grants",
    metadata,
    Column("grant_id", String, primary_key=True),
    Column("subject_id", Integer, nullable=False, index=True),
    Column("provider", String, nullable=False),
    Column("app_id", String, nullable=False),
    Column("openid", String, nullable=False),
    Column("unionid", String, nullable=False, index=True),
    Column("scopes", String, nullable=False),
    Column("granted_at", DateTime(timezone=True), nullable=False),
    Column("status", String, nullable=False),
)
transfers = Table(
    "transfers",
    metadata,
    Column("transfer_id", String, primary_key=True),
    Column("grant_id", String, nullable=False, index=True),
    Column("subject_id", Integer, nullable=False),
    Column("provider", String, nullable=False),
    Column("from_app", String, nullable=False),
    Column("to_app", String, nullable=False),
    Column("first_used_at", DateTime(timezone=True), nullable=False),
    Column("decision", String),
    Column("rule_id", String),
    Column("excepted", Integer),
)


class SqlControlStore:
    """:class:`provguard.ports.ControlStore` on SQLAlchemy.

    ``url_or_path``: a SQLAlchemy URL, or a file path (SQLite). Raises :class:`StoreError` when the
    database cannot be opened or written.
    """

    def __init__(self, url_or_path: str | Path) -> None:
        self.engine: Engine = open_store(url_or_path, metadata, "control store")

    def save_bundles(self, bundles: Iterable[Bundle]) -> None:
        """Replace the stored instruments and rules by ``bundles`` (one transaction)."""
        inst_rows: list[dict[str, Any]] = []
        rule_rows: list[dict[str, Any]] = []
        for b in bundles:
            i = b.instrument
            inst_rows.append(
                {
                    "id": i.id,
                    "kind": i.kind,
                    "issuer": i.issuer,
                    "citation": i.citation,
                    "effective_from": i.effective_from,
                    "validity": i.validity_text(),
                    "source": i.model_dump_json(by_alias=True),
                }
            )
            rule_rows.extend(
                {
                    "instrument_id": i.id,
                    "rule_id": r.id,
                    "effect": r.effect,
                    "summary": r.summary(),
                    "location": r.location,
                }
                for r in b.rules
            )
        with self._begin() as conn:
            conn.execute(delete(rules))
            conn.execute(delete(instruments))
            if inst_rows:
                conn.execute(insert(instruments), inst_rows)
            if rule_rows:
                conn.execute(insert(rules), rule_rows)

    def record_event(
        self, instrument_id: str, event_name: str, on: date, *, at: datetime | None = None
    ) -> AuditEntry:
        """Record that ``event_name`` of ``instrument_id`` happened on ``on``, replacing an
        earlier date, and append its ``instrument_event`` audit entry (payload
        ``{"instrument", "event", "date", "replaces"}``, stamped ``at``, default now UTC) to
        the chain in the same transaction: the row and its evidence are written together or
        not at all. Returns the entry. Raises :class:`StoreError` (nothing written),
        :class:`~provguard.errors.AuditError` for a naive ``at``."""
        stamp = at if at is not None else datetime.now(UTC)
        key = (
            instrument_events.c.instrument_id == instrument_id,
            instrument_events.c.event == event_name,
        )
        try:
            with self._begin() as conn:
                audit_log_table.create(conn, checkfirst=True)
                # the write first: it takes the write lock, so the replaced date, the head
                # read below and the new entry all belong to this one transaction
                before = conn.execute(
                    delete(instrument_events).where(*key).returning(instrument_events.c.on_date)
                ).first()
                conn.execute(
                    insert(instrument_events),
                    [{"instrument_id": instrument_id, "event": event_name, "on_date": on}],
                )
                head = conn.execute(
                    select(audit_log_table.c.seq, audit_log_table.c.hash)
                    .order_by(audit_log_table.c.seq.desc())
                    .limit(1)
                ).first()
                seq, prev = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
                entry = build_entry(
                    seq + 1,
                    prev,
                    EVENT_KIND,
                    {
                        "instrument": instrument_id,
                        "event": event_name,
                        "date": on.isoformat(),
                        "replaces": before[0].isoformat() if before is not None else None,
                    },
                    stamp,
                )
                conn.execute(
                    insert(audit_log_table),
                    [
                        {
                            "seq": entry.seq,
                            "at": entry.stored_at(),
                            "kind": entry.kind,
                            "payload": entry.stored_payload(),
                            "prev_hash": entry.prev_hash,
                            "hash": entry.hash,
                        }
                    ],
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"control store write failed: {exc}") from exc
        return entry

    def instrument_ids(self) -> set[str]:
        """The ids of the instruments stored by :meth:`save_bundles`."""
        with self.engine.connect() as conn:
            return {r.id for r in conn.execute(select(instruments.c.id)).all()}

    def raw_events(self) -> Mapping[tuple[str, str], date]:
        """The ``instrument_events`` rows as stored, NOT checked against the audit chain (for
        diagnostics; decisions use :meth:`events`). Raises :class:`StoreError`."""
        return {(r.instrument_id, r.event): r.on_date for r in self._event_rows()}

    def events(self) -> Mapping[tuple[str, str], date]:
        """The recorded instrument events ``{(instrument id, event): day}``, each verified
        against the hash-chained audit log: the row must equal the newest chained
        ``instrument_event`` entry for its (instrument, event), that entry must be linked into
        the chain (:func:`verify_event_entries`), and no chained event may lack its row.

        Raises :class:`~provguard.audit.crosscheck.StoreChainMismatchError` (PG340) naming each
        discrepancy, :class:`~provguard.errors.AuditChainError` (PG310) when the chain does not
        link, :class:`StoreError` when the store cannot be read: an event that does not verify
        is never applied. A store with no event row costs one small query and is not compared
        with the chain (deleting every row only keeps the instruments in force; the report's
        cross-check names such a deletion).

        When ``audit.pub`` is beside the store (a job's output folder, :meth:`public_key`),
        each event's chained entry must moreover be covered by a signed checkpoint (stored in
        the log, or the exported ``checkpoint.json`` beside it) whose Ed25519 signature
        (RFC 8032) verifies with that key and whose head the log holds; else PG340 naming the
        event ("not covered by a signed checkpoint"): writing to the database without the
        signing key cannot end an instrument (findings I-1). Without ``audit.pub`` this
        extra check does not apply."""
        rows = self._event_rows()
        if not rows:
            return {}
        try:
            with self.engine.connect() as conn:
                chained = read_event_entries(conn)
                verified = verify_event_entries(conn, list(chained.values()), self.public_key())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the control store's audit log: {exc}") from exc
        check = check_instrument_events(
            [EventRow(r.instrument_id, r.event, r.on_date) for r in rows], chained, verified
        )
        if not check.ok:
            raise StoreChainMismatchError(
                "instrument events in the control store do not match the signed audit chain, "
                "so none is applied: "
                + "; ".join(str(d) for d in check.discrepancies[:5])
                + (
                    f"; and {len(check.discrepancies) - 5} more"
                    if len(check.discrepancies) > 5
                    else ""
                )
                + " (record events with 'provguard instrument event'; docs/audit.md)",
                check.discrepancies,
            )
        self._require_signed(rows, chained)
        return {(r.instrument_id, r.event): r.on_date for r in rows}

    def _require_signed(
        self, rows: list[Any], chained: Mapping[tuple[str, str], AuditEntry]
    ) -> None:
        """PG340 unless every event row's chained entry is covered by a verified signed
        checkpoint, when ``audit.pub`` is beside the store (see :meth:`events`)."""
        public_key = self.public_key()
        if public_key is None:
            return
        exported: SignedCheckpoint | None = None
        path = self._folder_file(CHECKPOINT_FILE)
        if path is not None and path.is_file():
            try:
                exported = SignedCheckpoint.from_json(path.read_text(encoding="utf-8"))
            except (AuditError, ValueError, OSError):
                exported = None
        try:
            with self.engine.connect() as conn:
                covered = signed_cover(conn, public_key, exported)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the control store's audit log: {exc}") from exc
        missing = [
            Discrepancy(
                instrument_events.name,
                f"{r.instrument_id}/{r.event}",
                "signature",
                r.on_date.isoformat(),
                f"entry #{entry.seq} not covered by a signed checkpoint (signed up to #{covered})",
                entry.seq,
            )
            for r in rows
            if (entry := chained.get((r.instrument_id, r.event))) is not None
            and entry.seq > covered
        ]
        if missing:
            raise StoreChainMismatchError(
                "instrument events in the control store are not covered by a signed checkpoint "
                "of this folder's key (audit.pub), so none is applied: "
                + "; ".join(
                    f"{d.key} on {d.table_value} (audit entry #{d.seq}) is not covered by a "
                    "signed checkpoint"
                    for d in missing[:5]
                )
                + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
                + " (record events with 'provguard instrument event' where the signing key is "
                "available; docs/audit.md)",
                missing,
            )

    def _folder_file(self, name: str) -> Path | None:
        url = self.engine.url
        if not url.get_backend_name().startswith("sqlite") or not url.database:
            return None
        return Path(url.database).parent / name

    def public_key(self) -> Any:
        """The Ed25519 public key ``audit.pub`` beside a SQLite control store, or ``None`` (a
        server URL, or no such file). Raises :class:`~provguard.errors.AuditError` (PG300) for
        a file that is not a public key."""
        url = self.engine.url
        if not url.get_backend_name().startswith("sqlite") or not url.database:
            return None
        path = Path(url.database).parent / PUBLIC_KEY_FILE
        return load_public_key(path) if path.is_file() else None

    def _event_rows(self) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(select(instrument_events)).all())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read instrument events: {exc}") from exc

    def save_grants(self, table: pa.Table) -> int:
        """Replace the grants in ``table`` (columns as ``grants``) by id; returns rows written."""
        return self._replace(grants, table, "grant_id")

    def save_transfers(self, table: pa.Table) -> int:
        return self._replace(transfers, table, "transfer_id")

    def counts(self) -> dict[str, int]:
        out = {}
        with self.engine.connect() as conn:
            for t in (instruments, rules, instrument_events, grants, transfers):
                out[t.name] = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        return out

    def _replace(self, target: Table, table: pa.Table, key: str) -> int:
        names = [c.name for c in target.columns]
        rows = [{k: row.get(k) for k in names} for row in table.to_pylist()]
        keys = [r[key] for r in rows]
        with self._begin() as conn:
            for start in range(0, len(keys), 500):
                conn.execute(delete(target).where(target.c[key].in_(keys[start : start + 500])))
            if rows:
                conn.execute(insert(target), rows)
        return len(rows)

    def _begin(self) -> Any:
        try:
            return self.engine.begin()
        except SQLAlchemyError as exc:
            raise StoreError(f"control store write failed: {exc}") from exc

    def instrument_source(self, instrument_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(instruments.c.source).where(instruments.c.id == instrument_id)
            ).one()
        result: dict[str, Any] = json.loads(row[0])
        return result


# ------------------------------------------------------------------------------------------
# reading what the cross-check compares (provguard.audit.crosscheck)


def _has(conn: Connection, table: str) -> bool:
    return bool(inspect(conn).has_table(table))


def read_event_entries(conn: Connection) -> dict[tuple[str, str], AuditEntry]:
    """The newest chained ``instrument_event`` entry per (instrument, event); ``{}`` when the
    store has no audit log. One scan of ``audit_log`` by kind."""
    if not _has(conn, audit_log_table.name):
        return {}
    records = ChainRecords()
    rows = conn.execute(
        select(audit_log_table)
        .where(audit_log_table.c.kind == EVENT_KIND)
        .order_by(audit_log_table.c.seq)
    ).all()
    for row in rows:
        records.add(_row_to_entry(row))
    return records.events


@dataclass(frozen=True)
class _Verified:
    """A cached proof: the entries ``hashes`` (seq -> hash) link to ``end`` (seq, hash)."""

    end: tuple[int, str]


_VERIFIED: dict[tuple[str, tuple[tuple[int, str], ...]], _Verified] = {}
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 256


def verify_event_entries(
    conn: Connection, entries: list[AuditEntry], public_key: Any = None
) -> VerifiedRange:
    """Prove that ``entries`` are inside the hash chain without re-hashing all of it.

    From the oldest entry ``s`` to an end point ``c``, every entry's hash is recomputed from its
    stored bytes and every link checked (O(c - s) hashes, on the stored text: no JSON decoding).
    ``c`` is the first stored signed checkpoint at or after the newest entry whose Ed25519
    signature verifies with ``public_key`` (``audit.pub`` beside the log) and whose head the
    log holds -- the entries are then covered by that signature -- else the log's head. Each
    entry's stored payload must also be canonical (stored bytes that hash right but are not
    canonical were forged). A proof is cached in-process per (database, entry seqs and hashes,
    end point): a long-lived process then re-reads and re-hashes only the entries themselves
    and the end row (a proof that hash H links to end E stays true while the entry's content
    still hashes to H and E is still the end).

    Returns the verified range (``VerifiedRange(0, 0)`` for no entries). Raises
    :class:`~provguard.errors.AuditChainError` (PG310) naming the first entry that does not
    hash or link."""
    if not entries:
        return VerifiedRange(0, 0)
    for e in entries:
        # each entry's own content first: a cached proof is about (entry hash, end point), so
        # it holds only for content that still hashes to the proven hash
        if e.recompute_hash() != e.hash:
            raise AuditChainError(
                f"audit entry #{e.seq} (instrument_event) was edited: its content no longer "
                "matches its hash",
                e.seq,
            )
        if e.payload_json is not None and e.payload_json != canonical_payload(e.payload):
            raise AuditChainError(
                f"audit entry #{e.seq} (instrument_event): the stored payload is not in "
                "canonical form",
                e.seq,
            )
    first = min(e.seq for e in entries)
    last = max(e.seq for e in entries)
    end = _end_point(conn, last, public_key)
    db = str(conn.engine.url)
    key = (db, tuple(sorted((e.seq, e.hash) for e in entries)))
    with _VERIFIED_LOCK:
        hit = _VERIFIED.get(key)
    if hit is not None and hit.end == end[:2]:
        return VerifiedRange(first, end[0])
    wanted = {e.seq: e.hash for e in entries}
    prev: str | None = None
    seq = first - 1
    for row in conn.execute(
        select(
            audit_log_table.c.seq,
            audit_log_table.c.at,
            audit_log_table.c.kind,
            audit_log_table.c.payload,
            audit_log_table.c.prev_hash,
            audit_log_table.c.hash,
        )
        .where(audit_log_table.c.seq >= first, audit_log_table.c.seq <= end[0])
        .order_by(audit_log_table.c.seq)
    ):
        seq += 1
        if row.seq != seq:
            raise AuditChainError(f"audit entry #{seq} is missing (entry #{row.seq} follows)", seq)
        if prev is not None and row.prev_hash != prev:
            raise AuditChainError(
                f"audit entry #{row.seq} does not link to entry #{row.seq - 1}", row.seq
            )
        digest = link_hash(row.prev_hash, row.seq, row.at, row.kind, row.payload)
        if digest != row.hash or wanted.get(row.seq, digest) != digest:
            raise AuditChainError(
                f"audit entry #{row.seq} was edited: its content no longer matches its hash",
                row.seq,
            )
        prev = digest
    if seq != end[0] or prev != end[1]:
        raise AuditChainError(
            f"audit entries #{first}–#{end[0]} do not link to the "
            + ("signed checkpoint" if end[2] else "log's head"),
            seq + 1,
        )
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = _Verified((end[0], end[1]))
    return VerifiedRange(first, end[0])


def _end_point(conn: Connection, last: int, public_key: Any) -> tuple[int, str, bool]:
    """``(seq, hash, signed)``: the first signed checkpoint at or after ``last`` that verifies
    with ``public_key`` and whose head the log holds, else the log's head row."""
    if public_key is not None and _has(conn, checkpoint_table.name):
        docs = conn.execute(
            select(checkpoint_table.c.document)
            .where(checkpoint_table.c.count >= last)
            .order_by(checkpoint_table.c.count, checkpoint_table.c.id)
        ).all()
        for (doc,) in docs:
            try:
                signed = SignedCheckpoint.from_json(doc)
                verify_signed_checkpoint(signed, public_key)
            except (CheckpointSignatureError, AuditError):
                continue
            held = conn.execute(
                select(audit_log_table.c.hash).where(audit_log_table.c.seq == signed.count)
            ).first()
            if held is not None and held[0] == signed.head_hash:
                return signed.count, signed.head_hash, True
    head = conn.execute(
        select(audit_log_table.c.seq, audit_log_table.c.hash)
        .order_by(audit_log_table.c.seq.desc())
        .limit(1)
    ).first()
    if head is None:
        return 0, GENESIS_HASH, False
    return int(head[0]), str(head[1]), False


def signed_cover(
    conn: Connection, public_key: Any, exported: SignedCheckpoint | None = None
) -> int:
    """The highest entry count covered by a signed checkpoint -- stored in
    ``audit_checkpoints`` or ``exported`` (the folder's ``checkpoint.json``) -- whose Ed25519
    signature verifies with ``public_key`` and whose head hash is the hash the log holds for
    that entry; ``0`` when there is none. Stored checkpoints are read newest first and the
    scan stops at the first that holds."""

    def holds(signed: SignedCheckpoint) -> bool:
        try:
            verify_signed_checkpoint(signed, public_key)
        except (CheckpointSignatureError, AuditError):
            return False
        held = conn.execute(
            select(audit_log_table.c.hash).where(audit_log_table.c.seq == signed.count)
        ).first()
        return held is not None and held[0] == signed.head_hash

    best = 0
    offset, page = 0, 64
    while best == 0 and _has(conn, checkpoint_table.name):
        docs = conn.execute(
            select(checkpoint_table.c.document)
            .order_by(checkpoint_table.c.count.desc(), checkpoint_table.c.id.desc())
            .limit(page)
            .offset(offset)
        ).all()
        for (doc,) in docs:
            try:
                signed = SignedCheckpoint.from_json(doc)
            except (CheckpointSignatureError, AuditError):
                continue
            if holds(signed):
                best = signed.count
                break
        if len(docs) < page:
            break
        offset += page
    if exported is not None and exported.count > best and holds(exported):
        best = exported.count
    return best


def _utc_naive(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def read_store_tables(conn: Connection) -> StoreTables:
    """The rows :func:`provguard.audit.crosscheck.crosscheck` compares: ``instrument_events``,
    ``transfers`` and ``campaigns`` with their target counts, progress snapshots and current
    target states (:attr:`~provguard.audit.crosscheck.CampaignRow.now`), ``rules``
    and ``instruments`` (:class:`~provguard.audit.crosscheck.InstrumentRow`: the ``source``
    JSON's title and SHA-256) (``None`` for a table the store does not have)."""
    events = (
        tuple(
            EventRow(r.instrument_id, r.event, r.on_date)
            for r in conn.execute(select(instrument_events))
        )
        if _has(conn, instrument_events.name)
        else None
    )
    transfer_rows = (
        tuple(
            TransferRow(
                transfer_id=r.transfer_id,
                grant_id=r.grant_id,
                subject_id=int(r.subject_id),
                provider=r.provider,
                from_app=r.from_app,
                to_app=r.to_app,
                first_used_at=_utc_naive(r.first_used_at),
                decision=r.decision,
                rule_id=r.rule_id,
                excepted=None if r.excepted is None else bool(r.excepted),
            )
            for r in conn.execute(select(transfers))
        )
        if _has(conn, transfers.name)
        else None
    )
    campaigns: tuple[CampaignRow, ...] | None = None
    if _has(conn, cq.campaigns.name):
        sizes: dict[str, int] = dict(
            conn.execute(
                select(cq.targets.c.campaign_id, func.count()).group_by(cq.targets.c.campaign_id)
            ).all()
        )
        now: dict[str, dict[str, int]] = {}
        for cid, state, n in conn.execute(
            select(cq.targets.c.campaign_id, cq.targets.c.state, func.count()).group_by(
                cq.targets.c.campaign_id, cq.targets.c.state
            )
        ):
            now.setdefault(cid, {})[str(state)] = int(n)
        history: dict[str, list[Mapping[str, int]]] = {}
        for r in conn.execute(select(cq.progress).order_by(cq.progress.c.seq)):
            counts = json.loads(r.counts)
            history.setdefault(r.campaign_id, []).append(
                {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else {}
            )
        campaigns = tuple(
            CampaignRow(
                campaign_id=r.campaign_id,
                rule_id=r.rule_id,
                instrument_id=r.instrument_id,
                targets=int(sizes.get(r.campaign_id, 0)),
                history=tuple(history.get(r.campaign_id, ())),
                now=now.get(r.campaign_id, {}),
            )
            for r in conn.execute(select(cq.campaigns))
        )
    rule_rows = (
        tuple(
            RuleRow(r.instrument_id, r.rule_id, r.effect, r.summary)
            for r in conn.execute(select(rules).order_by(rules.c.instrument_id, rules.c.rule_id))
        )
        if _has(conn, rules.name)
        else None
    )
    instrument_rows = (
        tuple(
            _instrument_row(r) for r in conn.execute(select(instruments).order_by(instruments.c.id))
        )
        if _has(conn, instruments.name)
        else None
    )
    return StoreTables(
        events=events,
        transfers=transfer_rows,
        campaigns=campaigns,
        rules=rule_rows,
        instruments=instrument_rows,
    )


def _instrument_row(r: Any) -> InstrumentRow:
    """An ``instruments`` row as :func:`provguard.audit.crosscheck.check_instruments` compares
    it: the title read from its ``source`` JSON (``None`` when absent or unparseable: the
    digest of the text then differs anyway), the digest of that text's UTF-8 bytes."""
    import hashlib

    source = str(r.source)
    try:
        decoded = json.loads(source)
    except ValueError:
        decoded = None
    title = decoded.get("title") if isinstance(decoded, dict) else None
    day = r.effective_from
    return InstrumentRow(
        instrument_id=r.id,
        kind=r.kind,
        title=title if isinstance(title, str) else None,
        issuer=r.issuer,
        effective_from=day if isinstance(day, date) else date.fromisoformat(str(day)),
        validity=r.validity,
        source_sha256=hashlib.sha256(source.encode("utf-8")).hexdigest(),
    )


def read_chain_records(conn: Connection) -> ChainRecords:
    """The chained entries the cross-checks compare (``instrument_event`` and ``campaign``
    entries, transfer-audit decisions, the grant registry's ``grant.*`` events of
    :data:`~provguard.audit.crosscheck.GRANT_KINDS`, ``grant.transfer`` included), newest per
    key; read with a kind
    filter and a text
    pre-filter on the stage, each kept entry decoded and checked by
    :meth:`ChainRecords.add`."""
    records = ChainRecords()
    if not _has(conn, audit_log_table.name):
        return records
    t = audit_log_table
    query = (
        select(t)
        .where(
            or_(
                t.c.kind.in_(
                    (
                        "instrument_event",
                        "campaign",
                        *CAMPAIGN_OPERATION_KINDS,
                        POLICY_KIND,
                        *GRANT_KINDS,
                    )
                ),
                (t.c.kind == "decision") & t.c.payload.contains('"stage":"transfer_audit"'),
            )
        )
        .order_by(t.c.seq)
    )
    for row in conn.execute(query):
        records.add(_row_to_entry(row))
    return records


def check_store(
    url_or_path: str | Path,
    *,
    verified: VerifiedRange | None = None,
    public_key: Any = None,
) -> CrossCheckResult:
    """Cross-check the control store at ``url_or_path`` against its audit log
    (:func:`provguard.audit.crosscheck.crosscheck`).

    ``verified``: the seqs already verified to be in the chain (``provguard audit verify``
    passes ``VerifiedRange(1, result.count, signed=covered)`` for an intact chain, or
    ``VerifiedRange(1, first_bad_seq - 1, ...)``); ``None`` verifies the whole chain here first
    (O(entries)) and, when an Ed25519 public key is known (``public_key``, else ``audit.pub``
    beside a SQLite store), requires every compared entry to be covered by a checkpoint that
    key signed (stored in the log, or ``checkpoint.json`` beside it; :func:`signed_cover`),
    as :attr:`VerifiedRange.signed` describes. Raises :class:`StoreError` when the store
    cannot be read, :class:`~provguard.errors.AuditError` (PG300) for an ``audit.pub`` that is
    not a public key. Read-only: unlike :class:`SqlControlStore` it creates no table (evidence
    is never written to), and a table the store lacks is reported as absent."""
    url = store_url(url_or_path)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if verified is None:
                verified = _verify_all(conn)
                key = public_key if public_key is not None else _beside(url, PUBLIC_KEY_FILE)
                if key is not None:
                    exported = _exported_beside(url)
                    cover = signed_cover(conn, key, exported) if verified.last else 0
                    verified = VerifiedRange(
                        verified.first, verified.last, min(cover, verified.last)
                    )
            tables = read_store_tables(conn)
            records = read_chain_records(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the control store for the cross-check: {exc}") from exc
    finally:
        engine.dispose()
    return crosscheck(tables, records, verified)


def read_registry_tables(conn: Connection) -> RegistryTables:
    """The grant registry's rows :func:`provguard.audit.crosscheck.crosscheck_registry`
    compares: ``oauth_grants``, ``revocation_jobs`` and the evidence tables of
    :func:`provguard.adapters.grant_store.read_registry_evidence` (``None`` for a table the
    database does not have). The tables are :mod:`provguard.adapters.grant_store`'s, read
    only."""
    from provguard.adapters.grant_store import (
        oauth_grants,
        read_registry_evidence,
        revocation_jobs,
    )

    grant_rows = (
        tuple(
            GrantRow(r.grant_id, r.provider, r.app_id, r.scopes, r.status)
            for r in conn.execute(select(oauth_grants).order_by(oauth_grants.c.grant_id))
        )
        if _has(conn, oauth_grants.name)
        else None
    )
    jobs = (
        tuple(
            RevocationRow(
                job_id=r.job_id,
                grant_id=r.grant_id,
                reason=r.reason,
                source=r.source,
                purge_by=r.purge_by,
                state=r.state,
                purged_tokens=int(r.purged_tokens or 0),
                purged_values=int(r.purged_values or 0),
                purged_derived=int(r.purged_derived or 0),
            )
            for r in conn.execute(select(revocation_jobs).order_by(revocation_jobs.c.job_id))
        )
        if _has(conn, revocation_jobs.name)
        else None
    )
    return read_registry_evidence(conn, RegistryTables(grants=grant_rows, revocations=jobs))


_T = TypeVar("_T")


def _read(url: str | Path, reader: Callable[[Connection], _T], what: str) -> _T:
    """``reader`` on a connection to the store at ``url`` (engine disposed after). Raises
    :class:`StoreError` naming ``what`` when it cannot be read."""
    engine = create_engine(store_url(url))
    try:
        with engine.connect() as conn:
            return reader(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read {what} {url}: {exc}") from exc
    finally:
        engine.dispose()


def read_registry(grant_db: str | Path) -> RegistryTables:
    """The grant registry's compared tables (:func:`read_registry_tables`) at ``grant_db`` (a
    SQLite file or SQLAlchemy URL). Raises :class:`StoreError` when it cannot be read, or when
    ``grant_db`` is a path with no file (nothing is created)."""
    if "://" not in str(grant_db) and not Path(grant_db).is_file():
        raise StoreError(f"no grant registry at {grant_db}")
    return _read(grant_db, read_registry_tables, "the grant registry")


def check_registry(
    grant_db: str | Path, log: str | Path, *, verified: VerifiedRange
) -> CrossCheckResult:
    """Cross-check the grant registry at ``grant_db`` (:func:`read_registry`) with the
    ``grant.*`` events of the audit chain in ``log`` (the control store, where the job and the
    service append the registry's outbox); ``verified`` as for :func:`check_store` (including
    its signed count). Read-only on both. Raises :class:`StoreError` when either cannot be
    read."""
    tables = read_registry(grant_db)
    records = _read(log, read_chain_records, "the audit log")
    return crosscheck_registry(tables, records, verified)


def _beside(url: str, name: str) -> Any:
    """The public key file ``name`` in the folder of a SQLite store, loaded; else ``None``."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("sqlite") or not parsed.database:
        return None
    path = Path(parsed.database).parent / name
    return load_public_key(path) if path.is_file() else None


def _exported_beside(url: str) -> SignedCheckpoint | None:
    """``checkpoint.json`` in the folder of a SQLite store, parsed; ``None`` when absent or
    unreadable (it then vouches for nothing)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("sqlite") or not parsed.database:
        return None
    path = Path(parsed.database).parent / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        return SignedCheckpoint.from_json(path.read_text(encoding="utf-8"))
    except (AuditError, ValueError, OSError):
        return None


def _verify_all(conn: Connection) -> VerifiedRange:
    if not _has(conn, audit_log_table.name):
        return VerifiedRange(0, 0)
    rows = conn.execute(select(audit_log_table).order_by(audit_log_table.c.seq))
    result = verify_chain(_row_to_entry(r) for r in rows)
    if result.ok:
        return VerifiedRange(1, result.count)
    return VerifiedRange(1, (result.first_bad_seq or 1) - 1)
