"""Request and response bodies of the HTTP API (pydantic v2; they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "AuditInfo",
    "AuditVerifyResponse",
    "BatchRequest",
    "BatchResponse",
    "DecisionBody",
    "DecisionRecord",
    "DecisionResponse",
    "ErrorBody",
    "ErrorDetail",
    "GrantView",
    "GrantsPage",
    "ObligationView",
    "ReasonView",
]

AttrValue = str | int | float | bool

MAX_BATCH = 1000


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecisionBody(_Body):
    """One decision request. ``app`` defaults to the API key's client app (and must equal it);
    ``at`` defaults to now (UTC). ``audit_context`` is recorded in the audit entry (subject ids,
    a request id -- never raw tokens: those are masked)."""

    action: str = Field(min_length=1, max_length=64, examples=["use"])
    category: str = Field(min_length=1, max_length=128, examples=["user.avatar"])
    origins: list[str] = Field(min_length=1, max_length=32, examples=[["wechat"]])
    purpose: str | None = Field(default=None, max_length=128)
    recipient: str | None = Field(default=None, max_length=128)
    controller: str | None = Field(default=None, max_length=128)
    app: str | None = Field(default=None, max_length=128)
    at: AwareDatetime | None = None
    grant_first_used_by_recipient_at: AwareDatetime | None = None
    grant_granted_at: AwareDatetime | None = None
    grant_status: Literal["active", "revoked", "expired"] | None = None
    grant_scopes: list[str] | None = Field(default=None, max_length=64)
    subject: dict[str, AttrValue] = Field(default_factory=dict, max_length=64)
    context: dict[str, AttrValue] = Field(default_factory=dict, max_length=64)
    audit_context: dict[str, AttrValue] = Field(default_factory=dict, max_length=64)


class BatchRequest(_Body):
    """Up to 1000 decision requests, decided in order."""

    requests: list[DecisionBody] = Field(min_length=1, max_length=MAX_BATCH)


class ReasonView(BaseModel):
    rule: str
    instrument: str
    effect: Literal["permit", "deny"]
    outcome: str
    explanation: str


class ObligationView(BaseModel):
    kind: str
    rule_id: str
    instrument_id: str
    strategy: str | None = None
    within_seconds: int | None = None
    target: str | None = None


class AuditInfo(BaseModel):
    """How the decision reached the audit log: ``submission`` number (``None``: dropped by a
    bounded buffer, or the log is off), ``acknowledged`` (committed before the response)."""

    mode: Literal["block", "drop", "off"]
    submission: int | None
    acknowledged: bool


class DecisionResponse(BaseModel):
    effect: Literal["permit", "deny", "not_applicable"]
    allowed: bool
    reasons: list[ReasonView]
    obligations: list[ObligationView]
    request: dict[str, Any]
    audit: AuditInfo


class BatchResponse(BaseModel):
    decisions: list[DecisionResponse]
    denied: int
    permitted: int
    not_applicable: int


class DecisionRecord(BaseModel):
    """A decision as recorded in the audit log (seq, audit time, payload)."""

    seq: int
    at: str
    effect: str
    rules: list[str]
    request: dict[str, Any]
    context: dict[str, Any]
    hash: str


class GrantView(BaseModel):
    grant_id: str
    subject_id: int
    provider: str
    app_id: str
    scopes: str
    granted_at: str
    status: str


class GrantsPage(BaseModel):
    grants: list[GrantView]
    total: int
    offset: int
    limit: int


class AuditVerifyResponse(BaseModel):
    ok: bool
    count: int
    head_hash: str
    first_bad_seq: int | None
    reason: str | None
    checkpoint: dict[str, Any] | None = None


class ErrorDetail(BaseModel):
    code: str = Field(examples=["PG140"])
    type: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "type", "message"}}``."""

    error: ErrorDetail
