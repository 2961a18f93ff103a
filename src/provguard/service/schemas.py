"""Request and response bodies of the HTTP API (pydantic v2; they make the OpenAPI schema)."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

# subject / context / audit_context values and keys, origins and scopes are bounded
# (provguard.service.limits: strings <= 256 chars, safe integers, finite floats)
from provguard.service.limits import AttrKey, AttrValue, BoundedToken

__all__ = [
    "RESERVED_AUDIT_CONTEXT",
    "AuditInfo",
    "AuditVerifyResponse",
    "BatchRequest",
    "BatchResponse",
    "CampaignStatus",
    "CampaignSubject",
    "CampaignSubjectsPage",
    "CampaignView",
    "DecisionBody",
    "DecisionRecord",
    "DecisionResponse",
    "ErrorBody",
    "ErrorDetail",
    "GrantView",
    "GrantsPage",
    "OAuthErrorBody",
    "ObligationView",
    "ProgressPoint",
    "ReasonView",
    "RevocationJobView",
    "RevocationResponse",
    "ScanBatch",
    "ScanBatchResponse",
    "ScanPair",
    "ScanResult",
    "TokenExchangeResponse",
]


MAX_BATCH = 1000

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _date_only(value: object) -> object:
    if isinstance(value, str) and not _DATE_ONLY.fullmatch(value):
        raise ValueError("a plain date is written YYYY-MM-DD (a time needs a UTC offset)")
    return value


PlainDate = Annotated[date, BeforeValidator(_date_only)]
"""A calendar date as ``YYYY-MM-DD`` only (a naive date-time is refused, not truncated)."""

RESERVED_AUDIT_CONTEXT = frozenset({"client_app", "key", "role", "backdated"})
"""Keys of a decision's audit ``context`` that the server sets from the API key (attribution and
tenant isolation: ``GET /v1/decisions`` lists by ``context.client_app``; ``role``: ``auditor``
for an auditor's decision; ``backdated``: true when ``at`` was not now). A request's
``audit_context`` naming one of them is refused (422 ``PG140``), never merged."""


def _no_reserved_keys(value: object) -> object:
    if isinstance(value, dict):
        # compared case- and space-insensitively: an auditor reading "Client_App" must not be
        # misled about who asked
        clash = sorted(
            k
            for k in value
            if isinstance(k, str) and k.strip().casefold() in RESERVED_AUDIT_CONTEXT
        )
        if clash:
            raise ValueError(
                f"audit_context may not set {', '.join(repr(k) for k in clash)}: the server "
                "records the API key's client app and key name there"
            )
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecisionBody(_Body):
    """One decision request. With a client app's key, ``app`` defaults to the key's app (and
    must equal it) and ``at`` must be omitted or within the allowed clock skew of the server's
    clock (``provguard.service.app.CLOCK_SKEW``, 5 s): asking what the policy of another time
    says is an auditor's question (403 ``PG521`` otherwise). With an auditor key ``app`` is
    required and ``at`` may be any time. ``at`` defaults to now (UTC); a plain date
    (``"2019-06-30"``) means midnight UTC of that day. ``audit_context`` is recorded in the
    audit entry (subject ids, a request id -- never raw tokens: those are masked); its keys may
    not be those the server sets (:data:`RESERVED_AUDIT_CONTEXT`: ``client_app``, ``key``,
    ``role``, ``backdated``) -- such a request is answered 422 ``PG140``.

    Limits (:mod:`provguard.service.limits`; 422 ``PG140`` beyond them): ``subject``,
    ``context`` and ``audit_context`` hold at most 64 entries each, keys of at most 128
    characters, values that are strings of at most 256 characters, integers within
    +/-(2**53 - 1), finite floats or booleans; ``origins`` / ``grant_scopes`` items have at
    most 128 characters."""

    action: str = Field(min_length=1, max_length=64, examples=["use"])
    category: str = Field(min_length=1, max_length=128, examples=["user.avatar"])
    origins: list[BoundedToken] = Field(min_length=1, max_length=32, examples=[["wechat"]])
    purpose: str | None = Field(default=None, max_length=128)
    recipient: str | None = Field(default=None, max_length=128)
    controller: str | None = Field(default=None, max_length=128)
    app: str | None = Field(default=None, max_length=128)
    at: AwareDatetime | PlainDate | None = Field(
        default=None,
        description="decision time: an aware datetime, or a plain date meaning 00:00 UTC; "
        "default now. A client app's key may only omit it or send now (within 5 s of the "
        "server's clock; otherwise 403 PG521): another time is for auditor keys",
        examples=["2019-06-30", "2019-06-30T08:00:00+08:00"],
    )
    grant_first_used_by_recipient_at: AwareDatetime | None = None
    grant_granted_at: AwareDatetime | None = None
    grant_status: Literal["active", "revoked", "expired"] | None = None
    grant_scopes: list[BoundedToken] | None = Field(default=None, max_length=64)
    subject: dict[AttrKey, AttrValue] = Field(default_factory=dict, max_length=64)
    context: dict[AttrKey, AttrValue] = Field(default_factory=dict, max_length=64)
    audit_context: Annotated[
        dict[AttrKey, AttrValue],
        BeforeValidator(_no_reserved_keys),
        Field(
            default_factory=dict,
            max_length=64,
            description="recorded in the audit entry's context; the keys 'client_app', "
            "'key', 'role' and 'backdated' are the server's and are refused here",
        ),
    ]


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
    """One OAuth grant of the caller's client app, from either grant store (``store``):
    ``sandbox`` -- the control store's generated grants (``grt_...``, with the sandbox's
    ``subject_id``); ``registry`` -- the grant registry's real sign-ins over HTTP (subject
    known to the app as ``openid``; ``subject_id`` is null)."""

    store: Literal["sandbox", "registry"] = Field(
        default="sandbox", description="which grant store holds it"
    )
    grant_id: str
    subject_id: int | None = Field(description="sandbox data subject (null for the registry)")
    openid: str | None = Field(default=None, description="registry: the app's openid")
    provider: str
    app_id: str
    scopes: str
    granted_at: str = Field(description="ISO 8601, UTC")
    status: str
    relation: Literal["own", "received"] = Field(
        default="own",
        description="own: the subject signed in to this app; received: another app's grant "
        "(app_id) passed to this app by a permitted transfer (openid then null)",
    )
    received_via: list[str] = Field(
        default_factory=list,
        description="received: token_exchange / account_link / unionid_join (registry) or "
        "sandbox_transfer",
    )
    received_at: str | None = Field(
        default=None, description="received: first permitted transfer, ISO 8601, UTC"
    )


class GrantsPage(BaseModel):
    """A page of the caller's grants over both stores: sandbox grants first, then registry
    grants, each ordered by grant id. ``total`` = matching grants in both; ``totals`` per
    store."""

    grants: list[GrantView]
    total: int
    offset: int
    limit: int
    totals: dict[str, int] = Field(default_factory=dict, description="matching grants per store")


class AuditVerifyResponse(BaseModel):
    ok: bool
    count: int
    head_hash: str
    first_bad_seq: int | None
    reason: str | None
    checkpoint: dict[str, Any] | None = None


class OAuthErrorBody(BaseModel):
    """An RFC 6749 section 5.2 error response (the OAuth endpoints): the RFC ``error`` code,
    a human-readable ``error_description``, the provguard ``code``, and for a transfer the
    policy denied the deciding ``rule`` and its ``instrument``."""

    error: str = Field(examples=["unsupported_grant_type"])
    error_description: str
    code: str = Field(examples=["PG150"])
    rule: str | None = None
    instrument: str | None = None


class ErrorDetail(BaseModel):
    code: str = Field(examples=["PG140"])
    type: str
    message: str
    details: list[dict[str, Any]] | None = None
    oauth_error: str | None = Field(default=None, description="RFC 6749/8693 error code")
    rule: str | None = Field(default=None, description="the denying rule (a denied transfer)")
    instrument: str | None = Field(default=None, description="its legal instrument")


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "type", "message"}}``."""

    error: ErrorDetail


# ------------------------------------------------------------------------------ token exchange


class TokenExchangeResponse(BaseModel):
    """RFC 8693 section 2.2.1: the token issued to the calling app (``expires_in`` seconds)."""

    access_token: str
    issued_token_type: str
    token_type: Literal["Bearer"]
    expires_in: int


class RevocationResponse(BaseModel):
    """RFC 7009: the request was well formed (always 200 then). ``job``: the revocation job
    opened when the token was one of the caller's own grant tokens (cascade), else ``None``."""

    revoked: bool
    job: str | None


class RevocationJobView(BaseModel):
    """A revocation job of a grant the caller holds (times ISO 8601, UTC): ``state`` open /
    quarantined / purged; ``expected`` and ``purged`` rows per kind (tokens, values, derived)."""

    job_id: str
    grant_id: str
    relation: Literal["own", "received"] = Field(
        default="own",
        description="own: a grant of this app; received: another app's grant passed to this "
        "app by a permitted token exchange, account link or unionid join",
    )
    state: str
    reason: str
    source: str
    requested_at: str
    purge_by: str
    completed_at: str | None
    expected: dict[str, int]
    purged: dict[str, int]


# ------------------------------------------------------------------------------ scans

_PDQ_HEX = r"^[0-9a-fA-F]{64}$"


class ScanPair(_Body):
    """One app profile beside the provider's copy of the same subject: the handles (nullable)
    and the PDQ picture hashes (256 bits as 64 hex digits; nullable). ``subject_id`` and
    ``provider`` identify the pair in the answer and the audit entry."""

    provider: str = Field(min_length=1, max_length=64, examples=["wechat"])
    subject_id: int | None = Field(default=None, ge=0)
    handle: str | None = Field(default=None, max_length=256, examples=["小爱 Alice"])
    provider_handle: str | None = Field(default=None, max_length=256, examples=["小爱Alice"])
    picture_pdq: str | None = Field(default=None, pattern=_PDQ_HEX)
    provider_picture_pdq: str | None = Field(default=None, pattern=_PDQ_HEX)


class ScanBatch(_Body):
    """Up to 1000 pairs, answered in order."""

    pairs: list[ScanPair] = Field(min_length=1, max_length=MAX_BATCH)


class ScanResult(BaseModel):
    """The match decision of one pair (:mod:`provguard.similarity`, calibrated thresholds).

    ``handle_match_kind``: one of ``exact normalized key pinyin contained fuzzy none``;
    ``handle_similarity``: Indel similarity 0..1 of the match keys; ``picture_distance``:
    Hamming distance 0..256 of the two PDQ hashes (``None`` when a hash is missing);
    ``picture_match``: distance <= ``picture_radius`` bits; ``copied_fields``: ``handle`` /
    ``avatar`` that match; ``inferred_origins``: ``[provider]`` when anything matched.
    """

    provider: str
    subject_id: int | None
    handle_match_kind: str
    handle_similarity: float
    handle_match: bool
    picture_distance: int | None
    picture_radius: int
    picture_match: bool
    copy_match: bool
    copied_fields: list[str]
    inferred_origins: list[str]


class ScanBatchResponse(BaseModel):
    results: list[ScanResult]
    matches: int
    audit: AuditInfo


# ------------------------------------------------------------------------------ campaigns


class CampaignView(BaseModel):
    """A remediation campaign (``created_at`` ISO 8601 UTC)."""

    campaign_id: str
    rule_id: str
    instrument_id: str
    created_at: str


class ProgressPoint(BaseModel):
    """Targets per state after ``operation`` at ``at`` (ISO 8601 UTC)."""

    at: str
    operation: str
    counts: dict[str, int]


class CampaignStatus(BaseModel):
    """A campaign's status as the caller may see it: ``states`` (targets per state) and
    ``outbox`` (notices per delivery status) over the caller's app only for an app key, over
    every app for an auditor; ``history`` (whole-campaign progress over time) for auditors only
    (it mixes apps), empty for an app key. ``progress``: share of non-exempt targets that
    left ``pending``/``notified`` (0..1)."""

    campaign: CampaignView
    scope: str
    targets: int
    states: dict[str, int]
    outbox: dict[str, int]
    progress: float
    history: list[ProgressPoint]


class CampaignSubject(BaseModel):
    app_id: str
    subject_id: int
    provider: str
    state: str
    fields: str
    origin_kind: str
    exempt_reason: str | None
    notified_at: str | None
    updated_at: str


SUBJECT_STATES_NOTE = (
    "not chain-backed: which target is in which state is the control store's word; the audit "
    "chain records each operation's counts per state, which were checked before this answer"
)
"""The caveat every page of campaign subjects carries (report section 6, ``NOT_IN_CHAIN``)."""


class CampaignSubjectsPage(BaseModel):
    """A page of a campaign's targets. ``chain``: what the chain vouches for here
    (:data:`SUBJECT_STATES_NOTE`)."""

    subjects: list[CampaignSubject]
    total: int
    offset: int
    limit: int
    chain: str = SUBJECT_STATES_NOTE
