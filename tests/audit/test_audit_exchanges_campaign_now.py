"""Fresh user 11, H3 and M2, on a real folder: the main job on the first 600 lines of the real
ego-Facebook graph (16 sign-ins over HTTP, Duoshan's 16 token exchanges under the 2019
injunction, a remediation campaign notified and dispatched).

H3: ``grants.db``'s ``transfer_attempts`` (section 3a's token exchanges by outcome and rule)
must agree with the chained ``grant.transfer`` entries. M2: with no campaign operation after
the chained snapshot, ``campaign_targets`` (section 3c's "Now" row) must equal it. Each edit
below is made by hand, as an operator with write access to the files could, and must be named
by ``check_registry`` / ``check_store`` / ``provguard audit verify`` and withheld by
``provguard report --store``'s model and HTML.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.campaign_sqlite import SqlCampaignStore
from provguard.adapters.control_sqlite import check_registry, check_store
from provguard.audit.crosscheck import CrossCheckResult, VerifiedRange
from provguard.cli.audit import audit_app
from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html

runner = CliRunner()


def _sql(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db)
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def _rows(db: Path, query: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    rows = con.execute(query).fetchall()
    con.close()
    return [tuple(r) for r in rows]


def _registry(folder: Path) -> CrossCheckResult:
    n = SqliteAuditLog(folder / "control.db", create=False).count()
    return check_registry(folder / "grants.db", folder / "control.db", verified=VerifiedRange(1, n))


def _verify(folder: Path) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", "--log", str(folder / "control.db")])
    return r.exit_code, " ".join(r.output.split())


def _section(html: str, name: str) -> str:
    start = html.index(f'aria-labelledby="{name}">')
    part = html[start : html.index("</section>", start)]
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", part)).split())


def _outcomes(folder: Path) -> Counter[tuple[str, bool]]:
    return Counter(
        (str(e), bool(x))
        for e, x in _rows(folder / "grants.db", "SELECT effect, excepted FROM transfer_attempts")
    )


def test_the_untouched_folder_has_no_discrepancy(folder: Path) -> None:
    outcomes = _outcomes(folder)
    # the run's exchanges: some denied by the injunction, some grandfathered (first use before
    # the order), so each edit below changes a real figure
    assert outcomes[("deny", False)] > 0 and outcomes[("permit", True)] > 0
    total = sum(outcomes.values())
    res = _registry(folder)
    assert res.ok, res.message()
    t = res.table("transfer_attempts")
    assert t is not None and (t.rows, t.entries, t.matched) == (total, total, total)
    store = check_store(folder / "control.db")
    assert store.ok, store.message()
    camp = store.table("campaigns")
    assert camp is not None and (camp.rows, camp.matched) == (1, 1)
    code, out = _verify(folder)
    assert code == 0, out
    assert f"cross-check transfer_attempts: {total} rows, {total} match the chain, 0" in out
    model = build_model_from_store(folder)
    assert model.chain_check is not None and model.chain_check.ok
    assert model.chain_check.total_discrepancies == 0
    g = model.sign_ins
    assert g is not None
    assert (g.exchanges_denied, g.exchanges_grandfathered) == (
        outcomes[("deny", False)],
        outcomes[("permit", True)],
    )
    assert model.campaigns is not None and len(model.campaigns) == 1


def test_denials_written_over_grandfathered_exchanges_are_named_and_withheld(
    folder: Path,
) -> None:
    """The finding's statement: every attempt set to deny by the injunction's rule."""
    permitted = sorted(
        str(a)
        for (a,) in _rows(
            folder / "grants.db", "SELECT attempt_id FROM transfer_attempts WHERE effect='permit'"
        )
    )
    assert permitted
    _sql(
        folder / "grants.db",
        "UPDATE transfer_attempts SET effect='deny', excepted=0, rule_id='no-login-grant-transfer'",
    )
    res = _registry(folder)
    assert res.failed_tables() == ("transfer_attempts",)
    found = {(d.key, d.field): (d.table_value, d.chain_value) for d in res.discrepancies}
    assert set(found) == {(a, f) for a in permitted for f in ("effect", "excepted")}
    assert {found[(a, "effect")] for a in permitted} == {("deny", "permit")}
    assert {found[(a, "excepted")] for a in permitted} == {("false", "true")}
    assert all(d.seq is not None for d in res.discrepancies)
    code, out = _verify(folder)
    assert code == 1 and "[PG340]" in out
    assert f"transfer_attempts[{permitted[0]}].effect: table has 'deny'" in out
    model = build_model_from_store(folder)
    assert model.sign_ins is None
    assert model.chain_check is not None and model.chain_check.failed("transfer_attempts")
    html = render_html(model)
    text = _section(html, "s-signins")
    assert "[PG340] Withheld:" in text and "transfer_attempts table disagrees" in text
    assert "grandfathered" not in text and "denied" not in text
    summary = _section(html, "s-summary")
    assert "transfer_attempts" in summary and "token exchanges" not in summary


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("effect", "'permit'"),
        ("excepted", "1"),
        ("rule_id", "'separate-consent-for-provision'"),
        ("instrument_id", "'pipl-art-23'"),
        ("grant_id", "'g-forged'"),
        ("to_app", "'kuaishou'"),
        ("from_app", "'duoshan'"),
        ("kind", "'account_link'"),
        ("at", "'2019-03-01 00:00:00.000000'"),
    ],
)
def test_each_compared_field_of_a_denied_attempt_is_named(
    folder: Path, column: str, value: str
) -> None:
    ((attempt, before),) = _rows(
        folder / "grants.db",
        f"SELECT attempt_id, {column} FROM transfer_attempts WHERE effect='deny' "
        "ORDER BY attempt_id LIMIT 1",
    )
    _sql(
        folder / "grants.db",
        f"UPDATE transfer_attempts SET {column} = {value}"
        + (", excepted = 0" if column == "effect" else "")
        + f" WHERE attempt_id = '{attempt}'",
    )
    res = _registry(folder)
    assert res.failed_tables() == ("transfer_attempts",)
    (d,) = res.discrepancies
    assert (d.table, d.key, d.field) == ("transfer_attempts", attempt, column)
    assert d.chain_value is not None and d.seq is not None
    if column in ("effect", "excepted"):
        assert (d.table_value, d.chain_value) == (
            ("permit", "deny") if column == "effect" else ("true", "false")
        )
    elif column == "at":
        assert d.table_value == "2019-03-01T00:00:00+00:00" and d.chain_value != d.table_value
    else:
        assert (d.table_value, d.chain_value) == (value.strip("'"), str(before))
    assert build_model_from_store(folder).sign_ins is None


def test_a_deleted_and_an_inserted_attempt_are_named(folder: Path) -> None:
    ((attempt, effect),) = _rows(
        folder / "grants.db",
        "SELECT attempt_id, effect FROM transfer_attempts WHERE effect='deny' "
        "ORDER BY attempt_id LIMIT 1",
    )
    _sql(
        folder / "grants.db",
        f"DELETE FROM transfer_attempts WHERE attempt_id = '{attempt}'",
        "INSERT INTO transfer_attempts (attempt_id, grant_id, kind, from_app, to_app, at, "
        "effect, excepted, rule_id, instrument_id, explanation) VALUES ('forged', 'g1', "
        "'token_exchange', 'douyin', 'duoshan', '2019-06-30 00:00:00.000000', 'permit', 1, "
        "'no-login-grant-transfer', 'cn-tj-binhai-2019-douyin-duoshan', 'grandfathered')",
    )
    res = _registry(folder)
    assert [str(d) for d in res.discrepancies] == [
        "transfer_attempts[forged].effect: table has 'permit', the chain has nothing",
        f"transfer_attempts[{attempt}].effect: table has nothing, entry "
        f"#{res.discrepancies[1].seq} has '{effect}'",
    ]


def test_an_edit_backed_by_an_appended_unsigned_entry_is_named(folder: Path) -> None:
    """Signed coverage: appending a matching ``grant.transfer`` without the signing key (the
    newest entry per attempt wins) does not vouch for the edited row."""
    ((attempt, seq, payload),) = _rows(
        folder / "control.db",
        "SELECT json_extract(payload, '$.attempt'), seq, payload FROM audit_log "
        "WHERE kind = 'grant.transfer' AND payload LIKE '%\"effect\":\"deny\"%' "
        "ORDER BY seq LIMIT 1",
    )
    body = json.loads(str(payload))
    reason = body["decision"]["reasons"][0]
    body["decision"]["effect"] = "permit"
    body["decision"]["reasons"] = [{**reason, "effect": "permit", "outcome": "excepted"}]
    log = SqliteAuditLog(folder / "control.db", create=False)
    forged = log.append("grant.transfer", body, datetime(2019, 6, 30, tzinfo=UTC))
    log.close()
    _sql(
        folder / "grants.db",
        f"UPDATE transfer_attempts SET effect='permit', excepted=1 WHERE attempt_id='{attempt}'",
    )
    assert forged.seq > int(str(seq))
    code, out = _verify(folder)
    assert code == 1 and "[PG340]" in out
    assert f"transfer_attempts[{attempt}].signature" in out
    assert f"entry #{forged.seq} is not covered by a signed checkpoint" in out


def test_campaign_targets_edited_to_changed_are_named_even_after_an_unchained_snapshot(
    folder: Path,
) -> None:
    control = folder / "control.db"
    ((campaign, states),) = _rows(
        control, "SELECT json_extract(payload, '$.campaign_id'), json_extract(payload, "
        "'$.states') FROM audit_log WHERE kind = 'campaign'"
    )  # fmt: skip
    chained = {k: v for k, v in json.loads(str(states)).items() if v}
    assert chained.get("notified", 0) > 0
    _sql(control, "UPDATE campaign_targets SET state='changed' WHERE state='notified'")
    res = check_store(control)
    assert res.failed_tables() == ("campaigns",)
    (d,) = res.discrepancies
    now = dict(chained)
    now["changed"] = now.pop("notified")
    assert (d.key, d.field) == (campaign, "campaign_targets")
    assert d.table_value == ", ".join(f"{k} {v}" for k, v in sorted(now.items()))
    assert d.chain_value == ", ".join(f"{k} {v}" for k, v in sorted(chained.items()))
    code, out = _verify(folder)
    assert code == 1 and f"campaigns[{campaign}].campaign_targets: table has" in out
    model = build_model_from_store(folder)
    assert model.campaigns is None and model.chain_check is not None
    assert model.chain_check.failed("campaigns") and model.sign_ins is not None
    text = _section(render_html(model), "s-campaigns")
    assert "[PG340] Withheld: the control store's campaigns table disagrees" in text
    assert "Now" not in text
    # a rescan through the store API writes its snapshot without a chain entry (as `provguard
    # campaign rescan` did before fresh user 11's M3): no longer "not chain-backed" but a
    # discrepancy -- the newest snapshot and the Now row are not the chained states
    _sql(control, "UPDATE campaign_targets SET state='notified' WHERE state='changed'")
    assert check_store(control).ok
    db = SqlCampaignStore(control)
    moved = db.apply_rescan(
        str(campaign), [], datetime(2019, 7, 30, tzinfo=UTC), ignore_after=timedelta(days=30)
    )
    db.engine.dispose()
    assert moved == {"notified->changed": chained["notified"]}
    res = check_store(control)
    assert sorted(d.field for d in res.discrepancies) == ["campaign_targets", "history"]
    model = build_model_from_store(folder)
    assert model.campaigns is None
