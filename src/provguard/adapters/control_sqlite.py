"""The control-plane store on SQLAlchemy: instruments, rules, instrument events, grants, transfers.

SQLite by default (a file, no server); any SQLAlchemy URL works (PostgreSQL in production). Every
write runs in one transaction, so a crash mid-write leaves the previous state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

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
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters.sql_engine import open_store
from provguard.errors import StoreError
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

    def record_event(self, instrument_id: str, event_name: str, on: date) -> None:
        with self._begin() as conn:
            conn.execute(
                delete(instrument_events).where(
                    instrument_events.c.instrument_id == instrument_id,
                    instrument_events.c.event == event_name,
                )
            )
            conn.execute(
                insert(instrument_events),
                [{"instrument_id": instrument_id, "event": event_name, "on_date": on}],
            )

    def instrument_ids(self) -> set[str]:
        """The ids of the instruments stored by :meth:`save_bundles`."""
        with self.engine.connect() as conn:
            return {r.id for r in conn.execute(select(instruments.c.id)).all()}

    def events(self) -> Mapping[tuple[str, str], date]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(instrument_events)).all()
        return {(r.instrument_id, r.event): r.on_date for r in rows}

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
