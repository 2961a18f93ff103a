"""Findings F3 / G11: grants.db evidence that one INSERT cannot forge.

A transfer under the 2019 injunction is grandfathered when ``recipient_first_use`` holds a
first use before the order; a PIPL Art. 23 transfer is lawful when ``separate_consents`` holds
an active consent; a token is usable while ``oauth_tokens`` says ``active``. Before session 7
these rows were plain data: one ``INSERT`` grandfathered a grant. Now

* **detect**: every first use, consent, withdrawal and token issue / revocation is an outbox
  event appended to the hash chain, and ``provguard audit verify`` (``check_registry``)
  compares the rows with them -- a forged or edited row is a named PG340 discrepancy;
* **prevent**: first-use and consent rows carry an HMAC tag under the registry key; the
  transfer gate ignores a row without a valid tag, so the forged first use does not
  grandfather (the injunction denies, and the refusal says why) and a forged consent does
  not permit.

Each test runs on SQLite and, with ``PROVGUARD_TEST_PG_URL`` set, on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, insert, update
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_registry
from provguard.adapters.grant_store import (
    SqlGrantStore,
    oauth_tokens,
    recipient_first_use,
    separate_consents,
)
from provguard.audit.crosscheck import CrossCheckResult, VerifiedRange
from provguard.audit.folder import export_checkpoint, folder_signing_key
from provguard.cli.audit import audit_app
from provguard.clock import FixedClock
from provguard.grants import GrantRecord, LabelledValue, TokenCipher, TransferGate, generate_key
from provguard.grants.errors import TransferDeniedError
from provguard.grants.model import IssuedToken
from provguard.grants.service import flush_outbox
from provguard.policy import load_policy_dir

from .conftest import ROOT, ReferencePDP

INJ = "cn-tj-binhai-2019-douyin-duoshan"
GRANTED = datetime(2019, 1, 20, 9, 30, tzinfo=UTC)
BEFORE_ORDER = datetime(2019, 2, 1, tzinfo=UTC)
T0 = datetime(2019, 6, 30, 10, 0, tzinfo=UTC)
IN_2022 = datetime(2022, 3, 1, 9, 0, tzinfo=UTC)
FULL: dict[str, Any] = {"purposes": ["account"], "method": "account_link", "categories": ["user"]}
REGISTRY_TABLES = [
    "oauth_grants",
    "revocation_jobs",
    "recipient_first_use",
    "separate_consents",
    "oauth_tokens",
    "transfer_attempts",
]
runner = CliRunner()


class _Refusals:
    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, object]]] = []

    def append(self, kind: str, payload: Any) -> None:
        self.items.append((kind, dict(payload)))


@dataclass
class Registry:
    """A small registry as the service builds it, with its outbox appended to the chain in
    ``control.db`` of ``root``."""

    root: Path
    url: str
    store: SqlGrantStore
    gate: TransferGate
    clock: FixedClock
    rotated: str  # a token revoked by a rotation
    revoked: str  # a token revoked by RFC 7009 revocation
    live: str  # the token that replaced ``rotated``

    @property
    def log(self) -> Path:
        return self.root / "control.db"

    def flush(self) -> int:
        with SqliteAuditLog(self.log, clock=FixedClock(T0)) as log:
            return flush_outbox(self.store, log)

    def check(self) -> CrossCheckResult:
        n = SqliteAuditLog(self.log, create=False).count()
        return check_registry(self.url, self.log, verified=VerifiedRange(1, n))

    def sql(self, statement: Any) -> None:
        engine = create_engine(self.url if "://" in self.url else f"sqlite:///{self.url}")
        with engine.begin() as conn:
            conn.execute(statement)
        engine.dispose()


def _login(store: SqlGrantStore, gid: str, user: str) -> None:
    grant = GrantRecord(
        gid, "wechat", "douyin", f"o-{user}", f"u-{user}", "snsapi_userinfo", GRANTED
    )
    values = [
        LabelledValue(
            f"{gid}-nick", "user.name.nickname", "nickname", user, 1, frozenset(), GRANTED
        )
    ]
    store.record_login(
        grant,
        [IssuedToken("app_session", f"session-{gid}", T0 + timedelta(days=900))],
        values,
        GRANTED,
    )


@pytest.fixture
def registry(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.delenv("PROVGUARD_AUDIT_KEY", raising=False)
    root = tmp_path / "out"
    root.mkdir()
    clock = FixedClock(T0)
    store = SqlGrantStore(store_url, TokenCipher(generate_key()))
    for app, controller in (
        ("douyin", "operator of Douyin"),
        ("duoshan", "operator of Duoshan"),
        ("kuaishou", "operator of Kuaishou"),
    ):
        store.register_app(app, controller, f"{app}-secret")
    gate = TransferGate(
        store, ReferencePDP(load_policy_dir(ROOT / "policies")), _Refusals(), clock=clock
    )
    _login(store, "g1", "alice")
    _login(store, "g2", "bob")
    _login(store, "g3", "carol")
    store.record_first_use("g1", "duoshan", BEFORE_ORDER)  # genuine: grandfathered
    store.record_separate_consent("g2", "duoshan", T0, "consent screen v3", **FULL)
    store.withdraw_separate_consent("g2", "duoshan", T0 + timedelta(hours=1))
    store.record_separate_consent("g1", "duoshan", IN_2022, "consent screen v4", **FULL)
    first = store.rotate_token(
        "g1", IssuedToken("access", "provider-access-1", T0 + timedelta(hours=2)), T0
    )
    live = store.rotate_token(
        "g1", IssuedToken("access", "provider-access-2", T0 + timedelta(hours=4)), T0
    )
    revoked = store.issue_token(
        "g3", IssuedToken("access", "provider-access-3", T0 + timedelta(hours=2)), T0
    )
    store.revoke_token(revoked, T0)
    reg = Registry(root, store_url, store, gate, clock, first, revoked, live)
    # a decided transfer: g3 -> duoshan is not grandfathered (no first use) and is denied
    g3 = store.grant("g3")
    assert g3 is not None
    _attempt, decision = gate._decide_and_record("account_link", g3, "duoshan", None)
    assert decision.effect == "deny"
    assert reg.flush() > 0
    try:
        yield reg
    finally:
        store.close()


def test_an_untouched_registry_has_no_discrepancy(registry: Registry) -> None:
    res = registry.check()
    assert [t.table for t in res.tables] == REGISTRY_TABLES
    assert res.ok, res.message()
    by = {t.table: (t.rows, t.matched) for t in res.tables}
    assert by["recipient_first_use"] == (1, 1)
    assert by["separate_consents"] == (2, 2)
    assert by["oauth_tokens"] == (6, 6)  # 3 sessions, 2 rotated access tokens, 1 issued
    statuses = {r[0]: r[1] for r in _token_status(registry)}
    assert statuses[registry.rotated] == "revoked" and statuses[registry.revoked] == "revoked"
    assert statuses[registry.live] == "active"


def _token_status(registry: Registry) -> list[tuple[str, str]]:
    from sqlalchemy import select

    engine = create_engine(registry.url if "://" in registry.url else f"sqlite:///{registry.url}")
    with engine.connect() as conn:
        rows = [
            (r[0], r[1])
            for r in conn.execute(select(oauth_tokens.c.token_id, oauth_tokens.c.status))
        ]
    engine.dispose()
    return rows


def test_a_forged_first_use_is_named(registry: Registry) -> None:
    registry.sql(
        insert(recipient_first_use).values(
            grant_id="g2", recipient="duoshan", first_used_at=BEFORE_ORDER
        )
    )
    res = registry.check()
    assert not res.ok and res.failed_tables() == ("recipient_first_use",)
    (d,) = res.discrepancies
    assert str(d) == (
        "recipient_first_use[g2/duoshan].first_used_at: table has "
        "'2019-02-01T00:00:00+00:00', the chain has nothing"
    )


def test_a_first_use_moved_earlier_is_named(registry: Registry) -> None:
    registry.sql(
        update(recipient_first_use)
        .where(recipient_first_use.c.grant_id == "g1")
        .values(first_used_at=datetime(2019, 1, 21, tzinfo=UTC))
    )
    (d,) = registry.check().discrepancies
    assert (d.table, d.key, d.field) == ("recipient_first_use", "g1/duoshan", "first_used_at")
    assert (d.table_value, d.chain_value) == (
        "2019-01-21T00:00:00+00:00",
        "2019-02-01T00:00:00+00:00",
    )
    assert d.seq is not None


def test_a_deleted_first_use_is_named(registry: Registry) -> None:
    registry.sql(delete(recipient_first_use).where(recipient_first_use.c.grant_id == "g1"))
    (d,) = registry.check().discrepancies
    assert str(d).startswith(
        "recipient_first_use[g1/duoshan].first_used_at: table has nothing, entry #"
    )


def test_a_forged_consent_is_named(registry: Registry) -> None:
    registry.sql(
        insert(separate_consents).values(
            grant_id="g3",
            recipient="duoshan",
            given_at=T0,
            evidence="consent screen v3",
            consent_id="c-forged",
            purposes='["account"]',
            method="account_link",
            categories='["user"]',
        )
    )
    (d,) = registry.check().discrepancies
    assert str(d) == (
        "separate_consents[g3/duoshan].given_at: table has '2019-06-30T10:00:00+00:00', "
        "the chain has nothing"
    )


def test_an_erased_withdrawal_is_named(registry: Registry) -> None:
    registry.sql(
        update(separate_consents)
        .where(separate_consents.c.grant_id == "g2")
        .values(withdrawn_at=None)
    )
    (d,) = registry.check().discrepancies
    assert (d.table, d.key, d.field, d.table_value) == (
        "separate_consents",
        "g2/duoshan",
        "withdrawn_at",
        None,
    )
    assert d.chain_value == "2019-06-30T11:00:00+00:00" and d.seq is not None


def test_a_widened_consent_is_named(registry: Registry) -> None:
    registry.sql(
        update(separate_consents)
        .where(separate_consents.c.grant_id == "g1")
        .values(categories='["user", "user.avatar"]')
    )
    (d,) = registry.check().discrepancies
    assert (d.key, d.field, d.table_value, d.chain_value) == (
        "g1/duoshan",
        "categories",
        "user,user.avatar",
        "user",
    )


@pytest.mark.parametrize("which", ["rotated", "revoked"])
def test_a_revoked_token_made_active_again_is_named(registry: Registry, which: str) -> None:
    token = getattr(registry, which)
    registry.sql(
        update(oauth_tokens).where(oauth_tokens.c.token_id == token).values(status="active")
    )
    (d,) = registry.check().discrepancies
    kind = "grant.token_rotated" if which == "rotated" else "grant.token_revoked"
    assert (d.table, d.key, d.field, d.table_value, d.chain_value) == (
        "oauth_tokens",
        token,
        "status",
        "active",
        f"revoked ({kind})",
    )


def test_a_token_inserted_by_hand_is_named(registry: Registry) -> None:
    registry.sql(
        insert(oauth_tokens).values(
            token_id="t-forged",
            grant_id="g2",
            kind="exchanged",
            digest="0" * 64,
            ciphertext=b"x",
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
            audience="duoshan",
            status="active",
        )
    )
    (d,) = registry.check().discrepancies
    assert str(d) == "oauth_tokens[t-forged].grant_id: table has 'g2', the chain has nothing"


# ------------------------------------------------------------------------------ prevention


def test_a_forged_first_use_does_not_grandfather(registry: Registry) -> None:
    g1, g2 = registry.store.grant("g1"), registry.store.grant("g2")
    assert g1 is not None and g2 is not None
    genuine = registry.gate.decide(g1, "duoshan", T0)
    assert genuine.effect == "permit" and genuine.excepted  # the real first use grandfathers
    registry.sql(
        insert(recipient_first_use).values(
            grant_id="g2", recipient="duoshan", first_used_at=BEFORE_ORDER
        )
    )
    assert registry.store.first_use("g2", "duoshan") == BEFORE_ORDER  # the row is there ...
    at, why = registry.store.attested_first_use("g2", "duoshan")
    assert at is None and why is not None and "has no evidence tag" in why
    forged = registry.gate.decide(g2, "duoshan", T0)  # ... and is no evidence
    assert forged.effect == "deny" and not forged.excepted
    assert {r.instrument_id for r in forged.determining} == {INJ}
    attempt, _ = registry.gate._decide_and_record("account_link", g2, "duoshan", None)
    assert attempt.effect == "deny"
    assert (
        "recorded first use of grant g2 by duoshan at 2019-02-01T00:00:00+00:00 has no evidence tag"
        in (attempt.explanation)
    )
    # the transfer's outbox event names the ignored row; the denial records no first use
    registry.flush()
    res = registry.check()
    assert [d.key for d in res.discrepancies] == ["g2/duoshan"]  # still the forged row only


def test_a_copied_tag_does_not_move_a_first_use(registry: Registry) -> None:
    """The tag covers the time: an UPDATE to an earlier date, keeping the tag, is no
    evidence either."""
    registry.sql(
        update(recipient_first_use)
        .where(recipient_first_use.c.grant_id == "g1")
        .values(first_used_at=datetime(2019, 1, 21, tzinfo=UTC))
    )
    at, why = registry.store.attested_first_use("g1", "duoshan")
    assert at is None and why is not None and "wrong evidence tag" in why


def test_a_denied_exchange_says_why(registry: Registry) -> None:
    registry.sql(
        insert(recipient_first_use).values(
            grant_id="g2", recipient="duoshan", first_used_at=BEFORE_ORDER
        )
    )
    g2 = registry.store.grant("g2")
    assert g2 is not None
    token = registry.store.issue_token(
        "g2", IssuedToken("app_session", "session-g2-b", T0 + timedelta(days=1)), T0
    )
    assert token
    with pytest.raises(TransferDeniedError) as info:
        registry.gate._transfer("account_link", "session-g2-b", "duoshan")
    assert INJ in str(info.value) and "has no evidence tag" in str(info.value)


def test_a_forged_consent_does_not_permit(registry: Registry) -> None:
    """PIPL Art. 23 (the gate's built-in check, from 2021-11-01): g1 is grandfathered for
    duoshan and holds a genuine consent; g3 is not -- its forged first use and forged consent
    together still do not make the transfer lawful."""
    g1 = registry.store.grant("g1")
    assert g1 is not None
    assert registry.gate.decide(g1, "duoshan", IN_2022 + timedelta(days=1)).effect == "permit"
    registry.sql(
        update(separate_consents)
        .where(separate_consents.c.grant_id == "g2")
        .values(withdrawn_at=None)  # the withdrawal erased
    )
    records, problems = registry.store.attested_consents("g2", "duoshan")
    assert records == [] and len(problems) == 1 and "wrong evidence tag" in problems[0]
    registry.sql(
        insert(separate_consents).values(
            grant_id="g3",
            recipient="duoshan",
            given_at=T0,
            evidence="consent screen v3",
            consent_id="c-forged",
            purposes='["account"]',
            method="account_link",
            categories='["user"]',
        )
    )
    records, problems = registry.store.attested_consents("g3", "duoshan")
    assert records == [] and "has no evidence tag" in problems[0]
    assert len(registry.store.consent_records("g3", "duoshan")) == 1  # the raw view keeps it


# ------------------------------------------------------------------------------ audit verify


def test_audit_verify_names_the_forgery_and_requires_signatures(registry: Registry) -> None:
    """``provguard audit verify --grant-db`` prints the new tables' lines and fails PG340 on a
    forged first use; with the folder's key, an entry appended without it (a forged
    ``grant.first_use`` matching the forged row) is a ``signature`` discrepancy (I-2)."""
    key, _ = folder_signing_key(registry.root)
    with SqliteAuditLog(registry.log, create=False) as log:
        export_checkpoint(log.sign_checkpoint(key), registry.root)
    args = ["verify", "--log", str(registry.log), "--grant-db", registry.url]
    r = runner.invoke(audit_app, args)
    out = " ".join(r.output.split())
    assert r.exit_code == 0, out
    for table, n in (("recipient_first_use", 1), ("separate_consents", 2), ("oauth_tokens", 6)):
        assert f"cross-check {table}: {n} rows, {n} match the chain, 0 discrepancies; every" in out
    registry.sql(
        insert(recipient_first_use).values(
            grant_id="g2", recipient="duoshan", first_used_at=BEFORE_ORDER
        )
    )
    r = runner.invoke(audit_app, args)
    out = " ".join(r.output.split())
    assert r.exit_code == 1 and "[PG340]" in out
    assert (
        "recipient_first_use[g2/duoshan].first_used_at: table has '2019-02-01T00:00:00+00:00'"
        in out
    )
    with SqliteAuditLog(registry.log, create=False) as log:
        forged = log.append(
            "grant.first_use",
            {"grant": "g2", "recipient": "duoshan", "first_used_at": BEFORE_ORDER.isoformat()},
        )
    r = runner.invoke(audit_app, args)
    out = " ".join(r.output.split())
    assert r.exit_code == 1, out
    assert (
        f"recipient_first_use[g2/duoshan].signature: table has 'recorded', entry #{forged.seq} "
        "has 'entry #" in out
    )


def test_a_hand_inserted_outbox_event_is_not_chained(registry: Registry) -> None:
    """The forger's next step: the forged row plus a forged ``grant.first_use`` outbox row,
    for the next flush to append (and the service to sign) as the registry's own event. The
    outbox row has no tag, so the flush appends ``grant.outbox_rejected`` instead and the
    forged first use stays a discrepancy."""
    from provguard.adapters.grant_store import grant_outbox
    from provguard.grants.service import OUTBOX_REJECTED_KIND

    registry.sql(
        insert(recipient_first_use).values(
            grant_id="g2", recipient="duoshan", first_used_at=BEFORE_ORDER
        )
    )
    payload = (
        '{"first_used_at": "2019-02-01T00:00:00+00:00", "grant": "g2", "recipient": "duoshan"}'
    )
    registry.sql(
        insert(grant_outbox).values(
            event_id="e-forged",
            kind="grant.first_use",
            payload=payload,
            created_at=T0,
            state="new",
        )
    )
    (row,) = registry.store.outbox()
    assert row["event_id"] == "e-forged" and row["authentic"] is False
    assert registry.flush() == 0  # nothing appended as the registry's event
    with SqliteAuditLog(registry.log, create=False) as log:
        (entry,) = list(log.entries(kind=OUTBOX_REJECTED_KIND))
        assert list(log.entries(kind="grant.first_use"))[-1].payload["grant"] == "g1"
    assert entry.payload["event_id"] == "e-forged" and entry.payload["kind"] == "grant.first_use"
    assert registry.store.outbox() == []  # marked rejected, not retried
    (d,) = registry.check().discrepancies
    assert (d.key, d.field, d.chain_value) == ("g2/duoshan", "first_used_at", None)
    # a genuine event's payload edited in the outbox before the flush is refused the same way
    registry.store.record_first_use("g3", "kuaishou", T0)
    registry.sql(
        update(grant_outbox)
        .where(grant_outbox.c.state == "new")
        .values(payload=payload.replace("g2", "g3").replace("duoshan", "kuaishou"))
    )
    assert [r["authentic"] for r in registry.store.outbox()] == [False]


def test_a_replayed_tag_passes_the_gate_but_not_the_chain(registry: Registry) -> None:
    """The limit of the tag, and why the chain check stays: a withdrawn consent restored to its
    earlier genuine state *with its earlier tag* (saved before the withdrawal) verifies again,
    but the chained withdrawal still names the row."""
    from sqlalchemy import select

    engine = create_engine(registry.url if "://" in registry.url else f"sqlite:///{registry.url}")
    registry.store.record_separate_consent("g3", "duoshan", T0, "consent screen v3", **FULL)
    with engine.connect() as conn:
        saved = conn.execute(
            select(separate_consents.c.evidence_mac).where(separate_consents.c.grant_id == "g3")
        ).scalar_one()
    engine.dispose()
    assert registry.store.withdraw_separate_consent("g3", "duoshan", T0 + timedelta(hours=2))
    registry.flush()
    assert registry.check().ok
    registry.sql(
        update(separate_consents)
        .where(separate_consents.c.grant_id == "g3")
        .values(withdrawn_at=None, evidence_mac=saved)
    )
    records, problems = registry.store.attested_consents("g3", "duoshan")
    assert len(records) == 1 and records[0].withdrawn_at is None and problems == []
    (d,) = registry.check().discrepancies
    assert (d.key, d.field, d.table_value, d.chain_value) == (
        "g3/duoshan",
        "withdrawn_at",
        None,
        "2019-06-30T12:00:00+00:00",
    )


def test_a_token_set_back_to_active_is_refused(registry: Registry) -> None:
    """Prevention for tokens: a live token's row is tagged, every revocation clears the tag,
    so the rotated-away provider token set back to ``active`` by hand is refused."""
    from provguard.grants.errors import ExpiredGrantError

    now = T0 + timedelta(minutes=5)
    assert registry.store.find_token("provider-access-2", now).token_id == registry.live
    with pytest.raises(ExpiredGrantError, match="token revoked"):
        registry.store.find_token("provider-access-1", now)
    registry.sql(
        update(oauth_tokens)
        .where(oauth_tokens.c.token_id == registry.rotated)
        .values(status="active")
    )
    with pytest.raises(ExpiredGrantError, match="without a valid status tag"):
        registry.store.find_token("provider-access-1", now)
    # a live token's expiry moved by hand breaks its tag too
    registry.sql(
        update(oauth_tokens)
        .where(oauth_tokens.c.token_id == registry.live)
        .values(expires_at=T0 + timedelta(days=400))
    )
    with pytest.raises(ExpiredGrantError, match="without a valid status tag"):
        registry.store.find_token("provider-access-2", now)
