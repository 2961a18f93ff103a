"""``provguard run``: the 2019 injunction's whole story on the sandbox platform.

Stages (each reported to ``progress``): load the policy; read the graph; build the sandbox
platform; ingest with provenance labels into the stores; audit every grant transfer; scan
profiles against the provider's copy; decide profile display and recommend friends with and
without the policy, each on the values' recorded labels plus the origins the scan infers for
copies (a re-typed WeChat nickname originates at WeChat:
:func:`provguard.job.display.with_inferred_origins`); run the remediation campaign; append every
decision to the hash-chained audit log and verify it; write the report. Returns a
:class:`RunResult` with everything the report and the tests read.

Policy entry: the run's entries open with one ``job.policy`` entry (:func:`policy_entry`): the
digest of the policy files as the query entries compute it, each file's SHA-256 and every rule's
machine scope, so the chain says which policy the decisions were made under (fresh user 10, H4).

Audit evidence: the entries are appended in blocks of :data:`CHECKPOINT_EVERY`; after each
block the job signs an Ed25519 checkpoint (count + head hash, RFC 8032) and stores it in the
log's ``audit_checkpoints`` table, and at the end it exports the public key and the newest
checkpoint as ``<out>/audit.pub`` and ``<out>/checkpoint.json``
(:mod:`provguard.audit.folder`; the key is ``$PROVGUARD_AUDIT_KEY``, else
``<out>/audit-key.pem``, created with mode 0600). The chain is verified against that newest
checkpoint. After ``report.html`` and ``evidence.json`` are written, one more entry,
``job.report``, records their digests and those of the scan and recommendation files, and a
checkpoint signed over it is stored and exported (:mod:`provguard.report.anchor`,
``RunResult.report_anchor``); ``RunResult.verify`` / ``checkpoint`` stay the ones taken before it.

Stored keyed hashes: with a deployment hash key (``$PROVGUARD_HASH_KEY``, at least 16 bytes,
:mod:`provguard.sqlgen.keyed`) the job stores the HMAC-SHA256 of every protected column of
``profiles`` beside it (``<column>__hmac``) and the key's fingerprint in the table's labels
sidecar (:func:`store_profile_hashes`; ``RunResult.stored_hashes``), so ``provguard query``
under the same key reads them instead of hashing per cell. Without a key nothing is stored.

Stored masks (the fast layout, written by default): after the stored hashes the job normalises
the labels of ``profiles`` and stores the masks of every (app, purpose) pair the policy serves
at ``as_of`` (:func:`finish_profiles_store`; ``RunResult.stored_masks``), each step an audit entry
as ``provguard data normalise-labels`` / ``data store-masks`` record theirs.
``RunSettings.store_masks=False`` (``provguard run --no-store-masks``) leaves the table as written
(raw labels, no stored masks).

Data entry (session 8): each data table is hashed right after the run writes it (``profiles``
after its stored hashes and masks), and the run's entries end with one ``job.data`` entry
(:func:`data_entry`) recording every table's file SHA-256 and labels-spec digest
(:func:`provguard.dataplane.attest.base_tables_payload`), so ``provguard query`` and ``provguard
data`` refuse a table changed after the run (PG210, :class:`provguard.dataplane.attest.
StoreAttestation`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.graph_files import read_edge_list
from provguard.adapters.platform_files import read_platform, write_platform
from provguard.audit.chain import VerifyResult
from provguard.audit.folder import export_checkpoint, folder_signing_key, signed_cover
from provguard.audit.signing import SignedCheckpoint
from provguard.campaign.chained import export_digests
from provguard.clock import Clock
from provguard.config import RunSettings
from provguard.dataplane.served import StoredMasks
from provguard.decide import DecisionPoint
from provguard.errors import ForeignEntriesError, StoreError
from provguard.grants import TokenCipher
from provguard.job.campaign import CampaignResult, run_campaign
from provguard.job.decisions import DecisionRecorder
from provguard.job.display import decide_display, with_inferred_origins
from provguard.job.grants import GrantsStageResult, run_grants_stage
from provguard.job.ingest import label_profiles
from provguard.job.recommendations import RecommendationResult, run_recommendations
from provguard.job.scan import ScanSummary, hash_pictures, run_scan
from provguard.job.transfers import audit_transfers
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import default_registry
from provguard.report.anchor import AnchoredReport
from provguard.sandbox import Platform, build_platform
from provguard.sqlgen.keyed import resolve_hash_key
from provguard.wiring import Workspace, open_workspace

Progress = Callable[[str], None]

CHECKPOINT_EVERY = 20_000
"""Audit entries per block; a signed checkpoint is stored after each block and at the end."""

STAGES = (
    "load policy",
    "read graph",
    "build sandbox platform",
    "ingest with provenance",
    "audit grant transfers",
    "sign in, exchange and revoke grants",
    "scan profiles",
    "decide profile display",
    "recommend friends",
    "run remediation campaign",
    "write audit log",
    "write report",
)


@dataclass
class RunResult:
    settings: RunSettings
    policy: PolicySet
    platform: Platform
    labelled: pa.Table
    transfers: pa.Table
    display: pa.Table
    recommendations: RecommendationResult
    scan: pa.Table
    scan_summaries: list[ScanSummary]
    campaign: CampaignResult
    decision_counts: list[dict[str, object]]
    audit_appended: int
    verify: VerifyResult
    grants: GrantsStageResult | None = None
    stored_hashes: StoredHashes | None = None
    stored_masks: StoredMasks | None = None
    checkpoint: SignedCheckpoint | None = None
    checkpoints_signed: int = 0
    graph_stats: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    #: the job.report entry anchoring report.html / evidence.json and the scan and
    #: recommendation files, with the checkpoint signed over it (set by the "write report"
    #: step; ``checkpoint`` / ``verify`` stay the ones taken before it, which section 6 shows)
    report_anchor: AnchoredReport | None = None
    #: seq of the run's ``job.policy`` entry (:func:`policy_entry`) in the folder's audit log
    policy_entry_seq: int | None = None


@dataclass(frozen=True)
class StoredHashes:
    """The keyed hashes the job stored with ``table``: ``key_id`` is the key's public
    fingerprint (:func:`provguard.sqlgen.keyed.key_id`, 16 hex digits; never the key),
    ``columns`` the protected columns that got a ``<column>__hmac`` companion (HMAC-SHA256,
    RFC 2104, 64 lowercase hex digits), ``seconds`` the time it took."""

    table: str
    key_id: str
    columns: tuple[str, ...]
    seconds: float


def store_profile_hashes(data_root: Path, key: bytes | None) -> StoredHashes | None:
    """Store the keyed hashes of the protected columns of ``profiles`` (every column with a
    data category, :func:`provguard.dataplane.hashes.hashable_columns`) in the data store at
    ``data_root``, just written by the job, so that ``provguard query`` under the same key reads
    them instead of computing an HMAC per cell (:meth:`LabelledStore.store_hashes`).

    ``key``: the deployment's hash key (:func:`~provguard.sqlgen.keyed.resolve_hash_key`);
    ``None`` stores nothing and returns ``None``. Either way a ``profiles`` labels sidecar left
    by an earlier run in the same folder is removed first: the freshly written table has no
    companions, and a sidecar naming them (or an older key's fingerprint) would no longer
    match it. Raises :class:`~provguard.errors.StoreError` on I/O failure."""
    from provguard.dataplane import LabelledStore
    from provguard.dataplane.store import LABELS_DIR

    stale = data_root / LABELS_DIR / "profiles.json"
    try:
        stale.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot remove the stale labels sidecar {stale}: {exc}") from exc
    if key is None:
        return None
    t0 = time.perf_counter()
    spec = LabelledStore(data_root).store_hashes("profiles", key)
    columns = tuple(sorted(n for n, c in spec.columns.items() if c.hash_column is not None))
    assert spec.hash_key_id is not None
    return StoredHashes("profiles", spec.hash_key_id, columns, time.perf_counter() - t0)


def finish_profiles_store(
    data_root: Path, policy: PolicySet, at: datetime, key: bytes | None
) -> StoredMasks:
    """The fast layout of ``profiles``, just written by the job (after its stored hashes): the
    labels normalised, then the masks of every (app, purpose) pair ``policy`` serves at ``at``
    stored beside them (:func:`provguard.dataplane.served.store_served_masks`, the function
    ``provguard data load`` calls too; the pairs: :func:`~provguard.dataplane.served.served_pairs`).

    ``key``: the deployment's hash key; without one, columns whose mask hashes are left out and
    reported (:attr:`StoredMasks.skipped`), never an error. Returns what was stored; its
    ``audit_entries`` (``data.normalise_labels``, one ``data.store_masks`` per pair, as the
    ``provguard data`` commands record them) go into the run's audit log. Raises
    :class:`~provguard.errors.StoreError` on I/O failure."""
    from provguard.dataplane import LabelledStore
    from provguard.dataplane.served import store_served_masks
    from provguard.sqlgen.schema import job_schema

    ls = LabelledStore(data_root, base=job_schema())
    return store_served_masks(ls, policy, at, table="profiles", hash_key=key)


def require_signed_log(audit: SqliteAuditLog, folder: Path, key: Ed25519PrivateKey) -> None:
    """Refuse to run over a log whose entries are not all covered by a checkpoint signed with
    the folder's ``key`` (:func:`provguard.audit.folder.signed_cover`): the run's own
    checkpoints sign the whole head, so they would vouch for entries appended without the key.
    Raises :class:`~provguard.errors.ForeignEntriesError` (PG331) naming them."""
    head = audit.checkpoint().count
    covered = signed_cover(audit, folder, key.public_key(), head)
    if covered < head:
        first, last = covered + 1, head
        span = f"entry #{first} is" if first == last else f"entries #{first}–#{last} are"
        raise ForeignEntriesError(
            f"{folder / 'control.db'}: audit {span} not covered by a checkpoint signed with"
            " this folder's key, and this run would sign over them. Review them (`provguard"
            " audit show`) and sign them (`provguard audit checkpoint export`), or run into a"
            " fresh folder",
            first,
            last,
        )


def write_audit_evidence(
    audit: SqliteAuditLog,
    folder: Path,
    entries: Sequence[tuple[str, Mapping[str, object]]],
    key: Ed25519PrivateKey,
    *,
    every: int = CHECKPOINT_EVERY,
) -> tuple[SignedCheckpoint, int, VerifyResult]:
    """Append ``entries`` to ``audit`` in blocks of ``every`` (each block one transaction),
    sign and store a checkpoint after each block (one for an empty ``entries``), export the
    newest as ``folder/checkpoint.json`` and verify the whole chain against it.

    Returns ``(newest checkpoint, checkpoints signed, verification)``. Raises
    :class:`ValueError` for ``every < 1``, the log's :class:`~provguard.errors.AuditError` /
    :class:`~provguard.errors.StoreError`, ``OSError`` when the file cannot be written."""
    if every < 1:
        raise ValueError("every must be >= 1")
    signed: SignedCheckpoint | None = None
    count = 0
    for start in range(0, max(1, len(entries)), every):
        audit.append_many(entries[start : start + every])
        signed = audit.sign_checkpoint(key)
        count += 1
    assert signed is not None
    export_checkpoint(signed, folder)
    return signed, count, audit.verify(signed.checkpoint)


POLICY_ENTRY_KIND = "job.policy"
"""The kind of the entry that opens a run's entries: the policy it enforced
(:func:`policy_entry`); :data:`provguard.audit.crosscheck.POLICY_KIND` is the same string."""


def policy_entry(policy: PolicySet, folder: Path) -> tuple[str, dict[str, object]]:
    """The ``job.policy`` audit entry of a run under ``policy``, loaded from ``folder`` (a
    policy folder or one bundle file).

    Payload: ``policy_digest`` -- SHA-256 (64 hex) of the bundle files, computed as the query
    entries compute it (:func:`provguard.cli.query.policy_digest`), so one published bundle has
    one digest wherever it is recorded; ``folder`` (as given); ``files`` -- path relative to
    ``folder`` (the file name when ``folder`` is a file) → SHA-256 (hex) of its bytes, sorted;
    ``rules`` -- per rule, in bundle order: ``id``, ``instrument``, ``effect`` and ``scope``,
    the rule's machine scope (:meth:`provguard.policy.model.Rule.summary`: effect, actions,
    purposes, apps, recipients, data categories, origins, dates, exceptions, mode), the same
    text the control store's ``rules.summary`` holds; ``instruments`` -- per instrument, in
    bundle order, what the control store's ``instruments`` row holds
    (:meth:`provguard.adapters.control_sqlite.SqlControlStore.save_bundles`): ``id``, ``kind``,
    ``title`` (``None`` when it has none), ``issuer``, ``effective_from`` (ISO-8601 day),
    ``validity`` (:meth:`provguard.policy.model.Instrument.validity_text`) and
    ``source_sha256`` -- SHA-256 (64 hex) of the UTF-8 ``source`` JSON exactly as stored
    (``Instrument.model_dump_json(by_alias=True)``), so the report's instrument status, dates
    and title are checked against the chain
    (:func:`provguard.audit.crosscheck.check_instruments`). Raises ``OSError`` when a bundle
    file can no longer be read."""
    import hashlib

    from provguard.audit.enforced import policy_digest

    base = folder if folder.is_dir() else folder.parent
    files: dict[str, str] = {}
    for b in policy.bundles:
        if b.path is None:
            continue
        path = Path(b.path)
        try:
            name = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            name = str(path)
        files[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    rules = [
        {"id": r.id, "instrument": b.instrument.id, "effect": r.effect, "scope": r.summary()}
        for b in policy.bundles
        for r in b.rules
    ]
    instruments = [
        {
            "id": b.instrument.id,
            "kind": b.instrument.kind,
            "title": b.instrument.title,
            "issuer": b.instrument.issuer,
            "effective_from": b.instrument.effective_from.isoformat(),
            "validity": b.instrument.validity_text(),
            # the JSON text save_bundles stores in instruments.source, byte for byte
            "source_sha256": hashlib.sha256(
                b.instrument.model_dump_json(by_alias=True).encode("utf-8")
            ).hexdigest(),
        }
        for b in policy.bundles
    ]
    payload: dict[str, object] = {
        "policy_digest": policy_digest(policy),
        "folder": str(folder),
        "files": dict(sorted(files.items())),
        "rules": rules,
        "instruments": instruments,
    }
    return POLICY_ENTRY_KIND, payload


def data_entry(written: Mapping[str, Mapping[str, str]]) -> tuple[str, dict[str, object]]:
    """The ``job.data`` audit entry of a run: ``tables`` (sorted names) and
    :data:`~provguard.dataplane.attest.BASE_TABLES_KEY`, table -> ``{"file_sha256",
    "spec_sha256", "data_root"}`` as :func:`~provguard.dataplane.attest.base_digests` computed
    them right after the run wrote the table (``written``)."""
    from provguard.dataplane.attest import BASE_TABLES_KEY, JOB_DATA_KIND

    tables = {name: dict(written[name]) for name in sorted(written)}
    return JOB_DATA_KIND, {"tables": list(tables), BASE_TABLES_KEY: tables}


def export_graph_stats(platform: Platform) -> dict[str, int]:
    """The ``graph_stats`` of a platform export: its users (``subjects``) and its follow
    graph's pairs (``edges``, already undirected and deduplicated, so nothing is dropped)."""
    return {
        "nodes": platform.subjects.num_rows,
        "edges": platform.edges.num_rows,
        "dropped_self_loops": 0,
        "dropped_duplicates": 0,
    }


def run_main_job(
    settings: RunSettings,
    progress: Progress | None = None,
    clock: Clock | None = None,
) -> RunResult:
    """Run every stage; see the module docstring. Raises the stage's :class:`ProvguardError`
    (:class:`~provguard.sqlgen.QueryError`, PG160, for a ``$PROVGUARD_HASH_KEY`` under 16
    bytes, before anything is written)."""
    step = progress or (lambda _name: None)
    timings: dict[str, float] = {}
    # the deployment's hash key first: a bad $PROVGUARD_HASH_KEY fails before anything is written
    hash_key = resolve_hash_key(None)

    # the audit log is stamped by ``clock`` (real time by default); decisions use settings.as_of
    step("load policy")
    policy = load_policy_dir(settings.policy)
    # the files' digests as loaded, before any stage runs (chained first, at "write audit log")
    policy_record = policy_entry(policy, settings.policy)
    recorder = DecisionRecorder()
    at: datetime = settings.as_of

    step("read graph")
    t0 = time.perf_counter()
    export: Platform | None = None
    if settings.platform is not None:
        # a platform export (one Parquet file per table): no graph to read, no sandbox to build
        export = read_platform(settings.platform)
        graph_stats = export_graph_stats(export)
    else:
        graph = read_edge_list(settings.graph)
        graph_stats = {
            "nodes": graph.num_nodes,
            "edges": graph.num_edges,
            "dropped_self_loops": graph.dropped_self_loops,
            "dropped_duplicates": graph.dropped_duplicates,
        }
    timings["read graph"] = time.perf_counter() - t0

    step("build sandbox platform")
    t0 = time.perf_counter()
    platform = export if export is not None else build_platform(graph, seed=settings.seed)
    # the export's transfer facts, before anything is written: an impossible row (a first use
    # before its grant or the recipient's account) is refused, never grandfathered (PG141)
    from provguard.job.export_facts import check_transfer_facts

    check_transfer_facts(platform, at, settings.platform)
    timings["build sandbox platform"] = time.perf_counter() - t0

    step("ingest with provenance")
    t0 = time.perf_counter()
    ws: Workspace = open_workspace(settings.out, clock)
    #: the digests of each data table right after the run wrote it (the job.data entry)
    written: dict[str, dict[str, str]] = {}

    def note(name: str) -> None:
        from provguard.dataplane.attest import base_digests

        written[name] = base_digests(ws.data.root, name).as_payload()

    try:
        # the checkpoint key first: a bad $PROVGUARD_AUDIT_KEY fails before any stage writes data
        signing_key, _public_key = folder_signing_key(ws.root)
        # the run signs the whole log at its end: it must not sign entries someone else wrote
        # into this folder since the last signed checkpoint (finding I-2, session 6)
        require_signed_log(ws.audit, ws.root, signing_key)
        # the data folder names its control store: a query with another one is refused (I-4)
        from provguard.dataplane.store import bind_data_store

        bind_data_store(ws.data.root, ws.root / "control.db")
        # instrument events recorded in this folder's control store (provguard instrument event)
        policy = policy.with_events(ws.control.events())
        pdp = DecisionPoint(policy)
        registry = default_registry()
        write_platform(platform, ws.platform_dir)
        # the provider side a later `provguard campaign rescan` must read (fresh user 11, M3)
        export_record = export_digests(
            ws.platform_dir, platform.provider_profiles, platform.pictures
        )
        ws.control.save_bundles(policy.bundles)
        ws.control.save_grants(platform.grants)
        labelled = label_profiles(platform.app_profiles, platform.grants, registry)
        ws.data.write_table("profiles", labelled)
        stored_hashes = store_profile_hashes(ws.data.root, hash_key)
        stored_masks = (
            finish_profiles_store(ws.data.root, policy, at, hash_key)
            if settings.store_masks
            else None
        )
        note("profiles")
        ws.data.write_table("edges", platform.edges)
        note("edges")
        timings["ingest with provenance"] = time.perf_counter() - t0

        step("audit grant transfers")
        t0 = time.perf_counter()
        transfers = audit_transfers(platform.transfers, pdp, at, recorder, platform.grants)
        ws.data.write_table("transfer_audit", transfers)
        note("transfer_audit")
        ws.control.save_transfers(
            transfers.select(
                [
                    "transfer_id",
                    "grant_id",
                    "subject_id",
                    "provider",
                    "from_app",
                    "to_app",
                    "first_used_at",
                    "decision",
                    "rule_id",
                    "excepted",
                ]
            )
        )
        timings["audit grant transfers"] = time.perf_counter() - t0

        # the injunction's transfer rule over real HTTP: sign-ins on the sandbox platform,
        # duoshan's RFC 8693 token exchanges, revocations and the purge cascade
        step("sign in, exchange and revoke grants")
        t0 = time.perf_counter()
        grants_stage = run_grants_stage(
            platform,
            pdp,
            at,
            ws.root / "grants.db",
            seed=settings.seed,
            cipher=TokenCipher.from_env_or_file(ws.root / "token.key"),
        )
        timings["sign in, exchange and revoke grants"] = time.perf_counter() - t0

        # decoded and hashed once: the recommender's picture signal and the scan both use them
        t0 = time.perf_counter()
        hashes = hash_pictures(platform.pictures)
        timings["hash pictures"] = time.perf_counter() - t0

        # the scan before display and recommendation: a value it flags as a copy of the
        # provider's gets the provider as inferred origin beside its recorded label (F1)
        step("scan profiles")
        t0 = time.perf_counter()
        ws.data.write_table("picture_hashes", hashes)
        note("picture_hashes")
        scan, summaries = run_scan(platform.app_profiles, platform.provider_profiles, hashes)
        ws.data.write_table("profile_scan", scan)
        note("profile_scan")
        inferred = with_inferred_origins(labelled, scan, registry)
        timings["scan profiles"] = time.perf_counter() - t0

        step("decide profile display")
        t0 = time.perf_counter()
        display = decide_display(inferred, pdp, registry, at, recorder)
        ws.data.write_table("profile_display", display)
        note("profile_display")
        timings["decide profile display"] = time.perf_counter() - t0

        step("recommend friends")
        t0 = time.perf_counter()
        src = platform.edges.column("src").to_numpy()
        dst = platform.edges.column("dst").to_numpy()
        app_profiles = inferred.filter(pc.equal(inferred.column("app_id"), settings.app))
        recs = run_recommendations(
            np.asarray(src, dtype=np.int64),
            np.asarray(dst, dtype=np.int64),
            app_profiles,
            registry,
            pdp,
            at,
            recorder,
            app=settings.app,
            k=settings.k,
            holdout=settings.holdout,
            seed=settings.seed,
            subjects=platform.subjects,
            pictures=platform.pictures,
            picture_hashes=hashes,
        )
        ws.data.write_table("recommendations", recs.cards)
        note("recommendations")
        timings["recommend friends"] = time.perf_counter() - t0

        step("run remediation campaign")
        t0 = time.perf_counter()
        campaign, targets = run_campaign(
            scan,
            platform.app_profiles,
            platform.subjects,
            policy,
            at,
            ws.root / "control.db",
            ws.root / "outbox.jsonl",
        )
        ws.data.write_table(
            "campaign_targets",
            pa.Table.from_pylist([t.__dict__ for t in targets])
            if targets
            else pa.table({"subject_id": pa.array([], pa.int64())}),
        )
        note("campaign_targets")
        timings["run remediation campaign"] = time.perf_counter() - t0

        step("write audit log")
        t0 = time.perf_counter()
        # the data store's finishing steps came first (ingest): their entries lead
        # the policy the run enforced opens its entries (fresh user 10, H4): digest, files and
        # every rule's machine scope, signed with the rest
        entries: list[tuple[str, Mapping[str, object]]] = [policy_record]
        if stored_masks is not None:
            entries.extend(stored_masks.audit_entries)
        policy_seq = ws.audit.checkpoint().count + 1
        entries.extend(recorder.drain())
        entries.extend(grants_stage.audit_entries)
        entries.append(("campaign", {**campaign.__dict__, "export": export_record.payload()}))
        # what the run left in its data folder, last: later reads check the files against it
        entries.append(data_entry(written))
        signed, signed_count, verify = write_audit_evidence(ws.audit, ws.root, entries, signing_key)
        timings["write audit log"] = time.perf_counter() - t0

        result = RunResult(
            settings=settings,
            policy=policy,
            platform=platform,
            labelled=labelled,
            transfers=transfers,
            display=display,
            recommendations=recs,
            scan=scan,
            scan_summaries=summaries,
            campaign=campaign,
            decision_counts=recorder.count_rows(),
            audit_appended=len(entries),
            policy_entry_seq=policy_seq,
            verify=verify,
            grants=grants_stage,
            stored_hashes=stored_hashes,
            stored_masks=stored_masks,
            checkpoint=signed,
            checkpoints_signed=signed_count,
            graph_stats=graph_stats,
            timings=timings,
        )

        step("write report")
        t0 = time.perf_counter()
        from provguard.job.report import write_run_report

        # then one job.report entry anchors the report files in the chain, signed (H3)
        result.report_anchor = write_run_report(result, ws, signing_key)
        timings["write report"] = time.perf_counter() - t0
        return result
    finally:
        ws.close()
