"""``provguard campaign ...``: start, dispatch, rescan and follow a remediation campaign.

``start``, ``dispatch`` and ``rescan`` move campaign targets; each appends a hash-chained audit
entry (kinds :data:`~provguard.campaign.chained.START_KIND`,
:data:`~provguard.campaign.chained.DISPATCH_KIND`,
:data:`~provguard.campaign.chained.RESCAN_KIND`) holding the states after the operation, the
transitions it made and, for ``start`` and ``rescan``, the SHA-256 of the platform export it
read (and of the app profiles it compared) -- written in the SAME SQLite transaction as the
state change (:func:`chained_operation`): a crash leaves both or neither. The entry is then
signed with the folder's key when there is one (``audit-key.pem`` beside the store,
:func:`provguard.audit.folder.cover_own_entry`: never over entries someone else wrote).

A rescan reads only the platform export whose provider side the chain records for the campaign
(the job's ``campaign`` entry, a ``campaign.start`` or an earlier ``campaign.rescan``), or a new
one with ``--new-export REASON`` (recorded): see :mod:`provguard.campaign.chained` (PG411).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from provguard.adapters import campaign_sqlite as cq
from provguard.adapters.audit_sqlite import SqliteAuditLog, audit_log_table
from provguard.adapters.campaign_sqlite import JsonlMailbox, SqlCampaignStore
from provguard.adapters.platform_files import read_platform
from provguard.audit.chain import GENESIS_HASH, AuditEntry, build_entry
from provguard.campaign import TokenBucket, dispatch, select_targets
from provguard.campaign.chained import (
    DISPATCH_KIND,
    RESCAN_KIND,
    START_KIND,
    ExportMismatchError,
    check_export,
    check_profiles_reason,
    check_rescan_time,
    export_digests,
    file_sha256,
    recorded_export,
)
from provguard.campaign.model import STATES, OutboxMessage
from provguard.campaign.outbox import DispatchResult
from provguard.cli.common import DEFAULT_POLICY_DIR, console, err_console, user_errors
from provguard.dataplane.attest import StoreAttestation
from provguard.errors import AuditChainError, InputError, StoreError
from provguard.policy import load_policy_dir
from provguard.similarity.pictures import hash_picture_table
from provguard.similarity.scan import scan_profiles

campaign_app = typer.Typer(
    name="campaign",
    help="Remediation campaigns (notify, track, rescan).",
    no_args_is_help=True,
    add_completion=False,
)

StoreOpt = Annotated[Path, typer.Option("--store", help="Campaign store (SQLite file).")]
IdOpt = Annotated[str, typer.Option("--campaign", help="Campaign id.")]
AtOpt = Annotated[str | None, typer.Option("--at", help="ISO time (default: now, UTC).")]

BASELINE_KINDS = ("campaign", START_KIND, RESCAN_KIND)
"""Chained entries that record the platform export a campaign was scanned against."""


def _at(text: str | None) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"--at: not an ISO time: {text}") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _status(store: SqlCampaignStore, campaign: str) -> None:
    counts = store.counts(campaign)
    console.print(" ".join(f"{k}={v}" for k, v in counts.items()))


# ------------------------------------------------------------------ chained store operations


class _BoundStore(SqlCampaignStore):
    """A campaign store whose writing methods run inside the caller's open transaction
    (``conn``) instead of one of their own; reads (``due``, ``counts``) use the base engine."""

    def __init__(self, base: SqlCampaignStore, conn: Connection) -> None:
        self.engine = base.engine
        self._conn = conn

    def _begin(self) -> Any:
        return contextlib.nullcontext(self._conn)


def _write_engine(store: Path) -> Engine:
    """An engine on the SQLite ``store`` whose transactions begin with ``BEGIN IMMEDIATE``:
    the write lock is taken first, so the states read, the states written and the audit head
    the new entry links to belong to one transaction (pysqlite would otherwise begin only at
    the first write). Raises :class:`InputError` for a URL (the chain is a SQLite log)."""
    if "://" in str(store):
        raise InputError(
            f"--store {store}: chained campaign operations need the SQLite control store "
            "that holds the audit chain (a file path, not a URL)"
        )
    engine = create_engine(f"sqlite+pysqlite:///{store.resolve()}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _states(conn: Connection, campaign_id: str) -> dict[str, int]:
    rows = conn.execute(
        select(cq.targets.c.state, func.count())
        .where(cq.targets.c.campaign_id == campaign_id)
        .group_by(cq.targets.c.state)
    ).all()
    got = {str(r[0]): int(r[1]) for r in rows}
    return {s: got.get(s, 0) for s in STATES}


def chained_operation(
    store: Path,
    campaign_id: str,
    kind: str,
    operation: Callable[[SqlCampaignStore], Mapping[str, object]],
    *,
    at: datetime,
    stamp: datetime | None = None,
) -> AuditEntry:
    """Run ``operation`` on the campaign store ``store`` and append its chained entry, in ONE
    SQLite transaction (``BEGIN IMMEDIATE``): the targets moved, their events and outbox rows,
    the progress snapshot, and the audit entry are committed together or not at all.

    Args:
        store: the SQLite control store (campaign tables and the ``audit_log``; the table is
            created when the file has none).
        campaign_id: the campaign; ``operation`` receives a store bound to the transaction.
        kind: the entry kind (:data:`START_KIND`, :data:`DISPATCH_KIND`, :data:`RESCAN_KIND`).
        operation: moves targets through the store it is given and returns the fields it adds
            to the entry (e.g. ``moved``, ``export``).
        at: the operation's time (recorded as ``at``); ``stamp``: the entry's timestamp
            (default now, UTC: entries are stamped in chain order, ``at`` may be backdated).

    Returns:
        The appended entry. Its payload: ``campaign_id``, ``rule_id``, ``instrument_id``,
        ``operation``, ``at`` (ISO-8601), ``targets`` (rows of ``campaign_targets``),
        ``states_before``, ``states`` (targets per state before / after), ``progress_seq`` (the
        snapshot the operation wrote) and ``operation``'s fields.

    Raises:
        InputError: unknown campaign, a URL store, or what ``operation`` raises (nothing is
            written); StoreError: the database fails (nothing written).
    """
    engine = _write_engine(Path(store))
    base = SqlCampaignStore(store)
    try:
        with engine.begin() as conn:
            audit_log_table.create(conn, checkfirst=True)
            before = _states(conn, campaign_id)
            fields = dict(operation(_BoundStore(base, conn)))
            camp = conn.execute(
                select(cq.campaigns.c.rule_id, cq.campaigns.c.instrument_id).where(
                    cq.campaigns.c.campaign_id == campaign_id
                )
            ).first()
            if camp is None:
                raise InputError(f"no campaign '{campaign_id}' in this store")
            after = _states(conn, campaign_id)
            seq_row = conn.execute(
                select(func.max(cq.progress.c.seq)).where(cq.progress.c.campaign_id == campaign_id)
            ).scalar()
            payload: dict[str, object] = {
                "campaign_id": campaign_id,
                "rule_id": camp.rule_id,
                "instrument_id": camp.instrument_id,
                "operation": kind.rsplit(".", 1)[-1],
                "at": at.isoformat(),
                "targets": sum(after.values()),
                "states_before": before,
                "states": after,
                "progress_seq": int(seq_row or 0),
                **fields,
            }
            head = conn.execute(
                select(audit_log_table.c.seq, audit_log_table.c.hash)
                .order_by(audit_log_table.c.seq.desc())
                .limit(1)
            ).first()
            seq, prev = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
            entry = build_entry(seq + 1, prev, kind, payload, stamp or datetime.now(UTC))
            conn.execute(
                audit_log_table.insert(),
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
        raise StoreError(f"campaign store write failed (nothing written): {exc}") from exc
    finally:
        engine.dispose()
        base.engine.dispose()
    return entry


def _sign(store: Path, entry: AuditEntry) -> None:
    """Sign a checkpoint over ``entry`` when the folder has the key (stderr says what)."""
    from provguard.audit.folder import cover_own_entry

    try:
        with SqliteAuditLog(store, create=False) as log:
            said = cover_own_entry(log, store.resolve().parent, entry).message()
    except (StoreError, OSError) as exc:
        said = f"warning: the campaign entry #{entry.seq} is recorded but not signed: {exc}"
    err_console.print(said, highlight=False, soft_wrap=True)


def _moved(before: Mapping[str, int], after: Mapping[str, int]) -> str:
    return " ".join(f"{k}={after[k]}" for k in after if after[k] != before.get(k, 0)) or "none"


# ------------------------------------------------------------------ the export a rescan may read


def recorded_baseline(store: Path, campaign_id: str) -> tuple[str | None, int | None]:
    """The newest provider digest the verified chain records for ``campaign_id`` and the seq
    of its entry (kinds :data:`BASELINE_KINDS`); ``(None, None)`` when none does.

    The whole chain is verified first, and, when ``audit.pub`` is beside the store, the entry
    must be covered by a checkpoint that key signed: an entry appended without the folder's
    key cannot declare a new baseline. Raises :class:`AuditChainError` (PG310) for a broken
    chain, :class:`ExportMismatchError` (PG411) for an unsigned baseline."""
    try:
        log = SqliteAuditLog(store, create=False)
    except StoreError:
        return None, None
    with log:
        best: AuditEntry | None = None
        for kind in BASELINE_KINDS:
            for e in log.find(kind=kind, payload_equals={"campaign_id": campaign_id}, limit=20):
                if recorded_export(e.payload) is not None and (best is None or e.seq > best.seq):
                    best = e
                    break
        if best is None:
            return None, None
        verified = log.verify()
        if not verified.ok or (verified.count < best.seq):
            raise AuditChainError(
                f"the audit chain of {store} does not verify ({verified.reason}); the export "
                f"recorded in entry #{best.seq} cannot be trusted: run `provguard audit verify`",
                verified.first_bad_seq,
            )
        public = store.resolve().parent / "audit.pub"
        if public.is_file():
            from provguard.audit.folder import signed_cover
            from provguard.audit.signing import load_public_key

            covered = signed_cover(
                log, store.resolve().parent, load_public_key(public), verified.count
            )
            if covered < best.seq:
                raise ExportMismatchError(
                    f"the export recorded in audit entry #{best.seq} is not covered by a "
                    f"checkpoint signed with {public} (signed up to #{covered}): it was not "
                    "written by a holder of the folder's key and does not vouch for an export"
                )
        digest = recorded_export(best.payload)
        return digest, best.seq


def _app_profiles(
    store: Path,
    profiles: Path | None,
    export_table: pa.Table,
    export_dir: Path,
    why: str | None = None,
) -> tuple[pa.Table, dict[str, object]]:
    """The app profiles a rescan compares: ``profiles`` when given, else the data store's
    ``profiles`` beside the control store (``<dir>/data/profiles.parquet``) when present, else
    the export's ``app_profiles``; with the record of what was read (``source``: ``file``,
    ``store`` or ``export``; ``path``; ``sha256`` of the file; ``rows``; for ``store``,
    ``attested``: how the table was vouched for; for ``file``, ``why``).

    The store's table (also when ``profiles`` names that very file) is attested like
    ``provguard query`` does (:class:`~provguard.dataplane.attest.StoreAttestation`: PG210 when
    it does not match the newest entry that wrote it); any other file needs ``why``
    (:func:`~provguard.campaign.chained.check_profiles_reason`, PG100). Raises
    :class:`InputError` for a missing or unreadable file, before anything is written."""
    data_root = store.resolve().parent / "data"
    beside = data_root / "profiles.parquet"
    path = profiles
    if path is None:
        path = beside if beside.is_file() else None
    if path is None:
        src = export_dir / "app_profiles.parquet"
        return export_table, {
            "source": "export",
            "path": str(src.resolve()),
            "sha256": file_sha256(src),
            "rows": export_table.num_rows,
        }
    if not path.is_file():
        raise InputError(f"--profiles {path}: no such file")
    record: dict[str, object]
    if path.resolve() == beside.resolve():
        attestation = StoreAttestation(data_root, store, base_tables=("profiles",))
        try:
            checked = attestation.check(("profiles",))
        finally:
            attestation.close()
        record = {"source": "store", "attested": checked["profiles"].as_payload()}
    else:
        record = {"source": "file", "why": check_profiles_reason(why)}
    try:
        table = pq.read_table(path, columns=["app_id", "subject_id", "handle", "avatar_key"])
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise InputError(f"{path}: cannot read app profiles: {exc}") from exc
    return table, {
        **record,
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "rows": table.num_rows,
    }


# ------------------------------------------------------------------ commands


@campaign_app.command("start")
def start(
    rule: Annotated[str, typer.Option(help="The rule to enforce (its id).")],
    store: StoreOpt,
    platform: Annotated[Path, typer.Option(help="Platform export folder (Parquet tables).")],
    campaign: IdOpt = "default",
    policy_dir: Annotated[Path, typer.Option(help="Policy folder.")] = DEFAULT_POLICY_DIR,
    at: AtOpt = None,
    recorded_only: Annotated[bool, typer.Option(help="Leave out inferred copies.")] = False,
    verified_names: Annotated[
        bool, typer.Option(help="Use the platform's legal names for the real-name exemption.")
    ] = True,
) -> None:
    """Select the profiles RULE forbids and queue a notice for each (idempotent; chained).

    On a job store (or a data load's), the policy folder must hold, byte for byte, every bundle
    file the job enforced, as ``provguard query`` / ``serve`` require
    (:func:`provguard.cli.query.require_enforced_policy`; PG103, nothing written); the
    ``campaign.start`` entry records the policy's digest (``policy_digest``,
    :func:`provguard.audit.enforced.policy_digest`)."""
    with user_errors():
        from provguard.audit.enforced import policy_digest
        from provguard.cli.query import require_enforced_policy

        when = _at(at)
        policy = load_policy_dir(policy_dir)
        # fresh user 12, L4: a campaign computed under an edited rule scope must not be chained
        require_enforced_policy(store, policy)
        digest = policy_digest(policy)
        plat = read_platform(platform)
        scan = scan_profiles(
            plat.app_profiles, plat.provider_profiles, hash_picture_table(plat.pictures)
        )
        export = export_digests(platform, plat.provider_profiles, plat.pictures)
        names = None
        if verified_names:
            s = plat.subjects
            names = dict(
                zip(
                    s.column("subject_id").to_pylist(),
                    s.column("real_name").to_pylist(),
                    strict=True,
                )
            )
        inst, found = select_targets(
            scan,
            plat.app_profiles,
            policy,
            rule,
            when,
            real_names=names,
            recorded_only=recorded_only,
        )
        added: dict[str, int] = {}

        def op(bound: SqlCampaignStore) -> Mapping[str, object]:
            got = bound.start(campaign, rule, inst, found, when)
            added.update(got)
            return {
                "selected": len(found),
                "added": got["added"],
                "export": export.payload(),
                "policy_digest": digest,
            }

        entry = chained_operation(store, campaign, START_KIND, op, at=when)
        console.print(
            f"campaign {campaign} ({rule}): added {added['added']}, already {added['already']}"
            f"; audit entry #{entry.seq} ({START_KIND})",
            highlight=False,
        )
        _sign(store, entry)
        _status(SqlCampaignStore(store), campaign)


@campaign_app.command("dispatch")
def dispatch_cmd(
    store: StoreOpt,
    mailbox: Annotated[Path, typer.Option(help="JSONL mailbox the notices go to.")],
    campaign: IdOpt = "default",
    rate: Annotated[float, typer.Option(help="Notices per second.")] = 50.0,
    max_messages: Annotated[int, typer.Option(help="At most this many notices.")] = 10_000,
    batch: Annotated[
        int, typer.Option(help="Notices per transaction (each with its chained entry).")
    ] = 200,
) -> None:
    """Deliver due notices from the outbox (retried, rate-limited; chained per batch)."""
    with user_errors():
        if batch < 1 or max_messages < 1:
            raise InputError("--batch and --max-messages must be >= 1")
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        db.engine.dispose()
        result = chained_dispatch(
            store,
            campaign,
            JsonlMailbox(mailbox),
            limiter=TokenBucket(rate, max(1, int(rate))),
            max_messages=max_messages,
            batch=batch,
        )
        console.print(
            f"sent {result.sent}, failed {result.failed}, gave up {result.dead}",
            highlight=False,
        )
        _status(SqlCampaignStore(store), campaign)


def chained_dispatch(
    store: Path,
    campaign_id: str,
    sender: Callable[[OutboxMessage], None],
    *,
    limiter: TokenBucket | None = None,
    max_messages: int = 10_000,
    batch: int = 200,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> DispatchResult:
    """:func:`provguard.campaign.outbox.dispatch` in batches of ``batch`` notices, each batch's
    outbox marks, target moves, snapshot and :data:`DISPATCH_KIND` entry in one transaction
    (:func:`chained_operation`; entry fields ``sent``, ``failed``, ``dead``). A crash inside a
    batch rolls its marks back: its notices are delivered again next time with the same
    ids (at-least-once; :class:`JsonlMailbox` drops the duplicates). Every batch's entry is
    signed when the folder has the key. Returns the totals."""
    sent = failed = dead = 0
    while sent + failed + dead < max_messages:
        size = min(batch, max_messages - sent - failed - dead)
        got: list[DispatchResult] = []

        def op(
            bound: SqlCampaignStore, size: int = size, got: list[DispatchResult] = got
        ) -> Mapping[str, object]:
            r = dispatch(bound, campaign_id, sender, now=now, limiter=limiter, max_messages=size)
            got.append(r)
            return {"sent": r.sent, "failed": r.failed, "dead": r.dead}

        entry = chained_operation(store, campaign_id, DISPATCH_KIND, op, at=now())
        _sign(store, entry)
        r = got[0]
        sent, failed, dead = sent + r.sent, failed + r.failed, dead + r.dead
        console.print(
            f"batch: sent {r.sent}, failed {r.failed}, gave up {r.dead}; audit entry "
            f"#{entry.seq} ({DISPATCH_KIND})",
            highlight=False,
        )
        if r.sent + r.failed + r.dead < size:
            break
    return DispatchResult(sent, failed, dead)


@campaign_app.command("rescan")
def rescan(
    store: StoreOpt,
    platform: Annotated[Path, typer.Option(help="Platform export folder (Parquet tables).")],
    campaign: IdOpt = "default",
    at: AtOpt = None,
    ignore_after_days: Annotated[
        int, typer.Option(help="Days (>= 0) before ignored/escalated.")
    ] = 7,
    profiles: Annotated[
        Path | None,
        typer.Option(
            help="The app profiles to compare (Parquet with app_id, subject_id, handle, "
            "avatar_key); default: the data store's profiles beside the control store "
            "(<dir>/data/profiles.parquet, attested against the audit chain: PG210 when "
            "edited), else the export's app_profiles. Another file needs --why."
        ),
    ] = None,
    why: Annotated[
        str | None,
        typer.Option(
            "--why",
            help="TEXT: why --profiles FILE (not the store's attested profiles) is the app's "
            "profiles; required with such a file, recorded and shown in report section 3c.",
        ),
    ] = None,
    new_export: Annotated[
        str | None,
        typer.Option(
            "--new-export",
            help="REASON: accept a platform export whose provider side differs from the one "
            "recorded (the platform published a new export); recorded in the audit chain.",
        ),
    ] = None,
) -> None:
    """Scan again; changed profiles leave the campaign, persistent copies are ignored/escalated.

    The provider side of the export must be the one the chain records for the campaign
    (PG411 otherwise, unless --new-export REASON); the rescan's entry is chained with the
    state change. --at lies between the campaign's newest operation and now (PG100), and the
    store's profiles are attested (PG210) unless --profiles FILE --why TEXT names another
    file (shown as unattested in report section 3c)."""
    with user_errors():
        when = _at(at)
        db = SqlCampaignStore(store)
        row = db.campaign(campaign)
        snapshots = db.history(campaign)
        db.engine.dispose()
        started = row["created_at"]
        check_rescan_time(
            when,
            started=started if started.tzinfo else started.replace(tzinfo=UTC),
            newest=snapshots[-1][0] if snapshots else None,
            now=datetime.now(UTC),
            ignore_after_days=ignore_after_days,
        )
        plat = read_platform(platform)
        export = export_digests(platform, plat.provider_profiles, plat.pictures)
        recorded, recorded_seq = recorded_baseline(store, campaign)
        override = check_export(recorded, recorded_seq, export.provider, new_export)
        apps, compared = _app_profiles(store, profiles, plat.app_profiles, platform, why)
        scan = scan_profiles(apps, plat.provider_profiles, hash_picture_table(plat.pictures))
        hits = scan.filter(pc.field("copy_match")).select(["app_id", "subject_id", "provider"])
        still = {(r["app_id"], r["subject_id"], r["provider"]) for r in hits.to_pylist()}
        moved: dict[str, int] = {}

        def op(bound: SqlCampaignStore) -> Mapping[str, object]:
            moved.update(
                bound.apply_rescan(
                    campaign, still, when, ignore_after=timedelta(days=ignore_after_days)
                )
            )
            return {
                "moved": dict(sorted(moved.items())),
                "still_matching": len(still),
                "ignore_after_days": ignore_after_days,
                "export": export.payload(),
                "export_recorded_seq": recorded_seq,
                "new_export": override,
                "profiles": compared,
            }

        entry = chained_operation(store, campaign, RESCAN_KIND, op, at=when)
        console.print(
            " ".join(f"{k}: {v}" for k, v in sorted(moved.items())) or "no change",
            highlight=False,
        )
        how = (
            f"a new export ({override['reason']})"
            if override is not None
            else f"the export recorded in entry #{recorded_seq}"
        )
        console.print(
            f"audit entry #{entry.seq} ({RESCAN_KIND}): compared {compared['source']} profiles "
            f"with {how}",
            highlight=False,
        )
        _sign(store, entry)
        _status(SqlCampaignStore(store), campaign)


@campaign_app.command("status")
def status(store: StoreOpt, campaign: IdOpt = "default") -> None:
    """Progress over time: state counts after every operation."""
    with user_errors():
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        for when, op, counts in db.history(campaign):
            console.print(
                f"{when.isoformat()} {op:9} " + " ".join(f"{k}={v}" for k, v in counts.items())
            )
        console.print(
            "outbox: " + " ".join(f"{k}={v}" for k, v in sorted(db.outbox_counts(campaign).items()))
        )


@campaign_app.command("history")
def history(
    store: StoreOpt,
    subject: Annotated[int, typer.Option(help="The data subject's id.")],
    app: Annotated[str, typer.Option(help="The client app.")],
    provider: Annotated[str, typer.Option(help="The provider whose copy matched.")],
    campaign: IdOpt = "default",
) -> None:
    """Every state change of one target (app, subject, provider), oldest first."""
    with user_errors():
        db = SqlCampaignStore(store)
        db.campaign(campaign)
        rows = db.events(campaign, (app, subject, provider))
        if not rows:
            raise InputError(f"no target ({app}, {subject}, {provider}) in campaign '{campaign}'")
        for e in rows:
            console.print(
                f"{e['at'].isoformat()} {e['from_state'] or '-':9} -> {e['to_state']:9} "
                f"{e['note'] or ''}"
            )
