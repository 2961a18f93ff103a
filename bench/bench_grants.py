"""Grant registry throughput: token-exchange decisions/s and revocation-cascade rows/s, against
an anchor that runs the same SQL raw through SQLAlchemy Core.

Setup per back-end: G grants (WeChat origin, app douyin, 9 labelled values each, the shape of a
sandbox sign-in, plus one derived value) are written with ``SqlGrantStore.record_login``;
duoshan (another controller) and douyin are registered clients; half the grants have duoshan's
first use before the 2019 order (grandfathered).

Rows:

- ``exchange decide``: ``TransferGate.decide(grant, "duoshan", at)`` with the real PDP
  (``DecisionPoint`` over ``policies/``): the registry reads (controllers, consents, values'
  categories, first use) + one decision per category; anchor: the same SELECTs raw (Core).
- ``exchange decide+record``: the gate's whole token exchange after authentication
  (``TransferGate._transfer`` is not public: ``gate.link`` with the session token, which also
  authenticates the client, decides, writes the attempt, the token and the audit outbox row);
  anchor: the same SELECTs + INSERTs (attempt, token, outbox) raw in one transaction.
- ``cascade``: ``RevocationCascade.revoke`` + ``purge`` of every grant (batch 500, each step
  and batch its own transaction with its progress row and outbox event); rows = tokens + values
  + derived + label links deleted; anchor: per grant one transaction doing the same UPDATEs
  (quarantine) and DELETEs raw, without progress rows or events.

Ratio = provguard time / anchor time (> 1: what the bookkeeping costs). PostgreSQL runs too when
``PROVGUARD_TEST_PG_URL`` is set (a fresh database per run).

    .venv/bin/python bench/bench_grants.py [G]
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, delete, insert, select, text, update
from sqlalchemy.engine import Engine, make_url

from provguard.adapters import grant_store as gs
from provguard.adapters.grant_store import SqlGrantStore
from provguard.clock import FixedClock
from provguard.decide import DecisionPoint
from provguard.grants import RevocationCascade, TokenCipher, TransferGate, generate_key
from provguard.grants.crypto import new_token
from provguard.grants.errors import TransferDeniedError
from provguard.grants.model import GrantRecord, IssuedToken, LabelledValue
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry

AT = datetime(2019, 6, 30, 12, tzinfo=UTC)
FIELDS = [
    ("city", "user"),
    ("country", "user"),
    ("headimgurl", "user.avatar"),
    ("nickname", "user.name.nickname"),
    ("openid", "user.unique_id.openid"),
    ("privilege", "user"),
    ("province", "user"),
    ("sex", "user"),
    ("unionid", "user.unique_id.unionid"),
]


class NullAudit:
    def append(self, kind: str, payload: object) -> object:
        return None


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as d:
            yield str(Path(d) / "grants.db")
        return
    base = os.environ["PROVGUARD_TEST_PG_URL"]
    name = f"bench_grants_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def populate(store: SqlGrantStore, n: int) -> list[tuple[GrantRecord, str]]:
    mask = default_registry().mask(["wechat"])
    out = []
    for i in range(n):
        g = GrantRecord(
            secrets.token_hex(16), "wechat", "douyin", f"o{i:08d}", f"u{i:08d}", "snsapi", AT
        )
        session = new_token("pgs")
        values = [
            LabelledValue(
                secrets.token_hex(16), cat, f, f"{f}-{i}", mask, frozenset({g.grant_id}), AT
            )
            for f, cat in FIELDS
        ]
        tokens = [
            IssuedToken("access", new_token("wx"), AT + timedelta(hours=2)),
            IssuedToken("app_session", session, AT + timedelta(hours=2)),
            IssuedToken("refresh", new_token("wxr"), AT + timedelta(days=30)),
        ]
        stored = store.record_login(g, tokens, values, AT)
        store.add_derived("digest", "x", [values[3].value_id, values[2].value_id], AT)
        if i % 2 == 0:
            store.record_first_use(stored.grant_id, "duoshan", datetime(2019, 2, 1, tzinfo=UTC))
        out.append((stored, session))
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def anchor_decide_reads(engine: Engine, grants: list[GrantRecord]) -> None:
    with engine.connect() as conn:
        for g in grants:
            conn.execute(
                select(gs.client_apps.c.controller).where(gs.client_apps.c.app_id == g.app_id)
            ).first()
            conn.execute(
                select(gs.client_apps.c.controller).where(gs.client_apps.c.app_id == "duoshan")
            ).first()
            conn.execute(
                select(gs.separate_consents).where(
                    gs.separate_consents.c.grant_id == g.grant_id,
                    gs.separate_consents.c.recipient == "duoshan",
                )
            ).all()
            rows = conn.execute(
                select(gs.labelled_values).where(
                    gs.labelled_values.c.grant_id == g.grant_id,
                    gs.labelled_values.c.status == "active",
                )
            ).all()
            conn.execute(
                select(gs.value_grants).where(
                    gs.value_grants.c.value_id.in_([r.value_id for r in rows])
                )
            ).all()
            conn.execute(
                select(gs.recipient_first_use.c.first_used_at).where(
                    gs.recipient_first_use.c.grant_id == g.grant_id,
                    gs.recipient_first_use.c.recipient == "duoshan",
                )
            ).first()


def anchor_exchange(engine: Engine, grants: list[GrantRecord], cipher: TokenCipher) -> None:
    anchor_decide_reads(engine, grants)
    blob = cipher.encrypt("x" * 48)
    with engine.begin() as conn:
        for g in grants:
            conn.execute(
                insert(gs.transfer_attempts).values(
                    attempt_id=uuid.uuid4().hex,
                    grant_id=g.grant_id,
                    kind="account_link",
                    from_app="douyin",
                    to_app="duoshan",
                    at=AT,
                    effect="deny",
                    excepted=False,
                    rule_id="r",
                    instrument_id="i",
                    explanation="e",
                )
            )
            conn.execute(
                insert(gs.oauth_tokens).values(
                    token_id=uuid.uuid4().hex,
                    grant_id=g.grant_id,
                    kind="exchanged",
                    digest=uuid.uuid4().hex,
                    ciphertext=blob,
                    issued_at=AT,
                    expires_at=AT,
                    audience="duoshan",
                    status="active",
                )
            )
            conn.execute(
                insert(gs.grant_outbox).values(
                    event_id=uuid.uuid4().hex,
                    kind="grant.transfer",
                    payload="{}",
                    created_at=AT,
                    state="new",
                )
            )


def anchor_cascade(engine: Engine, grants: list[GrantRecord]) -> int:
    rows = 0
    for g in grants:
        with engine.begin() as conn:
            carrying = select(gs.value_grants.c.value_id).where(
                gs.value_grants.c.grant_id == g.grant_id
            )
            conn.execute(
                update(gs.oauth_grants)
                .where(gs.oauth_grants.c.grant_id == g.grant_id)
                .values(status="quarantined")
            )
            conn.execute(
                update(gs.oauth_tokens)
                .where(gs.oauth_tokens.c.grant_id == g.grant_id)
                .values(status="revoked")
            )
            conn.execute(
                update(gs.labelled_values)
                .where(gs.labelled_values.c.grant_id == g.grant_id)
                .values(status="quarantined")
            )
            conn.execute(
                update(gs.derived_values)
                .where(gs.derived_values.c.value_id.in_(carrying))
                .values(status="quarantined")
            )
            ids = [r[0] for r in conn.execute(carrying)]
            rows += conn.execute(
                delete(gs.oauth_tokens).where(gs.oauth_tokens.c.grant_id == g.grant_id)
            ).rowcount
            rows += conn.execute(
                delete(gs.derived_values).where(gs.derived_values.c.value_id.in_(ids))
            ).rowcount
            rows += conn.execute(
                delete(gs.labelled_values).where(gs.labelled_values.c.grant_id == g.grant_id)
            ).rowcount
            rows += conn.execute(
                delete(gs.value_grants).where(gs.value_grants.c.value_id.in_(ids))
            ).rowcount
            conn.execute(
                delete(gs.recipient_first_use).where(
                    gs.recipient_first_use.c.grant_id == g.grant_id
                )
            )
            conn.execute(
                update(gs.oauth_grants)
                .where(gs.oauth_grants.c.grant_id == g.grant_id)
                .values(
                    status="purged",
                    openid=f"purged:{g.grant_id}",
                    unionid=f"purged:{g.grant_id}",
                )
            )
    return rows


def bench(kind: str, n: int, pdp: DecisionPoint) -> list[tuple[str, str, int, float, float]]:
    out = []
    cipher = TokenCipher(generate_key())
    with database(kind) as url_a, database(kind) as url_b:
        store = SqlGrantStore(url_a, cipher)
        other = SqlGrantStore(url_b, cipher)  # the anchor's copy (so purges do not collide)
        for s in (store, other):
            s.register_app("douyin", "operator of Douyin", "douyin-secret")
            s.register_app("duoshan", "operator of Duoshan", "duoshan-secret")
        pairs = populate(store, n)
        pairs_b = populate(other, n)
        grants = [g for g, _ in pairs]
        grants_b = [g for g, _ in pairs_b]
        clock = FixedClock(AT)
        gate = TransferGate(store, pdp, NullAudit(), clock=clock)

        t_pg = timed(lambda: [gate.decide(g, "duoshan", AT) for g in grants])
        t_an = timed(lambda: anchor_decide_reads(other.engine, grants_b))
        out.append((kind, "exchange decide", n, t_pg, t_an))

        def links() -> None:
            for _g, session in pairs:
                # a denial (PG159) is an outcome here, not a failure
                with contextlib.suppress(TransferDeniedError):
                    gate.link(session, "duoshan", "duoshan-secret")

        t_pg = timed(links)
        t_an = timed(lambda: anchor_exchange(other.engine, grants_b, cipher))
        out.append((kind, "exchange decide+record", n, t_pg, t_an))

        cascade = RevocationCascade(store, clock=clock, batch_size=500)
        before = sum(store.counts()[t] for t in ("oauth_tokens", "labelled_values"))
        before += sum(store.counts()[t] for t in ("derived_values", "value_grants"))

        def run_cascade() -> None:
            for g in grants:
                cascade.purge(cascade.revoke(g.grant_id, reason="bench", source="bench"))

        t_pg = timed(run_cascade)
        after = sum(store.counts()[t] for t in ("oauth_tokens", "labelled_values"))
        after += sum(store.counts()[t] for t in ("derived_values", "value_grants"))
        rows = before - after
        rows_b = [0]
        t_an = timed(lambda: rows_b.__setitem__(0, anchor_cascade(other.engine, grants_b)))
        assert all(set(store.remaining(g.grant_id).values()) == {0} for g in grants)
        out.append((kind, f"cascade ({rows} rows; anchor {rows_b[0]})", rows, t_pg, t_an))
        store.close()
        other.close()
    return out


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    pdp = DecisionPoint(load_policy_dir(Path(__file__).resolve().parents[1] / "policies"))
    kinds = ["sqlite"] + (["postgresql"] if os.environ.get("PROVGUARD_TEST_PG_URL") else [])
    print(f"grants={n}; ratio = provguard time / anchor (raw SQLAlchemy Core, same SQL)")
    print(
        f"| {'back-end':<10} | {'operation':<38} | {'n':>6} | {'provguard /s':>12} | "
        f"{'anchor /s':>10} | {'ratio':>6} |"
    )
    print(f"|{'-' * 12}|{'-' * 40}|{'-' * 8}|{'-' * 14}|{'-' * 12}|{'-' * 8}|")
    for kind in kinds:
        for k, op, count, t_pg, t_an in bench(kind, n, pdp):
            print(
                f"| {k:<10} | {op:<38} | {count:>6} | {count / t_pg:>12.0f} | "
                f"{count / t_an:>10.0f} | {t_pg / t_an:>6.2f} |"
            )
