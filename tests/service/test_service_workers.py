"""``provguard serve --workers 2``: two uvicorn worker processes, two audit writers, one chain --
no decision lost or duplicated, and the chain verifies after a graceful stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.service.app import (
    SETTINGS_ENV,
    ServiceSettings,
    app_from_environment,
    settings_to_environment,
)
from provguard.service.auth import hash_key
from provguard.service.errors import ServiceError

from .conftest import DENY_BODY

ROOT = Path(__file__).parents[2]
KEY = "workers-test-key"
KEY_ENTRY = {"name": "w", "app": "douyin", "role": "app", "sha256": hash_key(KEY)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_two_workers_share_one_chain(store: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [KEY_ENTRY]}))
    before = SqliteAuditLog(store / "control.db", create=False).count()
    port = _free_port()
    settings = ServiceSettings(store=store, policy=ROOT / "policies", keys=keys)
    # what 'provguard serve --workers 2' runs (its flag wiring: test_serve_cli_wires_workers)
    code = (
        "import uvicorn; uvicorn.run('provguard.service.app:app_from_environment', "
        f"factory=True, workers=2, host='127.0.0.1', port={port}, log_level='warning', "
        "timeout_worker_healthcheck=120)"
    )
    cmd = [sys.executable, "-c", code]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SETTINGS_ENV: settings_to_environment(settings)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)

        def post(i: int) -> int:
            body = {**DENY_BODY, "audit_context": {"req": f"w{i}"}}
            r = httpx.post(url + "/v1/decisions", json=body, headers={"X-API-Key": KEY}, timeout=30)
            assert r.status_code == 200, r.text
            return i

        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(post, range(60)))
        assert len(done) == 60
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = SqliteAuditLog(store / "control.db", create=False)
    reqs = [
        e.payload["context"].get("req")
        for e in log.entries(kind="decision")
        if isinstance(e.payload.get("context"), dict) and "req" in e.payload["context"]
    ]
    assert sorted(reqs) == sorted(f"w{i}" for i in range(60))  # none lost, none twice
    assert log.count() == before + 60
    assert log.verify().ok


def test_serve_cli_wires_workers(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    import uvicorn

    from provguard.cli.serve import serve_cmd

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"keys": [KEY_ENTRY]}))
    calls: list[tuple[object, dict[str, object]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    cli = typer.Typer()
    cli.command()(serve_cmd)
    args = ["--store", str(store), "--keys", str(keys), "--policy", str(ROOT / "policies")]
    runner = CliRunner()
    r = runner.invoke(cli, [*args, "--workers", "3", "--port", "8999", "--audit-mode", "drop"])
    assert r.exit_code == 0, r.output
    target, kw = calls[-1]
    assert target == "provguard.service.app:app_from_environment"
    assert kw["factory"] is True and kw["workers"] == 3 and kw["port"] == 8999
    assert kw["host"] == "127.0.0.1"
    doc = json.loads(os.environ[SETTINGS_ENV])
    assert doc["store"] == str(store) and doc["audit_mode"] == "drop"
    app = app_from_environment()  # what each worker builds
    assert app.state.provguard.settings.audit_mode == "drop"
    assert app.state.provguard.settings.keys == keys
    app.state.provguard.close()
    r = runner.invoke(cli, [*args, "--workers", "1"])
    assert r.exit_code == 0 and not isinstance(calls[-1][0], str)  # one process: the app itself


def test_settings_for_workers_need_files(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .conftest import api_keys

    with pytest.raises(ServiceError, match="in-memory"):
        settings_to_environment(ServiceSettings(store=store, api_keys=api_keys()))
    monkeypatch.setenv(SETTINGS_ENV, "{not json")
    with pytest.raises(ServiceError, match="does not hold"):
        app_from_environment()
    monkeypatch.delenv(SETTINGS_ENV)
    with pytest.raises(ServiceError, match="is not set"):
        app_from_environment()
