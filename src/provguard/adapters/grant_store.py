"""The grant registry on SQLAlchemy Core: SQLite by default, PostgreSQL by URL.

Tables (own :data:`grant_metadata`; they can share a database with
:mod:`provguard.adapters.control_sqlite`, whose names they do not reuse)::

    client_apps          app_id, controller, secret_digest          registered relying parties
    oauth_grants         grant_id, provider, app_id, openid, unionid, scopes, granted_at, status
    oauth_tokens         token_id, grant_id, kind, digest (HMAC, unique), ciphertext (Fernet),
                         expires_at, audience, status, status_mac
    login_sessions       state_digest, app_id, provider, redirect_uri, verifier ciphertext,
                         expires_at, consumed_at                 (OAuth ``state`` + PKCE verifier)
    labelled_values      value_id, grant_id, subject, category, field, value, origin_mask, status
    derived_values       value_id, kind, value, origin_mask, status
    value_grants         value_id, grant_id, derived             (the label's grant set, indexed)
    recipient_first_use  grant_id, recipient, first_used_at, evidence_mac
                                                                 (grandfathering evidence)
    separate_consents    grant_id, recipient, given_at, evidence, consent_id, purposes,
                         method, categories, withdrawn_at, evidence_mac
                                                                 (PIPL Art. 23 / Art. 15)
    provider_notifications  provider, event_id (primary key), event, received_at, job_id
                         (a provider notification acts once, however often it is delivered)
    transfer_attempts    every onward-transfer attempt as decided
    revocation_jobs      one per revoked grant: expected and purged counts, deadline, state
    revocation_steps     (job_id, step) primary key: a step can be recorded once only
    grant_outbox         events to append to the audit log, written in the same transaction as
                         the change they describe (transactional outbox), each with its mac

Evidence that cannot be forged with one ``INSERT`` (findings F3 / G11): every first use and
every separate consent is written together with its outbox event (``grant.first_use``,
``grant.separate_consent``, ``grant.consent_withdrawn``), which the job and the service append
to the hash-chained audit log; ``provguard audit verify`` compares the rows with those entries
(:func:`provguard.audit.crosscheck.crosscheck_registry`). Each such row also carries
``evidence_mac``, an HMAC-SHA256 (RFC 2104) of its fields under the registry key
(:meth:`~provguard.grants.crypto.TokenCipher.record_mac`): :meth:`SqlGrantStore.attested_first_use`
and :meth:`SqlGrantStore.attested_consents`, which the transfer gate decides on, ignore a row
whose tag is missing or wrong, so a row written by hand (without the key) never grandfathers a
transfer nor stands for a consent; a live token's row is tagged likewise (``status_mac``,
cleared on every revocation), so :meth:`SqlGrantStore.find_token` refuses a revoked token set
back to ``active``. Outbox rows carry a tag too, and
:func:`provguard.grants.service.flush_outbox` does not chain a row inserted by hand. Token ids
(never secrets) are in the events that issue and
revoke them (``grant.login`` ``tokens``, ``grant.transfer`` ``token``, ``grant.token_issued``,
``grant.token_rotated``, ``grant.token_revoked``), so token status is cross-checked too.

Secrets: tokens and PKCE verifiers are stored as Fernet ciphertext, looked up by keyed digest and
compared in constant time (:mod:`provguard.grants.crypto`). ``state`` values and app secrets are
stored as digests only. Origin masks are unsigned 64-bit; they are stored in a signed BIGINT
(two's complement) so PostgreSQL holds every bit.

Every method runs in one transaction. All database failures raise :class:`StoreError`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from provguard.adapters.sql_engine import open_store, store_url
from provguard.audit.crosscheck import (
    ConsentRow,
    FirstUseRow,
    RegistryTables,
    TokenRow,
    TransferAttemptRow,
)
from provguard.decide import ConsentRecord
from provguard.errors import StoreError
from provguard.grants.crypto import TokenCipher, constant_time_equals
from provguard.grants.errors import (
    ExpiredGrantError,
    MalformedTokenError,
    StateMismatchError,
    UnknownAppError,
)
from provguard.grants.model import (
    GrantRecord,
    GrantStatus,
    IssuedToken,
    LabelledValue,
    TokenKind,
    TokenMatch,
    TransferAttempt,
)

__all__ = ["CASCADE_STEPS", "SqlGrantStore", "grant_metadata", "read_registry_evidence"]

grant_metadata = MetaData()
_TZ = DateTime(timezone=True)

client_apps = Table(
    "client_apps",
    grant_metadata,
    Column("app_id", String(128), primary_key=True),
    Column("controller", String(256), nullable=False),
    Column("secret_digest", String(64), nullable=False),
)
oauth_grants = Table(
    "oauth_grants",
    grant_metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("app_id", String(128), nullable=False),
    Column("openid", String(128), nullable=False),
    Column("unionid", String(128), nullable=False, index=True),
    Column("scopes", String(256), nullable=False),
    Column("granted_at", _TZ, nullable=False),
    Column("status", String(16), nullable=False),
    UniqueConstraint("provider", "app_id", "openid", name="uq_grant_subject"),
)
oauth_tokens = Table(
    "oauth_tokens",
    grant_metadata,
    Column("token_id", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("issued_at", _TZ, nullable=False),
    Column("expires_at", _TZ, nullable=False),
    Column("audience", String(128)),
    Column("status", String(16), nullable=False),
    # HMAC of the live token's fields, cleared when it is revoked (see _insert_token)
    Column("status_mac", String(64)),
)
login_sessions = Table(
    "login_sessions",
    grant_metadata,
    Column("state_digest", String(64), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("app_id", String(128), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("verifier_ct", LargeBinary, nullable=False),
    Column("created_at", _TZ, nullable=False),
    Column("expires_at", _TZ, nullable=False),
    Column("consumed_at", _TZ),
)
labelled_values = Table(
    "labelled_values",
    grant_metadata,
    Column("value_id", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False, index=True),
    Column("subject", String(128), nullable=False, index=True),
    Column("category", String(64), nullable=False),
    Column("field", String(64), nullable=False),
    Column("value", Text, nullable=False),
    Column("origin_mask", BigInteger, nullable=False),
    Column("received_at", _TZ, nullable=False),
    Column("status", String(16), nullable=False),
)
derived_values = Table(
    "derived_values",
    grant_metadata,
    Column("value_id", String(64), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("value", Text, nullable=False),
    Column("origin_mask", BigInteger, nullable=False),
    Column("created_at", _TZ, nullable=False),
    Column("status", String(16), nullable=False),
)
value_grants = Table(
    "value_grants",
    grant_metadata,
    Column("value_id", String(64), primary_key=True),
    Column("grant_id", String(64), primary_key=True, index=True),
    Column("derived", Boolean, nullable=False),
)
recipient_first_use = Table(
    "recipient_first_use",
    grant_metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("recipient", String(128), primary_key=True),
    Column("first_used_at", _TZ, nullable=False),
    Column("evidence_mac", String(64)),  # HMAC of the row (nullable: migrated, see _migrate)
)
separate_consents = Table(
    "separate_consents",
    grant_metadata,
    Column("grant_id", String(64), primary_key=True),
    Column("recipient", String(128), primary_key=True),
    Column("given_at", _TZ, nullable=False),
    Column("evidence", Text, nullable=False),
    # added for PIPL Art. 23 / 15 (nullable: migrated onto existing databases, see _migrate)
    Column("consent_id", String(64)),
    Column("purposes", Text),  # JSON list of purpose keys
    Column("method", String(128)),
    Column("categories", Text),  # JSON list of data-category keys
    Column("withdrawn_at", _TZ),
    Column("evidence_mac", String(64)),  # HMAC of the row's fields, withdrawal included
)
provider_notifications = Table(
    "provider_notifications",
    grant_metadata,
    Column("provider", String(32), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("event", String(64), nullable=False),
    Column("received_at", _TZ, nullable=False),
    Column("job_id", String(64)),
)

#: Columns added after the first release, per table: :meth:`SqlGrantStore.__init__` adds the
#: missing ones to an existing database (``ALTER TABLE ... ADD COLUMN``, nullable, no default:
#: portable between SQLite and PostgreSQL; old rows read as "not stated").
_ADDED_COLUMNS: dict[str, tuple[str, ...]] = {
    "separate_consents": (
        "consent_id",
        "purposes",
        "method",
        "categories",
        "withdrawn_at",
        "evidence_mac",
    ),
    "recipient_first_use": ("evidence_mac",),
    "oauth_tokens": ("status_mac",),
    "grant_outbox": ("claimed_at", "mac"),
}
transfer_attempts = Table(
    "transfer_attempts",
    grant_metadata,
    Column("attempt_id", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False, index=True),
    Column("kind", String(32), nullable=False),
    Column("from_app", String(128), nullable=False),
    Column("to_app", String(128), nullable=False),
    Column("at", _TZ, nullable=False),
    Column("effect", String(16), nullable=False),
    Column("excepted", Boolean, nullable=False),
    Column("rule_id", String(128)),
    Column("instrument_id", String(128)),
    Column("explanation", Text, nullable=False),
)
revocation_jobs = Table(
    "revocation_jobs",
    grant_metadata,
    Column("job_id", String(64), primary_key=True),
    Column("grant_id", String(64), nullable=False, unique=True),
    Column("reason", String(64), nullable=False),
    Column("source", String(64), nullable=False),
    Column("requested_at", _TZ, nullable=False),
    Column("purge_by", _TZ, nullable=False),
    Column("state", String(16), nullable=False),  # open / quarantined / purged
    Column("expected_tokens", Integer),
    Column("expected_values", Integer),
    Column("expected_derived", Integer),
    Column("purged_tokens", Integer, nullable=False, default=0),
    Column("purged_values", Integer, nullable=False, default=0),
    Column("purged_derived", Integer, nullable=False, default=0),
    Column("completed_at", _TZ),
)
revocation_steps = Table(
    "revocation_steps",
    grant_metadata,
    Column("job_id", String(64), primary_key=True),
    Column("step", String(32), primary_key=True),
    Column("done_at", _TZ, nullable=False),
)
grant_outbox = Table(
    "grant_outbox",
    grant_metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("kind", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("created_at", _TZ, nullable=False),
    Column("state", String(16), nullable=False),  # new / sending / sent
    Column("audit_hint", Integer),
    Column("claimed_at", _TZ),  # when a flusher marked it sending (the claim's lease start)
    Column("mac", String(64)),  # HMAC of event_id, kind, payload (see SqlGrantStore._emit)
)

CASCADE_STEPS = ("quarantine", "tokens", "derived", "values", "grant")

_U64 = 1 << 64


def _to_signed(mask: int) -> int:
    return mask - _U64 if mask >= 1 << 63 else mask


def _to_unsigned(stored: int) -> int:
    return stored + _U64 if stored < 0 else stored


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _article(word: str) -> str:
    """The article before a token kind: "an access", "an exchanged", else "a"."""
    return "an" if word[:1] in "aeio" else "a"


def _new_id() -> str:
    return uuid.uuid4().hex


_FIRST_USE_MAC = "recipient_first_use.v1"
_CONSENT_MAC = "separate_consents.v1"
_OUTBOX_MAC = "grant_outbox.v1"
_TOKEN_MAC = "oauth_tokens.active.v1"


def _token_fields(
    token_id: str,
    grant_id: str,
    kind: str,
    digest: str,
    expires_at: datetime,
    audience: str | None,
) -> list[str | None]:
    return [token_id, grant_id, kind, digest, _iso(expires_at), audience, "active"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat()


def _first_use_fields(grant_id: str, recipient: str, at: datetime) -> list[str | None]:
    return [grant_id, recipient, _iso(at)]


def _consent_fields(row: Any) -> list[str | None]:
    """The MAC'd fields of a ``separate_consents`` row (a Row or a mapping-like object)."""
    return [
        row.grant_id,
        row.recipient,
        _iso(row.given_at),
        row.evidence,
        row.consent_id,
        row.purposes,
        row.method,
        row.categories,
        _iso(row.withdrawn_at),
    ]


@dataclass(frozen=True)
class _ConsentFields:
    grant_id: str
    recipient: str
    given_at: datetime
    evidence: str
    consent_id: str | None
    purposes: str | None
    method: str | None
    categories: str | None
    withdrawn_at: datetime | None


class SqlGrantStore:
    """The grant registry. ``url_or_path``: a SQLAlchemy URL (``postgresql+psycopg://...``) or a
    file path (SQLite). ``cipher`` encrypts and digests every secret. Raises :class:`StoreError`
    when the database cannot be opened."""

    def __init__(self, url_or_path: str | Path, cipher: TokenCipher) -> None:
        self.url = store_url(url_or_path)
        self.cipher = cipher
        self.engine: Engine = open_store(self.url, grant_metadata, "grant store", synchronous=None)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns of :data:`_ADDED_COLUMNS` an older database lacks (idempotent; each
        ``ALTER TABLE`` in one transaction, so a concurrent opener that added it first is
        tolerated). Raises :class:`StoreError`."""
        for table_name, names in _ADDED_COLUMNS.items():
            try:
                with self.engine.connect() as conn:
                    present = {c["name"] for c in inspect(conn).get_columns(table_name)}
            except SQLAlchemyError as exc:
                raise StoreError(f"grant store migration failed: {type(exc).__name__}") from exc
            table = grant_metadata.tables[table_name]
            for name in names:
                if name in present:
                    continue
                col = table.c[name]
                ddl = (
                    f"ALTER TABLE {table_name} ADD COLUMN {name} "
                    f"{col.type.compile(dialect=self.engine.dialect)}"
                )
                try:
                    with self.engine.begin() as conn:
                        conn.execute(text(ddl))
                except SQLAlchemyError as exc:
                    with self.engine.connect() as conn:
                        now_present = {c["name"] for c in inspect(conn).get_columns(table_name)}
                    if name not in now_present:
                        raise StoreError(
                            f"grant store migration failed ({ddl}): {type(exc).__name__}"
                        ) from exc

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"grant store write failed: {type(exc).__name__}: {exc}") from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"grant store read failed: {type(exc).__name__}") from exc

    def _emit(
        self, conn: Connection, kind: str, payload: Mapping[str, object], at: datetime
    ) -> None:
        """Queue an outbox event in the caller's transaction, tagged with an HMAC of its id,
        kind and payload text (:meth:`outbox_row_ok`): a row inserted into ``grant_outbox`` by
        hand is not appended to the audit chain as the registry's event."""
        event_id = _new_id()
        text_payload = json.dumps(payload, sort_keys=True, default=str)
        conn.execute(
            insert(grant_outbox).values(
                event_id=event_id,
                kind=kind,
                payload=text_payload,
                created_at=at,
                state="new",
                mac=self.cipher.record_mac(_OUTBOX_MAC, [event_id, kind, text_payload]),
            )
        )

    # ------------------------------------------------------------------------ client apps

    def register_app(self, app_id: str, controller: str, secret: str) -> None:
        """Register (or re-key) a relying party allowed to call the transfer endpoints."""
        digest = self.cipher.digest(secret)
        with self._tx() as conn:
            conn.execute(delete(client_apps).where(client_apps.c.app_id == app_id))
            conn.execute(
                insert(client_apps).values(
                    app_id=app_id, controller=controller, secret_digest=digest
                )
            )

    def authenticate_app(self, app_id: str, secret: str) -> str:
        """The controller of ``app_id`` if ``secret`` is its secret (constant-time digest
        comparison); raises :class:`UnknownAppError` otherwise."""
        with self._read() as conn:
            row = conn.execute(select(client_apps).where(client_apps.c.app_id == app_id)).first()
        presented = self.cipher.digest(secret)
        if row is None or not constant_time_equals(presented, row.secret_digest):
            raise UnknownAppError(f"unknown client app or wrong secret for '{app_id}'")
        return str(row.controller)

    def controller_of(self, app_id: str) -> str | None:
        with self._read() as conn:
            row = conn.execute(
                select(client_apps.c.controller).where(client_apps.c.app_id == app_id)
            ).first()
        return None if row is None else str(row[0])

    # ------------------------------------------------------------------------ login sessions

    def save_login_session(
        self,
        state: str,
        *,
        provider: str,
        app_id: str,
        redirect_uri: str,
        code_verifier: str,
        created_at: datetime,
        expires_at: datetime,
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                insert(login_sessions).values(
                    state_digest=self.cipher.digest(state),
                    provider=provider,
                    app_id=app_id,
                    redirect_uri=redirect_uri,
                    verifier_ct=self.cipher.encrypt(code_verifier),
                    created_at=created_at,
                    expires_at=expires_at,
                )
            )

    def consume_login_session(self, state: str, now: datetime) -> dict[str, str]:
        """Mark the session of ``state`` used (atomically: at most one caller wins) and return
        ``provider``, ``app_id``, ``redirect_uri``, ``code_verifier``.

        Raises :class:`StateMismatchError` for an unknown, already used or expired state.
        """
        digest = self.cipher.digest(state)
        with self._tx() as conn:
            row = conn.execute(
                select(login_sessions).where(login_sessions.c.state_digest == digest)
            ).first()
            if row is None:
                raise StateMismatchError("unknown OAuth state (not issued by this app)")
            if row.consumed_at is not None:
                raise StateMismatchError("OAuth state already used (replayed callback)")
            if _utc(row.expires_at) <= now:
                raise StateMismatchError("OAuth state expired")
            won = conn.execute(
                update(login_sessions)
                .where(login_sessions.c.state_digest == digest)
                .where(login_sessions.c.consumed_at.is_(None))
                .values(consumed_at=now)
            ).rowcount
            if won != 1:
                raise StateMismatchError("OAuth state already used (replayed callback)")
        return {
            "provider": row.provider,
            "app_id": row.app_id,
            "redirect_uri": row.redirect_uri,
            "code_verifier": self.cipher.decrypt(row.verifier_ct),
        }

    # ------------------------------------------------------------------------ grants

    def record_login(
        self,
        grant: GrantRecord,
        tokens: Sequence[IssuedToken],
        values: Sequence[LabelledValue],
        now: datetime,
    ) -> GrantRecord:
        """Store a completed sign-in in one transaction: the grant (an active grant of the same
        provider, app and openid is reused: re-login), its tokens (encrypted), and its labelled
        values (a re-login replaces the earlier values). Returns the stored grant."""
        with self._tx() as conn:
            existing = conn.execute(
                select(oauth_grants).where(
                    oauth_grants.c.provider == grant.provider,
                    oauth_grants.c.app_id == grant.app_id,
                    oauth_grants.c.openid == grant.openid,
                )
            ).first()
            if existing is not None and existing.status != "active":
                raise ExpiredGrantError(
                    f"grant {existing.grant_id} is {existing.status}; its purge must finish first"
                )
            if existing is None:
                conn.execute(insert(oauth_grants).values(**grant.__dict__))
                stored = grant
            else:
                stored = GrantRecord(**{**grant.__dict__, "grant_id": existing.grant_id})
                conn.execute(
                    update(oauth_grants)
                    .where(oauth_grants.c.grant_id == stored.grant_id)
                    .values(scopes=grant.scopes, unionid=grant.unionid)
                )
                old = select(labelled_values.c.value_id).where(
                    labelled_values.c.grant_id == stored.grant_id
                )
                conn.execute(delete(value_grants).where(value_grants.c.value_id.in_(old)))
                conn.execute(
                    delete(labelled_values).where(labelled_values.c.grant_id == stored.grant_id)
                )
            issued = {
                self._insert_token(conn, stored.grant_id, tok, now): tok.kind for tok in tokens
            }
            rows = [
                {
                    "value_id": v.value_id,
                    "grant_id": stored.grant_id,
                    "subject": stored.unionid,
                    "category": v.category,
                    "field": v.field,
                    "value": v.value,
                    "origin_mask": _to_signed(v.origin_mask),
                    "received_at": v.received_at,
                    "status": "active",
                }
                for v in values
            ]
            if rows:
                conn.execute(insert(labelled_values), rows)
                conn.execute(
                    insert(value_grants),
                    [
                        {"value_id": v.value_id, "grant_id": g, "derived": False}
                        for v in values
                        for g in sorted(v.grants | {stored.grant_id})
                    ],
                )
            self._emit(
                conn,
                "grant.login",
                {
                    "grant": stored.grant_id,
                    "provider": stored.provider,
                    "app": stored.app_id,
                    "scopes": stored.scopes,
                    "values": len(rows),
                    "categories": sorted({v.category for v in values}),
                    "tokens": issued,  # token ids and kinds (never a secret)
                },
                now,
            )
        return stored

    def _insert_token(
        self, conn: Connection, grant_id: str, tok: IssuedToken, now: datetime
    ) -> str:
        """Insert a live token; its ``status_mac`` tags the row as live (HMAC of id, grant,
        kind, digest, expiry, audience and ``active``). Every revocation clears the tag, so a
        revoked row set back to ``active`` by hand is refused by :meth:`find_token`."""
        token_id = _new_id()
        digest = self.cipher.digest(tok.secret)
        conn.execute(
            insert(oauth_tokens).values(
                token_id=token_id,
                grant_id=grant_id,
                kind=tok.kind,
                digest=digest,
                ciphertext=self.cipher.encrypt(tok.secret),
                issued_at=now,
                expires_at=tok.expires_at,
                audience=tok.audience,
                status="active",
                status_mac=self.cipher.record_mac(
                    _TOKEN_MAC,
                    _token_fields(
                        token_id, grant_id, tok.kind, digest, tok.expires_at, tok.audience
                    ),
                ),
            )
        )
        return token_id

    def issue_token(self, grant_id: str, tok: IssuedToken, now: datetime) -> str:
        """Store a new token under ``grant_id``; returns its token id. Emits
        ``grant.token_issued`` (token id and kind, never the secret)."""
        with self._tx() as conn:
            token_id = self._insert_token(conn, grant_id, tok, now)
            self._emit(
                conn,
                "grant.token_issued",
                {"grant": grant_id, "token": token_id, "kind": tok.kind},
                now,
            )
        return token_id

    def rotate_token(self, grant_id: str, tok: IssuedToken, now: datetime) -> str:
        """Replace the grant's live tokens of ``tok.kind`` by ``tok`` in one transaction (a
        refreshed provider access token supersedes the old one); returns the new token's id.
        Emits ``grant.token_rotated`` (token ids and kind only, never a secret)."""
        with self._tx() as conn:
            old = [
                r[0]
                for r in conn.execute(
                    select(oauth_tokens.c.token_id).where(
                        oauth_tokens.c.grant_id == grant_id,
                        oauth_tokens.c.kind == tok.kind,
                        oauth_tokens.c.status == "active",
                    )
                )
            ]
            if old:
                conn.execute(
                    update(oauth_tokens)
                    .where(oauth_tokens.c.token_id.in_(old))
                    .values(status="revoked", status_mac=None)
                )
            token_id = self._insert_token(conn, grant_id, tok, now)
            self._emit(
                conn,
                "grant.token_rotated",
                {"grant": grant_id, "kind": tok.kind, "replaced": sorted(old), "token": token_id},
                now,
            )
        return token_id

    @staticmethod
    def _grant_of(row: Any) -> GrantRecord:
        return GrantRecord(
            grant_id=row.grant_id,
            provider=row.provider,
            app_id=row.app_id,
            openid=row.openid,
            unionid=row.unionid,
            scopes=row.scopes,
            granted_at=_utc(row.granted_at),
            status=cast(GrantStatus, row.status),
        )

    def grant(self, grant_id: str) -> GrantRecord | None:
        with self._read() as conn:
            row = conn.execute(
                select(oauth_grants).where(oauth_grants.c.grant_id == grant_id)
            ).first()
        return None if row is None else self._grant_of(row)

    def grant_by_openid(self, provider: str, app_id: str, openid: str) -> GrantRecord | None:
        with self._read() as conn:
            row = conn.execute(
                select(oauth_grants).where(
                    oauth_grants.c.provider == provider,
                    oauth_grants.c.app_id == app_id,
                    oauth_grants.c.openid == openid,
                )
            ).first()
        return None if row is None else self._grant_of(row)

    def grants_by_unionid(self, provider: str, unionid: str) -> list[GrantRecord]:
        with self._read() as conn:
            rows = conn.execute(
                select(oauth_grants)
                .where(oauth_grants.c.provider == provider, oauth_grants.c.unionid == unionid)
                .order_by(oauth_grants.c.app_id)
            ).all()
        return [self._grant_of(r) for r in rows]

    def grants(self, status: str | None = None) -> list[GrantRecord]:
        q = select(oauth_grants).order_by(oauth_grants.c.granted_at, oauth_grants.c.grant_id)
        if status is not None:
            q = q.where(oauth_grants.c.status == status)
        with self._read() as conn:
            return [self._grant_of(r) for r in conn.execute(q).all()]

    def find_token(
        self, presented: str, now: datetime, kinds: Iterable[TokenKind] | None = None
    ) -> TokenMatch:
        """The live token ``presented`` and its grant.

        Looked up by keyed digest, then the decrypted token is compared in constant time.
        Raises :class:`MalformedTokenError` for a token this registry never issued (or of another
        kind), :class:`ExpiredGrantError` for an expired or revoked token, a grant that is not
        active, or a row marked ``active`` whose status tag does not verify (revoked, then set
        back by hand: findings F3 / G11).
        """
        if not presented or len(presented) > 4096 or not presented.isprintable():
            raise MalformedTokenError("token is empty, too long or not printable")
        with self._read() as conn:
            row = conn.execute(
                select(oauth_tokens).where(oauth_tokens.c.digest == self.cipher.digest(presented))
            ).first()
            grow = (
                None
                if row is None
                else conn.execute(
                    select(oauth_grants).where(oauth_grants.c.grant_id == row.grant_id)
                ).first()
            )
        if row is None or grow is None:
            raise MalformedTokenError("token not issued by this registry")
        if not constant_time_equals(self.cipher.decrypt(row.ciphertext), presented):
            raise MalformedTokenError("token not issued by this registry")
        allowed = set(kinds) if kinds is not None else None
        if allowed is not None and row.kind not in allowed:
            raise MalformedTokenError(f"{_article(row.kind)} {row.kind} token cannot be used here")
        if row.status != "active" or grow.status != "active":
            raise ExpiredGrantError(f"token revoked (grant {grow.grant_id} is {grow.status})")
        fields = _token_fields(
            row.token_id, row.grant_id, row.kind, row.digest, _utc(row.expires_at), row.audience
        )
        if not self.cipher.record_mac_ok(_TOKEN_MAC, fields, row.status_mac):
            raise ExpiredGrantError(
                f"token {row.token_id} is marked active without a valid status tag (set by hand "
                "after a revocation, or stored before tags existed); refused"
            )
        if _utc(row.expires_at) <= now:
            raise ExpiredGrantError(f"token expired at {_utc(row.expires_at).isoformat()}")
        return TokenMatch(
            token_id=row.token_id,
            kind=cast(TokenKind, row.kind),
            audience=row.audience,
            expires_at=_utc(row.expires_at),
            grant=self._grant_of(grow),
        )

    def token_secret(self, grant_id: str, kind: TokenKind) -> str | None:
        """The newest live token of ``kind`` under the grant, decrypted (for calling the
        provider); ``None`` when there is none."""
        with self._read() as conn:
            row = conn.execute(
                select(oauth_tokens.c.ciphertext)
                .where(
                    oauth_tokens.c.grant_id == grant_id,
                    oauth_tokens.c.kind == kind,
                    oauth_tokens.c.status == "active",
                )
                .order_by(oauth_tokens.c.issued_at.desc())
                .limit(1)
            ).first()
        return None if row is None else self.cipher.decrypt(row[0])

    def revoke_token(self, token_id: str, now: datetime) -> None:
        """Revoke one token; emits ``grant.token_revoked`` (its id and grant)."""
        with self._tx() as conn:
            grant_id = conn.execute(
                select(oauth_tokens.c.grant_id).where(oauth_tokens.c.token_id == token_id)
            ).scalar()
            conn.execute(
                update(oauth_tokens)
                .where(oauth_tokens.c.token_id == token_id)
                .values(status="revoked", status_mac=None)
            )
            self._emit(conn, "grant.token_revoked", {"token": token_id, "grant": grant_id}, now)

    # ------------------------------------------------------------------------ transfers

    def first_use(self, grant_id: str, recipient: str) -> datetime | None:
        """The stored first use of the grant by ``recipient``, as the row says (attested or
        not: :meth:`attested_first_use` is what decisions read)."""
        with self._read() as conn:
            row = conn.execute(
                select(recipient_first_use.c.first_used_at).where(
                    recipient_first_use.c.grant_id == grant_id,
                    recipient_first_use.c.recipient == recipient,
                )
            ).first()
        return None if row is None else _utc(row[0])

    def attested_first_use(
        self, grant_id: str, recipient: str
    ) -> tuple[datetime | None, str | None]:
        """The first use of the grant by ``recipient`` if the store wrote it:
        ``(first_used_at, None)`` when the row's ``evidence_mac`` verifies under the registry
        key; ``(None, why)`` when a row is there but its tag is missing or wrong (written by
        hand, or edited: it is no evidence, findings F3 / G11); ``(None, None)`` when there is
        no row. Raises :class:`StoreError`."""
        with self._read() as conn:
            row = conn.execute(
                select(recipient_first_use).where(
                    recipient_first_use.c.grant_id == grant_id,
                    recipient_first_use.c.recipient == recipient,
                )
            ).first()
        if row is None:
            return None, None
        at = _utc(row.first_used_at)
        fields = _first_use_fields(grant_id, recipient, at)
        if self.cipher.record_mac_ok(_FIRST_USE_MAC, fields, row.evidence_mac):
            return at, None
        state = "has no evidence tag" if not row.evidence_mac else "has a wrong evidence tag"
        return None, (
            f"the recorded first use of grant {grant_id} by {recipient} at {at.isoformat()} "
            f"{state} (not written by the grant store with this key); it is not evidence of "
            "a first use and is ignored"
        )

    def _insert_first_use(
        self,
        conn: Connection,
        grant_id: str,
        recipient: str,
        at: datetime,
        attempt: str | None = None,
    ) -> datetime:
        """Insert the first use (with its tag and its ``grant.first_use`` event, in the
        caller's transaction) unless one is recorded; returns the recorded time."""
        row = conn.execute(
            select(recipient_first_use.c.first_used_at).where(
                recipient_first_use.c.grant_id == grant_id,
                recipient_first_use.c.recipient == recipient,
            )
        ).first()
        if row is not None:
            return _utc(row[0])
        mac = self.cipher.record_mac(_FIRST_USE_MAC, _first_use_fields(grant_id, recipient, at))
        conn.execute(
            insert(recipient_first_use).values(
                grant_id=grant_id, recipient=recipient, first_used_at=at, evidence_mac=mac
            )
        )
        payload: dict[str, object] = {
            "grant": grant_id,
            "recipient": recipient,
            "first_used_at": _utc(at).isoformat(),
        }
        if attempt is not None:
            payload["attempt"] = attempt
        self._emit(conn, "grant.first_use", payload, at)
        return at

    def record_first_use(self, grant_id: str, recipient: str, at: datetime) -> datetime:
        """Record that ``recipient`` first used the grant at ``at`` unless already recorded;
        returns the recorded time (the earlier one wins). The row carries its evidence tag and
        emits ``grant.first_use`` (grant, recipient, time) in the same transaction."""
        with self._tx() as conn:
            return self._insert_first_use(conn, grant_id, recipient, at)

    def record_separate_consent(
        self,
        grant_id: str,
        recipient: str,
        given_at: datetime,
        evidence: str,
        *,
        purposes: Iterable[str] = (),
        method: str | None = None,
        categories: Iterable[str] = (),
    ) -> str:
        """Record the subject's separate consent (PIPL Art. 23) to provide the grant's data to
        ``recipient``: the ``purposes`` (purpose keys), processing ``method`` and data
        ``categories`` (category keys) the subject was told of; ``evidence`` says where it was
        collected. A new consent for the same recipient replaces the earlier one (also a
        withdrawn one). Returns the consent id. Raises :class:`StoreError`.

        The keys are not checked against the taxonomy here: the decision point rejects unknown
        keys when the record reaches a request (fail closed)."""
        consent_id = _new_id()
        purpose_list = sorted(set(purposes))
        category_list = sorted(set(categories))
        fields = _ConsentFields(
            grant_id=grant_id,
            recipient=recipient,
            given_at=given_at,
            evidence=evidence,
            consent_id=consent_id,
            purposes=json.dumps(purpose_list),
            method=method,
            categories=json.dumps(category_list),
            withdrawn_at=None,
        )
        with self._tx() as conn:
            conn.execute(
                delete(separate_consents).where(
                    separate_consents.c.grant_id == grant_id,
                    separate_consents.c.recipient == recipient,
                )
            )
            conn.execute(
                insert(separate_consents).values(
                    **fields.__dict__,
                    evidence_mac=self.cipher.record_mac(_CONSENT_MAC, _consent_fields(fields)),
                )
            )
            self._emit(
                conn,
                "grant.separate_consent",
                {
                    "grant": grant_id,
                    "recipient": recipient,
                    "evidence": evidence,
                    "consent": consent_id,
                    "purposes": purpose_list,
                    "method": method,
                    "categories": category_list,
                    "given_at": _utc(given_at).isoformat(),
                },
                given_at,
            )
        return consent_id

    def withdraw_separate_consent(self, grant_id: str, recipient: str, at: datetime) -> bool:
        """The subject withdraws the separate consent for ``recipient`` at ``at`` (PIPL Art. 15;
        the record stays, so decisions about earlier times still see it). Returns False when no
        active consent was on record. Emits ``grant.consent_withdrawn``."""
        with self._tx() as conn:
            row = conn.execute(
                select(separate_consents).where(
                    separate_consents.c.grant_id == grant_id,
                    separate_consents.c.recipient == recipient,
                    separate_consents.c.withdrawn_at.is_(None),
                )
            ).first()
            if row is None:
                return False
            before = _consent_fields(row)
            values: dict[str, object] = {"withdrawn_at": at}
            if self.cipher.record_mac_ok(_CONSENT_MAC, before, row.evidence_mac):
                # re-tag only a genuine record: a hand-written one stays untagged
                values["evidence_mac"] = self.cipher.record_mac(
                    _CONSENT_MAC, [*before[:-1], _iso(at)]
                )
            done = conn.execute(
                update(separate_consents)
                .where(
                    separate_consents.c.grant_id == grant_id,
                    separate_consents.c.recipient == recipient,
                    separate_consents.c.withdrawn_at.is_(None),
                )
                .values(**values)
            ).rowcount
            if done:
                self._emit(
                    conn,
                    "grant.consent_withdrawn",
                    {
                        "grant": grant_id,
                        "recipient": recipient,
                        "consent": row.consent_id,
                        "withdrawn_at": _utc(at).isoformat(),
                    },
                    at,
                )
        return bool(done)

    def separate_consent(self, grant_id: str, recipient: str) -> datetime | None:
        """When the consent for ``recipient`` was given; ``None`` when there is none or it was
        withdrawn."""
        with self._read() as conn:
            row = conn.execute(
                select(separate_consents.c.given_at).where(
                    separate_consents.c.grant_id == grant_id,
                    separate_consents.c.recipient == recipient,
                    separate_consents.c.withdrawn_at.is_(None),
                )
            ).first()
        return None if row is None else _utc(row[0])

    def attested_consents(
        self, grant_id: str, recipient: str | None = None
    ) -> tuple[list[ConsentRecord], list[str]]:
        """The grant's separate consents as :meth:`consent_records` reads them, keeping only
        those whose ``evidence_mac`` verifies under the registry key: ``(records, problems)``,
        one problem text per row left out (a row written or edited by hand, e.g. a withdrawal
        erased, or one stored before the tag existed). The transfer gate decides on these
        (fail closed: an untagged consent is no consent)."""
        q = select(separate_consents).where(separate_consents.c.grant_id == grant_id)
        if recipient is not None:
            q = q.where(separate_consents.c.recipient == recipient)
        with self._read() as conn:
            rows = conn.execute(q.order_by(separate_consents.c.recipient)).all()
        kept: list[ConsentRecord] = []
        problems: list[str] = []
        for r in rows:
            if self.cipher.record_mac_ok(_CONSENT_MAC, _consent_fields(r), r.evidence_mac):
                kept.append(self._consent_of(grant_id, r))
            else:
                state = "has no evidence tag" if not r.evidence_mac else "has a wrong evidence tag"
                problems.append(
                    f"the separate consent of grant {grant_id} for {r.recipient} {state} (not "
                    "written by the grant store with this key, or edited since); it is ignored"
                )
        return kept, problems

    @staticmethod
    def _consent_of(grant_id: str, r: Any) -> ConsentRecord:
        return ConsentRecord(
            consent_id=r.consent_id or f"{grant_id}:{r.recipient}",
            categories=frozenset(json.loads(r.categories) if r.categories else ()),
            purposes=frozenset(json.loads(r.purposes) if r.purposes else ()),
            recipient=r.recipient,
            method=r.method,
            separate=True,
            given_at=_utc(r.given_at),
            withdrawn_at=None if r.withdrawn_at is None else _utc(r.withdrawn_at),
        )

    def consent_records(self, grant_id: str, recipient: str | None = None) -> list[ConsentRecord]:
        """The grant's separate consents (of one recipient, or all) as the decision point reads
        them (:class:`~provguard.decide.ConsentRecord`, ``separate=True``), withdrawn ones
        included. A record stored before the purposes / method / categories columns existed
        reads with them empty, so it names none of them."""
        q = select(separate_consents).where(separate_consents.c.grant_id == grant_id)
        if recipient is not None:
            q = q.where(separate_consents.c.recipient == recipient)
        with self._read() as conn:
            rows = conn.execute(q.order_by(separate_consents.c.recipient)).all()
        return [self._consent_of(grant_id, r) for r in rows]

    # ------------------------------------------------------------------------ notifications

    def notification_seen(self, provider: str, event_id: str) -> str | None:
        """The job id recorded for an already handled notification (``""`` when it needed no
        job), ``None`` when ``event_id`` is new."""
        with self._read() as conn:
            row = conn.execute(
                select(provider_notifications.c.job_id).where(
                    provider_notifications.c.provider == provider,
                    provider_notifications.c.event_id == event_id,
                )
            ).first()
        return None if row is None else (row[0] or "")

    def record_notification(
        self, provider: str, event_id: str, event: str, at: datetime, job_id: str | None
    ) -> bool:
        """Record a handled notification; False when it was recorded already (a redelivery)."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(provider_notifications).values(
                        provider=provider,
                        event_id=event_id,
                        event=event,
                        received_at=at,
                        job_id=job_id,
                    )
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                return False
            raise
        return True

    def record_transfer(
        self,
        attempt: TransferAttempt,
        issued: IssuedToken | None,
        payload: Mapping[str, object],
        *,
        first_use: bool = False,
    ) -> str | None:
        """Store a decided transfer attempt, with the token issued on a permit, and its audit
        event (``grant.transfer``, with the issued token's id and kind added), in one
        transaction. ``first_use``: the transfer was permitted to another app, so its time is
        also recorded as the recipient's first use of the grant (unless one is recorded; with
        its ``grant.first_use`` event, same transaction). Returns the issued token's id."""
        token_id = None
        body = dict(payload)
        with self._tx() as conn:
            conn.execute(insert(transfer_attempts).values(**attempt.__dict__))
            if issued is not None:
                token_id = self._insert_token(conn, attempt.grant_id, issued, attempt.at)
                body["token"] = token_id
                body["token_kind"] = issued.kind
            self._emit(conn, "grant.transfer", body, attempt.at)
            if first_use and attempt.to_app != attempt.from_app:
                self._insert_first_use(
                    conn, attempt.grant_id, attempt.to_app, attempt.at, attempt.attempt_id
                )
        return token_id

    def transfer_attempts(self, grant_id: str | None = None) -> list[TransferAttempt]:
        q = select(transfer_attempts).order_by(
            transfer_attempts.c.at, transfer_attempts.c.attempt_id
        )
        if grant_id is not None:
            q = q.where(transfer_attempts.c.grant_id == grant_id)
        with self._read() as conn:
            rows = conn.execute(q).all()
        return [
            TransferAttempt(**{**r._asdict(), "at": _utc(r.at), "excepted": bool(r.excepted)})
            for r in rows
        ]

    # ------------------------------------------------------------------------ values

    def values(self, grant_id: str | None = None, *, status: str = "active") -> list[LabelledValue]:
        """Labelled values (of one grant, or all) with the given status."""
        q = select(labelled_values).where(labelled_values.c.status == status)
        if grant_id is not None:
            q = q.where(labelled_values.c.grant_id == grant_id)
        with self._read() as conn:
            rows = conn.execute(q.order_by(labelled_values.c.value_id)).all()
            links = self._grants_of(conn, [r.value_id for r in rows])
        return [
            LabelledValue(
                value_id=r.value_id,
                category=r.category,
                field=r.field,
                value=r.value,
                origin_mask=_to_unsigned(r.origin_mask),
                grants=links.get(r.value_id, frozenset()),
                received_at=_utc(r.received_at),
            )
            for r in rows
        ]

    def values_of_subject(self, unionid: str) -> list[tuple[str, LabelledValue]]:
        """Active labelled values of every grant whose unionid is ``unionid``, with the app
        holding each grant: ``[(app_id, value), ...]``."""
        with self._read() as conn:
            grants = conn.execute(
                select(oauth_grants.c.grant_id, oauth_grants.c.app_id).where(
                    oauth_grants.c.unionid == unionid
                )
            ).all()
        out: list[tuple[str, LabelledValue]] = []
        for g in grants:
            out.extend((g.app_id, v) for v in self.values(g.grant_id))
        return out

    @staticmethod
    def _grants_of(conn: Connection, value_ids: Sequence[str]) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for start in range(0, len(value_ids), 500):
            chunk = list(value_ids[start : start + 500])
            for r in conn.execute(
                select(value_grants.c.value_id, value_grants.c.grant_id).where(
                    value_grants.c.value_id.in_(chunk)
                )
            ):
                out.setdefault(r.value_id, set()).add(r.grant_id)
        return {k: frozenset(v) for k, v in out.items()}

    def add_derived(
        self, kind: str, value: str, inputs: Sequence[str], now: datetime
    ) -> tuple[str, int, frozenset[str]]:
        """Store a value derived from the (labelled or derived) values ``inputs``; its label is
        the union of theirs (origins OR-ed, grants united). Returns ``(value_id, mask, grants)``.
        Raises :class:`StoreError` when an input is missing or not active."""
        value_id = _new_id()
        with self._tx() as conn:
            masks: list[int] = []
            for table in (labelled_values, derived_values):
                masks.extend(
                    _to_unsigned(r[0])
                    for r in conn.execute(
                        select(table.c.origin_mask).where(
                            table.c.value_id.in_(list(inputs)), table.c.status == "active"
                        )
                    )
                )
            if len(masks) != len(set(inputs)):
                raise StoreError("a derived value's inputs must all exist and be active")
            mask = 0
            for m in masks:
                mask |= m
            grants = frozenset(g for gs in self._grants_of(conn, list(inputs)).values() for g in gs)
            conn.execute(
                insert(derived_values).values(
                    value_id=value_id,
                    kind=kind,
                    value=value,
                    origin_mask=_to_signed(mask),
                    created_at=now,
                    status="active",
                )
            )
            if grants:
                conn.execute(
                    insert(value_grants),
                    [
                        {"value_id": value_id, "grant_id": g, "derived": True}
                        for g in sorted(grants)
                    ],
                )
        return value_id, mask, grants

    def derived(self, *, status: str = "active") -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                select(derived_values)
                .where(derived_values.c.status == status)
                .order_by(derived_values.c.value_id)
            ).all()
            links = self._grants_of(conn, [r.value_id for r in rows])
        return [
            {
                "value_id": r.value_id,
                "kind": r.kind,
                "value": r.value,
                "origin_mask": _to_unsigned(r.origin_mask),
                "grants": links.get(r.value_id, frozenset()),
            }
            for r in rows
        ]

    # ------------------------------------------------------------------------ revocation

    def open_revocation(
        self, grant_id: str, *, reason: str, source: str, at: datetime, purge_by: datetime
    ) -> tuple[str, bool]:
        try:
            return self._open_revocation(grant_id, reason, source, at, purge_by)
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # a concurrent caller created the job first: return theirs
            return self._open_revocation(grant_id, reason, source, at, purge_by)

    def _open_revocation(
        self, grant_id: str, reason: str, source: str, at: datetime, purge_by: datetime
    ) -> tuple[str, bool]:
        """The revocation job of ``grant_id``, created if there is none: ``(job_id, created)``.

        Idempotent: a second notification for the same grant returns the first job. Raises
        :class:`ExpiredGrantError` (unknown grant) when ``grant_id`` is not in the registry.
        """
        with self._tx() as conn:
            row = conn.execute(
                select(revocation_jobs.c.job_id).where(revocation_jobs.c.grant_id == grant_id)
            ).first()
            if row is not None:
                return str(row[0]), False
            if (
                conn.execute(
                    select(oauth_grants.c.grant_id).where(oauth_grants.c.grant_id == grant_id)
                ).first()
                is None
            ):
                raise ExpiredGrantError(f"no grant '{grant_id}' in the registry")
            job_id = _new_id()
            conn.execute(
                insert(revocation_jobs).values(
                    job_id=job_id,
                    grant_id=grant_id,
                    reason=reason,
                    source=source,
                    requested_at=at,
                    purge_by=purge_by,
                    state="open",
                    purged_tokens=0,
                    purged_values=0,
                    purged_derived=0,
                )
            )
            self._emit(
                conn,
                "grant.revocation_opened",
                {
                    "job": job_id,
                    "grant": grant_id,
                    "reason": reason,
                    "source": source,
                    "purge_by": purge_by.isoformat(),
                },
                at,
            )
        return job_id, True

    def job(self, job_id: str) -> dict[str, Any]:
        with self._read() as conn:
            row = conn.execute(
                select(revocation_jobs).where(revocation_jobs.c.job_id == job_id)
            ).first()
            if row is None:
                raise StoreError(f"no revocation job '{job_id}'")
            steps = [
                r[0]
                for r in conn.execute(
                    select(revocation_steps.c.step)
                    .where(revocation_steps.c.job_id == job_id)
                    .order_by(revocation_steps.c.done_at)
                )
            ]
        out = dict(row._asdict())
        out["steps"] = sorted(steps, key=CASCADE_STEPS.index)
        for k in ("requested_at", "purge_by", "completed_at"):
            if out[k] is not None:
                out[k] = _utc(out[k])
        return out

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        q = select(revocation_jobs.c.job_id).order_by(revocation_jobs.c.requested_at)
        if state is not None:
            q = q.where(revocation_jobs.c.state == state)
        with self._read() as conn:
            ids = [r[0] for r in conn.execute(q)]
        return [self.job(i) for i in ids]

    @staticmethod
    def _step_done(conn: Connection, job_id: str, step: str) -> bool:
        return (
            conn.execute(
                select(revocation_steps.c.step).where(
                    revocation_steps.c.job_id == job_id, revocation_steps.c.step == step
                )
            ).first()
            is not None
        )

    @staticmethod
    def _mark_step(conn: Connection, job_id: str, step: str, at: datetime) -> None:
        conn.execute(insert(revocation_steps).values(job_id=job_id, step=step, done_at=at))

    def cascade_quarantine(self, job_id: str, at: datetime) -> bool:
        """Step 1, one transaction: the grant, its tokens, its labelled values and every derived
        value carrying it become unusable (status ``quarantined`` / ``revoked``), and the counts
        the purge must reach are fixed. Returns False when the step was already done."""
        with self._tx() as conn:
            if self._step_done(conn, job_id, "quarantine"):
                return False
            grant_id = conn.execute(
                select(revocation_jobs.c.grant_id).where(revocation_jobs.c.job_id == job_id)
            ).scalar_one()
            carrying = select(value_grants.c.value_id).where(value_grants.c.grant_id == grant_id)
            conn.execute(
                update(oauth_grants)
                .where(oauth_grants.c.grant_id == grant_id)
                .values(status="quarantined")
            )
            conn.execute(
                update(oauth_tokens)
                .where(oauth_tokens.c.grant_id == grant_id)
                .values(status="revoked", status_mac=None)
            )
            conn.execute(
                update(labelled_values)
                .where(labelled_values.c.grant_id == grant_id)
                .values(status="quarantined")
            )
            conn.execute(
                update(derived_values)
                .where(derived_values.c.value_id.in_(carrying))
                .values(status="quarantined")
            )

            def count(q: Any) -> int:
                return int(
                    conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
                )

            n_tokens = count(
                select(oauth_tokens.c.token_id).where(oauth_tokens.c.grant_id == grant_id)
            )
            n_values = count(
                select(labelled_values.c.value_id).where(labelled_values.c.grant_id == grant_id)
            )
            n_derived = count(
                select(derived_values.c.value_id).where(derived_values.c.value_id.in_(carrying))
            )
            conn.execute(
                update(revocation_jobs)
                .where(revocation_jobs.c.job_id == job_id)
                .values(
                    state="quarantined",
                    expected_tokens=n_tokens,
                    expected_values=n_values,
                    expected_derived=n_derived,
                )
            )
            self._mark_step(conn, job_id, "quarantine", at)
            self._emit(
                conn,
                "grant.quarantined",
                {
                    "job": job_id,
                    "grant": grant_id,
                    "tokens": n_tokens,
                    "values": n_values,
                    "derived": n_derived,
                },
                at,
            )
        return True

    def cascade_purge_batch(self, job_id: str, step: str, limit: int, at: datetime) -> int:
        """Delete up to ``limit`` rows of ``step`` (``tokens`` / ``derived`` / ``values``) for
        the job, counting them on the job in the same transaction; when fewer than ``limit``
        remain the step is recorded done. Returns rows deleted (0: step already complete)."""
        if step not in ("tokens", "derived", "values"):
            raise ValueError(f"not a purge step: {step}")
        with self._tx() as conn:
            if self._step_done(conn, job_id, step):
                return 0
            grant_id = conn.execute(
                select(revocation_jobs.c.grant_id).where(revocation_jobs.c.job_id == job_id)
            ).scalar_one()
            if step == "tokens":
                table, key = oauth_tokens, oauth_tokens.c.token_id
                ids_q = select(key).where(oauth_tokens.c.grant_id == grant_id)
            elif step == "values":
                table, key = labelled_values, labelled_values.c.value_id
                ids_q = select(key).where(labelled_values.c.grant_id == grant_id)
            else:
                table, key = derived_values, derived_values.c.value_id
                ids_q = select(key).where(
                    key.in_(
                        select(value_grants.c.value_id).where(value_grants.c.grant_id == grant_id)
                    )
                )
            ids = [r[0] for r in conn.execute(ids_q.order_by(key).limit(limit))]
            if ids:
                conn.execute(delete(table).where(key.in_(ids)))
                if step != "tokens":
                    conn.execute(delete(value_grants).where(value_grants.c.value_id.in_(ids)))
                counter = revocation_jobs.c[f"purged_{step}"]
                conn.execute(
                    update(revocation_jobs)
                    .where(revocation_jobs.c.job_id == job_id)
                    .values({counter: counter + len(ids)})
                )
            if len(ids) < limit:
                self._mark_step(conn, job_id, step, at)
                self._emit(conn, f"grant.purged_{step}", {"job": job_id, "grant": grant_id}, at)
        return len(ids)

    def cascade_finish(self, job_id: str, at: datetime) -> bool:
        """Last step: the grant row becomes a tombstone (status ``purged``, subject ids replaced
        by their keyed digests), first-use, consent and login records of it go. Returns False
        when already done."""
        with self._tx() as conn:
            if self._step_done(conn, job_id, "grant"):
                return False
            job = conn.execute(
                select(revocation_jobs).where(revocation_jobs.c.job_id == job_id)
            ).one()
            g = conn.execute(
                select(oauth_grants).where(oauth_grants.c.grant_id == job.grant_id)
            ).one()
            conn.execute(
                update(oauth_grants)
                .where(oauth_grants.c.grant_id == job.grant_id)
                .values(
                    status="purged",
                    openid=f"purged:{self.cipher.digest(g.openid)[:32]}",
                    unionid=f"purged:{self.cipher.digest(g.unionid)[:32]}",
                )
            )
            conn.execute(
                delete(recipient_first_use).where(recipient_first_use.c.grant_id == job.grant_id)
            )
            conn.execute(
                delete(separate_consents).where(separate_consents.c.grant_id == job.grant_id)
            )
            conn.execute(
                update(revocation_jobs)
                .where(revocation_jobs.c.job_id == job_id)
                .values(state="purged", completed_at=at)
            )
            self._mark_step(conn, job_id, "grant", at)
            self._emit(
                conn,
                "grant.purged",
                {
                    "job": job_id,
                    "grant": job.grant_id,
                    "tokens": job.purged_tokens,
                    "values": job.purged_values,
                    "derived": job.purged_derived,
                },
                at,
            )
        return True

    def remaining(self, grant_id: str) -> dict[str, int]:
        """The proof query: how many rows anywhere in the registry still hold or point at
        ``grant_id``'s data (tokens, labelled values, derived values carrying it, label links,
        first-use and consent records, unscrubbed subject ids). All zero after a purge."""
        with self._read() as conn:

            def count(q: Any) -> int:
                return int(
                    conn.execute(select(func.count()).select_from(q.subquery())).scalar_one()
                )

            carrying = select(value_grants.c.value_id).where(value_grants.c.grant_id == grant_id)
            return {
                "tokens": count(
                    select(oauth_tokens.c.token_id).where(oauth_tokens.c.grant_id == grant_id)
                ),
                "values": count(
                    select(labelled_values.c.value_id).where(labelled_values.c.grant_id == grant_id)
                ),
                "derived": count(
                    select(derived_values.c.value_id).where(derived_values.c.value_id.in_(carrying))
                ),
                "label_links": count(carrying),
                "first_use": count(
                    select(recipient_first_use.c.grant_id).where(
                        recipient_first_use.c.grant_id == grant_id
                    )
                ),
                "consents": count(
                    select(separate_consents.c.grant_id).where(
                        separate_consents.c.grant_id == grant_id
                    )
                ),
                "subject_ids": count(
                    select(oauth_grants.c.grant_id).where(
                        oauth_grants.c.grant_id == grant_id,
                        ~oauth_grants.c.openid.startswith("purged:"),
                    )
                ),
            }

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests and ``provguard grants status``)."""
        out: dict[str, int] = {}
        with self._read() as conn:
            for t in grant_metadata.sorted_tables:
                out[t.name] = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        return out

    # ------------------------------------------------------------------------ outbox

    def outbox(self, states: Sequence[str] = ("new", "sending")) -> list[dict[str, Any]]:
        """Outbox rows in ``states``, oldest first, each a dict of its columns with ``payload``
        decoded (``None`` when it is not JSON) and ``authentic``: whether its ``mac`` verifies
        under the registry key (:meth:`_emit` wrote it; not a row inserted by hand)."""
        with self._read() as conn:
            rows = conn.execute(
                select(grant_outbox)
                .where(grant_outbox.c.state.in_(list(states)))
                .order_by(grant_outbox.c.seq)
            ).all()
        out: list[dict[str, Any]] = []
        for r in rows:
            try:
                payload = json.loads(r.payload)
            except ValueError:
                payload = None
            authentic = self.cipher.record_mac_ok(
                _OUTBOX_MAC, [r.event_id, r.kind, r.payload], r.mac
            ) and isinstance(payload, dict)
            out.append(
                {
                    **r._asdict(),
                    "payload": payload,
                    "created_at": _utc(r.created_at),
                    "authentic": authentic,
                }
            )
        return out

    def claim_outbox(
        self,
        row: Mapping[str, Any],
        audit_hint: int | None,
        now: datetime,
        lease_seconds: float = 60.0,
    ) -> bool:
        """Claim outbox ``row`` (as :meth:`outbox` returned it) for appending: a compare-and-set
        that marks it ``sending`` with ``claimed_at = now`` only if nobody changed it since it
        was read. A ``sending`` row is claimable only when its claim is older than
        ``lease_seconds`` (its flusher crashed, or predates claims). Returns True when this
        caller owns the row; False when another flusher (thread or process) got there first.
        Raises :class:`StoreError`."""
        c = grant_outbox.c
        cond = [c.event_id == row["event_id"], c.state == row["state"]]
        claimed = row.get("claimed_at")
        if row["state"] == "sending":
            if claimed is not None and (now - _utc(claimed)).total_seconds() < lease_seconds:
                return False
            cond.append(c.claimed_at.is_(None) if claimed is None else c.claimed_at == claimed)
        with self._tx() as conn:
            res = conn.execute(
                update(grant_outbox)
                .where(*cond)
                .values(state="sending", audit_hint=audit_hint, claimed_at=now)
            )
            return bool(res.rowcount == 1)

    def mark_outbox(self, event_id: str, state: str, audit_hint: int | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                update(grant_outbox)
                .where(grant_outbox.c.event_id == event_id)
                .values(state=state, audit_hint=audit_hint)
            )


def read_registry_evidence(conn: Connection, tables: RegistryTables) -> RegistryTables:
    """``tables`` with the registry's evidence rows added, as
    :func:`provguard.audit.crosscheck.crosscheck_registry` compares them:
    ``recipient_first_use``, ``separate_consents``, ``oauth_tokens`` (token id, grant, kind
    and status only: no digest or ciphertext is read) and ``transfer_attempts`` (without the
    explanation text). ``None`` for a table the database does not have. Read-only; raises
    :class:`sqlalchemy.exc.SQLAlchemyError` as the caller's reader
    does (it turns it into :class:`StoreError`)."""
    present = set(inspect(conn).get_table_names())

    def keys(text_value: str | None) -> tuple[str, ...] | None:
        if text_value is None:
            return None
        try:
            loaded = json.loads(text_value)
        except ValueError:
            return (text_value,)  # not a JSON list: compared as written, so it differs
        if not isinstance(loaded, list):
            return (text_value,)
        return tuple(str(v) for v in loaded)

    first_uses = (
        tuple(
            FirstUseRow(r.grant_id, r.recipient, r.first_used_at)
            for r in conn.execute(
                select(
                    recipient_first_use.c.grant_id,
                    recipient_first_use.c.recipient,
                    recipient_first_use.c.first_used_at,
                ).order_by(recipient_first_use.c.grant_id, recipient_first_use.c.recipient)
            )
        )
        if recipient_first_use.name in present
        else None
    )
    consents: tuple[ConsentRow, ...] | None = None
    if separate_consents.name in present:
        have = {c["name"] for c in inspect(conn).get_columns(separate_consents.name)}
        cols = [c for c in separate_consents.c if c.name in have and c.name != "evidence_mac"]
        consents = tuple(
            ConsentRow(
                grant_id=m["grant_id"],
                recipient=m["recipient"],
                given_at=m["given_at"],
                evidence=m["evidence"],
                consent_id=m.get("consent_id"),
                purposes=keys(m.get("purposes")),
                method=m.get("method"),
                categories=keys(m.get("categories")),
                withdrawn_at=m.get("withdrawn_at"),
            )
            for m in (
                r._mapping
                for r in conn.execute(
                    select(*cols).order_by(
                        separate_consents.c.grant_id, separate_consents.c.recipient
                    )
                )
            )
        )
    tokens = (
        tuple(
            TokenRow(r.token_id, r.grant_id, r.kind, r.status)
            for r in conn.execute(
                select(
                    oauth_tokens.c.token_id,
                    oauth_tokens.c.grant_id,
                    oauth_tokens.c.kind,
                    oauth_tokens.c.status,
                ).order_by(oauth_tokens.c.token_id)
            )
        )
        if oauth_tokens.name in present
        else None
    )
    ta = transfer_attempts.c
    attempts = (
        tuple(
            TransferAttemptRow(
                attempt_id=r.attempt_id,
                grant_id=r.grant_id,
                kind=r.kind,
                from_app=r.from_app,
                to_app=r.to_app,
                at=r.at,
                effect=r.effect,
                excepted=bool(r.excepted),
                rule_id=r.rule_id,
                instrument_id=r.instrument_id,
            )
            for r in conn.execute(
                select(
                    ta.attempt_id,
                    ta.grant_id,
                    ta.kind,
                    ta.from_app,
                    ta.to_app,
                    ta.at,
                    ta.effect,
                    ta.excepted,
                    ta.rule_id,
                    ta.instrument_id,
                ).order_by(ta.attempt_id)
            )
        )
        if transfer_attempts.name in present
        else None
    )
    return replace(
        tables,
        first_uses=first_uses,
        consents=consents,
        tokens=tokens,
        transfer_attempts=attempts,
    )
