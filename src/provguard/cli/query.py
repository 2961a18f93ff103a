"""``provguard query``: run one SQL statement under the policy, labelled and masked."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Annotated

import typer

from provguard.cli.common import DEFAULT_POLICY_DIR, console, handles_errors
from provguard.cli.policy import AnyAppOpt, _parse_time, load_policy_with_events
from provguard.cli.policy import _check_apps as check_apps
from provguard.dataplane import LabelledStore
from provguard.errors import InputError
from provguard.provenance import OriginRegistry
from provguard.sqlgen import QueryError, QueryPolicy, SchemaRegistry
from provguard.sqlgen.schema import job_schema

query_app = typer.Typer(help="Policy-aware SQL over the labelled data plane.")


@query_app.command()
@handles_errors
def query(
    sql: Annotated[str, typer.Argument(help="One SELECT or CREATE TABLE ... AS SELECT.")],
    app: Annotated[str, typer.Option(help="Client app running the query (douyin, ...).")],
    purpose: Annotated[str, typer.Option(help="Purpose, e.g. social.friend_recommendation.")],
    store: Annotated[
        Path, typer.Option(help="Folder of labelled Parquet tables (the job's out/data).")
    ] = Path("out/demo/data"),
    action: Annotated[str, typer.Option(help="Action asked of the PDP (use, derive).")] = "use",
    at: Annotated[
        str | None, typer.Option(help="Evaluate the policy at this date/time (default: now).")
    ] = None,
    policy: Annotated[
        Path, typer.Option("--policy", "-p", help="Policy bundle file or folder.")
    ] = DEFAULT_POLICY_DIR,
    schema: Annotated[
        Path | None, typer.Option(help="Extra provenance schema (YAML/JSON) for more tables.")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="duckdb (default), spark (local[2]) or postgres (--pg-url).")
    ] = "duckdb",
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
    data store (the job's output folder)."""
    if not store.is_dir():
        raise InputError(f"no data store at {store} (run `provguard run` first)")
    base = job_schema()
    if schema is not None:
        base = extend_schema(base, SchemaRegistry.load(schema), schema, store)
    ls = LabelledStore(store, base=base)
    if control_store is None and (store.parent / "control.db").is_file():
        control_store = store.parent / "control.db"
    policy_set = load_policy_with_events(policy, control_store)
    # a misspelt --app would be not_applicable everywhere: refused queries would run
    check_apps(policy_set, app, None, any_app)
    qp = QueryPolicy(
        policy_set,
        ls.registry,
        app=app,
        purpose=purpose,
        at=_parse_time(at),
        action=action,
        hash_key=os.environ.get(hash_key_env) or None,
        hash_key_source=f"${hash_key_env}",
    )
    spark = None
    pg = None
    if engine == "spark":
        from provguard.adapters.spark_engine import SparkEngine

        spark = SparkEngine()
    elif engine == "postgres":
        if not pg_url:
            raise InputError("--engine postgres needs --pg-url (or $PROVGUARD_PG_URL)")
        from provguard.adapters.data_postgres import PostgresEngine

        # a scratch schema of this run: the store's tables never overwrite the database's own
        pg = PostgresEngine(pg_url, schema=f"provguard_query_{uuid.uuid4().hex[:12]}")
    try:
        result = ls.query(sql, qp, engine=engine, spark=spark, postgres=pg)
    finally:
        if spark is not None:
            spark.stop()
        if pg is not None:
            pg.drop_schema()
            pg.close()
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


def extend_schema(
    base: SchemaRegistry, extra: SchemaRegistry, source: Path, store: Path
) -> SchemaRegistry:
    """``base`` plus the tables of ``extra`` (read from ``source``), which may only *add*
    tables: redefining a table of ``base`` (the job's built-in schema) or one created in
    ``store`` by ``CREATE TABLE AS`` (its labels sidecar) would relabel its columns, e.g.
    ``profiles.handle: {origins: [douyin]}`` launders WeChat handles as first-party. Raises
    :class:`~provguard.sqlgen.QueryError` (PG160) naming the tables, before anything is read."""
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
    for name, spec in extra.tables.items():
        base = base.with_table(name, spec)
    return base


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
