"""``provguard query``: run one SQL statement under the policy, labelled and masked."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import AuditEntry
from provguard.audit.enforced import policy_digest
from provguard.cli.common import DEFAULT_POLICY_DIR, console, handles_errors
from provguard.cli.policy import AnyAppOpt, _parse_time, load_policy_with_events
from provguard.cli.policy import _check_apps as check_apps
from provguard.dataplane import LabelledStore
from provguard.dataplane.attest import StoreAttestation, check_table_file, statement_tables
from provguard.dataplane.store import (
    AuditLabelsLedger,
    QueryResult,
    bind_data_store,
    bound_control_store,
    check_binding,
)
from provguard.errors import (
    EngineError,
    InputError,
    PolicyMismatchError,
    StoreError,
    UnattestedLabelsError,
)
from provguard.policy import PolicySet, load_policy_dir
from provguard.provenance import OriginRegistry
from provguard.sqlgen import QueryError, QueryPolicy, QueryRefused, SchemaRegistry, TableSpec
from provguard.sqlgen.schema import UNLABELLED_JOB_TABLES, job_schema
from provguard.sqlgen.statement import describe_statement
from provguard.sqlgen.verdict import STORE_ACTION

query_app = typer.Typer(help="Policy-aware SQL over the labelled data plane.")

#: the tables provguard's writers write into a data folder (the main job, ``data load``): each
#: is read only while its file matches the newest entry recording it (session 8)
JOB_WRITTEN_TABLES = frozenset(job_schema().tables) | UNLABELLED_JOB_TABLES


@query_app.command()
@handles_errors
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT or CREATE TABLE ... AS SELECT.")],
    app: Annotated[str, typer.Option(help="Client app running the query (douyin, ...).")],
    purpose: Annotated[str, typer.Option(help="Purpose, e.g. social.friend_recommendation.")],
    store: Annotated[
        Path, typer.Option(help="Folder of labelled Parquet tables (the job's out/data).")
    ] = Path("out/demo/data"),
    action: Annotated[
        str,
        typer.Option(
            help="Declared action (use, display, store, derive, transfer). Every query is also"
            " checked as 'use' (it reads values), a CREATE TABLE AS as 'store'; the stricter"
            " answer wins."
        ),
    ] = "use",
    at: Annotated[
        str | None, typer.Option(help="Evaluate the policy at this date/time (default: now).")
    ] = None,
    policy: Annotated[
        list[Path] | None,
        typer.Option(
            "--policy",
            "-p",
            help="Policy bundle file or folder (repeatable: the union; default policies/). Every"
            " instrument recorded in the control store must be among them.",
        ),
    ] = None,
    schema: Annotated[
        Path | None, typer.Option(help="Extra provenance schema (YAML/JSON) for more tables.")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(help="duckdb (default), spark (--spark-master) or postgres (--pg-url)."),
    ] = "duckdb",
    spark_master: Annotated[
        str,
        typer.Option(
            "--spark-master",
            envvar="PROVGUARD_SPARK_MASTER",
            help="Spark master URL for --engine spark: local[2] (default) or a cluster such as"
            " spark://host:7077.",
        ),
    ] = "local[2]",
    spark_conf: Annotated[
        list[str] | None,
        typer.Option(
            "--spark-conf",
            help="Extra Spark setting KEY=VALUE for --engine spark (repeatable), e.g."
            " spark.driver.host=10.0.0.5 when the cluster must reach the driver.",
        ),
    ] = None,
    pg_url: Annotated[
        str | None,
        typer.Option(
            "--pg-url",
            envvar="PROVGUARD_PG_URL",
            help="PostgreSQL URL for --engine postgres (tables are loaded in a scratch schema).",
        ),
    ] = None,
    hash_key_env: Annotated[
        str,
        typer.Option(
            "--hash-key-env",
            help="Environment variable holding the key of the keyed 'hash' mask.",
        ),
    ] = "PROVGUARD_HASH_KEY",
    show_sql: Annotated[bool, typer.Option("--show-sql", help="Print the rewritten SQL.")] = False,
    raw_labels: Annotated[
        bool,
        typer.Option(
            "--raw-labels", help="Print labels as the stored 64-bit masks, not origin names."
        ),
    ] = False,
    limit: Annotated[int, typer.Option(help="Rows to print.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Rows as JSON lines.")] = False,
    any_app: AnyAppOpt = False,
    control_store: Annotated[
        Path | None,
        typer.Option(
            "--control-store",
            help="Control store (SQLite) whose recorded instrument events apply (default: the "
            "control.db beside the data store, if there is one).",
        ),
    ] = None,
) -> None:
    """Rewrite the query (lineage labels, masks, row filters) and run it; exit 2 if refused.

    Instrument events recorded with ``provguard instrument event`` (e.g. a final judgment that
    ends the injunction) apply: from ``--control-store``, else from ``control.db`` beside the
    data store (the job's output folder).

    Every run appends one ``query`` entry to the control store's audit log (what was asked,
    by which app for which purpose, the statement's SHA-256 and its shape without literals, the
    tables read and created, and the outcome: rows, or refused with code and rule ids). Without
    ``--control-store``, ``control.db`` beside the data store is used (made if missing, with a
    note on stderr); a missing ``--control-store`` file, or a read-only control store, is
    refused before anything is read.

    A query reads values, so it is checked as a ``use`` as well as the declared ``--action``
    (and a CREATE TABLE AS as a ``store``): the stricter answer wins.

    The data folder is bound to its control store (``<data>/_control_store.json``, written by
    ``provguard run`` or by the first query on an unbound folder that succeeds, once its audit
    entry is written; a refused or failed query binds nothing): another control store is
    refused (PG101). A CREATE TABLE AS records the written file's SHA-256 and its labels'
    spec digest in its audit entry; a derived table whose file or sidecar differs from the
    newest chained entry that wrote it (or that no entry wrote) is refused (PG210).

    Base tables (``profiles`` and the job's other tables) are read only while their file and
    labels sidecar match the newest entry of the writer that recorded them (``job.data``,
    ``data.load``, the ``data`` commands), and a ``--schema`` table only while its file and
    declaration match its ``provguard data register`` entry (PG210 otherwise); a table file
    that is a link or lies outside the data folder is refused (PG160). The entry records how
    each table was vouched for (``tables_attested``)."""
    if not store.is_dir():
        raise InputError(f"no data store at {store} (run `provguard run` first)")
    fresh = False
    beside = store.parent / "control.db"
    if control_store is None:  # the job's control.db beside the data; made if missing
        control_store = beside
        fresh = not control_store.exists()
    elif beside.exists() and control_store.resolve() != beside.resolve():
        # the data and its control store are a pair: a copy with a final judgment recorded
        # (or without the audit log) must not decide, or hide, a query on this data
        raise InputError(
            f"the data store {store} has its own control store {beside}: its instruments,"
            f" events and audit log apply to every query on this data, so --control-store"
            f" may not name another ({control_store})"
        )
    bound = check_binding(store, control_store)  # PG101 before anything is read or made
    audit_log = open_query_audit(control_store, create=fresh)
    if fresh:
        typer.echo(f"note: created control store {control_store} for the query audit", err=True)
    summary = describe_statement(sql)
    record: dict[str, object] = {
        "app": app,
        "purpose": purpose,
        "action": action,
        "actions_checked": [],
        "engine": engine,
        **({"spark_master": spark_master} if engine == "spark" else {}),
        "at": None,
        "store": str(store.resolve()),
        **summary.as_payload(),
        "tables_created": [],
    }
    with audit_log:
        try:
            result, ls = _run(
                sql,
                record,
                store=store,
                app=app,
                purpose=purpose,
                action=action,
                at=at,
                policy=policy,
                schema=schema,
                engine=engine,
                spark_setup=(spark_master, spark_settings(spark_conf or [])),
                pg_url=pg_url,
                hash_key_env=hash_key_env,
                any_app=any_app,
                control_store=control_store,
                tables=summary.tables_read,
            )
        except BaseException as exc:
            own = audit_log.append("query", {**record, **outcome_of(exc)})
            _cover_query_entry(audit_log, control_store, own)
            raise
        created = result.created or ("created" if result.rewritten.create_table else None)
        record["actions_checked"] = list(result.rewritten.actions)
        # which tables were read through the controller filter, and as which app
        record["controller_filters"] = dict(sorted(result.rewritten.controller_filters.items()))
        if result.rewritten.create_table and created != "kept":
            record["tables_created"] = [result.rewritten.create_table]
            # the written file's SHA-256 and the spec digest: what later reads check (I-3)
            record.update(ls.derived_labels_payload(result.rewritten.create_table))
        own = audit_log.append(
            "query",
            {
                **record,
                "outcome": "rows",
                "rows": result.table.num_rows,
                "created": created,
                "error_code": None,
                "rule_ids": [],
                "clause": None,
            },
        )
        _cover_query_entry(audit_log, control_store, own)
    if bound is None:  # only a query that ran, and whose entry is written, binds the folder
        bind_if_unbound(store, control_store)
    if show_sql:
        console.print(result.rewritten.sql, highlight=False, soft_wrap=True)
    labels = set(result.rewritten.label_columns)
    rows = result.table.slice(0, limit).to_pylist()
    if not raw_labels:
        rows = [
            {k: label_names(v, ls.registry) if k in labels else v for k, v in row.items()}
            for row in rows
        ]
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str, ensure_ascii=False))  # one line each, unwrapped
        return
    from rich.table import Table

    out = Table(*result.table.column_names)
    for row in rows:
        out.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(out)
    console.print(f"{result.table.num_rows} row(s)", highlight=False)
    unprotected = [
        c.name for c in result.rewritten.columns if not c.categories and not c.control_categories
    ]
    if unprotected:
        console.print(
            f"note: {', '.join(unprotected)}: no data category in the provenance schema"
            " (unprotected: labelled, never checked by the policy)",
            highlight=False,
        )
    for column in result.rewritten.columns:
        note = column.mask_note()
        if note is not None:
            console.print(f"note: {note}", highlight=False)
    name = result.rewritten.create_table
    if name:
        if result.created == "kept":
            console.print(
                f"table {name} already exists: kept as it is (IF NOT EXISTS), nothing written",
                highlight=False,
            )
        else:
            console.print(f"{result.created or 'created'} labelled table {name}", highlight=False)


def bind_unbound(store: Path, control_store: Path) -> None:
    """Bind the unbound data folder ``store`` to ``control_store``
    (:func:`~provguard.dataplane.store.bind_data_store`; a data folder made before bindings
    existed, or not by the main job), saying so on stderr; a data folder that cannot be
    written stays unbound, with a warning."""
    try:
        sid = bind_data_store(store, control_store)
    except StoreError as exc:
        typer.echo(f"warning: the data folder stays unbound to a control store: {exc}", err=True)
        return
    typer.echo(
        f"note: bound the data folder {store} to control store {control_store} (id {sid}):"
        " queries on it must now use that control store",
        err=True,
    )


def bind_if_unbound(store: Path, control_store: Path) -> None:
    """:func:`bind_unbound` unless ``store`` is bound by now (a concurrent command bound it
    while this one ran: its binding is kept, never overwritten). Called only after a command
    succeeded and its audit entry is written: a refused or failed command leaves an unbound
    data folder unbound (fresh user 9)."""
    if bound_control_store(store) is None:
        bind_unbound(store, control_store)


def _cover_query_entry(audit_log: SqliteAuditLog, control_store: Path, own: AuditEntry) -> None:
    """Sign and export a checkpoint covering the query's own entry ``own`` when the job's
    signing key is available (``$PROVGUARD_AUDIT_KEY`` or ``audit-key.pem`` beside the control
    store) and every earlier entry is already covered by a verified signed checkpoint
    (:func:`provguard.audit.folder.cover_own_entry`); else say on stderr why nothing was
    signed, naming entries #a–#b written by someone else. A query never signs what it did not
    write (findings I-1). A failure to sign is reported on stderr, never hides the query's own
    outcome."""
    from provguard.audit.folder import cover_own_entry
    from provguard.errors import ProvguardError

    try:
        coverage = cover_own_entry(audit_log, control_store.resolve().parent, own)
    except (ProvguardError, OSError) as exc:
        typer.echo(f"warning: the query's audit entry is recorded but not signed: {exc}", err=True)
        return
    typer.echo(coverage.message(), err=True)


def _run(
    sql: str,
    record: dict[str, object],
    *,
    store: Path,
    app: str,
    purpose: str,
    action: str,
    at: str | None,
    policy: list[Path] | None,
    schema: Path | None,
    engine: str,
    spark_setup: tuple[str, dict[str, str]],
    pg_url: str | None,
    hash_key_env: str,
    any_app: bool,
    control_store: Path | None,
    tables: tuple[str, ...],
) -> tuple[QueryResult, LabelledStore]:
    """Build the schema and the policy, then rewrite and run ``sql`` (fills ``record`` with
    the evaluation time and the actions checked as soon as they are known)."""
    base = job_schema()
    control = control_store or beside_of(store)
    declared: dict[str, TableSpec] = {}
    if schema is not None:
        extra = SchemaRegistry.load(schema)
        # the declarations a query ran under are evidence too (fresh user 11, H2)
        record["schema"] = {
            "path": str(schema.resolve()),
            "sha256": hashlib.sha256(schema.read_bytes()).hexdigest(),
            "tables": sorted(extra.tables),
        }
        declared = dict(extra.tables)
        # a declared table's file must be the data folder's own (no link to the provider's
        # export) before its schema is even read (fresh user 11, H2 variant; session 8)
        for name in sorted(declared):
            check_table_file(store, name)
        base = extend_schema(base, extra, schema, store)
    # base tables as their writers recorded them, declared ones as registered (session 8)
    attestation = StoreAttestation(
        store, control, base_tables=JOB_WRITTEN_TABLES, declared=declared
    )
    try:
        checked = attestation.check(statement_tables(sql))
    finally:
        attestation.close()
    record["tables_attested"] = {t: a.as_payload() for t, a in sorted(checked.items())}
    # derived tables are read only as the newest chained audit entry that wrote them says
    ls = LabelledStore(
        store, base=base, ledger=AuditLabelsLedger(control_store or beside_of(store))
    )
    policy_set = _load_policies(policy or [DEFAULT_POLICY_DIR], control_store)
    record["instruments"] = sorted(b.instrument.id for b in policy_set.bundles)
    record["policy_digest"] = policy_digest(policy_set)
    require_enforced_policy(control_store or beside_of(store), policy_set)
    require_recorded_instruments(policy_set, control_store)
    # a misspelt --app would be not_applicable everywhere: refused queries would run
    check_apps(policy_set, app, None, any_app)
    when = _parse_time(at)
    record["at"] = when.isoformat()
    # which instruments were in force for this answer, and the recorded events that decided it
    record["instrument_state"] = {
        b.instrument.id: {
            "in_force": b.instrument.in_force(when, policy_set.events),
            "events": {
                name: day.isoformat()
                for (iid, name), day in sorted(policy_set.events.items())
                if iid == b.instrument.id
            },
        }
        for b in policy_set.bundles
    }
    # a past evaluation time answers "what did the policy say then" (an order's start, a
    # judgment's end): recorded and said, so an enforcement run cannot quietly predate the order
    record["backdated"] = at is not None and when < datetime.now(UTC) - BACKDATE_TOLERANCE
    if record["backdated"]:
        typer.echo(
            f"note: evaluated at {when.isoformat()}, not now: the answer is the policy's at that"
            " time (recorded in the audit entry as backdated)",
            err=True,
        )
    qp = cli_query_policy(policy_set, ls, app, purpose, when, action, hash_key_env)
    record["actions_checked"] = list(
        qp.with_actions(STORE_ACTION).actions
        if record.get("statement_kind") == "create_table_as"
        else qp.actions
    )
    if record["backdated"]:
        now = cli_query_policy(
            policy_set, ls, app, purpose, datetime.now(UTC), action, hash_key_env
        )
        require_same_answer_now(sql, ls, qp, now)
    spark = None
    pg = None
    if engine == "spark":
        from provguard.adapters.spark_engine import SparkEngine

        master, settings = spark_setup
        spark = SparkEngine(master, conf=settings)
    elif engine == "postgres":
        if not pg_url:
            raise InputError("--engine postgres needs --pg-url (or $PROVGUARD_PG_URL)")
        from provguard.adapters.data_postgres import PostgresEngine

        # a scratch schema of this run (the store's tables never overwrite the database's
        # own), holding only the tables the statement reads
        pg = PostgresEngine(
            pg_url, schema=f"provguard_query_{uuid.uuid4().hex[:12]}", tables=tables
        )
    try:
        return ls.query(sql, qp, engine=engine, spark=spark, postgres=pg), ls
    finally:
        if spark is not None:
            spark.stop()
        if pg is not None:
            pg.drop_schema()
            pg.close()


def require_enforced_policy(control_store: Path, policy_set: PolicySet) -> None:
    """Refuse a policy that does not hold, byte for byte, every bundle file the store's job
    or data load enforced: the newest (signed, when ``audit.pub`` is beside the log)
    ``job.policy`` entry, or ``data.load`` entry with its policy record, of ``control_store``
    (:func:`provguard.audit.enforced.enforced_policy`). Extra bundles are allowed (they can
    only add denies). A store with no such entry takes any policy. Raises
    :class:`~provguard.errors.PolicyMismatchError` (PG103)."""
    from provguard.audit.enforced import enforced_policy, require_enforced_files

    if not control_store.is_file():
        return
    with SqliteAuditLog(control_store, create=False) as log:
        enforced = enforced_policy(log, control_store.resolve().parent, log.checkpoint().count)
    if enforced is None:
        return
    require_enforced_files(enforced, policy_set)


def require_same_answer_now(
    sql: str, ls: LabelledStore, then: QueryPolicy, now: QueryPolicy
) -> None:
    """Refuse a backdated query whose rewrite under the policy at ``then.at`` differs from its
    rewrite under the policy in force now: its rows are used now, so an evaluation time before
    an order took effect must not answer what the order forbids today (fresh user 10, M1).
    Identical rewrites (the usual case: the same instruments in force) run as asked.

    Raises :class:`~provguard.sqlgen.QueryRefused` (PG162) naming the columns whose masks
    differ, with today's refusing rules when the policy now refuses the query; any error of
    the rewrite at ``then.at`` itself is raised as it is."""
    past = ls.rewrite(sql, then)
    when = then.at.isoformat()
    try:
        current = ls.rewrite(sql, now)
    except QueryRefused as exc:
        raise QueryRefused(
            f"backdated to {when}, this query would answer what the policy in force now"
            f" refuses ({exc}); a backdated query runs only when today's policy answers it the"
            " same way",
            column=exc.column,
            rules=exc.rules,
            clause=exc.clause,
        ) from None
    if past.sql == current.sql:
        return
    differ = [
        a.name for a, b in zip(past.columns, current.columns, strict=False) if a.masks != b.masks
    ]
    raise QueryRefused(
        f"backdated to {when}, the policy answers this query differently than the policy in"
        f" force now ({'masks of ' + ', '.join(differ) if differ else 'row filters or labels'}"
        " differ); a backdated query runs only when today's policy answers it the same way",
        column=", ".join(differ),
        rules=(),
    )


def beside_of(store: Path) -> Path:
    """The control store beside the data folder ``store`` (the job's ``<out>/control.db``)."""
    return store.parent / "control.db"


def cli_query_policy(
    policy_set: PolicySet,
    ls: LabelledStore,
    app: str,
    purpose: str,
    at: datetime,
    action: str,
    hash_key_env: str,
) -> QueryPolicy:
    """The policy bound to one command line's (app, purpose, action, time) over ``ls``'s origin
    registry, with the ``hash`` mask's key read from ``$hash_key_env`` (None when unset)."""
    return QueryPolicy(
        policy_set,
        ls.registry,
        app=app,
        purpose=purpose,
        at=at,
        action=action,
        hash_key=os.environ.get(hash_key_env) or None,
        hash_key_source=f"${hash_key_env}",
    )


#: how far before now an explicit --at may be without counting as backdated (clock skew)
BACKDATE_TOLERANCE = timedelta(minutes=5)


def _load_policies(paths: list[Path], control_store: Path | None) -> PolicySet:
    """The union of the bundles under ``paths`` (each a file or folder), with the control
    store's recorded events applied (:func:`~provguard.cli.policy.load_policy_with_events`)."""
    # the recorded instruments are checked on the union (require_recorded_instruments)
    first = load_policy_with_events(paths[0], control_store, require_recorded=False)
    bundles = list(first.bundles)
    seen = {(b.instrument.id, b.path) for b in bundles}
    for path in paths[1:]:
        for b in load_policy_dir(path).bundles:
            if (b.instrument.id, b.path) not in seen:
                seen.add((b.instrument.id, b.path))
                bundles.append(b)
    return PolicySet(tuple(bundles), first.events)


def require_recorded_instruments(policy_set: PolicySet, control_store: Path | None) -> None:
    """Refuse (PG160) a policy that leaves out an instrument recorded in ``control_store`` (the
    job stores the instruments it enforced there): a query on that data is evaluated under
    every recorded instrument; ``--policy`` may add bundles, never drop one."""
    if control_store is None or not control_store.is_file():
        return
    from provguard.adapters.control_sqlite import SqlControlStore
    from provguard.policy.required import missing_instruments

    recorded = SqlControlStore(control_store).instrument_ids()
    missing = missing_instruments(policy_set, recorded)
    if missing:
        raise QueryError(
            f"the control store {control_store} records instrument(s) {', '.join(missing)}"
            " for this data, and --policy does not load them: a query is evaluated under every"
            " recorded instrument (--policy may add bundles, not drop one; give the folder"
            " with them, e.g. --policy policies --policy my-extra.yaml)"
        )


def spark_settings(pairs: list[str]) -> dict[str, str]:
    """``--spark-conf KEY=VALUE`` options as a dict (a later key wins). Raises
    :class:`InputError` for an item without ``=`` or with an empty key."""
    settings: dict[str, str] = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--spark-conf {item!r}: expected KEY=VALUE")
        settings[key.strip()] = value
    return settings


def open_query_audit(control_store: Path, *, create: bool = False) -> SqliteAuditLog:
    """The audit log of ``control_store`` (the control plane's SQLite file, ``control.db``),
    opened for appending ``query`` entries; ``create``: make the file if it is missing (the
    default control store beside a data store that has none), else a missing file is an error
    (a mistyped ``--control-store`` must not start a new, empty log). Raises
    :class:`~provguard.errors.InputError` (PG100) for a missing control store,
    :class:`~provguard.errors.StoreError` (PG200) when it or its folder is read-only (SQLite
    writes a journal beside the file) or it cannot be opened: a query that cannot be audited is
    not run."""
    if not create and not control_store.is_file():
        raise InputError(f"no control store at {control_store} (the output folder's control.db)")
    paths = [control_store.resolve().parent]
    if control_store.exists():
        paths.insert(0, control_store)
    for path in paths:
        if not _writable(path):
            raise StoreError(
                f"control store {control_store} is read-only ({path} cannot be written): every"
                " provguard query is recorded in its audit log, so no query runs without it;"
                " use a writable control store (--control-store)"
            )
    from provguard.adapters.audit_sqlite import SqliteAuditLog

    return SqliteAuditLog(control_store, synchronous="FULL")


def _writable(path: Path) -> bool:
    """Whether this process (its effective user) may write ``path``."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK)  # pragma: no cover - platforms without effective ids


def outcome_of(exc: BaseException) -> dict[str, object]:
    """The outcome fields of a query's audit entry for a run that raised ``exc``: ``refused``
    for a :class:`~provguard.sqlgen.QueryError` (PG160-PG162: the statement is not allowed
    under a policy) or an :class:`~provguard.errors.UnattestedLabelsError` (PG210: a derived
    table the audit log does not vouch for), ``error`` otherwise; the error's code and, for a
    refusal by the policy, the refusing rules and the clause; for an engine failure
    (:class:`~provguard.errors.EngineError`) ``engine_error`` -- the engine's error ``class``
    and ``message_withheld`` (true when the statement read a categorised column, so the
    message was not shown: an engine error that might have carried a protected value is
    marked as such). Messages are not recorded (an engine error can quote the statement's
    literals, or a value it read)."""
    code = getattr(exc, "code", None)
    refused = isinstance(exc, QueryError | UnattestedLabelsError | PolicyMismatchError)
    outcome: dict[str, object] = {
        "outcome": "refused" if refused else "error",
        "rows": None,
        "created": None,
        "error_code": code if isinstance(code, str) else type(exc).__name__,
        "rule_ids": list(exc.rules) if isinstance(exc, QueryRefused) else [],
        "clause": exc.clause if isinstance(exc, QueryRefused) else None,
    }
    if isinstance(exc, EngineError):
        outcome["engine_error"] = {"class": exc.engine_class, "message_withheld": exc.withheld}
    return outcome


# spec fields only provguard writes (sidecars of stored hashes / masks, CREATE TABLE AS)
_MANAGED_TABLE_FIELDS = ("hash_key_id", "labels_normalised", "labels_packed", "row_label")
_MANAGED_COLUMN_FIELDS = ("hash_column", "stored_masks", "derived")


def extend_schema(
    base: SchemaRegistry, extra: SchemaRegistry, source: Path, store: Path
) -> SchemaRegistry:
    """``base`` plus the tables of ``extra`` (read from ``source``), which may only *add*
    tables: redefining a table of ``base`` (the job's built-in schema) or one created in
    ``store`` by ``CREATE TABLE AS`` (its labels sidecar) would relabel its columns, e.g.
    ``profiles.handle: {origins: [douyin]}`` launders WeChat handles as first-party. Nor may it
    declare a job table without a provenance schema
    (:data:`~provguard.sqlgen.schema.UNLABELLED_JOB_TABLES`: ``picture_hashes``,
    ``profile_scan``, ...): their rows hold WeChat/QQ-derived values without their origins, and
    declaring them unprotected returned those values labelled ``unknown``. Raises
    :class:`~provguard.sqlgen.QueryError` (PG160) naming the tables, before anything is read."""
    unlabelled = sorted(set(extra.tables) & UNLABELLED_JOB_TABLES)
    if unlabelled:
        names = ", ".join(f"'{n}'" for n in unlabelled)
        raise QueryError(
            f"{source}: --schema may not declare {names}: each is a table the main job"
            " writes and has no provenance schema. Its rows hold values computed from platform"
            " data (picture hashes, handle similarities, scan and campaign results) but not the"
            " origins of those values, so no schema file can label them (declaring them"
            " unprotected would"
            " launder WeChat/QQ-derived data as 'unknown'); it cannot be queried under a policy"
        )
    managed = [
        f"{name}.{field}"
        for name, spec in extra.tables.items()
        for field in _MANAGED_TABLE_FIELDS
        if field in spec.model_fields_set
    ] + [
        f"{name}.{col}.{field}"
        for name, spec in extra.tables.items()
        for col, cs in spec.columns.items()
        for field in _MANAGED_COLUMN_FIELDS
        if field in cs.model_fields_set
    ]
    if managed:
        raise QueryError(
            f"{source}: --schema may not set {', '.join(sorted(managed))}: stored hashes,"
            " stored masks, normalised labels, row labels and derived-column marks are written"
            " by provguard when it computes them (LabelledStore.store_hashes / store_masks /"
            " normalise_labels, CREATE TABLE AS), never declared: a declared companion would be"
            " read as the masked value without being checked"
        )
    derived = set(LabelledStore(store, base=base).schema.tables) - set(base.tables)
    clash = sorted(set(extra.tables) & (set(base.tables) | derived))
    if clash:
        where = ", ".join(
            f"'{n}' ({'created in the store' if n in derived else 'built-in job schema'})"
            for n in clash
        )
        raise QueryError(
            f"{source}: --schema may only add tables; it redefines {where}. A table's"
            " provenance labels come from its own schema, and overriding them would relabel"
            " its values (e.g. platform handles as first-party): rename the table in the file"
        )
    ignored = _ignored_labels(extra, store)
    if ignored:
        raise QueryError(
            f"{source}: the files of {', '.join(sorted(ignored))} carry per-row provenance"
            f" labels ({'; '.join(f'{t}: {c}' for t, c in sorted(ignored.items()))}) that the"
            " declaration would ignore: a copy of a labelled table declared with constant"
            " origins would relabel its WeChat/QQ values (fresh user 11, H2). Declare each"
            " column's origins_column, or load the data with `provguard data load`"
        )
    for name, spec in extra.tables.items():
        base = base.with_table(name, spec)
    return base


def _ignored_labels(extra: SchemaRegistry, store: Path) -> dict[str, str]:
    """Table → the columns named like provguard's labels and companions (``*_origins``,
    ``*__origins``, ``*__hmac``, ``*__mask_*``; the job names ``profiles``' labels
    ``handle_origins``, ``avatar_origins``...) that its Parquet file in ``store`` holds but its
    ``--schema`` declaration does not read as an ``origins_column``. Only the files' schemas
    are read."""
    import pyarrow.parquet as pq

    found: dict[str, str] = {}
    for name, spec in extra.tables.items():
        path = store / f"{name}.parquet"
        if not path.is_file():
            continue
        try:
            names = set(pq.read_schema(path).names)
        except (OSError, ValueError):
            continue  # the query's own read reports an unreadable file
        read = {c.origins_column for c in spec.columns.values() if c.origins_column}
        if spec.rows is not None and spec.rows.origins_column:
            read.add(spec.rows.origins_column)
        label_like = {n for n in names if n.endswith(("_origins", "__hmac")) or "__mask_" in n}
        if label_like - read:
            found[name] = ", ".join(sorted(label_like - read))
    return found


def label_names(mask: object, registry: OriginRegistry) -> str | None:
    """A label as origin names in bit order joined by ``|`` (``wechat|qq``); ``-`` for 0 (no
    origin: an aggregate over no rows); None stays None. Bits the registry does not name are
    shown as ``bit<N>``."""
    if mask is None:
        return None
    m = int(mask)  # type: ignore[call-overload]
    if m == 0:
        return "-"
    known = registry.names
    names = []
    for bit in range(64):
        if m >> bit & 1:
            names.append(known[bit] if bit < len(known) else f"bit{bit}")
    return "|".join(names)
