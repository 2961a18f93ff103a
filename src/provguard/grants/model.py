"""Plain values of the grant registry (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from provguard.decide import Decision, Request

GrantStatus = Literal["active", "quarantined", "purged"]
TokenKind = Literal["access", "refresh", "app_session", "exchanged"]
TransferKind = Literal["token_exchange", "account_link", "unionid_join"]

# RFC 8693 identifiers
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class GrantRecord:
    """A user's authorisation of ``app_id`` at ``provider``.

    ``openid`` is the provider's id of the user for this app, ``unionid`` for the app's developer
    account; ``scopes`` space-separated as the provider returned them; times are UTC-aware.
    """

    grant_id: str
    provider: str
    app_id: str
    openid: str
    unionid: str
    scopes: str
    granted_at: datetime
    status: GrantStatus = "active"


@dataclass(frozen=True)
class IssuedToken:
    """A token to store: ``secret`` is encrypted before it reaches the store."""

    kind: TokenKind
    secret: str
    expires_at: datetime
    audience: str | None = None

    def __repr__(self) -> str:  # never show the secret
        return f"IssuedToken(kind={self.kind!r}, expires_at={self.expires_at!r}, secret=<hidden>)"


@dataclass(frozen=True)
class LabelledValue:
    """One profile value as received: ``field`` of the provider's answer, its data ``category``,
    the provenance label (``origin_mask`` over an :class:`~provguard.provenance.OriginRegistry`,
    and the grant ids it came through)."""

    value_id: str
    category: str
    field: str
    value: str
    origin_mask: int
    grants: frozenset[str]
    received_at: datetime


@dataclass(frozen=True)
class TokenMatch:
    """A presented token found in the registry, with its grant."""

    token_id: str
    kind: TokenKind
    audience: str | None
    expires_at: datetime
    grant: GrantRecord


@dataclass(frozen=True)
class TransferAttempt:
    """One attempt to pass grant ``grant_id`` of ``from_app`` on to ``to_app``, as decided."""

    attempt_id: str
    grant_id: str
    kind: TransferKind
    from_app: str
    to_app: str
    at: datetime
    effect: str
    excepted: bool
    rule_id: str | None
    instrument_id: str | None
    explanation: str


class Decider(Protocol):
    """A policy decision point (``provguard.decide.DecisionPoint`` fits)."""

    def decide(self, req: Request) -> Decision: ...


class AuditSink(Protocol):
    """Where grant events go (``provguard.adapters.audit_sqlite.SqliteAuditLog`` fits)."""

    def append(self, kind: str, payload: Mapping[str, object]) -> object: ...
