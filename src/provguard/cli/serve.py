"""``provguard serve`` (the HTTP service on loopback) and ``provguard keys add | list |
revoke`` (API keys).

Mount: ``app.command("serve")(serve_cmd)`` and ``app.add_typer(keys_app, name="keys")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from provguard.cli.common import console, user_errors

keys_app = typer.Typer(
    name="keys", help="API keys of the HTTP service.", no_args_is_help=True, add_completion=False
)


@keys_app.command("add")
def keys_add(
    file: Annotated[Path, typer.Option("--file", help="The API key file (JSON, digests only).")],
    name: Annotated[str, typer.Option(help="A unique name for the key (shown in audit entries).")],
    app: Annotated[str, typer.Option(help="The client app the key acts for (role app).")] = "",
    role: Annotated[str, typer.Option(help="'app' (one client app) or 'auditor'.")] = "app",
    policy: Annotated[
        Path, typer.Option(help="Policy folder: its apps are registered client apps.")
    ] = Path("policies"),
    grant_db: Annotated[
        str | None,
        typer.Option(help="Grant registry (SQLite file or URL): its client apps count too."),
    ] = None,
    any_app: Annotated[
        bool, typer.Option("--any-app", help="Allow an app that is not registered.")
    ] = False,
) -> None:
    """Create a key, store its SHA-256 digest in FILE and print the key once.

    The app must be a registered client app -- one the policy names (``known_apps`` or a
    rule's ``app``) or one of the grant registry's client apps -- unless --any-app. Key names
    are unique in FILE. Errors: PG550 (duplicate name, unregistered app), PG100.
    """
    from provguard.errors import InputError
    from provguard.service.auth import add_key

    with user_errors():
        if role not in ("app", "auditor"):
            raise InputError("--role must be 'app' or 'auditor'")
        known = None if any_app or role != "app" else _registered_apps(policy, grant_db)
        key = add_key(
            file,
            name=name,
            app=app,
            role="app" if role == "app" else "auditor",
            known_apps=known,
        )
    typer.echo(key)


def _registered_apps(policy: Path, grant_db: str | None) -> set[str]:
    """Apps the policy folder names plus the grant registry's client apps."""
    from provguard.grants.views import GrantViews
    from provguard.policy import load_policy_dir

    apps = set(load_policy_dir(policy).known_apps())
    if grant_db:
        views = GrantViews(None, grant_db)
        try:
            apps.update(views.client_apps())
        finally:
            views.close()
    return apps


@keys_app.command("list")
def keys_list(
    file: Annotated[Path, typer.Option("--file", help="The API key file.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """List the keys of FILE: name, app, role, created, status (active / revoked at) and the
    first 12 hex digits of the key's SHA-256 digest (the key itself is never stored)."""
    import json

    from rich.table import Table

    from provguard.service.auth import list_keys

    with user_errors():
        records = list_keys(file)
    if as_json:
        for r in records:
            doc = r.to_json()
            doc["sha256"] = r.sha256[:12]
            doc["status"] = "active" if r.active else "revoked"
            typer.echo(json.dumps(doc, sort_keys=True))
        return
    table = Table(title=f"API keys in {file}")
    for col in ("name", "app", "role", "created (UTC)", "status", "sha256"):
        table.add_column(col)
    for r in records:
        created = r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else "-"
        status = "active" if r.revoked_at is None else f"revoked {r.revoked_at:%Y-%m-%d %H:%M}"
        table.add_row(r.name, r.app or "-", r.role, created, status, r.sha256[:12])
    console.print(table)
    console.print(
        f"{sum(r.active for r in records)} active, {sum(not r.active for r in records)} revoked"
    )


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The name of the key to revoke.")],
    file: Annotated[Path, typer.Option("--file", help="The API key file.")],
    store: Annotated[
        Path,
        typer.Option(help="Output folder whose audit log (control.db) records the revocation."),
    ],
) -> None:
    """Revoke the key NAME: a service serving FILE answers it 401 from its next request on.
    The revocation is appended to the audit log of STORE (kind ``api_key.revoked``: name,
    app, role, digest prefix, time) and, when the folder's signing key is at hand
    ($PROVGUARD_AUDIT_KEY, else STORE/audit-key.pem, matching STORE/audit.pub), that entry
    alone is signed and exported as STORE/checkpoint.json (Ed25519;
    :func:`provguard.audit.folder.cover_own_entry`: never over entries someone else wrote
    that no signed checkpoint covers; stderr says why nothing was signed). Errors: PG550 (no
    such key, did you mean; already revoked), PG200 (no audit log at STORE)."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.audit.folder import cover_own_entry
    from provguard.errors import StoreError
    from provguard.service.auth import revoke_key

    with user_errors():
        db = store / "control.db"
        if not db.is_file():
            raise StoreError(f"no control store at {db}: the revocation must be audit-logged")
        log = SqliteAuditLog(db, create=False)
        try:
            record = revoke_key(file, name)
            assert record.revoked_at is not None
            entry = log.append(
                "api_key.revoked",
                {
                    "name": record.name,
                    "app": record.app,
                    "role": record.role,
                    "sha256_prefix": record.sha256[:12],
                    "revoked_at": record.revoked_at.isoformat(),
                    "key_file": str(file.resolve()),
                },
            )
            try:
                signed = cover_own_entry(log, store.resolve(), entry).message()
            except OSError as exc:  # the revocation is recorded; only the export failed
                signed = f"warning: entry #{entry.seq} is recorded but not signed: {exc}"
        finally:
            log.close()
    console.print(
        f"revoked key '{record.name}' (app {record.app or '-'}, role {record.role}); "
        f"audit entry #{entry.seq}"
    )
    typer.echo(signed, err=True)


def serve_cmd(
    store: Annotated[Path, typer.Option("--store", help="Output folder with control.db.")],
    keys: Annotated[Path, typer.Option("--keys", help="API key file ('provguard keys add').")],
    policy: Annotated[Path, typer.Option(help="Policy folder.")] = Path("policies"),
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=0, max=65535)] = 8765,
    audit_mode: Annotated[
        str, typer.Option(help="block (never drop), drop (bounded buffer) or off.")
    ] = "block",
    queue_size: Annotated[int, typer.Option(help="Audit queue bound (entries).", min=1)] = 10_000,
    ack: Annotated[str, typer.Option(help="Answer once the entry is 'queued' or 'committed'.")] = (
        "queued"
    ),
    signing_key: Annotated[
        Path | None,
        typer.Option(
            help="Ed25519 private key the audit writer signs its own entries with (at "
            "shutdown, every --checkpoint-every entries, POST /v1/audit/checkpoints). Default: "
            "the folder's key ($PROVGUARD_AUDIT_KEY, else STORE/audit-key.pem matching "
            "STORE/audit.pub), unless --no-folder-key."
        ),
    ] = None,
    folder_key: Annotated[
        bool,
        typer.Option(
            "--folder-key/--no-folder-key",
            help="Without --signing-key, sign the service's own entries with the folder's key.",
        ),
    ] = True,
    public_key: Annotated[
        Path | None,
        typer.Option(
            help="Public key to check stored checkpoints with; entries covered by a checkpoint "
            "it verifies count as reviewed for the writer's own signing."
        ),
    ] = None,
    checkpoint_every: Annotated[
        int,
        typer.Option(
            help="Sign a checkpoint every N entries (0: only at shutdown and on request).", min=0
        ),
    ] = 0,
    mask_handles: Annotated[bool, typer.Option(help="Mask raw handles in audit entries.")] = False,
    workers: Annotated[
        int, typer.Option(help="uvicorn worker processes (each with its own audit writer).", min=1)
    ] = 1,
    grant_db: Annotated[
        str | None,
        typer.Option(help="Grant registry (SQLite file or URL): enables token exchange/revoke."),
    ] = None,
    token_key_file: Annotated[
        Path | None,
        typer.Option(help="The grant registry's token key ($PROVGUARD_TOKEN_KEY wins)."),
    ] = None,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            help="Largest request body accepted, bytes (413 PG560 beyond; docs/service.md "
            "'Limits').",
            min=1,
        ),
    ] = 1_048_576,
) -> None:
    """Serve decisions, grants, token exchange and revocation, scans, campaigns, audit
    verification, the report and the dashboard over HTTP."""
    import os
    import secrets

    import uvicorn

    from provguard.errors import InputError
    from provguard.service.app import (
        SETTINGS_ENV,
        ServiceSettings,
        create_app,
        settings_to_environment,
    )

    with user_errors():
        if audit_mode not in ("block", "drop", "off"):
            raise InputError("--audit-mode must be block, drop or off")
        if ack not in ("queued", "committed"):
            raise InputError("--ack must be queued or committed")
        mode: Literal["block", "drop", "off"] = audit_mode  # type: ignore[assignment]
        acked: Literal["queued", "committed"] = ack  # type: ignore[assignment]
        settings = ServiceSettings(
            store=store,
            policy=policy,
            keys=keys,
            audit_mode=mode,
            queue_size=queue_size,
            ack=acked,
            signing_key=signing_key,
            sign_with_folder_key=folder_key,
            public_key=public_key,
            checkpoint_every=checkpoint_every,
            mask_handles=mask_handles,
            grant_db=grant_db,
            token_key_file=token_key_file,
            max_body_bytes=max_body_bytes,
            # one HMAC key for the dashboard sessions of all workers (each would pick its own)
            session_secret=secrets.token_hex(32) if workers > 1 else None,
        )
        # open once here so that a bad folder, policy or key file fails before binding
        app = create_app(settings)
    console.print(
        f"provguard serving {store} on http://{host}:{port} with {workers} worker(s) "
        "(dashboard: /dashboard)"
    )
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
        return
    app.state.provguard.close()
    os.environ[SETTINGS_ENV] = settings_to_environment(settings)
    uvicorn.run(
        "provguard.service.app:app_from_environment",
        factory=True,
        workers=workers,
        # a worker imports provguard and opens its stores before it answers the supervisor's
        # ping; on a busy 2-core machine that takes longer than uvicorn's default 5 s
        timeout_worker_healthcheck=120,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
    )
