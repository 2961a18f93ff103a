"""Onward-transfer control: every attempt to pass a grant from the app holding it to another app
goes through the decision point, is recorded and audited.

Three doors, one gate:

- :meth:`TransferGate.exchange` — RFC 8693 token exchange: app B presents a token issued under
  app A's grant (``subject_token``) and asks for a token for itself (``audience``);
- :meth:`TransferGate.link` — account linking: app B asks to link the user's account through A's
  grant;
- :meth:`TransferGate.join_on_unionid` — app B looks a user up by ``unionid`` (shared by all apps
  of one developer account): reading values held under another app's grant is a transfer too.

The decision is the PDP's (:class:`~provguard.decide.DecisionPoint`): action ``transfer``,
category ``grant.login``, origins = the grant's provider, recipient = B, and the grant context
(first use by B — the grandfathering evidence — and grant time). On top of it, from 2021-11-01
(PIPL in force), a transfer to another controller needs the subject's separate consent (PIPL
Art. 23) on record: the gate denies without it, citing that article.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from provguard.clock import Clock, SystemClock
from provguard.decide import Decision, Reason, Request, check_grant_times
from provguard.decide.conditions import consent_holds
from provguard.errors import RequestError
from provguard.grants.connector import refuse
from provguard.grants.crypto import new_token
from provguard.grants.errors import (
    GrantInputError,
    ImpossibleGrantFactsError,
    MalformedTokenError,
    TransferDeniedError,
    UnknownAppError,
)
from provguard.grants.model import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    AuditSink,
    Decider,
    GrantRecord,
    IssuedToken,
    LabelledValue,
    TransferAttempt,
    TransferKind,
)
from provguard.policy.model import ConsentCondition, ConsentRequirement
from provguard.taxonomy import PURPOSES

if TYPE_CHECKING:
    from provguard.adapters.grant_store import SqlGrantStore

log = logging.getLogger("provguard.grants")

PIPL_IN_FORCE = datetime(2021, 11, 1, tzinfo=UTC)
PIPL_ART_23 = "cn-pipl-2021-art-23"
_ART23_CONSENT = ConsentCondition(
    consent=ConsentRequirement(
        state="active", separate=True, names=("recipient", "purpose", "method", "categories")
    )
)


def _purpose(value: str | None) -> str | None:
    """A stated purpose key, checked against the taxonomy (:class:`GrantInputError`)."""
    if not value:
        return None
    if value not in PURPOSES:
        raise GrantInputError(f"unknown purpose '{value[:64]}'")
    return value


def _combine(main: Request, decisions: list[Decision]) -> Decision:
    """Deny-overrides over ``decisions`` (the first is ``main``'s): reasons of the denying
    decisions first, duplicates (same rule, instrument, outcome) dropped, obligations united."""
    if len(decisions) == 1:
        return decisions[0]
    denying = [d for d in decisions if d.effect == "deny"]
    if denying:
        effect = "deny"
        ordered = denying + [d for d in decisions if d.effect != "deny"]
    else:
        effect = "permit" if any(d.effect == "permit" for d in decisions) else "not_applicable"
        ordered = decisions
    reasons: list[Reason] = []
    seen: set[tuple[str, str, str]] = set()
    for d in ordered:
        for r in d.reasons:
            key = (r.rule_id, r.instrument_id, r.outcome)
            if key not in seen:
                seen.add(key)
                reasons.append(r)
    obligations = tuple(dict.fromkeys(o for d in ordered for o in d.obligations))
    shadow = tuple(dict.fromkeys(r for d in ordered for r in d.shadow))
    return Decision(effect, main, tuple(reasons), obligations, shadow)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TransferResult:
    """A permitted transfer: the attempt as recorded, the decision, and the token issued to the
    recipient (``None`` for a unionid join)."""

    attempt: TransferAttempt
    decision: Decision
    token: str | None
    expires_in: int

    def __repr__(self) -> str:
        return f"TransferResult(attempt={self.attempt!r}, token=<hidden>)"


class TransferGate:
    """The PEP for onward transfers. ``exchanged_ttl``: lifetime (s) of tokens issued to
    recipients, never past the subject token's own expiry."""

    def __init__(
        self,
        store: SqlGrantStore,
        pdp: Decider,
        audit: AuditSink,
        *,
        clock: Clock | None = None,
        exchanged_ttl: int = 3600,
    ) -> None:
        self.store = store
        self.pdp = pdp
        self.audit = audit
        self.clock: Clock = clock or SystemClock()
        self.exchanged_ttl = exchanged_ttl

    # ------------------------------------------------------------------------ doors

    def exchange(
        self, params: dict[str, str], client_id: str, client_secret: str
    ) -> dict[str, object]:
        """RFC 8693 section 2.1 request ``params`` from client ``client_id``; returns the section
        2.2.1 response body. The client authenticates first (RFC 6749 section 2.3), then the
        request is checked: ``grant_type``; no ``actor_token`` (delegation is not offered) and
        no ``actor_token_type`` without it; ``subject_token_type`` and
        ``requested_token_type`` access tokens; no ``resource`` (``invalid_target``: only
        ``audience``, which must be the client itself) and no ``scope`` (``invalid_scope``: the
        issued token carries none, so section 2.2.1 could not report it). Raises
        :class:`GrantInputError` subclasses (``oauth_error`` says the RFC error code:
        ``unsupported_grant_type``, ``invalid_request``, ``invalid_client``, ``invalid_target``,
        ``invalid_scope``)."""
        try:
            self.store.authenticate_app(client_id, client_secret)
            if not params.get("grant_type"):
                raise GrantInputError("grant_type is required (RFC 6749 section 4.1.3)")
            if params.get("grant_type") != TOKEN_EXCHANGE_GRANT:
                err = GrantInputError(f"grant_type must be {TOKEN_EXCHANGE_GRANT}")
                err.oauth_error = "unsupported_grant_type"
                raise err
            if params.get("actor_token_type") and not params.get("actor_token"):
                raise GrantInputError("actor_token_type without actor_token (RFC 8693 2.1)")
            if params.get("actor_token"):
                raise GrantInputError("delegation (actor_token) is not supported here")
            if not params.get("subject_token"):
                raise MalformedTokenError("subject_token is required (RFC 8693 section 2.1)")
            if params.get("subject_token_type") != ACCESS_TOKEN_TYPE:
                raise GrantInputError(f"subject_token_type must be {ACCESS_TOKEN_TYPE}")
            requested = params.get("requested_token_type")
            if requested not in (None, "", ACCESS_TOKEN_TYPE):
                raise GrantInputError("only access tokens can be requested")
            if params.get("resource"):
                err = GrantInputError("resource indicators are not supported; use 'audience'")
                err.oauth_error = "invalid_target"
                raise err
            if params.get("scope"):
                err = GrantInputError("exchanged tokens carry no scope; omit 'scope'")
                err.oauth_error = "invalid_scope"
                raise err
            audience = params.get("audience") or client_id
            if audience != client_id:
                err = GrantInputError("a client may only request tokens for itself")
                err.oauth_error = "invalid_target"
                raise err
            result = self._transfer(
                "token_exchange",
                params.get("subject_token", ""),
                client_id,
                _purpose(params.get("purpose")),
            )
        except GrantInputError as exc:
            if isinstance(exc, MalformedTokenError) or exc.oauth_error == "invalid_grant":
                exc.oauth_error = "invalid_request"  # RFC 8693 2.2.2: bad subject_token
            if not isinstance(exc, TransferDeniedError):
                refuse(self.audit, exc, door="token_exchange", client=client_id)
            raise
        return {
            "access_token": result.token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": result.expires_in,
        }

    def link(
        self,
        subject_token: str,
        client_id: str,
        client_secret: str,
        purpose: str | None = None,
    ) -> TransferResult:
        """Account linking: ``client_id`` asks to use the grant behind ``subject_token``, for
        ``purpose`` (a purpose key, optional; an unknown key is :class:`GrantInputError`)."""
        try:
            self.store.authenticate_app(client_id, client_secret)
            return self._transfer("account_link", subject_token, client_id, _purpose(purpose))
        except GrantInputError as exc:
            if not isinstance(exc, TransferDeniedError):
                refuse(self.audit, exc, door="account_link", client=client_id)
            raise

    def join_on_unionid(
        self, app_id: str, unionid: str
    ) -> tuple[list[LabelledValue], list[TransferAttempt]]:
        """``app_id`` reads what is held about ``unionid``: its own grants' values directly;
        every other app's grant is a transfer decided and recorded (kind ``unionid_join``).
        Returns the values it may read and the attempts that were denied. A grant whose
        transfer cannot be decided (:class:`ImpossibleGrantFactsError` PG141: the registry's
        grant times cannot all be true) is refused and audited (``grant.refused``, door
        ``unionid_join``, the client and the grant id) before the error is raised."""
        if self.store.controller_of(app_id) is None:
            exc = UnknownAppError(f"unknown client app '{app_id}'")
            refuse(self.audit, exc, door="unionid_join", client=app_id)
            raise exc
        allowed: list[LabelledValue] = []
        denied: list[TransferAttempt] = []
        by_grant: dict[str, list[LabelledValue]] = {}
        for _holder, value in self.store.values_of_subject(unionid):
            for g in value.grants:
                by_grant.setdefault(g, []).append(value)
        for grant_id in sorted(by_grant):
            grant = self.store.grant(grant_id)
            if grant is None or grant.status != "active":
                continue
            if grant.app_id == app_id:
                allowed.extend(by_grant[grant_id])
                continue
            try:
                attempt, decision = self._decide_and_record("unionid_join", grant, app_id, None)
            except GrantInputError as exc:  # PG141 impossible grant facts, a bad purpose...
                refuse(self.audit, exc, door="unionid_join", client=app_id, grant=grant_id)
                raise
            if decision.allowed:
                allowed.extend(by_grant[grant_id])
            else:
                denied.append(attempt)
        return allowed, denied

    # ------------------------------------------------------------------------ the gate

    def _transfer(
        self, kind: TransferKind, subject_token: str, to_app: str, purpose: str | None = None
    ) -> TransferResult:
        now = self.clock.now()
        match = self.store.find_token(subject_token, now, kinds=("app_session", "access"))
        grant = match.grant
        expires = min(now + timedelta(seconds=self.exchanged_ttl), match.expires_at)
        issued = IssuedToken("exchanged", new_token("pgx"), expires, audience=to_app)
        attempt, decision = self._decide_and_record(kind, grant, to_app, issued, purpose)
        if not decision.allowed:
            cited = "; ".join(f"{r.rule_id} ({r.instrument_id})" for r in decision.determining)
            notes = attempt.explanation[len(decision.explain()) :].strip()
            raise TransferDeniedError(
                f"transfer of grant {grant.grant_id} from {grant.app_id} to {to_app} denied by "
                f"{cited}" + (f". {notes}" if notes else ""),
                decision,
            )
        return TransferResult(
            attempt, decision, issued.secret, int((expires - now).total_seconds())
        )

    def decide(
        self, grant: GrantRecord, to_app: str, now: datetime, *, purpose: str | None = None
    ) -> Decision:
        """The decision for passing ``grant`` to ``to_app`` at ``now``.

        The PDP is asked about the transfer of ``grant.login`` (the injunction's category) and
        about the transfer of every category of value the grant holds (what the recipient's
        token unlocks: ``user.name.nickname``, ``user.avatar``, ...), each with origin = the
        grant's provider, ``purpose`` (optional purpose key the recipient states), the grant
        context (first use by the recipient, grant time, status, scopes), the stored separate
        consents for this grant (:meth:`SqlGrantStore.consent_records`, PIPL Art. 23 / 15) and
        context ``recipient_is_other_handler`` (recipient's controller differs from the
        holder's) and ``legal_basis: consent`` for a provision to another handler. The answers
        combine deny-overrides: any deny denies, citing its rules first.

        Built-in PIPL Art. 23 check (for policy sets without the Art. 23 bundle): from
        2021-11-01 a provision to another handler the policy permitted, and on which no rule of
        ``cn-pipl-2021-art-23`` was decided, also needs an active separate consent for the
        recipient naming recipient, purpose, method and categories that covers every category;
        else deny citing ``cn-pipl-2021-art-23``.

        Only evidence the grant store wrote is taken: the first use by ``to_app`` is
        :meth:`SqlGrantStore.attested_first_use` and the consents are
        :meth:`SqlGrantStore.attested_consents`, so a ``recipient_first_use`` or
        ``separate_consents`` row inserted or edited by hand (no valid HMAC evidence tag) is no
        first use and no consent: under the injunction such a transfer is denied, not
        grandfathered (findings F3 / G11), and the recorded attempt's explanation, its
        ``grant.transfer`` event (``ignored_evidence``) and the refusal name the ignored row.

        The registry's grant times are checked first (:func:`~provguard.decide.check_grant_times`
        and ``grant_facts="asserted"`` on every request): a recorded first use by ``to_app``
        before ``grant.granted_at`` or after ``now`` raises :class:`ImpossibleGrantFactsError`
        (PG141) and nothing is decided -- an impossible row is never grandfathered. Raises
        :class:`~provguard.decide.RequestError` (via the PDP) for a bad purpose key or a stored
        consent with unknown keys."""
        return self._decide(grant, to_app, now, purpose=purpose)[0]

    def _decide(
        self, grant: GrantRecord, to_app: str, now: datetime, *, purpose: str | None = None
    ) -> tuple[Decision, tuple[str, ...]]:
        """:meth:`decide`, and the texts of the registry rows it ignored (first use or consent
        rows without a valid evidence tag)."""
        holder = self.store.controller_of(grant.app_id)
        first, rejected_first = self.store.attested_first_use(grant.grant_id, to_app)
        ignored = (rejected_first,) if rejected_first is not None else ()
        try:
            check_grant_times(now, first, grant.granted_at)
        except RequestError as exc:
            raise ImpossibleGrantFactsError(
                f"grant {grant.grant_id} ({grant.app_id} -> {to_app}): the registry's grant "
                f"facts are impossible: {exc.message}"
            ) from None
        other_handler = to_app != grant.app_id and self.store.controller_of(to_app) != holder
        attested, rejected = self.store.attested_consents(grant.grant_id, to_app)
        consents = tuple(attested)
        ignored = (*ignored, *rejected)
        context: dict[str, str | bool] = {"recipient_is_other_handler": other_handler}
        if other_handler:
            context["legal_basis"] = "consent"
        categories = sorted({v.category for v in self.store.values(grant.grant_id)})

        def request(category: str) -> Request:
            return Request(
                app=grant.app_id,
                action="transfer",
                category=category,
                origins=frozenset({grant.provider}),
                at=now,
                purpose=purpose,
                recipient=to_app,
                controller=holder,
                grant_first_used_by_recipient_at=first,
                grant_granted_at=grant.granted_at,
                grant_status="active" if grant.status == "active" else "revoked",
                grant_scopes=frozenset(grant.scopes.split()),
                context=context,
                consents=consents,
                # the registry's grant times are checked, never taken on trust: an impossible
                # row (first use before the grant, or after ``now``) is refused (PG141)
                grant_facts="asserted",
            )

        main = request("grant.login")
        decisions = [self.pdp.decide(main)] + [self.pdp.decide(request(c)) for c in categories]
        decision = _combine(main, decisions)
        if not decision.allowed or not other_handler or now < PIPL_IN_FORCE:
            return decision, ignored
        if any(r.instrument_id == PIPL_ART_23 for d in decisions for r in d.reasons):
            return decision, ignored  # the policy decided Art. 23 itself
        needed = [request(c) for c in categories] or [request("user")]
        if all(consent_holds(_ART23_CONSENT, r) for r in needed):
            return decision, ignored
        reason = Reason(
            rule_id="separate-consent-for-provision",
            instrument_id=PIPL_ART_23,
            effect="deny",
            outcome="applied",
            explanation=(
                "PIPL Art. 23: providing personal information to another handler needs the "
                "subject's separate consent naming the recipient, purpose, method and "
                "categories; no active one covering this transfer is recorded"
            ),
        )
        return Decision("deny", main, (reason, *decision.reasons), decision.obligations), ignored

    def _decide_and_record(
        self,
        kind: TransferKind,
        grant: GrantRecord,
        to_app: str,
        issued: IssuedToken | None,
        purpose: str | None = None,
    ) -> tuple[TransferAttempt, Decision]:
        now = self.clock.now()
        try:
            decision, ignored = self._decide(grant, to_app, now, purpose=purpose)
        except RequestError as exc:
            raise GrantInputError(f"cannot decide this transfer: {exc.message}") from exc
        top = decision.determining[0] if decision.determining else None
        attempt = TransferAttempt(
            attempt_id=secrets.token_hex(16),
            grant_id=grant.grant_id,
            kind=kind,
            from_app=grant.app_id,
            to_app=to_app,
            at=now,
            effect=decision.effect,
            excepted=decision.excepted,
            rule_id=top.rule_id if top else None,
            instrument_id=top.instrument_id if top else None,
            explanation=" ".join((decision.explain(), *(f"Note: {t}." for t in ignored))),
        )
        payload = {
            "attempt": attempt.attempt_id,
            "kind": kind,
            "grant": grant.grant_id,
            "provider": grant.provider,
            "from": grant.app_id,
            "to": to_app,
            "decision": decision.as_dict(),
        }
        if ignored:
            # registry rows the decision did not take as evidence (findings F3 / G11)
            payload["ignored_evidence"] = list(ignored)
            for text in ignored:
                log.warning("transfer of grant %s to %s: %s", grant.grant_id, to_app, text)
        token = issued if decision.allowed else None
        self.store.record_transfer(attempt, token, payload, first_use=decision.allowed)
        log.info("transfer %s %s -> %s: %s", kind, grant.app_id, to_app, decision.effect)
        return attempt, decision
