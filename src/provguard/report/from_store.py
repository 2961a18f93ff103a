"""Rebuild the compliance report's view model from an output folder's stores.

``provguard report --store DIR`` and the HTTP service's dashboard use this: it reads

* ``control.db`` -- instruments (their stored source), rules, instrument events, transfers, and
  the hash-chained audit log (every ``decision`` entry is tallied per rule / app / purpose /
  action / effect, and per time bucket of audit time; the chain is verified; the newest signed
  checkpoint is shown, compared with the log's entry at its count, and its Ed25519 signature
  checked with the public key given, else with ``audit.pub`` beside the log when it is there --
  the same file ``provguard audit verify`` uses, :func:`provguard.audit.folder.evidence_beside`);
* ``data/profile_scan.parquet`` -- the profile-match scan (found counts per app);
* the grant registry (``grants.db``, or ``control.db`` when it holds the registry, or the
  ``grant_db`` given) -- sign-ins by provider and client app, token exchanges by outcome and
  deciding rule, revocation jobs (:mod:`provguard.grants.views`).

Before the model is filled, the control store's ``instrument_events``, ``transfers`` and
``campaigns`` tables (and ``rules`` and ``instruments`` against the run's ``job.policy``
entry) are cross-checked against the chain (:mod:`provguard.audit.crosscheck`,
entries collected in the same pass that tallies decisions): a section whose table disagrees is
withheld -- its figures are replaced by a PG340 statement naming the discrepancies
(:func:`withhold`) -- and section 6 says which sections are chain-backed.

Sections that live in no store -- the recommendation-quality evaluation, the sandbox's ground
truth of copies, the data-source description -- are carried over from the folder's previous
``evidence.json`` when it exists, else reported "not run". Since fresh user 10's H3 they, and
the scan read from ``data/profile_scan.parquet``, must be chain-backed: the run appends a
``job.report`` entry recording the digest of its ``evidence.json`` report and the SHA-256 of the
scan and recommendation files (:mod:`provguard.report.anchor`), and the newest such entry of the
latest run in the verified (and, with a key, signed) chain must record exactly the digests
recomputed now. Then they are carried over and a note names the entry and the recomputed digest
(never the digest the file states); else -- a file changed after the run, or a log with no such
entry -- the sections built from that file are withheld (a PG340 line at the section, the file's
row and discrepancy in section 6), and an unanchored evidence.json's title and notes are not
copied.

:class:`DecisionTally` is incremental (it reads only entries after the last seq it saw), so a
live dashboard re-reads a 10^5-entry log once and then only what is new.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy import create_engine, func, inspect, literal_column, select
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters import campaign_sqlite as cq
from provguard.adapters import control_sqlite as cs
from provguard.adapters.audit_sqlite import SqliteAuditLog, audit_log_table
from provguard.adapters.control_sqlite import read_registry, read_store_tables
from provguard.adapters.grant_store import revocation_jobs
from provguard.adapters.sql_engine import store_url
from provguard.audit.chain import AuditEntry, Checkpoint, VerifyResult, verify_chain
from provguard.audit.crosscheck import (
    CAMPAIGN_OPERATION_KINDS,
    CHECKED_TABLES,
    INSTRUMENTS_SECTION,
    REGISTRY_TABLES,
    RULES_SECTION,
    ChainRecords,
    CrossCheckResult,
    Discrepancy,
    VerifiedRange,
    crosscheck,
    crosscheck_registry,
)
from provguard.audit.folder import PUBLIC_KEY_FILE, evidence_beside
from provguard.audit.records import tally_keys
from provguard.audit.signing import (
    CheckpointSignatureError,
    SignedCheckpoint,
    key_id,
    load_public_key,
    verify_signed_checkpoint,
)
from provguard.campaign.chained import RESCAN_KIND, comparison_note
from provguard.campaign.model import STATES as CAMPAIGN_STATES
from provguard.errors import StoreError
from provguard.grants.views import GrantViews
from provguard.policy.model import EventEnd, Instrument
from provguard.report.anchor import (
    ANCHORED_SECTIONS,
    EVIDENCE_FILE,
    RECOMMENDATIONS_FILE,
    REPORT_ENTRY_KIND,
    SCAN_FILE,
    ReportEntry,
    check_files,
    evidence_match,
    evidence_report_digest,
    find_report_entry,
)
from provguard.report.audit_text import (
    AUDIT_OFF_KIND,
    audit_off_sentence,
    audit_off_view,
    service_count_phrase,
)
from provguard.report.model import (
    AuditOffView,
    AuditSummary,
    CampaignPoint,
    CampaignProgress,
    ChainCheckView,
    CheckpointView,
    DataSource,
    DecisionCount,
    DiscrepancyView,
    ExchangeOutcome,
    InstrumentView,
    PolicyRecordView,
    RecommendationSummary,
    ReportModel,
    RevocationRow,
    RevocationSummary,
    RuleView,
    ScanRow,
    SignInRow,
    SignInSummary,
    TableCheckView,
    TimeBucket,
    TokenExchangeRow,
    TransferSample,
    TransferSummary,
)

__all__ = [
    "RUN_END_KIND",
    "DecisionTally",
    "StoreReader",
    "build_model_from_store",
    "chain_check_view",
    "policy_view",
    "rule_scopes",
    "verified_range",
    "withhold",
]

TallyKey = tuple[str | None, str, str | None, str, str]


def count_rows(counts: Counter[TallyKey]) -> tuple[DecisionCount, ...]:
    """Tally counts as report rows (purpose ``None`` → ``"(none)"``), sorted by key."""
    return tuple(
        DecisionCount.model_validate(
            {
                "rule_id": k[0],
                "app": k[1],
                "purpose": k[2] or "(none)",
                "action": k[3],
                "effect": k[4],
                "count": n,
            }
        )
        for k, n in sorted(counts.items(), key=lambda kv: (str(kv[0]), kv[1]))
    )


def _bucket_seconds(span: timedelta) -> int:
    """A bucket width giving at most ~60 columns over ``span``."""
    for width in (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 6 * 3600, 86400, 7 * 86400):
        if span.total_seconds() / width <= 60:
            return width
    return 30 * 86400


RUN_END_KIND = "campaign"
"""The entry kind ``provguard run`` appends last, after its decisions: it closes a job run."""


@dataclass
class _Part:
    """Counts of one group of decision entries (a job run, or the service's decisions)."""

    counts: Counter[TallyKey] = field(default_factory=Counter)
    per_second: Counter[tuple[int, str]] = field(default_factory=Counter)
    request_days: Counter[str] = field(default_factory=Counter)
    decisions: int = 0
    first_seq: int = 0
    last_seq: int = 0

    def add(self, e: AuditEntry, keys: list[TallyKey]) -> None:
        self.decisions += 1
        self.first_seq = self.first_seq or e.seq
        self.last_seq = e.seq
        for key in keys:
            self.counts[key] += 1
        self.per_second[(int(e.at.timestamp()), keys[0][4])] += 1
        request = e.payload.get("request")
        if isinstance(request, Mapping) and isinstance(request.get("at"), str):
            self.request_days[request["at"][:10]] += 1


@dataclass
class DecisionTally:
    """Counts of ``decision`` entries: per (rule, app, purpose, action, effect) key and per
    audit-time second (UTC epoch second, effect). ``last_seq`` is the last entry read;
    ``request_days`` counts the decision dates (``request.at``) seen, to infer "as of".

    **Several runs in one folder.** Every ``provguard run`` over the same output folder appends
    its decisions to the same chain again, so summing the whole log would count the job's
    decisions once per run. The tally therefore keeps job decisions *per run* -- a run is the
    block of job decisions (``stage`` other than ``"service"``) closed by the ``campaign``
    entry the job appends last -- and the report counts the **latest run** only (the one still
    open, if job decisions follow the last ``campaign`` entry). The decisions the HTTP service
    made (``stage == "service"``: each a real request, evaluated at its own time, some on facts
    the caller asserted) are counted **apart** (``service_*``): they are not the run's figures
    as of its date, and the report shows them in their own table. Earlier runs stay in the chain
    as evidence; ``runs`` and ``counted_seqs`` say what was counted.
    """

    last_seq: int = 0
    runs: int = 0
    service: _Part = field(default_factory=_Part)
    current: _Part = field(default_factory=_Part)
    previous: _Part = field(default_factory=_Part)
    #: the entries the store cross-check compares (instrument events, transfer-audit
    #: decisions, campaign records), newest per key, collected in the same pass
    records: ChainRecords = field(default_factory=ChainRecords)
    #: the ``service.audit_off`` entries read (HTTP service periods answered unrecorded)
    audit_off: list[AuditOffView] = field(default_factory=list)

    def add(self, entries: Iterable[AuditEntry]) -> int:
        """Tally ``entries`` (non-decision entries are skipped); returns how many were read."""
        n = 0
        for e in entries:
            n += 1
            self.last_seq = e.seq
            self.records.add(e)
            if e.kind == AUDIT_OFF_KIND:
                self.audit_off.append(audit_off_view(e))
                continue
            if e.kind == RUN_END_KIND:
                if self.current.decisions:
                    self.previous, self.current = self.current, _Part()
                self.runs += 1
                continue
            if e.kind != "decision":
                continue
            keys = tally_keys(e.payload)
            if keys is None:
                continue
            part = self.service if e.payload.get("stage") == "service" else self.current
            part.add(e, keys)
        return n

    def refresh(self, log: SqliteAuditLog) -> int:
        """Read the entries appended since the last call; returns how many."""
        return self.add(log.entries(start=self.last_seq + 1))

    def _parts(self) -> tuple[_Part, _Part]:
        job = self.current if self.current.decisions else self.previous
        return job, self.service

    @property
    def counts(self) -> Counter[TallyKey]:
        """Counted decisions per key of the latest job run (the service's: ``service_counts``)."""
        job, _ = self._parts()
        return Counter(job.counts)

    @property
    def service_counts(self) -> Counter[TallyKey]:
        """The HTTP service's decisions per key (every one in the log)."""
        return Counter(self.service.counts)

    @property
    def per_second(self) -> Counter[tuple[int, str]]:
        job, service = self._parts()
        return job.per_second + service.per_second

    @property
    def request_days(self) -> Counter[str]:
        """The latest job run's decision dates (the service's requests carry their own)."""
        job, _ = self._parts()
        return Counter(job.request_days)

    @property
    def decisions(self) -> int:
        """Decision entries counted (latest job run + service)."""
        job, service = self._parts()
        return job.decisions + service.decisions

    @property
    def counted_seqs(self) -> tuple[int, int] | None:
        """``(first, last)`` seq of the job run counted, or ``None`` when there is none."""
        job, _ = self._parts()
        return (job.first_seq, job.last_seq) if job.decisions else None

    def decision_counts(self) -> tuple[DecisionCount, ...]:
        """The latest job run's counts as report rows, sorted (:func:`count_rows`)."""
        return count_rows(self.counts)

    def service_decision_counts(self) -> tuple[DecisionCount, ...]:
        """The HTTP service's counts as report rows, sorted."""
        return count_rows(self.service_counts)

    def buckets(self) -> tuple[TimeBucket, ...]:
        """Per-effect counts in equal buckets from the first to the last decision (empty
        buckets included, so the x axis is linear in time)."""
        if not self.per_second:
            return ()
        seconds = [s for s, _ in self.per_second]
        lo, hi = min(seconds), max(seconds)
        width = _bucket_seconds(timedelta(seconds=hi - lo))
        start = lo - lo % width
        n = (hi - start) // width + 1
        acc = [dict(permit=0, deny=0, not_applicable=0) for _ in range(n)]
        for (sec, effect), count in self.per_second.items():
            acc[(sec - start) // width][effect] += count
        return tuple(
            TimeBucket(start=datetime.fromtimestamp(start + i * width, UTC), seconds=width, **cell)
            for i, cell in enumerate(acc)
        )

    def as_of(self) -> date | None:
        """The most common decision date, or ``None`` when nothing was tallied."""
        if not self.request_days:
            return None
        return date.fromisoformat(self.request_days.most_common(1)[0][0])


class StoreReader:
    """Reads an output folder (see :mod:`provguard.wiring`) for the report; keeps a
    :class:`DecisionTally` so repeated :meth:`model` calls read only new audit entries.

    The chain is verified in full on the first call and then at most every
    ``full_verify_every`` seconds; in between only the newly appended entries are verified
    against the last verified head (a live dashboard stays cheap; ``provguard audit verify``
    and ``GET /v1/audit/verify`` always verify in full).

    ``grant_db``: the grant registry (URL or SQLite file) when it is not in the folder
    (``provguard serve --grant-db``); by default ``control.db`` or ``grants.db`` of the folder
    (:func:`provguard.grants.views.find_registry`).

    ``public_key`` checks the newest signed checkpoint's signature (``public_key_file``: the
    name the report gives that key, e.g. the path passed to ``--public-key``); without one,
    ``audit.pub`` beside the log is loaded and used when it exists and ``beside`` is true
    (:data:`provguard.audit.folder.PUBLIC_KEY_FILE`), as ``provguard audit verify`` does.

    Raises :class:`StoreError` when ``root/control.db`` is missing or unreadable, and
    :class:`~provguard.errors.AuditError` (``PG300``) when ``audit.pub`` beside it is not an
    Ed25519 PEM public key.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        public_key: Ed25519PublicKey | None = None,
        full_verify_every: float = 300.0,
        grant_db: str | None = None,
        public_key_file: str | None = None,
        beside: bool = True,
    ) -> None:
        self.root = Path(root)
        db = self.root / "control.db"
        if not db.is_file():
            raise StoreError(f"no control store at {db} (run 'provguard run --out {self.root}')")
        key_file = (public_key_file or "the public key given") if public_key is not None else None
        if public_key is None and beside:
            found = evidence_beside(db).public_key
            if found is not None:  # read before any connection is opened: nothing to release
                public_key, key_file = load_public_key(found), PUBLIC_KEY_FILE
        self.log = SqliteAuditLog(db, create=False)
        self.engine = create_engine(f"sqlite+pysqlite:///{db.resolve()}")
        self.public_key = public_key
        self.public_key_file = key_file
        self.tally = DecisionTally()
        self._report_entries: list[AuditEntry] = []  # job.report entries read so far
        self._report_seen = 0  # the last seq read for them
        self._verified: VerifyResult | None = None
        self._verified_at_count = -1
        self._full_verify_at = 0.0
        self.full_verify_every = full_verify_every
        self.grant_db = grant_db
        self.grants = GrantViews.of_folder(self.root, grant_db)

    def close(self) -> None:
        """Release the database connections."""
        self.log.close()
        self.engine.dispose()
        self.grants.close()

    # ------------------------------------------------------------------------------- sections

    def _rows(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).all())
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read {self.root / 'control.db'}: {exc}") from exc

    def instruments(
        self,
        as_of: datetime,
        summaries: Mapping[str, str] | None = None,
        scopes: Mapping[str, str] | None = None,
    ) -> tuple[InstrumentView, ...]:
        """Stored instruments (their source JSON) with their rules, in force at ``as_of``;
        ``summaries`` (rule id → plain-words summary) replaces the stored machine summary as the
        rule's description. ``scopes`` (``instrument/rule`` → machine scope, from the run's
        chained ``job.policy`` entry, :func:`rule_scopes`) gives each rule's :attr:`RuleView.scope`;
        ``None`` (the log has no such entry): the stored ``rules.summary``, not chain-backed. A
        stored rule the entry does not list gets no scope (the cross-check names it)."""
        summaries = summaries or {}
        events = {
            (r.instrument_id, r.event): r.on_date for r in self._rows(select(cs.instrument_events))
        }
        rules: dict[str, list[RuleView]] = {}
        for r in self._rows(select(cs.rules).order_by(literal_column("rowid"))):
            rules.setdefault(r.instrument_id, []).append(
                RuleView(
                    rule_id=r.rule_id,
                    effect=r.effect,
                    summary=summaries.get(r.rule_id, r.summary),
                    scope=r.summary
                    if scopes is None
                    else scopes.get(f"{r.instrument_id}/{r.rule_id}"),
                )
            )
        out: list[InstrumentView] = []
        for row in self._rows(select(cs.instruments.c.source).order_by(cs.instruments.c.id)):
            try:
                inst = Instrument.model_validate_json(row.source)
            except ValidationError as exc:
                raise StoreError(f"a stored instrument does not parse: {exc}") from exc
            out.append(instrument_view(inst, as_of, events, tuple(rules.get(inst.id, ()))))
        return tuple(out)

    def transfers(self) -> TransferSummary | None:
        """Transfer outcomes from the ``transfers`` table (``None`` when it is empty)."""
        t = cs.transfers
        rows = self._rows(
            select(t.c.transfer_id, t.c.subject_id, t.c.first_used_at, t.c.decision)
            .add_columns(t.c.rule_id, t.c.excepted, t.c.to_app)
            .order_by(literal_column("rowid"))  # insertion order, as the job wrote them
        )
        if not rows:
            return None
        outcome = Counter((r.decision, bool(r.excepted)) for r in rows)
        sample = [r for r in rows if r.decision == "deny"][:5] + [r for r in rows if r.excepted][:5]
        return TransferSummary(
            total=len(rows),
            denied=outcome[("deny", False)],
            grandfathered_permitted=outcome[("permit", True)],
            not_applicable=outcome[("not_applicable", False)],
            sample=tuple(
                TransferSample(
                    transfer_id=r.transfer_id,
                    subject=f"subject {r.subject_id}",
                    first_used_at=(
                        r.first_used_at.replace(tzinfo=UTC)
                        if r.first_used_at is not None and r.first_used_at.tzinfo is None
                        else r.first_used_at
                    ),
                    decision=r.decision or "not_applicable",
                    rule=r.rule_id,
                    recipient=r.to_app,
                )
                for r in sample
            ),
        )

    def revocations(self, now: datetime) -> RevocationSummary | None:
        """Revocation jobs of the grant registry (``revocation_jobs``), read from ``control.db``
        when the registry shares it, else from ``grants.db`` in the folder; ``None`` when
        neither holds the table (or from the ``grant_db`` given). ``now`` decides what is
        overdue."""
        places: list[str] = (
            [self.grant_db]
            if self.grant_db
            else [
                str(p) for p in (self.root / "control.db", self.root / "grants.db") if p.is_file()
            ]
        )
        for path in places:
            views = GrantViews(None, path)
            shown = views.registry_source or path
            views.close()
            engine = create_engine(store_url(path))
            try:
                with engine.connect() as conn:
                    if not inspect(conn).has_table("revocation_jobs"):
                        continue
                    rows = conn.execute(
                        select(revocation_jobs).order_by(
                            revocation_jobs.c.requested_at.desc(), revocation_jobs.c.job_id
                        )
                    ).all()
            except SQLAlchemyError as exc:
                raise StoreError(
                    f"cannot read revocation jobs in {shown}: {type(exc).__name__}"
                ) from exc
            finally:
                engine.dispose()
            return _revocation_summary(rows, now, shown)
        return None

    def sign_ins(self, now: datetime) -> SignInSummary | None:
        """The grant registry's sign-ins by provider and client app and its token exchanges by
        outcome and deciding rule (:class:`SignInSummary`), read at ``now``; ``None`` when the
        folder has no registry (see :func:`provguard.grants.views.find_registry`)."""
        rows = self.grants.sign_ins()
        if rows is None:
            return None
        exchanges = [
            TokenExchangeRow(
                from_app=e["from_app"],
                to_app=e["to_app"],
                kind=e["kind"],
                outcome=_exchange_outcome(e["effect"], e["excepted"]),
                rule_id=e["rule_id"],
                instrument_id=e["instrument_id"],
                count=e["count"],
            )
            for e in self.grants.exchanges()
        ]
        order = {"denied": 0, "grandfathered": 1, "permitted": 2, "not_applicable": 3}
        return SignInSummary(
            source=self.grants.registry_source or "",
            as_of_time=now,
            sign_ins=tuple(SignInRow.model_validate(r) for r in rows),
            exchanges=tuple(
                sorted(exchanges, key=lambda x: (x.from_app, x.to_app, x.kind, order[x.outcome]))
            ),
        )

    def campaigns(self) -> tuple[CampaignProgress, ...] | None:
        """Campaigns in ``control.db`` with their state counts and progress history (``None``
        when the folder has no campaign tables)."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("campaigns"):
                    return None
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read {self.root / 'control.db'}: {exc}") from exc
        c, t, p = cq.campaigns, cq.targets, cq.progress
        counts: dict[str, Counter[str]] = {}
        for r in self._rows(
            select(t.c.campaign_id, t.c.state, func.count()).group_by(t.c.campaign_id, t.c.state)
        ):
            counts.setdefault(r[0], Counter())[r[1]] = int(r[2])
        snapshots: dict[str, list[tuple[int, Any]]] = {}
        for r in self._rows(select(p).order_by(p.c.seq)):
            snapshots.setdefault(r.campaign_id, []).append((int(r.seq), r))
        backing = self._campaign_backing(snapshots)
        notes = self._rescan_notes()
        history: dict[str, list[CampaignPoint]] = {
            cid: [
                CampaignPoint(
                    at=_aware(r.at),
                    operation=r.operation,
                    counts=json.loads(r.counts),
                    chained_seq=backing.get(seq),
                    basis=notes.get(backing[seq]) if seq in backing else None,
                )
                for seq, r in rows
            ]
            for cid, rows in snapshots.items()
        }
        return tuple(
            CampaignProgress(
                campaign_id=r.campaign_id,
                rule_id=r.rule_id,
                instrument_id=r.instrument_id,
                created_at=_aware(r.created_at),
                states={s: counts.get(r.campaign_id, Counter())[s] for s in CAMPAIGN_STATES},
                history=tuple(history.get(r.campaign_id, ())),
            )
            for r in self._rows(select(c).order_by(c.c.created_at, c.c.campaign_id))
        )

    def _rescan_notes(self) -> dict[int, str]:
        """Audit seq of a chained ``campaign.rescan`` entry -> what section 3c says about its
        comparison basis (:func:`provguard.campaign.chained.comparison_note`), for the entries
        that compared an unattested profiles file or accepted a new export."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("audit_log"):
                    return {}
                rows = conn.execute(
                    select(audit_log_table.c.seq, audit_log_table.c.payload).where(
                        audit_log_table.c.kind == RESCAN_KIND
                    )
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read {self.root / 'control.db'}: {exc}") from exc
        out: dict[int, str] = {}
        for seq, text in rows:
            try:
                payload = json.loads(text)
            except ValueError:
                continue
            note = comparison_note(payload) if isinstance(payload, dict) else None
            if note is not None:
                out[int(seq)] = note
        return out

    def _campaign_backing(self, snapshots: Mapping[str, list[tuple[int, Any]]]) -> dict[int, int]:
        """``campaign_progress`` seq -> seq of the chained entry that records that snapshot
        (section 3c's "chained" mark). A ``campaign.start`` / ``dispatch`` / ``rescan`` entry
        names its snapshot (``progress_seq``); the job's ``campaign`` entry the snapshots its
        run wrote (``progress``: first and last seq); a job entry from before it recorded them
        backs the newest earlier snapshot whose counts equal its ``states``. Entries come from
        the log as stored: the cross-check (:func:`provguard.audit.crosscheck.check_campaigns`)
        decides whether 3c is shown at all."""
        kinds = (RUN_END_KIND, *CAMPAIGN_OPERATION_KINDS)
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("audit_log"):
                    return {}
                rows = conn.execute(
                    select(audit_log_table.c.seq, audit_log_table.c.payload)
                    .where(audit_log_table.c.kind.in_(kinds))
                    .order_by(audit_log_table.c.seq)
                ).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read {self.root / 'control.db'}: {exc}") from exc
        out: dict[int, int] = {}
        legacy: list[tuple[int, str, Mapping[str, Any]]] = []
        for seq, text in rows:
            try:
                payload = json.loads(text)
            except ValueError:
                continue
            if not isinstance(payload, dict):
                continue
            cid = payload.get("campaign_id")
            one, span = payload.get("progress_seq"), payload.get("progress")
            if isinstance(one, int):
                out[one] = int(seq)
            elif (
                isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) for x in span)
            ):
                for s, _ in snapshots.get(str(cid), ()):
                    if span[0] <= s <= span[1]:
                        out[s] = int(seq)
            elif isinstance(cid, str) and isinstance(payload.get("states"), dict):
                legacy.append((int(seq), cid, payload["states"]))
        for seq, cid, states in legacy:
            want = {k: v for k, v in states.items() if v}
            equal = [
                s
                for s, r in snapshots.get(cid, ())
                if s not in out and {k: v for k, v in json.loads(r.counts).items() if v} == want
            ]
            if equal:
                out[equal[-1]] = seq
        return out

    def scan(self, previous: Mapping[str, Any] | None) -> tuple[ScanRow, ...] | None:
        """Scan counts per app from ``data/profile_scan.parquet``; ground truth carried over
        from ``previous`` (the old evidence's report) when it names the same app."""
        path = self.root / "data" / "profile_scan.parquet"
        if not path.is_file():
            return None
        try:
            table = pq.read_table(path)
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        truth: dict[str, Mapping[str, Any]] = {}
        for row in (previous or {}).get("scan") or ():
            if isinstance(row, Mapping) and isinstance(row.get("app"), str):
                truth[row["app"]] = row
        out: list[ScanRow] = []
        apps = sorted(set(table.column("app_id").to_pylist()))
        for app in apps:
            part = table.filter(pc.equal(table.column("app_id"), app))

            def total(name: str, part: Any = part) -> int:
                return int(pc.sum(part.column(name).cast("int64")).as_py() or 0)

            old = truth.get(app, {})
            # the job's matcher verdicts (handle_match / picture_match / copy_match), as the
            # job's own report counts them; files written before those columns fall back
            names = set(table.column_names)
            v3 = {"handle_match", "picture_match", "copy_match"} <= names
            exact = total("handle_exact")
            out.append(
                ScanRow(
                    app=app,
                    profiles_scanned=part.num_rows,
                    handle_exact=exact,
                    handle_normalised=(
                        total("handle_match") - exact if v3 else total("handle_normalized")
                    ),
                    picture=total("picture_match" if v3 else "picture_equal"),
                    either=total("copy_match" if v3 else "any_match"),
                    truth_handle=old.get("truth_handle"),
                    truth_picture=old.get("truth_picture"),
                    truth_either=old.get("truth_either"),
                )
            )
        return tuple(out)

    def audit(self) -> AuditSummary:
        """Chain verification (cached until the log grows) and the newest signed checkpoint."""
        head = self.log.checkpoint()
        now = time.monotonic()
        v = self._verified
        if v is None or not v.ok or now - self._full_verify_at > self.full_verify_every:
            v = self.log.verify()
            self._full_verify_at = now
        elif self._verified_at_count != head.count:
            # only the entries appended since: O(new), linked to the verified head
            v = verify_chain(
                self.log.entries(start=v.count + 1), start=Checkpoint(v.count, v.head_hash)
            )
        self._verified, self._verified_at_count = v, head.count
        stored = self.log.signed_checkpoints()
        view = self.checkpoint_view(stored[-1]) if stored else None
        return AuditSummary(
            entries=v.count,
            head_hash=v.head_hash,
            verify_ok=v.ok,
            reason=v.reason,
            first_bad_seq=v.first_bad_seq,
            log_path=str(self.log.path),
            checkpoint=view,
        )

    def chain_check(self, verified: VerifiedRange) -> CrossCheckResult:
        """Cross-check the control store's tables against the chain entries the tally has
        read (call :meth:`DecisionTally.refresh` first); ``verified``: the seqs verified to be
        in the chain (:func:`verified_range`). Raises :class:`StoreError`."""
        try:
            with self.engine.connect() as conn:
                tables = read_store_tables(conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read {self.root / 'control.db'}: {exc}") from exc
        result = crosscheck(tables, self.tally.records, verified)  # the rules too (job.policy)
        result = with_rules_check(result, self.tally.records)
        registry = self.grants.registry_url
        records = self.tally.records
        if registry is None or not (records.grant_logins or records.revocations):
            # a registry whose events this log never recorded cannot be backed by it: its
            # sections stay listed as not chain-backed
            return result
        # the grant registry feeds sections 3a/3b: checked as `provguard audit verify` checks
        # it, so the report never says "agree" where verify fails (fresh user 9, G13)
        # the tally's records already hold the chain's grant events: no second pass over the
        # log (the dashboard rebuilds this on every refresh)
        extra = crosscheck_registry(read_registry(registry), records, verified)
        not_in_chain = {k: v for k, v in result.not_in_chain.items() if "grants.db" not in k}
        return CrossCheckResult((*result.tables, *extra.tables), not_in_chain)

    def checkpoint_view(self, signed: SignedCheckpoint) -> CheckpointView:
        """The report's view of ``signed``: its Ed25519 signature (RFC 8032) checked with this
        reader's public key when it has one and the key ids match (else ``signature_ok`` is
        ``None``), and its head compared with the log's entry #``count`` (``head_in_log``).
        Raises :class:`StoreError` when the log cannot be read."""
        ok: bool | None = None
        kid: str | None = None
        if self.public_key is not None:
            kid = key_id(self.public_key)
            if kid == signed.key_id:
                try:
                    verify_signed_checkpoint(signed, self.public_key)
                    ok = True
                except CheckpointSignatureError:
                    ok = False
        in_log: bool
        if signed.count == 0:
            in_log = True
        else:
            entry = next(self.log.entries(start=signed.count, limit=1), None)
            in_log = (
                entry is not None and entry.seq == signed.count and entry.hash == signed.head_hash
            )
        return CheckpointView(
            count=signed.count,
            head_hash=signed.head_hash,
            signed_at=signed.signed_at,
            key_id=signed.key_id,
            signature_ok=ok,
            key_file=self.public_key_file,
            public_key_id=kid,
            head_in_log=in_log,
        )

    def previous_evidence(self) -> tuple[dict[str, Any] | None, str | None]:
        """``(report section, digest)`` of ``evidence.json`` if present and readable; the
        digest is recomputed from the report section
        (:func:`~provguard.report.anchor.evidence_report_digest`), never the ``report_sha256``
        the file states (fresh user 10, H3)."""
        path = self.root / EVIDENCE_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None
        report = doc.get("report") if isinstance(doc, dict) else None
        if not isinstance(report, dict):
            return None, None
        return report, evidence_report_digest(doc)

    def report_entry(self, verified: VerifiedRange) -> ReportEntry:
        """The newest ``job.report`` entry of the latest job run the tally counted
        (:func:`~provguard.report.anchor.find_report_entry`), checked against ``verified``.
        Raises :class:`StoreError` when the log cannot be read."""
        # incremental, like the tally: only entries after the last one read (a keyset range
        # on seq), so a live dashboard does not rescan the log on every refresh
        for e in self.log.entries(kind=REPORT_ENTRY_KIND, start=self._report_seen + 1):
            self._report_entries.append(e)
            self._report_seen = e.seq
        self._report_seen = max(self._report_seen, self.tally.last_seq)
        return find_report_entry(self._report_entries, self.tally.counted_seqs, verified)

    # ------------------------------------------------------------------------------- the model

    def model(
        self, *, generated_at: datetime | None = None, as_of: date | None = None
    ) -> ReportModel:
        """The report model of the folder as it is now (see the module docstring)."""
        self.tally.refresh(self.log)
        audit = self.audit()
        verified = verified_range(audit, require_signed=True, key_known=self.public_key is not None)
        checked = self.chain_check(verified)
        # what no store keeps is carried over from evidence.json, and the scan read from its
        # Parquet file, only when the run's job.report entry in the verified, signed chain
        # records exactly these files (fresh user 10, H3); else withheld (section 6)
        found = self.report_entry(verified)
        anchors = check_files(self.root, found)
        failed = {t.table for t in anchors if not t.ok}
        evidence, digest = self.previous_evidence()
        # only an anchored evidence.json is carried over (a rebuilt one that carried nothing
        # has no row: its title and data source are not copied either)
        backed = {t.table for t in anchors if t.ok and t.present}
        previous = evidence if EVIDENCE_FILE in backed else None
        day = as_of or self.tally.as_of() or (generated_at or datetime.now(UTC)).date()
        at = datetime(day.year, day.month, day.day, tzinfo=UTC)
        notes: list[str] = [
            f"Rebuilt from the stores in {self.root}: decisions are tallied from the audit log "
            f"({self.tally.decisions - self.tally.service.decisions:,} decision entries of the"
            " latest job run, "
            f"{service_count_phrase(self.tally.service.decisions, self.tally.audit_off)} made "
            "by the HTTP service and shown apart), transfers, instrument events and "
            "campaigns from the control store after a cross-check of each row against its "
            "chained entry (section 6), the scan from data/profile_scan.parquet, sign-ins, "
            "token exchanges and revocations from the grant registry."
        ]
        # fresh user 12, M2: every period the service answered with its audit off is named
        notes.extend(f"A{audit_off_sentence(v)[1:]}." for v in self.tally.audit_off)
        t = self.tally
        seqs = t.counted_seqs
        if t.runs > 1 and seqs is not None:
            notes.append(
                f"Rebuilt counts: the audit log holds {t.runs} job runs in this folder; the "
                "decision counts are "
                f"those of the latest run (audit entries {seqs[0]:,}-{seqs[1]:,}), so no run is "
                "counted twice. Earlier runs remain in the verified chain."
            )
        data_source = DataSource(graph_name=self.root.name, citation="(not recorded in the stores)")
        recommendations: RecommendationSummary | None = None
        title = "Compliance report"
        summaries: dict[str, str] = {}
        if previous is not None:
            for inst in previous.get("instruments") or ():
                for rule in (inst.get("rules") or ()) if isinstance(inst, dict) else ():
                    if isinstance(rule, dict) and isinstance(rule.get("summary"), str):
                        summaries[str(rule.get("rule_id"))] = rule["summary"]
            try:
                data_source = DataSource.model_validate(previous["data_source"])
                if previous.get("recommendations") is not None:
                    recommendations = RecommendationSummary.model_validate(
                        previous["recommendations"]
                    )
                title = str(previous.get("title") or title)
                backing = (
                    f"job.report entry #{found.seq} of the verified chain records that digest"
                    if evidence_match(self.root, found) == "report"
                    else "it is a report rebuilt from the run's, and job.report entry "
                    f"#{found.seq} of the verified chain records the digest of every part "
                    "carried over"
                )
                notes.append(
                    "Rebuilt with sections carried over: the data source, the "
                    "recommendation-quality evaluation, the scan's ground truth and the rules' "
                    "plain-words summaries come from the earlier evidence.json (report digest "
                    f"{digest}, recomputed from the file); the stores do not keep them. They "
                    f"are chain-backed: {backing} (section 6)."
                )
                notes.extend(
                    str(n) for n in previous.get("notes", ()) if not str(n).startswith("Rebuilt")
                )
            except (KeyError, ValidationError, TypeError):
                notes.append("The earlier evidence.json could not be read; sections not run.")
        elif EVIDENCE_FILE in failed:
            notes.append(
                "Rebuilt without the folder's evidence.json: it is not the report the run "
                "recorded in the audit chain (section 6), so its data source, "
                "recommendation-quality evaluation, scan ground truth, title, notes and rule "
                "summaries are withheld, not carried over."
            )
        if RECOMMENDATIONS_FILE in failed:
            recommendations = None
        not_in_chain = dict(checked.not_in_chain)
        rows = {t.table for t in anchors}
        if SCAN_FILE in rows:
            not_in_chain.pop(SCAN_FILE, None)
        if EVIDENCE_FILE in rows:
            not_in_chain.pop("evidence.json (carried over)", None)
        checked = CrossCheckResult((*checked.tables, *anchors), not_in_chain)
        model = ReportModel(
            title=title,
            generated_at=generated_at or datetime.now(UTC),
            as_of=day,
            data_source=data_source,
            instruments=self.instruments(at, summaries, rule_scopes(self.tally.records.policy)),
            decision_counts=self.tally.decision_counts(),
            service_decision_counts=self.tally.service_decision_counts(),
            transfers=self.transfers(),
            scan=None if SCAN_FILE in failed else self.scan(previous),
            recommendations=recommendations,
            audit=audit,
            notes=tuple(dict.fromkeys(notes)),
            decisions_over_time=self.tally.buckets(),
            revocations=self.revocations(generated_at or datetime.now(UTC)),
            campaigns=self.campaigns(),
            sign_ins=self.sign_ins(generated_at or datetime.now(UTC)),
            policy=policy_view(self.tally.records.policy),
            service_audit_off=tuple(self.tally.audit_off),
        )
        return withhold(model, checked)


def verified_range(
    audit: AuditSummary, *, require_signed: bool = False, key_known: bool = False
) -> VerifiedRange:
    """The entries a chain verification vouches for: all ``audit.entries`` when it verified,
    else those before the first bad entry.

    ``require_signed`` (a report rebuilt from the stores): when a public key checked the
    newest signed checkpoint (or ``key_known`` says a key was there to check one), only the
    entries that checkpoint covers vouch for a table row (``VerifiedRange.signed``: the count
    of a checkpoint whose signature verified and whose head the log holds, else 0), as
    ``provguard audit verify`` requires (finding I-2: unsigned entries appended with real ids
    cannot vouch for an edited table). Without a key nothing more is required."""
    last = audit.entries if audit.verify_ok else min(audit.entries, (audit.first_bad_seq or 1) - 1)
    signed: int | None = None
    if require_signed:
        cp = audit.checkpoint
        if cp is not None and cp.signature_ok is not None:
            signed = cp.count if cp.signature_ok and cp.head_in_log else 0
        elif key_known:
            signed = 0
    return VerifiedRange(1, last, signed)


NO_POLICY_ENTRY = "job.policy (no entry in this log)"
"""The section-6 *not chain-backed* source of a log without a ``job.policy`` entry."""


def with_rules_check(result: CrossCheckResult, records: ChainRecords) -> CrossCheckResult:
    """``result`` (whose :func:`~provguard.audit.crosscheck.crosscheck` compared the control
    store's ``rules`` with the run's chained ``job.policy`` entry) with, for a log without
    such an entry (from before runs recorded their policy), :data:`NO_POLICY_ENTRY` in the
    *not chain-backed* list (section 6): nothing vouches for the rules' scope then."""
    if records.policy is not None:
        return result
    not_in_chain = dict(result.not_in_chain)
    not_in_chain[NO_POLICY_ENTRY] = (
        "1. the policy digest and the rules' enforced scope, and the instruments' title, dates "
        "and status: this audit log has no job.policy entry (a run from before runs recorded "
        "their policy), so they are read from control.db's rules and instruments tables, which "
        "nothing vouches for"
    )
    return CrossCheckResult(result.tables, not_in_chain)


def rule_scopes(entry: AuditEntry | None) -> dict[str, str] | None:
    """``instrument/rule`` → machine scope of the rules a ``job.policy`` entry records
    (``None`` for no entry)."""
    if entry is None:
        return None
    out: dict[str, str] = {}
    for rule in entry.payload.get("rules") or ():
        if isinstance(rule, Mapping) and isinstance(rule.get("scope"), str):
            out[f"{rule.get('instrument')}/{rule.get('id')}"] = str(rule["scope"])
    return out


def policy_view(entry: AuditEntry | None) -> PolicyRecordView:
    """The report's view of a run's ``job.policy`` entry (``recorded=False`` for none)."""
    if entry is None:
        return PolicyRecordView(recorded=False)
    p = entry.payload
    digest = p.get("policy_digest")
    files = p.get("files")
    return PolicyRecordView(
        digest=digest if isinstance(digest, str) else "",
        files={str(k): str(v) for k, v in files.items()} if isinstance(files, Mapping) else {},
        seq=entry.seq,
    )


SHOWN_DISCREPANCIES = 20
"""How many discrepancies the report and its evidence keep (all are counted)."""


_REGISTRY_SECTIONS = REGISTRY_TABLES
"""The grant registry's tables the report cross-checks, and the sections they feed."""

SIGN_IN_TABLES = (
    "oauth_grants",
    "recipient_first_use",
    "separate_consents",
    "oauth_tokens",
    "transfer_attempts",
)
"""The registry tables section 3a (sign-ins and token exchanges) is built on: any of them
disagreeing with the chain withholds it (findings F3 / G11: a forged first use or consent
turns denied exchanges into grandfathered ones; fresh user 11, H3: the exchange counts are
read from ``transfer_attempts``, so an edited attempt withholds them, with the sign-in counts
of the same section)."""


_POLICY_SECTIONS = {"rules": RULES_SECTION, "instruments": INSTRUMENTS_SECTION}
"""The control-store tables checked against the run's ``job.policy`` entry, and the section
each feeds."""


def chain_check_view(result: CrossCheckResult) -> ChainCheckView:
    """The report's view of a cross-check: per table, and the first
    :data:`SHOWN_DISCREPANCIES` discrepancies."""
    found = result.discrepancies
    return ChainCheckView(
        tables=tuple(
            TableCheckView(
                table=t.table,
                section=CHECKED_TABLES.get(
                    t.table,
                    _REGISTRY_SECTIONS.get(
                        t.table,
                        ANCHORED_SECTIONS.get(t.table, _POLICY_SECTIONS.get(t.table, "")),
                    ),
                ),
                rows=t.rows,
                entries=t.entries,
                matched=t.matched,
                discrepancies=len(t.discrepancies),
                unchained=t.unchained,
                present=t.present,
            )
            for t in result.tables
        ),
        discrepancies=tuple(
            DiscrepancyView(
                table=d.table,
                key=d.key,
                field=d.field,
                table_value=d.table_value,
                chain_value=d.chain_value,
                seq=d.seq,
            )
            for d in found[:SHOWN_DISCREPANCIES]
        ),
        total_discrepancies=len(found),
        not_in_chain=dict(result.not_in_chain),
    )


def withhold(model: ReportModel, result: CrossCheckResult) -> ReportModel:
    """``model`` with the cross-check attached and every figure of a section whose table
    disagrees with the chain removed: ``transfers`` (section 3 and the summary line) and
    ``campaigns`` (section 3c) become ``None``; for ``instrument_events`` each instrument's
    status (``in_force``) becomes ``None`` and its ``effective_until`` the PG340 statement; for
    ``rules`` each rule's description (``summary``) becomes the PG340 statement (its ``scope``
    is the chained one); for ``instruments`` (the rows the run's ``job.policy`` entry records,
    :func:`~provguard.audit.crosscheck.check_instruments`) each named instrument keeps only its
    id: its title, citation, kind, issuer, dates and status (``in_force``) are withheld.
    The evidence JSON is built from the returned model, so it carries no withheld figure."""
    view = chain_check_view(result)
    update: dict[str, Any] = {"chain_check": view}
    if view.failed("transfers"):
        update["transfers"] = None
    if view.failed("campaigns"):
        update["campaigns"] = None
    if any(view.failed(t) for t in SIGN_IN_TABLES):
        update["sign_ins"] = None
    if view.failed("revocation_jobs"):
        update["revocations"] = None
    if view.failed("rules"):
        # the rules' descriptions and the stored rule list disagree with the policy the run
        # chained: the scope stays (it is the chained one), the descriptions are withheld
        statement = f"withheld ({view.code}: the rules table disagrees with the audit chain)"
        update["instruments"] = tuple(
            i.model_copy(
                update={
                    "rules": tuple(r.model_copy(update={"summary": statement}) for r in i.rules)
                }
            )
            for i in update.get("instruments", model.instruments)
        )
    if view.failed("instrument_events"):
        statement = view.statement("instrument_events")
        update["instruments"] = tuple(
            i.model_copy(update={"in_force": None, "effective_until": statement})
            for i in update.get("instruments", model.instruments)
        )
    checked = result.table("instruments")
    if checked is not None and checked.discrepancies:
        update["instruments"] = _withhold_instruments(
            update.get("instruments", model.instruments), checked.discrepancies, view.code
        )
    return model.model_copy(update=update)


def _withhold_instruments(
    views: Sequence[InstrumentView], found: Sequence[Discrepancy], code: str
) -> tuple[InstrumentView, ...]:
    """``views`` with the instruments the ``instruments`` discrepancies name (every one when
    a discrepancy is not about a shown instrument: the ``job.policy`` entry itself, or a
    chained instrument whose row is gone) reduced to their id: title, citation, kind, issuer,
    dates, validity and status are read from the edited row, so none is shown (findings I,
    M1)."""
    shown = {v.id for v in views}
    named = {d.key for d in found}
    hit = named if named <= shown else shown
    withheld = f"withheld ({code}: the instruments table disagrees with the audit chain)"
    return tuple(
        v.model_copy(
            update={
                "title": f"{v.id} (title withheld, {code})",
                "citation": "",
                "kind": "withheld",
                "issuer": "withheld",
                "issued": None,
                "effective_from": None,
                "effective_until": withheld,
                "in_force": None,
            }
        )
        if v.id in hit
        else v
        for v in views
    )


def _exchange_outcome(effect: str, excepted: bool) -> ExchangeOutcome:
    """A transfer attempt's outcome: ``denied``, ``grandfathered`` (a permit by the rule's
    exception), ``permitted`` or ``not_applicable``."""
    if effect == "deny":
        return "denied"
    if effect == "permit":
        return "grandfathered" if excepted else "permitted"
    return "not_applicable"


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_PURGE_KINDS = ("tokens", "values", "derived")


def _revocation_summary(rows: Sequence[Any], now: datetime, source: str) -> RevocationSummary:
    views = [
        RevocationRow(
            job_id=r.job_id,
            grant_id=r.grant_id,
            reason=r.reason,
            source=r.source,
            requested_at=_aware(r.requested_at),
            purge_by=_aware(r.purge_by),
            state=r.state,
            completed_at=_aware(r.completed_at) if r.completed_at is not None else None,
            expected={
                k: int(getattr(r, f"expected_{k}"))
                for k in _PURGE_KINDS
                if getattr(r, f"expected_{k}") is not None
            },
            purged={k: int(getattr(r, f"purged_{k}") or 0) for k in _PURGE_KINDS},
        )
        for r in rows
    ]
    states = Counter(v.state for v in views)
    return RevocationSummary(
        jobs=len(views),
        open=states["open"],
        quarantined=states["quarantined"],
        purged=states["purged"],
        purged_late=sum(1 for v in views if v.on_time is False),
        overdue=sum(1 for v in views if v.state != "purged" and v.purge_by < now),
        rows_purged={k: sum(v.purged.get(k, 0) for v in views) for k in _PURGE_KINDS},
        as_of_time=now,
        source=source,
        rows=tuple(views[:50]),
    )


def build_model_from_store(
    root: str | Path,
    *,
    generated_at: datetime | None = None,
    as_of: date | None = None,
    public_key: Ed25519PublicKey | None = None,
    grant_db: str | None = None,
    public_key_file: str | None = None,
    beside: bool = True,
) -> ReportModel:
    """One-shot :meth:`StoreReader.model` of the folder ``root`` (``grant_db``: a registry
    outside the folder; ``public_key`` / ``public_key_file`` / ``beside``: the key that checks
    the newest signed checkpoint, else ``audit.pub`` beside the log, see :class:`StoreReader`).
    Raises :class:`StoreError`, or :class:`~provguard.errors.AuditError` for an unreadable
    ``audit.pub``."""
    reader = StoreReader(
        root,
        public_key=public_key,
        grant_db=grant_db,
        public_key_file=public_key_file,
        beside=beside,
    )
    try:
        return reader.model(generated_at=generated_at, as_of=as_of)
    finally:
        reader.close()


def instrument_view(
    inst: Instrument,
    as_of: datetime,
    events: Mapping[tuple[str, str], date],
    rules: tuple[RuleView, ...],
) -> InstrumentView:
    """The report's view of an instrument at ``as_of``, naming a recorded end event's date."""
    until = inst.effective_until
    if isinstance(until, EventEnd):
        recorded = events.get((inst.id, until.event))
        until_text = f"the event '{until.event}'" + (
            f" (recorded on {recorded.isoformat()})" if recorded else " (not yet recorded)"
        )
    else:
        until_text = until.isoformat() if until else "no end"
    return InstrumentView(
        id=inst.id,
        kind=inst.kind,
        issuer=inst.issuer,
        citation=inst.citation or "",
        title=inst.title or "",
        issued=inst.issued,
        effective_from=inst.effective_from,
        effective_until=until_text,
        in_force=inst.in_force(as_of, events),
        rules=rules,
    )
