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
``rules``              the newest ``job.policy`` entry (the job's first entry of a run, the
                       policy it enforced: :func:`provguard.job.run.policy_entry`); key
                       ``instrument/rule``; fields ``effect``, ``summary`` ↔ ``scope``
                       (:func:`check_rules`; the report runs it beside :func:`crosscheck`)
``instruments``        the same ``job.policy`` entry's ``instruments`` (when it records them);
                       key the instrument id; fields ``kind``, ``title`` (from ``source``),
                       ``issuer``, ``effective_from``, ``validity`` and ``source_sha256``
                       (SHA-256 of the stored ``source`` JSON) (:func:`check_instruments`)
``campaigns``          kind ``campaign`` (the job's last entry of a run) or
                       ``campaign.start`` / ``campaign.dispatch`` / ``campaign.rescan`` (the
                       CLI, chained with the state change; fresh user 11, M3); key
                       ``campaign_id``; fields ``rule_id``, ``instrument_id``, ``targets``
                       (rows of ``campaign_targets``), ``history`` (the newest
                       ``campaign_progress`` snapshot must equal the chained ``states``) and
                       the current ``campaign_targets`` states (the report's "Now" row, field
                       :data:`CAMPAIGN_NOW_FIELD`; fresh user 11, M2)
=====================  =======================================================================

With the signer's public key known, the compared entry must moreover be covered by a checkpoint
that key signed (:attr:`VerifiedRange.signed`; a row resting only on an unsigned entry is a
discrepancy of field :data:`SIGNATURE_FIELD`): appended forged entries that reuse real ids, with
the table edited to match, no longer pass (findings I-2). :func:`crosscheck_registry` compares
the grant registry (``grants.db``, :data:`REGISTRY_TABLES`) with the chain's ``grant.*`` events
the same way: ``oauth_grants`` / ``revocation_jobs`` with ``grant.login`` /
``grant.revocation_opened`` / ``grant.purged``, and (session 7, findings F3 / G11: one
``INSERT`` into ``recipient_first_use`` grandfathered a grant) ``recipient_first_use`` with
``grant.first_use``, ``separate_consents`` with ``grant.separate_consent`` /
``grant.consent_withdrawn``, and the ids and status of ``oauth_tokens`` with the entries that
issue and revoke tokens (:func:`check_first_uses`, :func:`check_consents`,
:func:`check_tokens`); and (fresh user 11, H3: one ``UPDATE`` turned 8 grandfathered token
exchanges into denials) ``transfer_attempts`` with ``grant.transfer``
(:func:`check_transfer_attempts`).

Both directions count: a row without its chained entry, and a chained entry whose row is gone
(for ``campaigns`` only the first: a campaign written by a version before chained campaign
operations, or through :class:`~provguard.adapters.campaign_sqlite.SqlCampaignStore` directly,
has no chain record, so it is reported as *not chain-backed*, not as a discrepancy). A
matching entry must also lie inside the verified part of the chain (:class:`VerifiedRange`):
an entry after a break, or outside the range the caller verified, does not vouch for anything.

:data:`NOT_IN_CHAIN` lists what the chain does not record (the instruments' text and rules,
the control store's sandbox grants, which targets a campaign holds in each state (the chain
holds the counts), the scan, the grant registry): a report section built from them is not
chain-backed and says so.

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
    "CAMPAIGN_NOW_FIELD",
    "CAMPAIGN_OPERATION_KINDS",
    "CHECKED_TABLES",
    "GRANT_KINDS",
    "INSTRUMENTS_CHECKED",
    "INSTRUMENTS_SECTION",
    "NOT_IN_CHAIN",
    "POLICY_KIND",
    "REGISTRY_TABLES",
    "RULES_SECTION",
    "SIGNATURE_FIELD",
    "CampaignRow",
    "ChainRecords",
    "ConsentRow",
    "CrossCheckResult",
    "Discrepancy",
    "EventRow",
    "FirstUseRow",
    "GrantRow",
    "InstrumentRow",
    "RegistryTables",
    "RevocationRow",
    "RuleRow",
    "StoreChainMismatchError",
    "StoreTables",
    "TableCheck",
    "TokenRow",
    "TransferAttemptRow",
    "TransferRow",
    "VerifiedRange",
    "check_campaigns",
    "check_consents",
    "check_first_uses",
    "check_grants",
    "check_instrument_events",
    "check_instruments",
    "check_revocations",
    "check_rules",
    "check_tokens",
    "check_transfer_attempts",
    "check_transfers",
    "crosscheck",
    "crosscheck_registry",
    "registry_start",
]

EVENT_KIND = "instrument_event"
POLICY_KIND = "job.policy"
"""The entry ``provguard run`` appends first: the policy it enforced (digest, files, rules'
scope; :func:`provguard.job.run.policy_entry`)."""
RULES_SECTION = "1. Legal instruments (the rules' enforced scope)"
"""The report section the ``rules`` table feeds (:func:`check_rules`)."""
INSTRUMENTS_SECTION = "1. Legal instruments (title, dates, validity, status)"
"""The report section the ``instruments`` table feeds (:func:`check_instruments`)."""
CAMPAIGN_KIND = "campaign"
CAMPAIGN_OPERATION_KINDS = ("campaign.start", "campaign.dispatch", "campaign.rescan")
"""The entries ``provguard campaign start / dispatch / rescan`` chain with their state change
(:mod:`provguard.campaign.chained`); like the job's ``campaign`` entry they hold the campaign's
``states`` after the operation, and :func:`check_campaigns` compares the newest one."""
CAMPAIGN_NOW_FIELD = "campaign_targets"
"""The :attr:`Discrepancy.field` of a chained campaign whose current ``campaign_targets``
states (the report's 3c "Now" row) differ from the newest chained campaign entry's ``states``
(:func:`check_campaigns`)."""
TRANSFER_STAGE = "transfer_audit"
GRANT_LOGIN_KIND = "grant.login"
REVOCATION_KIND = "grant.revocation_opened"
PURGED_KIND = "grant.purged"
FIRST_USE_KIND = "grant.first_use"
CONSENT_KIND = "grant.separate_consent"
WITHDRAWN_KIND = "grant.consent_withdrawn"
TRANSFER_KIND = "grant.transfer"
TOKEN_ISSUED_KIND = "grant.token_issued"
TOKEN_ROTATED_KIND = "grant.token_rotated"
TOKEN_REVOKED_KIND = "grant.token_revoked"
QUARANTINED_KIND = "grant.quarantined"
PURGED_TOKENS_KIND = "grant.purged_tokens"
GRANT_KINDS = (
    GRANT_LOGIN_KIND,
    REVOCATION_KIND,
    PURGED_KIND,
    FIRST_USE_KIND,
    CONSENT_KIND,
    WITHDRAWN_KIND,
    TRANSFER_KIND,
    TOKEN_ISSUED_KIND,
    TOKEN_ROTATED_KIND,
    TOKEN_REVOKED_KIND,
    QUARANTINED_KIND,
    PURGED_TOKENS_KIND,
)
"""The grant registry's outbox events the registry cross-check compares
(:func:`crosscheck_registry`)."""

REGISTRY_TABLES: Mapping[str, str] = {
    "oauth_grants": "3a. Sign-ins and token exchanges",
    "revocation_jobs": "3b. Revocations",
    "recipient_first_use": "3a. Sign-ins and token exchanges (grandfathering evidence)",
    "separate_consents": "3a. Sign-ins and token exchanges (PIPL Art. 23 consents)",
    "oauth_tokens": "3a. Sign-ins and token exchanges (token status)",
    "transfer_attempts": "3a. Sign-ins and token exchanges (exchanges by outcome and rule)",
}
"""The grant registry's tables :func:`crosscheck_registry` compares, in its order, and the
report section each one feeds (a disagreement withholds that section)."""

CHECKED_TABLES: Mapping[str, str] = {
    "instrument_events": "1. Legal instruments (status in force / ended)",
    "transfers": "3. Login-grant transfers",
    "campaigns": "3c. Remediation campaign",
}
"""The tables :func:`crosscheck` compares, and the report section each one feeds."""

NOT_IN_CHAIN: Mapping[str, str] = {
    "instruments, rules": "1. the instruments' text and the rules' descriptions (the policy "
    "files; the rules' scope and the policy digest are cross-checked with the run's job.policy "
    "entry, the descriptions are not; the instruments' rows only when that entry records "
    "them)",
    "grants": "the control store's sandbox grants (not shown as figures)",
    "campaign_targets (per target), campaign_events, campaign_outbox": "3c. which targets are "
    "in each state (the chain holds each operation's counts per state, not the target rows)",
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
    (hashes recomputed and linked); ``last = 0`` means nothing was verified.

    ``signed``: entries #1..``signed`` are moreover covered by a checkpoint whose Ed25519
    signature (RFC 8032) verified with the folder's public key and whose head the log holds
    (``0``: none is); ``None`` (the default) when no public key is known, so no signature is
    required. With ``signed`` set, a row whose chained entry lies after it is a discrepancy of
    field ``"signature"`` (findings I-2: forged entries appended without the key, reusing real
    ids, cannot vouch for an edited table)."""

    first: int
    last: int
    signed: int | None = None

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
class RuleRow:
    """A row of the control store's ``rules`` (written by the job from the policy it loaded,
    :meth:`provguard.adapters.control_sqlite.SqlControlStore.save_bundles`): ``summary`` is the
    rule's machine scope, :meth:`provguard.policy.model.Rule.summary`."""

    instrument_id: str
    rule_id: str
    effect: str
    summary: str


@dataclass(frozen=True)
class InstrumentRow:
    """A row of the control store's ``instruments`` (written by the job from the policy it
    loaded, :meth:`provguard.adapters.control_sqlite.SqlControlStore.save_bundles`):
    ``effective_from`` as stored, ``validity`` the stored validity text, ``title`` read from
    the stored ``source`` JSON (``None`` when it has none or does not parse) and
    ``source_sha256`` the SHA-256 (64 hex) of that JSON text's UTF-8 bytes."""

    instrument_id: str
    kind: str
    title: str | None
    issuer: str
    effective_from: date
    validity: str
    source_sha256: str


@dataclass(frozen=True)
class CampaignRow:
    """A campaign of ``campaigns`` with ``targets`` rows in ``campaign_targets`` and its
    ``campaign_progress`` snapshots (counts per state, oldest first)."""

    campaign_id: str
    rule_id: str
    instrument_id: str
    targets: int
    history: tuple[Mapping[str, int], ...] = ()
    #: the current ``campaign_targets`` rows per state (the report's "Now" row); ``None``:
    #: not read, so not compared
    now: Mapping[str, int] | None = None


@dataclass(frozen=True)
class StoreTables:
    """The rows to check; ``None`` for a table the store does not have."""

    events: tuple[EventRow, ...] | None = ()
    transfers: tuple[TransferRow, ...] | None = ()
    campaigns: tuple[CampaignRow, ...] | None = ()
    #: checked only when the chain holds a ``job.policy`` entry (:func:`check_rules`)
    rules: tuple[RuleRow, ...] | None = ()
    #: checked only when the chain's ``job.policy`` entry records its instruments
    #: (:func:`check_instruments`)
    instruments: tuple[InstrumentRow, ...] | None = ()


@dataclass(frozen=True)
class GrantRow:
    """A row of the grant registry's ``oauth_grants`` (``grants.db``,
    :mod:`provguard.adapters.grant_store`); ``scopes`` space-separated."""

    grant_id: str
    provider: str
    app_id: str
    scopes: str
    status: str


@dataclass(frozen=True)
class RevocationRow:
    """A row of the grant registry's ``revocation_jobs`` (``purge_by`` aware or naive UTC)."""

    job_id: str
    grant_id: str
    reason: str
    source: str
    purge_by: datetime
    state: str
    purged_tokens: int
    purged_values: int
    purged_derived: int


@dataclass(frozen=True)
class FirstUseRow:
    """A row of the grant registry's ``recipient_first_use``: ``recipient`` first used
    ``grant_id`` at ``first_used_at`` (aware or naive UTC) -- the grandfathering evidence."""

    grant_id: str
    recipient: str
    first_used_at: datetime


@dataclass(frozen=True)
class ConsentRow:
    """A row of the grant registry's ``separate_consents`` (PIPL Art. 23 / 15). ``purposes``
    and ``categories`` as stored (sorted keys; ``None``: a row from before those columns);
    times aware or naive UTC."""

    grant_id: str
    recipient: str
    given_at: datetime
    evidence: str
    consent_id: str | None
    purposes: tuple[str, ...] | None
    method: str | None
    categories: tuple[str, ...] | None
    withdrawn_at: datetime | None


@dataclass(frozen=True)
class TokenRow:
    """A row of the grant registry's ``oauth_tokens``: its id, grant, kind and ``status``
    (``active`` / ``revoked``) only -- never its digest or ciphertext."""

    token_id: str
    grant_id: str
    kind: str
    status: str


@dataclass(frozen=True)
class TransferAttemptRow:
    """A row of the grant registry's ``transfer_attempts`` (every onward-transfer attempt as
    decided; section 3a's token exchanges are counted from it): ``at`` aware or naive UTC,
    ``effect`` ``permit`` / ``deny`` / ``not_applicable``, ``excepted`` a permit by a rule's
    exception (grandfathered), ``rule_id`` / ``instrument_id`` the deciding rule."""

    attempt_id: str
    grant_id: str
    kind: str
    from_app: str
    to_app: str
    at: datetime
    effect: str
    excepted: bool
    rule_id: str | None
    instrument_id: str | None


@dataclass(frozen=True)
class RegistryTables:
    """The grant registry's rows to check; ``None`` for a table the registry does not have
    (its chained rows are then all missing)."""

    grants: tuple[GrantRow, ...] | None = ()
    revocations: tuple[RevocationRow, ...] | None = ()
    first_uses: tuple[FirstUseRow, ...] | None = ()
    consents: tuple[ConsentRow, ...] | None = ()
    tokens: tuple[TokenRow, ...] | None = ()
    #: ``None``: the registry has no ``transfer_attempts`` table
    transfer_attempts: tuple[TransferAttemptRow, ...] | None = ()


@dataclass
class ChainRecords:
    """The chained entries the check needs, newest per key (fed one entry at a time, so the
    report collects them in the same pass that tallies decisions). ``grant_logins`` by grant
    id, ``revocations`` and ``purges`` by revocation job id: the grant registry's outbox
    events (:data:`GRANT_KINDS`)."""

    events: dict[tuple[str, str], AuditEntry] = field(default_factory=dict)
    transfers: dict[str, AuditEntry] = field(default_factory=dict)
    campaigns: dict[str, AuditEntry] = field(default_factory=dict)
    grant_logins: dict[str, AuditEntry] = field(default_factory=dict)
    revocations: dict[str, AuditEntry] = field(default_factory=dict)
    purges: dict[str, AuditEntry] = field(default_factory=dict)
    run_ends: list[int] = field(default_factory=list)
    """Seqs of the ``campaign`` entries, oldest first: each closes one ``provguard run``."""
    first_uses: dict[tuple[str, str], AuditEntry] = field(default_factory=dict)
    """``grant.first_use`` by (grant, recipient)."""
    consents: dict[tuple[str, str], AuditEntry] = field(default_factory=dict)
    """``grant.separate_consent`` by (grant, recipient)."""
    withdrawals: dict[tuple[str, str], AuditEntry] = field(default_factory=dict)
    """``grant.consent_withdrawn`` by (grant, recipient)."""
    tokens_issued: dict[str, AuditEntry] = field(default_factory=dict)
    """The entry that issued each token id: ``grant.login`` (``tokens``), ``grant.transfer``
    (``token``), ``grant.token_rotated`` (``token``), ``grant.token_issued``."""
    tokens_revoked: dict[str, AuditEntry] = field(default_factory=dict)
    """The entry that revoked each token id: ``grant.token_rotated`` (``replaced``),
    ``grant.token_revoked``."""
    quarantines: dict[str, AuditEntry] = field(default_factory=dict)
    """``grant.quarantined`` by grant id (every token of the grant revoked)."""
    token_purges: dict[str, AuditEntry] = field(default_factory=dict)
    """``grant.purged_tokens`` by grant id (every token row of the grant deleted)."""
    grant_transfers: dict[str, AuditEntry] = field(default_factory=dict)
    """``grant.transfer`` by attempt id (``attempt``): the decided transfer attempts."""
    policy: AuditEntry | None = None
    """The newest ``job.policy`` entry (:data:`POLICY_KIND`): the policy of the latest run."""

    def add(self, entry: AuditEntry) -> None:
        """Keep ``entry`` if it is one the check compares (later entries replace earlier)."""
        p = entry.payload
        if entry.kind == POLICY_KIND:
            self.policy = entry
        elif entry.kind == EVENT_KIND:
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
            self.run_ends.append(entry.seq)
            cid = p.get("campaign_id")
            if isinstance(cid, str):
                self.campaigns[cid] = entry
        elif entry.kind in CAMPAIGN_OPERATION_KINDS:
            # a chained `provguard campaign start / dispatch / rescan` (fresh user 11, M3): the
            # newest state of the campaign, but not the end of a job run
            cid = p.get("campaign_id")
            if isinstance(cid, str):
                self.campaigns[cid] = entry
        elif entry.kind == GRANT_LOGIN_KIND:
            gid = p.get("grant")
            if isinstance(gid, str):
                self.grant_logins[gid] = entry
            tokens = p.get("tokens")
            if isinstance(tokens, Mapping):
                for tid in tokens:
                    self.tokens_issued[str(tid)] = entry
        elif entry.kind in (REVOCATION_KIND, PURGED_KIND):
            job = p.get("job")
            if isinstance(job, str):
                (self.revocations if entry.kind == REVOCATION_KIND else self.purges)[job] = entry
        elif entry.kind in (FIRST_USE_KIND, CONSENT_KIND, WITHDRAWN_KIND):
            gid, rcpt = p.get("grant"), p.get("recipient")
            if isinstance(gid, str) and isinstance(rcpt, str):
                target = (
                    self.first_uses
                    if entry.kind == FIRST_USE_KIND
                    else self.consents
                    if entry.kind == CONSENT_KIND
                    else self.withdrawals
                )
                target[(gid, rcpt)] = entry
        elif entry.kind in (TRANSFER_KIND, TOKEN_ISSUED_KIND, TOKEN_ROTATED_KIND):
            attempt = p.get("attempt")
            if entry.kind == TRANSFER_KIND and isinstance(attempt, str):
                self.grant_transfers[attempt] = entry
            tid = p.get("token")
            if isinstance(tid, str):
                self.tokens_issued[tid] = entry
            replaced = p.get("replaced")
            if entry.kind == TOKEN_ROTATED_KIND and isinstance(replaced, list):
                for old in replaced:
                    self.tokens_revoked[str(old)] = entry
        elif entry.kind == TOKEN_REVOKED_KIND:
            tid = p.get("token")
            if isinstance(tid, str):
                self.tokens_revoked[tid] = entry
        elif entry.kind in (QUARANTINED_KIND, PURGED_TOKENS_KIND):
            gid = p.get("grant")
            if isinstance(gid, str):
                (self.quarantines if entry.kind == QUARANTINED_KIND else self.token_purges)[gid] = (
                    entry
                )

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

    @property
    def unsigned(self) -> tuple[str, ...]:
        """Keys of the rows whose chained entry no signed checkpoint covers (only when the
        check required signatures, :attr:`VerifiedRange.signed`)."""
        return tuple(dict.fromkeys(d.key for d in self.discrepancies if d.field == SIGNATURE_FIELD))


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


SIGNATURE_FIELD = "signature"
"""The :attr:`Discrepancy.field` of a row whose chained entry no signed checkpoint covers."""


def _unsigned(table: str, key: str, e: AuditEntry, verified: VerifiedRange) -> Discrepancy | None:
    """A discrepancy when signatures are required (``verified.signed`` set) and ``e`` lies
    after the signed cover; ``None`` otherwise."""
    if verified.signed is None or e.seq <= verified.signed:
        return None
    cover = f"signed up to #{verified.signed}" if verified.signed else "no entry is signed"
    return Discrepancy(
        table,
        key,
        SIGNATURE_FIELD,
        "recorded",
        f"entry #{e.seq} is not covered by a signed checkpoint ({cover})",
        e.seq,
    )


def _chain_problems(
    table: str, key: str, e: AuditEntry, verified: VerifiedRange
) -> list[Discrepancy]:
    """The entry lies outside the verified chain, or after the signed cover (or both)."""
    return [
        d
        for d in (_outside(table, key, e, verified), _unsigned(table, key, e, verified))
        if d is not None
    ]


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
        found.extend(_chain_problems(table, name, e, verified))
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
        found.extend(_chain_problems(table, r.transfer_id, e, verified))
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
    """Compare ``campaigns`` (with their target counts, progress snapshots and current target
    states) with the newest chained campaign entry per campaign id: the job's ``campaign``
    entry or a ``campaign.start`` / ``campaign.dispatch`` / ``campaign.rescan`` entry
    (:data:`CAMPAIGN_OPERATION_KINDS`), which the CLI appends in the same transaction as the
    state change (fresh user 11, M3). A campaign without a chained entry is listed in
    ``unchained`` (not an error); a chained campaign without its row is a discrepancy.

    Fields: ``rule_id``, ``instrument_id``, ``targets`` (rows of ``campaign_targets``);
    ``history``: the newest ``campaign_progress`` snapshot must equal the entry's ``states``
    (a snapshot no chain entry backs -- a rescan or dispatch that wrote its snapshot without
    its entry, or an inserted row -- is a discrepancy); :data:`CAMPAIGN_NOW_FIELD`: the current
    ``campaign_targets`` states (:attr:`CampaignRow.now`, the report's "Now" row) must equal
    the entry's ``states``. States with no target are ignored in both comparisons."""
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
        found.extend(_chain_problems(table, r.campaign_id, e, verified))
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
        chained_states = (
            {str(k): v for k, v in states.items()} if isinstance(states, Mapping) else {}
        )
        want = _nonzero(chained_states)
        newest = r.history[-1] if r.history else None
        if newest is None or _nonzero(newest) != want:
            # the newest snapshot is not the chained one: an operation recorded progress
            # without its chain entry (or a row was inserted)
            found.append(
                Discrepancy(
                    table,
                    r.campaign_id,
                    "history",
                    _states_text(newest) if newest is not None else None,
                    _states_text(chained_states),
                    e.seq,
                )
            )
        if r.now is not None and _nonzero(r.now) != want:
            found.append(
                Discrepancy(
                    table,
                    r.campaign_id,
                    CAMPAIGN_NOW_FIELD,
                    _states_text(_nonzero(r.now)),
                    _states_text(want),
                    e.seq,
                )
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


def check_rules(
    rows: Iterable[RuleRow] | None,
    entry: AuditEntry | None,
    verified: VerifiedRange,
) -> TableCheck:
    """Compare the control store's ``rules`` with the rules of the newest chained
    ``job.policy`` entry (``entry``, :attr:`ChainRecords.policy`; payload ``rules``: a list of
    ``{"id", "instrument", "effect", "scope"}``), key ``instrument/rule``, fields ``effect`` and
    ``summary`` ↔ ``scope``. Both directions count: a row the entry does not list, and a
    chained rule whose row is gone. The entry must lie in ``verified`` (and under its signed
    cover when signatures are required).

    ``entry=None`` (a log from before the job recorded its policy): nothing to compare; every
    row is returned in ``unchained`` (not chain-backed, no discrepancy)."""
    table = "rules"
    listed = list(rows or ())
    if entry is None:
        return TableCheck(
            table,
            len(listed),
            0,
            0,
            (),
            tuple(f"{r.instrument_id}/{r.rule_id}" for r in listed),
            rows is not None,
        )
    chained: dict[str, Mapping[str, Any]] = {}
    for rule in entry.payload.get("rules") or ():
        if isinstance(rule, Mapping):
            chained[f"{rule.get('instrument')}/{rule.get('id')}"] = rule
    found: list[Discrepancy] = []
    problems = _chain_problems(table, "job.policy", entry, verified)
    found.extend(problems)
    matched = 0
    seen: set[str] = set()
    for r in listed:
        key = f"{r.instrument_id}/{r.rule_id}"
        seen.add(key)
        want = chained.get(key)
        if want is None:
            found.append(Discrepancy(table, key, "summary", r.summary, None, entry.seq))
            continue
        before = len(found)
        for name, value, chain_value in (
            ("effect", r.effect, want.get("effect")),
            ("summary", r.summary, want.get("scope")),
        ):
            if value != chain_value:
                found.append(
                    Discrepancy(table, key, name, _text(value), _text(chain_value), entry.seq)
                )
        matched += len(found) == before and not problems
    for key, want in sorted(chained.items()):
        if key not in seen:
            found.append(
                Discrepancy(table, key, "summary", None, _text(want.get("scope")), entry.seq)
            )
    return TableCheck(table, len(listed), len(chained), matched, tuple(found), (), rows is not None)


def check_instruments(
    rows: Iterable[InstrumentRow] | None,
    entry: AuditEntry | None,
    verified: VerifiedRange,
) -> TableCheck:
    """Compare the control store's ``instruments`` with the instruments of the newest chained
    ``job.policy`` entry (``entry``, :attr:`ChainRecords.policy`; payload ``instruments``: a
    list of ``{"id", "kind", "title", "issuer", "effective_from", "validity",
    "source_sha256"}``, :func:`provguard.job.run.policy_entry`), key the instrument id, fields
    ``kind``, ``title``, ``issuer``, ``effective_from`` (ISO-8601 day), ``validity`` and
    ``source_sha256`` (SHA-256 of the stored ``source`` JSON, from which the report takes the
    instrument's title, dates and status: findings I, M1). Both directions count: a row the
    entry does not list, and a chained instrument whose row is gone (field
    ``source_sha256``). The entry must lie in ``verified`` (and under its signed cover when
    signatures are required).

    ``entry=None``, or an entry without ``instruments`` (a run from before the job recorded
    them): nothing to compare; every row is returned in ``unchained`` (no discrepancy)."""
    table = "instruments"
    listed = list(rows or ())
    recorded = entry.payload.get("instruments") if entry is not None else None
    if entry is None or not isinstance(recorded, list):
        return TableCheck(
            table, len(listed), 0, 0, (), tuple(r.instrument_id for r in listed), rows is not None
        )
    chained: dict[str, Mapping[str, Any]] = {}
    for inst in recorded:
        if isinstance(inst, Mapping):
            chained[str(inst.get("id"))] = inst
    problems = _chain_problems(table, "job.policy", entry, verified)
    found: list[Discrepancy] = list(problems)
    matched = 0
    seen: set[str] = set()
    for r in listed:
        key = r.instrument_id
        seen.add(key)
        want = chained.get(key)
        if want is None:
            found.append(Discrepancy(table, key, "source_sha256", r.source_sha256, None, entry.seq))
            continue
        before = len(found)
        for name, value in (
            ("kind", r.kind),
            ("title", r.title),
            ("issuer", r.issuer),
            ("effective_from", r.effective_from.isoformat()),
            ("validity", r.validity),
            ("source_sha256", r.source_sha256),
        ):
            chain_value = want.get(name)
            if value != chain_value:
                found.append(
                    Discrepancy(table, key, name, _text(value), _text(chain_value), entry.seq)
                )
        matched += len(found) == before and not problems
    for key, want in sorted(chained.items()):
        if key not in seen:
            found.append(
                Discrepancy(
                    table, key, "source_sha256", None, _text(want.get("source_sha256")), entry.seq
                )
            )
    return TableCheck(table, len(listed), len(chained), matched, tuple(found), (), rows is not None)


INSTRUMENTS_CHECKED: Mapping[str, str] = {
    "rules": "1. the rules' descriptions (the policy files; the rules' scope, the instruments' "
    "rows and the policy digest are cross-checked with the run's job.policy entry, the "
    "descriptions are not)"
}
"""The *not chain-backed* line that replaces ``NOT_IN_CHAIN["instruments, rules"]`` when
:func:`check_instruments` compared the instruments (the run's ``job.policy`` entry records
them)."""


def _states_text(states: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(states.items()))


def _nonzero(states: Mapping[str, Any]) -> dict[str, Any]:
    """State counts without the states that hold no target (stores list every state, the
    targets table only those it has)."""
    return {str(k): v for k, v in states.items() if v != 0}


def crosscheck(
    tables: StoreTables,
    entries: ChainRecords | Iterable[AuditEntry],
    verified: VerifiedRange,
) -> CrossCheckResult:
    """Check every table of :data:`CHECKED_TABLES` against the chain, and the ``rules`` against
    the newest ``job.policy`` entry when the chain has one (:func:`check_rules`), and the
    ``instruments`` too when that entry records them (:func:`check_instruments`; the result's
    ``not_in_chain`` then says so, :data:`INSTRUMENTS_CHECKED`).

    ``entries``: the chain's entries in seq order (or :class:`ChainRecords` already collected
    from them); ``verified``: the seqs verified to be in the chain (e.g. ``VerifiedRange(1,
    result.count)`` after :func:`provguard.audit.chain.verify_chain` returned ``ok``). Time
    O(rows + entries); no I/O."""
    records = entries if isinstance(entries, ChainRecords) else ChainRecords.of(entries)
    checks = (
        check_instrument_events(tables.events, records.events, verified),
        check_transfers(tables.transfers, records.transfers, verified),
        check_campaigns(tables.campaigns, records.campaigns, verified),
    )
    if records.policy is None:  # a log from before runs recorded their policy
        return CrossCheckResult(checks)
    rules = check_rules(tables.rules, records.policy, verified)
    if not isinstance(records.policy.payload.get("instruments"), list):
        # a run from before job.policy recorded the instruments: their rows stay not backed
        return CrossCheckResult((*checks, rules))
    instruments = check_instruments(tables.instruments, records.policy, verified)
    not_in_chain = {k: v for k, v in NOT_IN_CHAIN.items() if k != "instruments, rules"}
    return CrossCheckResult((*checks, rules, instruments), {**INSTRUMENTS_CHECKED, **not_in_chain})


# ------------------------------------------------------------------------------ the registry

_REVOKED_STATES = frozenset({"quarantined", "purged"})


def registry_start(records: ChainRecords, verified: VerifiedRange) -> int:
    """The first seq whose ``grant.*`` events belong to the current registry.

    ``provguard run`` recreates ``grants.db`` on every run (new grant and job ids) and appends
    the run's entries at its end, closed by its ``campaign`` entry; so the events of earlier
    registries are those up to the ``campaign`` entry that closed the run *before* the latest
    one (events after the latest run, e.g. the service's, are the same registry's). Only
    ``campaign`` entries in the verified chain count, and, when signatures are required, only
    those under the signed count: an unsigned run end appended by someone else cannot shift
    the boundary. ``1`` when fewer than two runs count: every chained event then counts."""
    trusted = [
        seq
        for seq in records.run_ends
        if seq in verified and (verified.signed is None or seq <= verified.signed)
    ]
    return trusted[-2] + 1 if len(trusted) >= 2 else 1


def _field_discrepancies(
    table: str, key: str, fields: Iterable[tuple[str, Any, Any]], seq: int
) -> list[Discrepancy]:
    """One discrepancy per ``(field, table value, chained value)`` of ``fields`` whose two
    values differ, both shown as text, naming the entry ``seq``."""
    return [
        Discrepancy(table, key, name, _text(value), _text(chained), seq)
        for name, value, chained in fields
        if value != chained
    ]


def check_grants(
    rows: Iterable[GrantRow] | None, records: ChainRecords, verified: VerifiedRange
) -> TableCheck:
    """Compare the registry's ``oauth_grants`` rows with the newest chained ``grant.login``
    entry per grant id (``provider``, ``app_id`` ↔ ``app``, ``scopes``) and the status with the
    chained revocations: a grant whose revocation is chained (``grant.revocation_opened``) may
    not be ``active`` again, and a ``quarantined`` / ``purged`` grant needs that entry. Both
    directions: a row without its ``grant.login``, and a chained login of the current registry
    (:func:`registry_start`) whose row is gone. Entries must lie in ``verified`` (and under its
    signed count, when set)."""
    table = "oauth_grants"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[str] = set()
    listed = list(rows or ())
    revoked: dict[str, AuditEntry] = {}
    for opened in records.revocations.values():
        gid = opened.payload.get("grant")
        if isinstance(gid, str):
            revoked[gid] = opened
    for r in listed:
        seen.add(r.grant_id)
        e = records.grant_logins.get(r.grant_id)
        if e is None:
            found.append(Discrepancy(table, r.grant_id, "provider", r.provider, None))
            continue
        before = len(found)
        found.extend(_chain_problems(table, r.grant_id, e, verified))
        p = e.payload
        fields = (
            ("provider", r.provider, p.get("provider")),
            ("app_id", r.app_id, p.get("app")),
            ("scopes", r.scopes, p.get("scopes")),
        )
        found.extend(_field_discrepancies(table, r.grant_id, fields, e.seq))
        rev = revoked.get(r.grant_id)
        if rev is not None:
            found.extend(_chain_problems(table, r.grant_id, rev, verified))
            if r.status not in _REVOKED_STATES:
                found.append(
                    Discrepancy(
                        table,
                        r.grant_id,
                        "status",
                        r.status,
                        f"revoked (job {rev.payload.get('job')})",
                        rev.seq,
                    )
                )
        elif r.status in _REVOKED_STATES:
            found.append(Discrepancy(table, r.grant_id, "status", r.status, None))
        matched += len(found) == before
    start = registry_start(records, verified)
    for gid, e in sorted(records.grant_logins.items()):
        if gid not in seen and e.seq >= start:
            found.append(
                Discrepancy(table, gid, "provider", None, _text(e.payload.get("provider")), e.seq)
            )
    return TableCheck(
        table, len(listed), len(records.grant_logins), matched, tuple(found), (), rows is not None
    )


def check_revocations(
    rows: Iterable[RevocationRow] | None, records: ChainRecords, verified: VerifiedRange
) -> TableCheck:
    """Compare the registry's ``revocation_jobs`` rows with the chained
    ``grant.revocation_opened`` entry of each job (``grant_id`` ↔ ``grant``, ``reason``,
    ``source``, ``purge_by``) and, for a job whose ``state`` is ``purged``, its
    ``grant.purged`` entry (``purged_tokens`` / ``purged_values`` / ``purged_derived`` ↔
    ``tokens`` / ``values`` / ``derived``); a chained purge of a job not ``purged`` in the
    table, and a chained revocation of the current registry (:func:`registry_start`) without
    its row, are discrepancies too."""
    table = "revocation_jobs"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[str] = set()
    listed = list(rows or ())
    for r in listed:
        seen.add(r.job_id)
        e = records.revocations.get(r.job_id)
        if e is None:
            found.append(Discrepancy(table, r.job_id, "grant_id", r.grant_id, None))
            continue
        before = len(found)
        found.extend(_chain_problems(table, r.job_id, e, verified))
        p = e.payload
        fields = (
            ("grant_id", r.grant_id, p.get("grant")),
            ("reason", r.reason, p.get("reason")),
            ("source", r.source, p.get("source")),
            ("purge_by", _utc(r.purge_by), _chain_time(p.get("purge_by"))),
        )
        found.extend(_field_discrepancies(table, r.job_id, fields, e.seq))
        purge = records.purges.get(r.job_id)
        if r.state == "purged":
            if purge is None:
                found.append(Discrepancy(table, r.job_id, "state", r.state, None))
            else:
                found.extend(_chain_problems(table, r.job_id, purge, verified))
                q = purge.payload
                counts = (
                    ("purged_tokens", r.purged_tokens, q.get("tokens")),
                    ("purged_values", r.purged_values, q.get("values")),
                    ("purged_derived", r.purged_derived, q.get("derived")),
                )
                found.extend(_field_discrepancies(table, r.job_id, counts, purge.seq))
        elif purge is not None:
            found.append(Discrepancy(table, r.job_id, "state", r.state, "purged", purge.seq))
        matched += len(found) == before
    start = registry_start(records, verified)
    for job, e in sorted(records.revocations.items()):
        if job not in seen and e.seq >= start:
            found.append(
                Discrepancy(table, job, "grant_id", None, _text(e.payload.get("grant")), e.seq)
            )
    return TableCheck(
        table, len(listed), len(records.revocations), matched, tuple(found), (), rows is not None
    )


def _purged_after(records: ChainRecords) -> dict[str, int]:
    """The seq of the newest chained ``grant.purged`` per grant id (its first-use, consent and
    token rows are deleted there)."""
    out: dict[str, int] = {}
    for e in records.purges.values():
        gid = e.payload.get("grant")
        if isinstance(gid, str):
            out[gid] = max(out.get(gid, 0), e.seq)
    return out


def _pair(key: tuple[str, str]) -> str:
    return f"{key[0]}/{key[1]}"


def check_first_uses(
    rows: Iterable[FirstUseRow] | None, records: ChainRecords, verified: VerifiedRange
) -> TableCheck:
    """Compare the registry's ``recipient_first_use`` rows (the grandfathering evidence) with
    the newest chained ``grant.first_use`` entry per (grant, recipient): ``first_used_at`` must
    equal the entry's. A row without its entry (one ``INSERT`` with an old date, findings
    F3 / G11), and a chained first use of the current registry (:func:`registry_start`) whose
    row is gone although its grant was not purged, are discrepancies. Entries must lie in
    ``verified`` (and under its signed count, when set)."""
    table = "recipient_first_use"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[tuple[str, str]] = set()
    listed = list(rows or ())
    for r in listed:
        key = (r.grant_id, r.recipient)
        seen.add(key)
        e = records.first_uses.get(key)
        if e is None:
            found.append(
                Discrepancy(table, _pair(key), "first_used_at", _text(r.first_used_at), None)
            )
            continue
        before = len(found)
        found.extend(_chain_problems(table, _pair(key), e, verified))
        chained = _chain_time(e.payload.get("first_used_at"))
        if _utc(r.first_used_at) != chained:
            found.append(
                Discrepancy(
                    table,
                    _pair(key),
                    "first_used_at",
                    _text(r.first_used_at),
                    _text(chained),
                    e.seq,
                )
            )
        matched += len(found) == before
    start = registry_start(records, verified)
    purged = _purged_after(records)
    for key, e in sorted(records.first_uses.items()):
        if key not in seen and e.seq >= start and purged.get(key[0], 0) < e.seq:
            found.append(
                Discrepancy(
                    table,
                    _pair(key),
                    "first_used_at",
                    None,
                    _text(_chain_time(e.payload.get("first_used_at"))),
                    e.seq,
                )
            )
    return TableCheck(
        table, len(listed), len(records.first_uses), matched, tuple(found), (), rows is not None
    )


def _keys(value: Any) -> str | None:
    """A chained or stored list of keys as the text compared (sorted, comma-joined)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return ",".join(sorted(str(v) for v in value))
    return str(value)


def check_consents(
    rows: Iterable[ConsentRow] | None, records: ChainRecords, verified: VerifiedRange
) -> TableCheck:
    """Compare the registry's ``separate_consents`` rows (PIPL Art. 23 consents) with the
    newest chained ``grant.separate_consent`` entry per (grant, recipient): ``consent_id`` ↔
    ``consent``, ``evidence``, ``purposes``, ``method``, ``categories`` and ``given_at`` (when
    the entry records it; entries written before it did are compared on the rest). The
    withdrawal must match the chain too: a ``grant.consent_withdrawn`` entry after the consent
    requires ``withdrawn_at`` set (to the entry's ``withdrawn_at`` when recorded), and a
    ``withdrawn_at`` needs that entry. Both directions, as :func:`check_first_uses`."""
    table = "separate_consents"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[tuple[str, str]] = set()
    listed = list(rows or ())
    for r in listed:
        key = (r.grant_id, r.recipient)
        name = _pair(key)
        seen.add(key)
        e = records.consents.get(key)
        if e is None:
            found.append(Discrepancy(table, name, "given_at", _text(r.given_at), None))
            continue
        before = len(found)
        found.extend(_chain_problems(table, name, e, verified))
        p = e.payload
        fields: list[tuple[str, Any, Any]] = [
            ("consent_id", r.consent_id, p.get("consent")),
            ("evidence", r.evidence, p.get("evidence")),
            ("purposes", _keys(r.purposes), _keys(p.get("purposes"))),
            ("method", r.method, p.get("method")),
            ("categories", _keys(r.categories), _keys(p.get("categories"))),
        ]
        if "given_at" in p:
            fields.append(("given_at", _utc(r.given_at), _chain_time(p.get("given_at"))))
        found.extend(_field_discrepancies(table, name, fields, e.seq))
        w = records.withdrawals.get(key)
        if w is not None and w.seq < e.seq:
            w = None  # a withdrawal of an earlier consent, replaced since
        if w is not None:
            found.extend(_chain_problems(table, name, w, verified))
            when = _chain_time(w.payload.get("withdrawn_at"))
            shown = _text(when) if when is not None else "withdrawn"
            if r.withdrawn_at is None or (when is not None and _utc(r.withdrawn_at) != when):
                found.append(
                    Discrepancy(table, name, "withdrawn_at", _text(r.withdrawn_at), shown, w.seq)
                )
        elif r.withdrawn_at is not None:
            found.append(Discrepancy(table, name, "withdrawn_at", _text(r.withdrawn_at), None))
        matched += len(found) == before
    start = registry_start(records, verified)
    purged = _purged_after(records)
    for key, e in sorted(records.consents.items()):
        if key not in seen and e.seq >= start and purged.get(key[0], 0) < e.seq:
            found.append(
                Discrepancy(
                    table, _pair(key), "given_at", None, _text(e.payload.get("consent")), e.seq
                )
            )
    return TableCheck(
        table, len(listed), len(records.consents), matched, tuple(found), (), rows is not None
    )


def _issued_kind(e: AuditEntry, token_id: str) -> str | None:
    """The kind the issuing entry ``e`` records for ``token_id`` (``None``: not recorded)."""
    p = e.payload
    tokens = p.get("tokens")
    if isinstance(tokens, Mapping) and token_id in tokens:
        kind = tokens[token_id]
        return kind if isinstance(kind, str) else None
    for name in ("token_kind", "kind"):
        kind = p.get(name)
        if isinstance(kind, str):
            return kind
    return None


def check_tokens(
    rows: Iterable[TokenRow] | None, records: ChainRecords, verified: VerifiedRange
) -> TableCheck:
    """Compare the registry's ``oauth_tokens`` rows -- ids, grant, kind and status only, never
    a digest or ciphertext -- with the chain: each token needs the entry that issued it
    (:attr:`ChainRecords.tokens_issued`) naming the same grant (and kind, when recorded); its
    status must be ``revoked`` when a chained rotation or revocation names it or a chained
    ``grant.quarantined`` of its grant follows its issue, ``active`` otherwise (a revoked
    token flipped back to ``active`` by hand is caught). A chained token of the current
    registry (:func:`registry_start`) whose row is gone, while neither a ``grant.purged_tokens``
    nor a ``grant.purged`` of its grant follows, is a discrepancy too."""
    table = "oauth_tokens"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[str] = set()
    listed = list(rows or ())
    for r in listed:
        seen.add(r.token_id)
        e = records.tokens_issued.get(r.token_id)
        if e is None:
            found.append(Discrepancy(table, r.token_id, "grant_id", r.grant_id, None))
            continue
        before = len(found)
        found.extend(_chain_problems(table, r.token_id, e, verified))
        gid = e.payload.get("grant")
        if r.grant_id != gid:
            found.append(Discrepancy(table, r.token_id, "grant_id", r.grant_id, _text(gid), e.seq))
        kind = _issued_kind(e, r.token_id)
        if kind is not None and r.kind != kind:
            found.append(Discrepancy(table, r.token_id, "kind", r.kind, kind, e.seq))
        revoking = records.tokens_revoked.get(r.token_id)
        quarantine = records.quarantines.get(r.grant_id)
        if revoking is None and quarantine is not None and quarantine.seq > e.seq:
            revoking = quarantine
        if revoking is not None:
            found.extend(_chain_problems(table, r.token_id, revoking, verified))
            if r.status != "revoked":
                found.append(
                    Discrepancy(
                        table,
                        r.token_id,
                        "status",
                        r.status,
                        f"revoked ({revoking.kind})",
                        revoking.seq,
                    )
                )
        elif r.status != "active":
            found.append(Discrepancy(table, r.token_id, "status", r.status, "active", e.seq))
        matched += len(found) == before
    start = registry_start(records, verified)
    purged = _purged_after(records)
    for tid, e in sorted(records.tokens_issued.items()):
        gid = e.payload.get("grant")
        if tid in seen or e.seq < start or not isinstance(gid, str):
            continue
        wiped = records.token_purges.get(gid)
        if (wiped is not None and wiped.seq > e.seq) or purged.get(gid, 0) > e.seq:
            continue
        found.append(Discrepancy(table, tid, "grant_id", None, gid, e.seq))
    return TableCheck(
        table, len(listed), len(records.tokens_issued), matched, tuple(found), (), rows is not None
    )


def _transfer_entry_fields(e: AuditEntry) -> dict[str, Any]:
    """The ``transfer_attempts`` fields a ``grant.transfer`` entry records, derived as
    :meth:`provguard.grants.transfer.TransferGate` derives the row from the same decision
    (``decision.as_dict()``): ``excepted`` = a permit with an ``excepted`` reason; the deciding
    rule = the first ``applied`` deny reason of a deny, else the first reason; ``at`` = the
    decision's ``request.at`` (``None`` when the entry does not record it)."""
    p = e.payload
    decision = p.get("decision") if isinstance(p.get("decision"), Mapping) else {}
    assert isinstance(decision, Mapping)
    reasons = [r for r in decision.get("reasons") or () if isinstance(r, Mapping)]
    effect = decision.get("effect")
    if effect == "deny":
        top = next(
            (r for r in reasons if r.get("effect") == "deny" and r.get("outcome") == "applied"),
            None,
        )
    else:
        top = reasons[0] if reasons else None
    request = decision.get("request") if isinstance(decision.get("request"), Mapping) else {}
    assert isinstance(request, Mapping)
    return {
        "grant_id": p.get("grant"),
        "kind": p.get("kind"),
        "from_app": p.get("from"),
        "to_app": p.get("to"),
        "at": _chain_time(request.get("at")),
        "effect": effect,
        "excepted": effect == "permit" and any(r.get("outcome") == "excepted" for r in reasons),
        "rule_id": top.get("rule") if top is not None else None,
        "instrument_id": top.get("instrument") if top is not None else None,
    }


def check_transfer_attempts(
    rows: Iterable[TransferAttemptRow] | None, records: ChainRecords, verified: VerifiedRange
) -> TableCheck:
    """Compare the registry's ``transfer_attempts`` rows (section 3a's token exchanges by
    outcome and deciding rule) with the chained ``grant.transfer`` entry of each attempt
    (:attr:`ChainRecords.grant_transfers`, key the attempt id): ``grant_id`` ↔ ``grant``,
    ``kind``, ``from_app`` ↔ ``from``, ``to_app`` ↔ ``to``, ``effect``, ``excepted``,
    ``rule_id``, ``instrument_id`` and ``at`` as :func:`_transfer_entry_fields` derives them
    from the entry's ``decision`` (``at`` only when recorded). Fresh user 11, H3: one
    ``UPDATE transfer_attempts SET effect='deny'`` turned 8 grandfathered exchanges into
    denials while section 6 called 3a chain-backed. Both directions: a row without its entry,
    and a chained attempt of the current registry (:func:`registry_start`) whose row is gone
    (attempts are never deleted, not even by a purge). Entries must lie in ``verified`` (and
    under its signed count, when set)."""
    table = "transfer_attempts"
    found: list[Discrepancy] = []
    matched = 0
    seen: set[str] = set()
    listed = list(rows or ())
    for r in listed:
        seen.add(r.attempt_id)
        e = records.grant_transfers.get(r.attempt_id)
        if e is None:
            found.append(Discrepancy(table, r.attempt_id, "effect", r.effect, None))
            continue
        before = len(found)
        found.extend(_chain_problems(table, r.attempt_id, e, verified))
        want = _transfer_entry_fields(e)
        have: dict[str, Any] = {
            "grant_id": r.grant_id,
            "kind": r.kind,
            "from_app": r.from_app,
            "to_app": r.to_app,
            "at": _utc(r.at) if want["at"] is not None else None,
            "effect": r.effect,
            "excepted": bool(r.excepted),
            "rule_id": r.rule_id,
            "instrument_id": r.instrument_id,
        }
        pairs = ((name, value, want[name]) for name, value in have.items())
        found.extend(_field_discrepancies(table, r.attempt_id, pairs, e.seq))
        matched += len(found) == before
    start = registry_start(records, verified)
    for aid, e in sorted(records.grant_transfers.items()):
        if aid not in seen and e.seq >= start:
            effect = _transfer_entry_fields(e)["effect"]
            found.append(Discrepancy(table, aid, "effect", None, _text(effect), e.seq))
    return TableCheck(
        table,
        len(listed),
        len(records.grant_transfers),
        matched,
        tuple(found),
        (),
        rows is not None,
    )


def crosscheck_registry(
    tables: RegistryTables,
    entries: ChainRecords | Iterable[AuditEntry],
    verified: VerifiedRange,
) -> CrossCheckResult:
    """Check the grant registry (``grants.db``, :data:`REGISTRY_TABLES`: ``oauth_grants``,
    ``revocation_jobs``, ``recipient_first_use``, ``separate_consents``, ``oauth_tokens``,
    ``transfer_attempts``) against the ``grant.*`` events of the chain (:func:`check_grants`,
    :func:`check_revocations`, :func:`check_first_uses`, :func:`check_consents`,
    :func:`check_tokens`, :func:`check_transfer_attempts`). Pure; O(rows + entries).
    ``provguard audit verify`` runs it when a registry is beside the log (or named with
    ``--grant-db``), as do ``check_store``, ``provguard report --store`` and the dashboard."""
    records = entries if isinstance(entries, ChainRecords) else ChainRecords.of(entries)
    return CrossCheckResult(
        (
            check_grants(tables.grants, records, verified),
            check_revocations(tables.revocations, records, verified),
            check_first_uses(tables.first_uses, records, verified),
            check_consents(tables.consents, records, verified),
            check_tokens(tables.tokens, records, verified),
            check_transfer_attempts(tables.transfer_attempts, records, verified),
        )
    )
