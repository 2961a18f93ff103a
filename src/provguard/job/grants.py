"""The grants stage of the main job: real sign-ins, onward-transfer control and revocation on the
demo data, over HTTP on loopback.

For a sample of the sandbox platform's douyin -> duoshan transfers (``Platform.transfers``),
:func:`run_grants_stage`:

1. starts the sandbox open platform(s) (:class:`~provguard.sandbox.oauth_provider.
   SandboxOpenPlatform`, one per provider in the sample) and the grant service
   (:func:`provguard.grants.create_app`) on ``127.0.0.1`` with ephemeral ports;
2. signs each sampled subject in to douyin through the real authorization-code flow (browser
   redirects, consent page, Authlib ``LoginConnector`` with PKCE and ``state``) **at the sandbox
   grant's own time** (``grants.parquet`` ``granted_at``, linked by the transfer's
   ``grant_id``): the stage's fixed clock is moved to that instant, so the registry's
   ``granted_at``, the tokens' issue times and the values' ``received_at`` are the grant's; every
   profile value is stored with its provenance label;
3. moves the clock to the time duoshan first used the subject's douyin login as the demo data has
   it (``transfers.parquet`` ``first_used_at``, never before ``granted_at``: the grandfathering
   evidence) and records it, then back to the run's ``at``; derives one value per grant (so the
   cascade has derived values to reach), and has duoshan attempt the RFC 8693 token exchange at
   ``POST /oauth2/token`` for each, at ``at``: denied with the injunction's rule and instrument
   cited, or permitted by exception for accounts that logged in to duoshan before the order.
   The gate checks the registry's dates (first use neither before the grant nor after ``at``;
   PG140 otherwise, :class:`~provguard.grants.errors.ImpossibleGrantFactsError`);
4. has ``revoke`` subjects revoke douyin at the platform (the platform POSTs a signed
   notification to the service, which quarantines at once), then runs the cascade's purge and
   the proof query (:meth:`SqlGrantStore.remaining`).

Tokens across the months between sign-in and exchange: the provider's tokens expire (the sandbox
platform's lifetimes: WeChat access 7200 s and refresh 30 days, QQ 90 days each; a refresh
answers with the same refresh token, so its expiry never moves), so a refresh at ``at`` is
refused (PG154) for any grant older than that. The subject token of
the exchange is therefore douyin's own **app session** token, which the grant service issues at
sign-in (:class:`~provguard.grants.LoginConnector` ``token_ttl``): douyin keeps its users signed
in, with a session lifetime of ``app_session_ttl`` (default 5 years, longer than the sandbox's
grant window 2017-01-01 .. ``as_of``). A re-authorization at ``at`` would also do, but would
record a second login session per user (report section 3a counts login sessions).

Time is a fixed clock moved to each instant above, so a decision cites the policy in force then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from provguard.adapters.grant_store import SqlGrantStore
from provguard.clock import Clock
from provguard.errors import ProvguardError
from provguard.grants import (
    ClientCredentials,
    GrantService,
    LoginConnector,
    RevocationCascade,
    TokenCipher,
    TransferGate,
    create_app,
    generate_key,
    provider_profile,
)
from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT, AuditSink, Decider
from provguard.grants.server import LoopbackServer
from provguard.sandbox.oauth_provider import SandboxApp, SandboxOpenPlatform, SandboxUser
from provguard.sandbox.platform import Platform
from provguard.sandbox.schema import ORDER_DATE

__all__ = [
    "GrantsStageResult",
    "ListAudit",
    "StageClock",
    "register_login_app",
    "run_grants_stage",
]

_DEVELOPER = "bytedance-open-account"
_CONTROLLERS = {"douyin": "operator of Douyin", "duoshan": "operator of Duoshan"}


class StageClock:
    """A :class:`~provguard.clock.Clock` that stays at an instant until moved (forwards or back)
    with :meth:`move_to`: the stage signs each user in at the grant's own time, records the first
    use at its time, and decides at the run's ``at``. Raises ``ValueError`` for a naive time."""

    def __init__(self, at: datetime) -> None:
        self._at = self._aware(at)

    @staticmethod
    def _aware(at: datetime) -> datetime:
        if at.tzinfo is None:
            raise ValueError("StageClock needs timezone-aware datetimes")
        return at

    def now(self) -> datetime:
        return self._at

    def move_to(self, at: datetime) -> None:
        """Set the time to ``at`` (timezone-aware)."""
        self._at = self._aware(at)


class ListAudit:
    """An in-memory :class:`~provguard.grants.model.AuditSink`: ``entries`` as ``(kind,
    payload)`` pairs, to be appended to the run's hash-chained log in one transaction."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, object]]] = []

    def append(self, kind: str, payload: Mapping[str, object]) -> object:
        self.items.append((kind, dict(payload)))
        return None

    def count(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class GrantsStageResult:
    """Counts of the grants stage (see the module docstring).

    ``signed_in``: sign-ins completed over HTTP; ``exchanges_denied`` / ``_permitted`` (all
    permits) / ``_grandfathered`` (permits by the order's exception); ``denied_by``: the
    ``(rule, instrument)`` pairs cited by the denials; ``revoked``: grants revoked at the
    platform whose notification reached the service; ``values_quarantined`` /
    ``derived_quarantined``: rows the cascade quarantined; ``values_purged`` /
    ``derived_purged`` / ``tokens_purged``: rows deleted; ``remaining``: the proof query summed
    over the revoked grants (every count 0 when nothing remains); ``nothing_remains``;
    ``audit_entries``: ``(kind, payload)`` pairs for the run's audit log (no secrets);
    ``exchanges``: per sampled subject ``(subject_id, provider, effect, excepted)``;
    ``seconds``: wall time.
    """

    signed_in: int
    exchanges_denied: int
    exchanges_permitted: int
    exchanges_grandfathered: int
    denied_by: tuple[tuple[str, str], ...]
    revoked: int
    values_quarantined: int
    derived_quarantined: int
    values_purged: int
    derived_purged: int
    tokens_purged: int
    remaining: dict[str, int]
    nothing_remains: bool
    audit_entries: list[tuple[str, dict[str, object]]] = field(repr=False)
    exchanges: tuple[tuple[int, str, str, bool], ...] = ()
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The counts as JSON-ready data (without the audit entries)."""
        return {
            "signed_in": self.signed_in,
            "exchanges_denied": self.exchanges_denied,
            "exchanges_permitted": self.exchanges_permitted,
            "exchanges_grandfathered": self.exchanges_grandfathered,
            "denied_by": [list(p) for p in self.denied_by],
            "revoked": self.revoked,
            "values_quarantined": self.values_quarantined,
            "derived_quarantined": self.derived_quarantined,
            "values_purged": self.values_purged,
            "derived_purged": self.derived_purged,
            "tokens_purged": self.tokens_purged,
            "remaining": dict(self.remaining),
            "nothing_remains": self.nothing_remains,
            "audit_entries": len(self.audit_entries),
            "seconds": round(self.seconds, 3),
        }


def _sample(platform: Platform, app: str, recipient: str, n: int, seed: int) -> list[Any]:
    """Up to ``n`` transfers ``app`` -> ``recipient`` of grants still active on the platform:
    half first used before the order (the grandfathered ones), half after, picked with
    ``seed``; sorted by subject. A revoked grant is no working login (a sign-in would make a
    new grant), and the job's transfer audit never grandfathers it."""
    active = {
        g["grant_id"]
        for g in platform.grants.select(["grant_id", "status"]).to_pylist()
        if g["status"] == "active"
    }
    rows = [
        r
        for r in platform.transfers.to_pylist()
        if r["from_app"] == app and r["to_app"] == recipient and r["grant_id"] in active
    ]
    rng = np.random.default_rng(seed)
    before = [r for r in rows if r["first_used_at"] < ORDER_DATE]
    after = [r for r in rows if r["first_used_at"] >= ORDER_DATE]
    k_before = min(len(before), n // 2)
    k_after = min(len(after), n - k_before)
    k_before = min(len(before), n - k_after)
    picked = [before[i] for i in rng.choice(len(before), k_before, replace=False)] + [
        after[i] for i in rng.choice(len(after), k_after, replace=False)
    ]
    return sorted(picked, key=lambda r: (r["subject_id"], r["provider"]))


def register_login_app(
    sandbox: SandboxOpenPlatform,
    sandbox_url: str,
    service: GrantService,
    service_url: str,
    app: str,
    secret: str,
    registry: SqlGrantStore,
    audit: AuditSink,
    clock: Clock,
    developer: str = _DEVELOPER,
    *,
    token_ttl: int = 7200,
) -> None:
    """Register ``app`` at the sandbox open platform (PKCE required, revocation notifications to
    the grant service) and give the grant service an Authlib :class:`LoginConnector` for it;
    ``token_ttl``: lifetime of the app session tokens it issues (seconds, default 2 h)."""
    provider = sandbox.provider
    redirect = f"{service_url}/login/{provider}/{app}/callback"
    sandbox.register_app(
        SandboxApp(
            app_id=app,
            secret=secret,
            developer=developer,
            redirect_uris=(redirect,),
            notify_url=f"{service_url}/notifications/{provider}",
            require_pkce=True,
        )
    )
    service.connectors[(provider, app)] = LoginConnector(
        provider_profile(provider),
        sandbox_url,
        ClientCredentials(app, secret, redirect),
        registry,
        audit,
        clock=clock,
        token_ttl=token_ttl,
    )


def _sign_in(platform_url: str, service_url: str, provider: str, app: str, user: str) -> Any:
    """A browser: start at the app, consent at the platform, follow back to the callback."""
    with httpx.Client(follow_redirects=False, timeout=10) as ua:
        start = ua.get(f"{service_url}/login/{provider}/{app}/start")
        page = ua.get(start.headers["location"])
        m = re.search(r'name="request_id" value="([^"]+)"', page.text)
        if start.status_code != 302 or page.status_code != 200 or m is None:
            raise ProvguardError(f"sandbox sign-in of {user} at {provider} did not start")
        consent = ua.post(
            f"{platform_url}/sandbox/consent",
            data={"request_id": m.group(1), "user": user, "decision": "allow"},
        )
        done = ua.get(consent.headers["location"])
        if done.status_code != 200:
            raise ProvguardError(f"sandbox sign-in of {user} at {provider} failed: {done.text}")
        return done.json()


def run_grants_stage(
    platform: Platform,
    pdp: Decider,
    at: datetime,
    store: str | Path,
    *,
    sample: int = 16,
    revoke: int = 4,
    seed: int = 7,
    app: str = "douyin",
    recipient: str = "duoshan",
    cipher: TokenCipher | None = None,
    app_session_ttl: timedelta = timedelta(days=1826),
) -> GrantsStageResult:
    """Run the grants stage on ``platform`` (see the module docstring).

    ``pdp``: the run's decision point; ``at``: the run's ``as_of`` (timezone-aware), the fixed
    clock of the stage; ``store``: the grant registry (a SQLite path, replaced if it exists, or
    a SQLAlchemy URL of an empty database); ``sample``: subjects signed in (at most the
    ``app`` -> ``recipient`` transfers in the data); ``revoke``: how many of them revoke
    ``app`` at the platform afterwards; ``cipher``: encrypts tokens at rest (default: a fresh
    key, so only this process can read them; pass the deployment's key to serve the registry
    afterwards with ``provguard serve --grant-db``); ``app_session_ttl``: lifetime of douyin's
    app session tokens, issued at the grant's time and presented by duoshan at ``at``.

    Each subject signs in at its sandbox grant's ``granted_at`` and duoshan's first use is
    recorded at the transfer's ``first_used_at`` (see the module docstring). Raises
    :class:`ProvguardError` subclasses (a failed sign-in, a store error, a transfer row without
    its grant in ``platform.grants``, a sandbox grant given after ``at``, or registry dates the
    gate finds impossible); the servers are stopped in every case.
    """
    import time

    t0 = time.perf_counter()
    if at.tzinfo is None:
        raise ValueError("'at' must be timezone-aware")
    if "://" not in str(store):
        path = Path(store)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    clock = StageClock(at)
    audit = ListAudit()
    registry = SqlGrantStore(store, cipher or TokenCipher(generate_key()))
    picked = _sample(platform, app, recipient, sample, seed)
    granted_at = dict(
        zip(
            platform.grants["grant_id"].to_pylist(),
            platform.grants["granted_at"].to_pylist(),
            strict=True,
        )
    )
    for row in picked:
        if row["grant_id"] not in granted_at:
            raise ProvguardError(f"transfer of grant {row['grant_id']}: no such sandbox grant")
        if granted_at[row["grant_id"]] > at:
            raise ProvguardError(
                f"sandbox grant {row['grant_id']} is given at "
                f"{granted_at[row['grant_id']].isoformat()}, after the run's time {at.isoformat()}"
            )
    nicknames = {
        (r["provider"], r["subject_id"]): r["nickname"]
        for r in platform.provider_profiles.to_pylist()
    }
    service = GrantService(
        store=registry,
        audit=audit,
        gate=TransferGate(registry, pdp, audit, clock=clock),
        cascade=RevocationCascade(registry, clock=clock, purge_within=timedelta(days=15), pdp=pdp),
        clock=clock,
    )
    servers: list[LoopbackServer] = []
    try:
        ssrv = LoopbackServer(create_app(service)).start()
        servers.append(ssrv)
        platforms: dict[str, tuple[SandboxOpenPlatform, str]] = {}
        rp_secrets = {a: f"{a}-rp-{seed}" for a in (app, recipient)}
        for a in (app, recipient):
            registry.register_app(a, _CONTROLLERS.get(a, f"operator of {a}"), rp_secrets[a])
        for provider in sorted({r["provider"] for r in picked}):
            sandbox = SandboxOpenPlatform(provider, clock=clock, secret=f"demo-{seed}")
            psrv = sandbox.serve()
            servers.append(psrv)
            platforms[provider] = (sandbox, psrv.url)
            for a in (app, recipient):
                register_login_app(
                    sandbox,
                    psrv.url,
                    service,
                    ssrv.url,
                    a,
                    f"{a}-{provider}-secret-{seed}",
                    registry,
                    audit,
                    clock,
                    token_ttl=int(app_session_ttl.total_seconds()),
                )

        # 1. sign in over HTTP at the grant's time; 2. first use by the recipient at the time the
        # data records it (the gate refuses it if it precedes the grant); back to ``at``
        signed: list[tuple[Any, dict[str, Any]]] = []
        for row in picked:
            sandbox, url = platforms[row["provider"]]
            user = str(row["subject_id"])
            nick = nicknames.get((row["provider"], row["subject_id"]), f"user {user}")
            sandbox.add_user(SandboxUser(user, nick))
            clock.move_to(granted_at[row["grant_id"]])
            body = _sign_in(url, ssrv.url, row["provider"], app, user)
            clock.move_to(row["first_used_at"])
            registry.record_first_use(body["grant"], recipient, row["first_used_at"])
            clock.move_to(at)
            values = registry.values(body["grant"])
            if values:
                registry.add_derived(
                    "profile_digest",
                    f"{len(values)} fields",
                    [v.value_id for v in values],
                    clock.now(),
                )
            signed.append((row, body))

        # 3. the recipient's token exchange, over HTTP
        denied = permitted = grandfathered = 0
        cited: set[tuple[str, str]] = set()
        exchanges: list[tuple[int, str, str, bool]] = []
        with httpx.Client(timeout=10) as client:
            for row, body in signed:
                r = client.post(
                    f"{ssrv.url}/oauth2/token",
                    data={
                        "grant_type": TOKEN_EXCHANGE_GRANT,
                        "subject_token": body["session_token"],
                        "subject_token_type": ACCESS_TOKEN_TYPE,
                        "audience": recipient,
                    },
                    auth=(recipient, rp_secrets[recipient]),
                )
                if r.status_code == 200:
                    permitted += 1
                elif r.status_code == 400 and r.json().get("error") == "invalid_target":
                    denied += 1
                    cited.add((r.json()["rule"], r.json()["instrument"]))
                else:
                    raise ProvguardError(f"token exchange failed: {r.status_code} {r.text}")
                (attempt,) = registry.transfer_attempts(body["grant"])[-1:]
                exchanges.append(
                    (int(row["subject_id"]), row["provider"], attempt.effect, attempt.excepted)
                )
        grandfathered = sum(1 for e in exchanges if e[3])

        # 4. revocation at the platform -> signed notification -> quarantine; then purge
        jobs: list[str] = []
        for row, body in signed[:revoke]:
            sandbox, _url = platforms[row["provider"]]
            deliveries = sandbox.revoke_authorization(str(row["subject_id"]), app)
            if not deliveries or deliveries[0].status != 200:
                raise ProvguardError(f"revocation notification for grant {body['grant']} failed")
            job = next(j for j in registry.jobs() if j["grant_id"] == body["grant"])
            jobs.append(job["job_id"])
        quarantined_values = sum(int(registry.job(j)["expected_values"] or 0) for j in jobs)
        quarantined_derived = sum(int(registry.job(j)["expected_derived"] or 0) for j in jobs)
        finished = [service.cascade.purge(j) for j in jobs]
        service.flush()
        remaining: dict[str, int] = {}
        for job in finished:
            for key, n in registry.remaining(job["grant_id"]).items():
                remaining[key] = remaining.get(key, 0) + n
        return GrantsStageResult(
            signed_in=len(signed),
            exchanges_denied=denied,
            exchanges_permitted=permitted,
            exchanges_grandfathered=grandfathered,
            denied_by=tuple(sorted(cited)),
            revoked=len(jobs),
            values_quarantined=quarantined_values,
            derived_quarantined=quarantined_derived,
            values_purged=sum(int(j["purged_values"]) for j in finished),
            derived_purged=sum(int(j["purged_derived"]) for j in finished),
            tokens_purged=sum(int(j["purged_tokens"]) for j in finished),
            remaining=remaining,
            nothing_remains=all(n == 0 for n in remaining.values()),
            audit_entries=list(audit.items),
            exchanges=tuple(exchanges),
            seconds=time.perf_counter() - t0,
        )
    finally:
        for srv in reversed(servers):
            srv.stop()
        registry.close()
