"""Campaign state and notification outbox on SQLAlchemy (SQLite file by default), and a JSONL
mailbox that receives notices.

Transactional-outbox pattern (C. Richardson, *Microservices Patterns*, 2018, ch. 3): a target's
state change and its notice are written in ONE transaction; a dispatcher later delivers the
outbox rows and marks each delivered in another transaction. A crash between delivery and the
mark re-delivers that notice (at-least-once); the notice id is the idempotency key the receiver
uses to drop the duplicate (:class:`JsonlMailbox` does).

Tables: ``campaigns``, ``campaign_targets`` (one row per (campaign, app, subject, provider) with
its current state), ``campaign_events`` (every state change of every target, oldest first: the
per-subject history), ``campaign_outbox`` (notices: pending -> sent | dead | cancelled; a target
notified again gets a new notice ``...:notice:<n>``), ``campaign_progress`` (state counts after
every operation, for progress over time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters.sql_engine import open_store
from provguard.campaign.model import STATES, OutboxMessage, Target
from provguard.errors import InputError, StoreError

metadata = MetaData()

campaigns = Table(
    "campaigns",
    metadata,
    Column("campaign_id", String, primary_key=True),
    Column("rule_id", String, nullable=False),
    Column("instrument_id", String, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
targets = Table(
    "campaign_targets",
    metadata,
    Column("campaign_id", String, primary_key=True),
    Column("app_id", String, primary_key=True),
    Column("subject_id", Integer, primary_key=True),
    Column("provider", String, primary_key=True),
    Column("state", String, nullable=False, index=True),
    Column("fields", String, nullable=False),
    Column("origin_kind", String, nullable=False),
    Column("score", Float, nullable=False),
    Column("exempt_reason", String),
    Column("notified_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
outbox = Table(
    "campaign_outbox",
    metadata,
    Column("message_id", String, primary_key=True),
    Column("campaign_id", String, nullable=False, index=True),
    Column("app_id", String, nullable=False),
    Column("subject_id", Integer, nullable=False),
    Column("provider", String, nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String, nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("sent_at", DateTime(timezone=True)),
)
events = Table(
    "campaign_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", String, nullable=False, index=True),
    Column("app_id", String, nullable=False),
    Column("subject_id", Integer, nullable=False),
    Column("provider", String, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("from_state", String),
    Column("to_state", String, nullable=False),
    Column("note", Text),
)
progress = Table(
    "campaign_progress",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("campaign_id", String, nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("operation", String, nullable=False),
    Column("counts", Text, nullable=False),
)


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise InputError("campaign times must be timezone-aware")
    return at


def message_id(campaign_id: str, t: Target, seq: int = 1) -> str:
    """The notice id: ``<campaign>:<app>:<subject>:<provider>:notice:<seq>`` (``seq`` counts the
    notices of that target: 2 for the notice after a reverted change, ...)."""
    return _message_id(campaign_id, t.app_id, t.subject_id, t.provider, seq)


def _message_id(campaign_id: str, app_id: str, subject_id: int, provider: str, seq: int) -> str:
    return f"{campaign_id}:{app_id}:{subject_id}:{provider}:notice:{seq}"


def _payload(rule_id: str, instrument_id: str, fields: str, provider: str, origin: str) -> str:
    return json.dumps(
        {
            "kind": "change_profile_notice",
            "rule": rule_id,
            "instrument": instrument_id,
            "fields": fields.split(","),
            "provider": provider,
            "origin": origin,
        },
        sort_keys=True,
    )


class SqlCampaignStore:
    """Campaign store on SQLAlchemy; ``url_or_path`` a SQLAlchemy URL or a SQLite file path.

    Raises :class:`StoreError` when the database cannot be opened or written; every method is
    one transaction (a failure leaves the previous state).
    """

    def __init__(self, url_or_path: str | Path) -> None:
        self.engine: Engine = open_store(url_or_path, metadata, "campaign store")

    def _begin(self) -> Any:
        try:
            return self.engine.begin()
        except SQLAlchemyError as exc:
            raise StoreError(f"campaign store write failed: {exc}") from exc

    # -- start ----------------------------------------------------------------------------------
    def start(
        self,
        campaign_id: str,
        rule_id: str,
        instrument_id: str,
        found: Sequence[Target],
        at: datetime,
    ) -> dict[str, int]:
        """Create the campaign (or extend it) with ``found``; idempotent.

        A target already in the campaign is left as it is; a new one is ``exempt`` (with its
        reason) or ``pending`` with one outbox notice, written in the same transaction.

        Returns:
            ``{"added": n, "already": m}``.

        Raises:
            InputError: the campaign exists for another rule, or ``at`` is naive.
        """
        _aware(at)
        with self._begin() as conn:
            row = conn.execute(
                select(campaigns.c.rule_id).where(campaigns.c.campaign_id == campaign_id)
            ).first()
            if row is None:
                conn.execute(
                    insert(campaigns),
                    [
                        {
                            "campaign_id": campaign_id,
                            "rule_id": rule_id,
                            "instrument_id": instrument_id,
                            "created_at": at,
                        }
                    ],
                )
            elif row.rule_id != rule_id:
                raise InputError(
                    f"campaign '{campaign_id}' enforces rule '{row.rule_id}', not '{rule_id}'"
                )
            have = {
                (r.app_id, r.subject_id, r.provider)
                for r in conn.execute(
                    select(targets.c.app_id, targets.c.subject_id, targets.c.provider).where(
                        targets.c.campaign_id == campaign_id
                    )
                )
            }
            new = [t for t in found if t.key not in have]
            if new:
                conn.execute(
                    insert(targets),
                    [
                        {
                            "campaign_id": campaign_id,
                            "app_id": t.app_id,
                            "subject_id": t.subject_id,
                            "provider": t.provider,
                            "state": "exempt" if t.exempt_reason else "pending",
                            "fields": t.fields,
                            "origin_kind": t.origin_kind,
                            "score": t.score,
                            "exempt_reason": t.exempt_reason,
                            "notified_at": None,
                            "updated_at": at,
                        }
                        for t in new
                    ],
                )
                conn.execute(
                    insert(events),
                    [
                        {
                            "campaign_id": campaign_id,
                            "app_id": t.app_id,
                            "subject_id": t.subject_id,
                            "provider": t.provider,
                            "at": at,
                            "from_state": None,
                            "to_state": "exempt" if t.exempt_reason else "pending",
                            "note": t.exempt_reason or "start",
                        }
                        for t in new
                    ],
                )
                notices = [t for t in new if not t.exempt_reason]
                if notices:
                    conn.execute(
                        insert(outbox),
                        [
                            {
                                "message_id": message_id(campaign_id, t),
                                "campaign_id": campaign_id,
                                "app_id": t.app_id,
                                "subject_id": t.subject_id,
                                "provider": t.provider,
                                "payload": _payload(
                                    rule_id, instrument_id, t.fields, t.provider, t.origin_kind
                                ),
                                "status": "pending",
                                "attempts": 0,
                                "next_attempt_at": at,
                                "last_error": None,
                                "sent_at": None,
                            }
                            for t in notices
                        ],
                    )
            self._snapshot(conn, campaign_id, at, "start")
        return {"added": len(new), "already": len(found) - len(new)}

    # -- outbox ---------------------------------------------------------------------------------
    def due(self, campaign_id: str, at: datetime, limit: int) -> list[OutboxMessage]:
        """Pending notices due at ``at``, in id order, at most ``limit``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox)
                .where(
                    outbox.c.campaign_id == campaign_id,
                    outbox.c.status == "pending",
                    outbox.c.next_attempt_at <= _aware(at),
                )
                .order_by(outbox.c.message_id)
                .limit(limit)
            ).all()
        return [
            OutboxMessage(
                r.message_id,
                r.campaign_id,
                r.app_id,
                r.subject_id,
                r.provider,
                json.loads(r.payload),
                r.attempts,
            )
            for r in rows
        ]

    def mark_sent(self, msg: OutboxMessage, at: datetime) -> None:
        """The notice was delivered: outbox row ``sent``, target ``pending`` -> ``notified``."""
        with self._begin() as conn:
            done = conn.execute(
                update(outbox)
                .where(outbox.c.message_id == msg.message_id, outbox.c.status == "pending")
                .values(status="sent", sent_at=at, attempts=outbox.c.attempts + 1)
            ).rowcount
            if done:
                moved = conn.execute(
                    update(targets)
                    .where(self._target(msg), targets.c.state == "pending")
                    .values(state="notified", notified_at=at, updated_at=at)
                ).rowcount
                if moved:
                    self._event(conn, msg, at, "pending", "notified", msg.message_id)

    def mark_failed(
        self,
        msg: OutboxMessage,
        at: datetime,
        error: str,
        *,
        max_attempts: int,
        backoff: timedelta,
    ) -> bool:
        """Record a failed delivery; retry after ``backoff * 2**(attempts-1)``, or give up after
        ``max_attempts`` (outbox ``dead``, target ``escalated``). Returns True when given up."""
        attempts = msg.attempts + 1
        dead = attempts >= max_attempts
        with self._begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.message_id == msg.message_id, outbox.c.status == "pending")
                .values(
                    status="dead" if dead else "pending",
                    attempts=attempts,
                    last_error=error[:500],
                    next_attempt_at=at + backoff * (2 ** (attempts - 1)),
                )
            )
            if dead:
                moved = conn.execute(
                    update(targets)
                    .where(self._target(msg), targets.c.state == "pending")
                    .values(state="escalated", updated_at=at)
                ).rowcount
                if moved:
                    self._event(conn, msg, at, "pending", "escalated", f"undeliverable: {error}")
        return dead

    def snapshot(self, campaign_id: str, at: datetime, operation: str) -> None:
        """Append the current state counts to the progress history."""
        with self._begin() as conn:
            self._snapshot(conn, campaign_id, at, operation)

    # -- rescan ---------------------------------------------------------------------------------
    def apply_rescan(
        self,
        campaign_id: str,
        still_matching: Iterable[tuple[str, int, str]],
        at: datetime,
        *,
        ignore_after: timedelta,
    ) -> dict[str, int]:
        """Move targets after a new scan (see :mod:`provguard.campaign.model` for the machine).

        A ``changed`` target whose profile matches again (the user changed the copy and later
        reverted to it) goes back to ``pending`` with a new notice in the outbox
        (``...:notice:<n+1>``); its earlier states stay in the event history.

        Args:
            still_matching: keys (app, subject, provider) whose profile still matches.
            ignore_after: how long a notified target may keep the copy before ``ignored``, and
                an ignored one before ``escalated``.

        Returns:
            transitions counted by ``"<from>-><to>"``.
        """
        _aware(at)
        keep = set(still_matching)
        moved: dict[str, int] = {}
        with self._begin() as conn:
            camp = conn.execute(
                select(campaigns).where(campaigns.c.campaign_id == campaign_id)
            ).first()
            rows = conn.execute(
                select(targets).where(
                    targets.c.campaign_id == campaign_id,
                    targets.c.state.in_(["pending", "notified", "ignored", "changed"]),
                )
            ).all()
            for r in rows:
                key = (r.app_id, r.subject_id, r.provider)
                since = _utc(r.notified_at) if r.state == "notified" else _utc(r.updated_at)
                new: str | None = None
                if r.state == "changed":
                    if key in keep:
                        new = "pending"
                elif key not in keep:
                    new = "changed"
                elif r.state == "notified" and since is not None and at - since >= ignore_after:
                    new = "ignored"
                elif r.state == "ignored" and since is not None and at - since >= ignore_after:
                    new = "escalated"
                if new is None:
                    continue
                where = (
                    targets.c.campaign_id == campaign_id,
                    targets.c.app_id == r.app_id,
                    targets.c.subject_id == r.subject_id,
                    targets.c.provider == r.provider,
                )
                values: dict[str, Any] = {"state": new, "updated_at": at}
                note = "rescan"
                if new == "pending":  # reverted to the copy: notify again
                    values["notified_at"] = None
                    assert camp is not None
                    note = self._renotify(conn, camp, r, at)
                conn.execute(update(targets).where(*where).values(**values))
                if new == "changed":  # a notice not yet sent is no longer needed
                    conn.execute(
                        update(outbox)
                        .where(
                            outbox.c.campaign_id == campaign_id,
                            outbox.c.app_id == r.app_id,
                            outbox.c.subject_id == r.subject_id,
                            outbox.c.provider == r.provider,
                            outbox.c.status == "pending",
                        )
                        .values(status="cancelled")
                    )
                conn.execute(
                    insert(events),
                    [
                        {
                            "campaign_id": campaign_id,
                            "app_id": r.app_id,
                            "subject_id": r.subject_id,
                            "provider": r.provider,
                            "at": at,
                            "from_state": r.state,
                            "to_state": new,
                            "note": note,
                        }
                    ],
                )
                label = f"{r.state}->{new}"
                moved[label] = moved.get(label, 0) + 1
            self._snapshot(conn, campaign_id, at, "rescan")
        return moved

    def _renotify(self, conn: Connection, camp: Any, r: Any, at: datetime) -> str:
        """Queue notice number n+1 of target row ``r``; returns its message id."""
        sent_before = conn.execute(
            select(func.count()).where(
                outbox.c.campaign_id == r.campaign_id,
                outbox.c.app_id == r.app_id,
                outbox.c.subject_id == r.subject_id,
                outbox.c.provider == r.provider,
            )
        ).scalar_one()
        mid = _message_id(r.campaign_id, r.app_id, r.subject_id, r.provider, sent_before + 1)
        conn.execute(
            insert(outbox),
            [
                {
                    "message_id": mid,
                    "campaign_id": r.campaign_id,
                    "app_id": r.app_id,
                    "subject_id": r.subject_id,
                    "provider": r.provider,
                    "payload": _payload(
                        camp.rule_id, camp.instrument_id, r.fields, r.provider, r.origin_kind
                    ),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": at,
                    "last_error": None,
                    "sent_at": None,
                }
            ],
        )
        return mid

    # -- reading --------------------------------------------------------------------------------
    def counts(self, campaign_id: str) -> dict[str, int]:
        """Targets per state (every state present, 0 if none)."""
        with self.engine.connect() as conn:
            return self._counts(conn, campaign_id)

    def outbox_counts(self, campaign_id: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.status, func.count())
                .where(outbox.c.campaign_id == campaign_id)
                .group_by(outbox.c.status)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def history(self, campaign_id: str) -> list[tuple[datetime, str, dict[str, int]]]:
        """Progress over time: (time, operation, counts per state), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(progress)
                .where(progress.c.campaign_id == campaign_id)
                .order_by(progress.c.seq)
            ).all()
        return [(_utc(r.at) or r.at, r.operation, json.loads(r.counts)) for r in rows]

    def events(
        self, campaign_id: str, key: tuple[str, int, str] | None = None
    ) -> list[dict[str, Any]]:
        """State changes (``at``, ``from_state``, ``to_state``, ``note``, and the target key),
        oldest first; of one target when ``key`` = (app, subject, provider) is given."""
        q = select(events).where(events.c.campaign_id == campaign_id)
        if key is not None:
            q = q.where(
                events.c.app_id == key[0],
                events.c.subject_id == key[1],
                events.c.provider == key[2],
            )
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(events.c.seq)).mappings().all()
        return [{**dict(r), "at": _utc(r["at"])} for r in rows]

    def targets(self, campaign_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(targets)
                    .where(targets.c.campaign_id == campaign_id)
                    .order_by(targets.c.app_id, targets.c.subject_id, targets.c.provider)
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    def campaign(self, campaign_id: str) -> dict[str, Any]:
        """The campaign row; raises :class:`InputError` if unknown."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(campaigns).where(campaigns.c.campaign_id == campaign_id))
                .mappings()
                .first()
            )
        if row is None:
            raise InputError(f"no campaign '{campaign_id}' in this store")
        return dict(row)

    def _target(self, msg: OutboxMessage) -> Any:
        return and_(
            targets.c.campaign_id == msg.campaign_id,
            targets.c.app_id == msg.app_id,
            targets.c.subject_id == msg.subject_id,
            targets.c.provider == msg.provider,
        )

    def _event(
        self, conn: Connection, msg: OutboxMessage, at: datetime, old: str, new: str, note: str
    ) -> None:
        conn.execute(
            insert(events),
            [
                {
                    "campaign_id": msg.campaign_id,
                    "app_id": msg.app_id,
                    "subject_id": msg.subject_id,
                    "provider": msg.provider,
                    "at": at,
                    "from_state": old,
                    "to_state": new,
                    "note": note[:500],
                }
            ],
        )

    def _counts(self, conn: Connection, campaign_id: str) -> dict[str, int]:
        rows = conn.execute(
            select(targets.c.state, func.count())
            .where(targets.c.campaign_id == campaign_id)
            .group_by(targets.c.state)
        ).all()
        got = {r[0]: int(r[1]) for r in rows}
        return {s: got.get(s, 0) for s in STATES}

    def _snapshot(self, conn: Connection, campaign_id: str, at: datetime, op: str) -> None:
        conn.execute(
            insert(progress),
            [
                {
                    "campaign_id": campaign_id,
                    "at": at,
                    "operation": op,
                    "counts": json.dumps(self._counts(conn, campaign_id), sort_keys=True),
                }
            ],
        )


class JsonlMailbox:
    """The receiving end of notices: one JSON line per notice in a file, deduplicated by id.

    Calling it with an :class:`OutboxMessage` appends ``{"message_id", "app_id", "subject_id",
    "payload"}`` and fsyncs, unless a line with that id is already there (the idempotent
    receiver of the at-least-once outbox). Raises :class:`StoreError` when the file cannot be
    written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: set[str] = set()
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self._seen.add(json.loads(line)["message_id"])

    def __call__(self, msg: OutboxMessage) -> None:
        if msg.message_id in self._seen:
            return
        line = json.dumps(
            {
                "message_id": msg.message_id,
                "app_id": msg.app_id,
                "subject_id": msg.subject_id,
                "payload": msg.payload,
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                import os

                os.fsync(fh.fileno())
        except OSError as exc:
            raise StoreError(f"cannot write mailbox {self.path}: {exc}") from exc
        self._seen.add(msg.message_id)

    def message_ids(self) -> list[str]:
        """Ids in file order."""
        if not self.path.exists():
            return []
        return [
            json.loads(line)["message_id"]
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
