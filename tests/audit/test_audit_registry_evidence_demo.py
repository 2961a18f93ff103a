"""Findings F3 / G11 on a real folder: the main job on the first 600 lines of the real
ego-Facebook graph (its grants stage signs 16 users in over HTTP, records their first uses
by Duoshan, lets Duoshan exchange tokens under the 2019 injunction, revokes and purges 4).

Each test tampers a copy of the folder's ``grants.db`` by hand, as an operator with write
access to the file could, and checks what ``provguard audit verify``, ``check_store``-style
``check_registry`` and ``provguard report --store`` say -- and that the transfer gate, opened
with the folder's own token key, does not take the forged first use as evidence.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_registry
from provguard.adapters.grant_store import SqlGrantStore
from provguard.audit.crosscheck import CrossCheckResult, VerifiedRange
from provguard.cli.audit import audit_app
from provguard.clock import FixedClock
from provguard.decide import Decision, Request, decide
from provguard.grants import TokenCipher, TransferGate
from provguard.policy import load_policy_dir
from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html

INJ = "cn-tj-binhai-2019-douyin-duoshan"
ORDER = datetime(2019, 3, 20, tzinfo=UTC)
runner = CliRunner()


def _sql(folder: Path, *statements: str) -> None:
    con = sqlite3.connect(folder / "grants.db")
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def _one(folder: Path, query: str) -> tuple[object, ...]:
    con = sqlite3.connect(folder / "grants.db")
    row = con.execute(query).fetchone()
    con.close()
    assert row is not None, query
    return tuple(row)


def _check(folder: Path) -> CrossCheckResult:
    n = SqliteAuditLog(folder / "control.db", create=False).count()
    return check_registry(folder / "grants.db", folder / "control.db", verified=VerifiedRange(1, n))


def _verify(folder: Path) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", "--log", str(folder / "control.db")])
    return r.exit_code, " ".join(r.output.split())


def _signins_section(folder: Path) -> tuple[object, str]:
    model = build_model_from_store(folder)
    html = render_html(model)
    start = html.index('aria-labelledby="s-signins">')
    part = html[start : html.index("</section>", start)]
    return model.sign_ins, " ".join(unescape(re.sub(r"<[^>]+>", " ", part)).split())


def _denied(folder: Path) -> tuple[str, str]:
    """A grant whose exchange to Duoshan the injunction denied (first use after the order),
    still active."""
    gid, to = _one(
        folder,
        "SELECT a.grant_id, a.to_app FROM transfer_attempts a JOIN oauth_grants g "
        "ON g.grant_id = a.grant_id WHERE a.effect = 'deny' AND g.status = 'active' "
        "ORDER BY a.grant_id LIMIT 1",
    )
    return str(gid), str(to)


def test_the_untouched_folder_agrees_and_its_evidence_is_attested(folder: Path) -> None:
    res = _check(folder)
    assert res.ok, res.message()
    by = {t.table: (t.rows, t.matched, t.entries) for t in res.tables}
    (first_uses,) = _one(folder, "SELECT count(*) FROM recipient_first_use")
    (tokens,) = _one(folder, "SELECT count(*) FROM oauth_tokens")
    assert int(first_uses) > 0 and int(tokens) > 0  # type: ignore[call-overload]
    assert by["recipient_first_use"][:2] == (first_uses, first_uses)
    assert by["oauth_tokens"][:2] == (tokens, tokens)
    code, out = _verify(folder)
    assert code == 0, out
    assert (
        f"cross-check recipient_first_use: {first_uses} rows, {first_uses} match the chain, 0"
        in out
    )
    assert f"cross-check oauth_tokens: {tokens} rows, {tokens} match the chain, 0" in out
    sign_ins, text = _signins_section(folder)
    assert sign_ins is not None and "Withheld" not in text
    # every first use the job recorded carries a valid tag under the folder's token key
    store = SqlGrantStore(folder / "grants.db", TokenCipher.from_env_or_file(folder / "token.key"))
    try:
        con = sqlite3.connect(folder / "grants.db")
        pairs = con.execute("SELECT grant_id, recipient FROM recipient_first_use").fetchall()
        con.close()
        for gid, rcpt in pairs:
            at, why = store.attested_first_use(gid, rcpt)
            assert at is not None and why is None
    finally:
        store.close()


class _Refusals:
    def append(self, kind: str, payload: object) -> None:
        raise AssertionError(f"unexpected refusal {kind}")


class _PDP:
    def __init__(self, repo_root: Path) -> None:
        self.policy = load_policy_dir(repo_root / "policies")

    def decide(self, req: Request) -> Decision:
        return decide(self.policy, req)


def test_a_forged_first_use_is_named_withheld_and_not_grandfathered(
    folder: Path, repo_root: Path
) -> None:
    gid, to = _denied(folder)
    (when,) = _one(
        folder, f"SELECT first_used_at FROM recipient_first_use WHERE grant_id = '{gid}'"
    )
    # the operator's one statement: the first use moved before the order
    _sql(
        folder,
        f"UPDATE recipient_first_use SET first_used_at = '2019-03-01 00:00:00.000000' "
        f"WHERE grant_id = '{gid}' AND recipient = '{to}'",
    )
    res = _check(folder)
    assert res.failed_tables() == ("recipient_first_use",)
    (d,) = res.discrepancies
    assert (d.key, d.field, d.table_value) == (
        f"{gid}/{to}",
        "first_used_at",
        "2019-03-01T00:00:00+00:00",
    )
    assert d.chain_value is not None and d.chain_value > ORDER.isoformat() and d.seq is not None
    assert str(when)[:10] == d.chain_value[:10]
    code, out = _verify(folder)
    assert (
        code == 1 and "[PG340]" in out and f"recipient_first_use[{gid}/{to}].first_used_at" in out
    )
    sign_ins, text = _signins_section(folder)
    assert sign_ins is None
    assert "[PG340] Withheld: the grant registry's recipient_first_use table disagrees" in text
    # prevention: the gate, with the folder's own key, does not take the edited row
    store = SqlGrantStore(folder / "grants.db", TokenCipher.from_env_or_file(folder / "token.key"))
    try:
        grant = store.grant(gid)
        assert grant is not None
        at, why = store.attested_first_use(gid, to)
        assert at is None and why is not None and "wrong evidence tag" in why
        gate = TransferGate(store, _PDP(repo_root), _Refusals(), clock=FixedClock(ORDER))
        d2 = gate.decide(grant, to, datetime(2019, 7, 1, tzinfo=UTC))
        assert d2.effect == "deny" and not d2.excepted
        assert INJ in {r.instrument_id for r in d2.determining}
    finally:
        store.close()


def test_an_inserted_first_use_and_consent_are_named(folder: Path) -> None:
    gid, _ = _denied(folder)
    _sql(
        folder,
        "INSERT INTO recipient_first_use (grant_id, recipient, first_used_at) "
        f"VALUES ('{gid}', 'kuaishou', '2019-02-01 00:00:00.000000')",
        "INSERT INTO separate_consents (grant_id, recipient, given_at, evidence, consent_id, "
        "purposes, method, categories) VALUES "
        f"('{gid}', 'duoshan', '2022-01-05 00:00:00.000000', 'screen', 'c1', '[\"account\"]', "
        "'account_link', '[\"user\"]')",
    )
    res = _check(folder)
    assert res.failed_tables() == ("recipient_first_use", "separate_consents")
    assert [str(d) for d in res.discrepancies] == [
        f"recipient_first_use[{gid}/kuaishou].first_used_at: table has "
        "'2019-02-01T00:00:00+00:00', the chain has nothing",
        f"separate_consents[{gid}/duoshan].given_at: table has '2022-01-05T00:00:00+00:00', "
        "the chain has nothing",
    ]
    sign_ins, text = _signins_section(folder)
    assert sign_ins is None and "separate_consents table disagrees" in text


def test_token_status_edits_are_named(folder: Path) -> None:
    (tid,) = _one(folder, "SELECT token_id FROM oauth_tokens WHERE kind = 'exchanged' LIMIT 1")
    _sql(folder, f"UPDATE oauth_tokens SET status = 'revoked' WHERE token_id = '{tid}'")
    (d,) = _check(folder).discrepancies
    assert (d.table, d.key, d.field, d.table_value, d.chain_value) == (
        "oauth_tokens",
        tid,
        "status",
        "revoked",
        "active",
    )
    # a token of a purged grant put back: its issuing entry is chained, but so is the purge
    _sql(folder, f"UPDATE oauth_tokens SET status = 'active' WHERE token_id = '{tid}'")
    (gid,) = _one(folder, "SELECT grant_id FROM oauth_grants WHERE status = 'purged' LIMIT 1")
    _sql(
        folder,
        "INSERT INTO oauth_tokens (token_id, grant_id, kind, digest, ciphertext, issued_at, "
        f"expires_at, audience, status) VALUES ('t-back', '{gid}', 'access', '{'0' * 64}', "
        "x'00', '2019-06-01 00:00:00.000000', '2030-01-01 00:00:00.000000', NULL, 'active')",
    )
    (d,) = _check(folder).discrepancies
    assert str(d) == f"oauth_tokens[t-back].grant_id: table has '{gid}', the chain has nothing"
