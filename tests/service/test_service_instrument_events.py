"""F8: the HTTP service applies the control store's instrument events, as ``provguard decide
--store`` does, and re-reads them when they change (no restart)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from provguard.cli.policy import decide_cmd, instrument_app
from provguard.errors import ProvguardError
from provguard.service import ServiceSettings, create_app
from provguard.service.runner import ThreadedServer

from .conftest import DENY_BODY, api_keys, hdr

POLICIES = Path(__file__).parents[2] / "policies"
INJ = "cn-tj-binhai-2019-douyin-duoshan"
cli = typer.Typer()
cli.command("decide")(decide_cmd)
cli.add_typer(instrument_app, name="instrument")
runner = CliRunner()


def _record(db: Path, day: str, *extra: str) -> None:
    head = ["instrument", "event", "final_judgment", "--instrument", INJ, "--date", day]
    res = runner.invoke(cli, [*head, "--store", str(db), *extra])
    assert res.exit_code == 0, res.output


DECIDE = [
    "decide",
    "--app",
    "douyin",
    "--action",
    "use",
    "--purpose",
    "social.friend_recommendation",
    "--category",
    "user.avatar",
    "--origin",
    "wechat",
]


def _cli_decide(db: Path) -> str:
    res = runner.invoke(cli, [*DECIDE, "--store", str(db), "--policy", str(POLICIES)])
    assert res.exit_code == 0, res.output
    return res.output.split()[0]


def _settings(store: Path) -> ServiceSettings:
    return ServiceSettings(store=store, policy=POLICIES, api_keys=api_keys())


def test_an_event_recorded_while_the_service_runs_applies_to_the_next_request(
    store: Path,
) -> None:
    db = store / "control.db"
    with ThreadedServer(create_app(_settings(store))) as srv, httpx.Client() as http:
        before = http.post(f"{srv.url}/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
        assert before.json()["effect"] == "deny"
        assert http.get(f"{srv.url}/healthz").json()["policy"] == {
            "events": {},
            "events_error": None,
        }
        _record(db, "2019-05-01")
        after = http.post(f"{srv.url}/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
        assert after.status_code == 200
        assert after.json()["effect"] == "not_applicable"
        # the CLI on the same store says the same
        assert _cli_decide(db) == "NOT_APPLICABLE"
        assert http.get(f"{srv.url}/healthz").json()["policy"]["events"] == {
            f"{INJ}/final_judgment": "2019-05-01"
        }
        # a batch too, and an auditor asking about a day before the judgment still gets deny
        batch = http.post(
            f"{srv.url}/v1/decisions/batch",
            json={"requests": [DENY_BODY, DENY_BODY]},
            headers=hdr("douyin"),
        )
        assert [d["effect"] for d in batch.json()["decisions"]] == ["not_applicable"] * 2
        past = {**DENY_BODY, "app": "douyin", "at": "2019-04-30T12:00:00Z"}
        old = http.post(f"{srv.url}/v1/decisions", json=past, headers=hdr("auditor"))
        assert old.json()["effect"] == "deny"


def test_a_service_started_after_the_event_applies_it_and_a_replace_moves_it(
    store: Path,
) -> None:
    db = store / "control.db"
    _record(db, "2019-05-01")
    with TestClient(create_app(_settings(store))) as c:
        past = {**DENY_BODY, "app": "douyin", "at": "2019-06-30T00:00:00Z"}
        r = c.post("/v1/decisions", json=past, headers=hdr("auditor"))
        assert r.json()["effect"] == "not_applicable"
        # corrected to a later day: the order was in force on 2019-06-30 after all
        _record(db, "2019-07-01", "--replace")
        r = c.post("/v1/decisions", json=past, headers=hdr("auditor"))
        assert r.json()["effect"] == "deny"
        assert c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).json()["effect"] == (
            "not_applicable"
        )


def _tamper(db: Path) -> None:
    con = sqlite3.connect(db)
    con.execute("INSERT INTO instrument_events VALUES (?, 'final_judgment', '2019-04-01')", (INJ,))
    con.commit()
    con.close()


def test_a_hand_inserted_event_is_never_applied(store: Path) -> None:
    """A row without its chained audit entry (F4's edit) is refused by the store's own read
    function: the running service answers 503 with its code, decides nothing, and a fresh
    service does not start on such a store."""
    db = store / "control.db"
    with TestClient(create_app(_settings(store))) as c:
        assert c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin")).json()["effect"] == (
            "deny"
        )
        _tamper(db)
        r = c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
        assert r.status_code == 503
        assert r.json()["error"]["code"] in {"PG340", "PG310"}
        assert c.get("/healthz").json()["policy"]["events_error"] in {"PG340", "PG310"}
        batch = c.post("/v1/decisions/batch", json={"requests": [DENY_BODY]}, headers=hdr("douyin"))
        assert batch.status_code == 503
        # the hand-made row removed: the store verifies again, the order is in force again
        con = sqlite3.connect(db)
        con.execute("DELETE FROM instrument_events")
        con.commit()
        con.close()
        r = c.post("/v1/decisions", json=DENY_BODY, headers=hdr("douyin"))
        assert r.status_code == 200 and r.json()["effect"] == "deny"
        assert c.get("/healthz").json()["policy"]["events_error"] is None
        _tamper(db)
    with pytest.raises(ProvguardError) as info:
        create_app(_settings(store))
    assert info.value.code in {"PG340", "PG310"}
    # and the CLI refuses the same store
    res = runner.invoke(cli, [*DECIDE, "--store", str(db), "--policy", str(POLICIES)])
    assert res.exit_code != 0
