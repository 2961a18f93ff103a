"""Revocation: a withdrawn grant reaches every token, value and derived value that came through it.

Triggers: RFC 7009 revocation by the client app, a provider notification (the user revoked the
app, the account was deleted), or an operator. The cascade for grant ``G`` (job in
``revocation_jobs``)::

    quarantine   one transaction: G, its tokens, its labelled values and every derived value
                 whose label carries G become unusable; the counts to purge are fixed
    tokens       delete G's tokens                 } in batches of ``batch_size``, each batch one
    derived      delete derived values carrying G  } transaction that also counts what it
    values       delete G's labelled values        } deleted on the job
    grant        G becomes a tombstone (subject ids replaced by digests)

Quarantine happens at once; the purge steps run when the job's ``purge_by`` deadline is due
(``purge_within`` after the request, shortened by any ``purge`` obligation the policy attaches to
storing the grant) or on :meth:`RevocationCascade.purge`. Each step is recorded in
``revocation_steps`` in the same transaction as its effect (primary key ``(job, step)``), so a
process killed at any point resumes where it stopped: completed steps and batches are not
redone, the interrupted batch rolled back and is redone whole. Every step's audit event goes
through the registry's outbox in that same transaction (exactly once, see
:func:`provguard.grants.service.flush_outbox`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from provguard.clock import Clock, SystemClock
from provguard.decide import Request
from provguard.grants.model import Decider

if TYPE_CHECKING:
    from provguard.adapters.grant_store import SqlGrantStore

log = logging.getLogger("provguard.grants")

PURGE_STEPS = ("tokens", "derived", "values")


class RevocationCascade:
    """Runs revocation jobs on ``store``.

    ``purge_within``: default time between the request and the purge deadline.
    ``pdp``: when given, a ``purge`` obligation on storing ``grant.login`` data shortens it.
    ``on_batch(step, rows)``: called after each committed batch (progress; tests kill the
    process from it).
    """

    def __init__(
        self,
        store: SqlGrantStore,
        *,
        clock: Clock | None = None,
        batch_size: int = 500,
        purge_within: timedelta = timedelta(0),
        pdp: Decider | None = None,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.batch_size = batch_size
        self.purge_within = purge_within
        self.pdp = pdp
        self.on_batch = on_batch

    def _deadline_within(self, grant_id: str) -> timedelta:
        within = self.purge_within
        grant = self.store.grant(grant_id)
        if self.pdp is None or grant is None:
            return within
        decision = self.pdp.decide(
            Request(
                app=grant.app_id,
                action="store",
                category="grant.login",
                origins=frozenset({grant.provider}),
                at=self.clock.now(),
            )
        )
        for ob in decision.obligations:
            if ob.kind == "purge" and ob.within_seconds is not None:
                within = min(within, timedelta(seconds=ob.within_seconds))
        return within

    def revoke(self, grant_id: str, *, reason: str, source: str) -> str:
        """Open (or find) the grant's job and quarantine at once; returns the job id.
        Idempotent. Raises :class:`~provguard.grants.errors.ExpiredGrantError` for an unknown
        grant."""
        now = self.clock.now()
        job_id, created = self.store.open_revocation(
            grant_id,
            reason=reason,
            source=source,
            at=now,
            purge_by=now + self._deadline_within(grant_id),
        )
        self.store.cascade_quarantine(job_id, self.clock.now())
        log.info("revocation %s of grant %s (%s, new=%s)", job_id, grant_id, reason, created)
        return job_id

    def purge(self, job_id: str) -> dict[str, Any]:
        """Run every remaining step of the job now; returns the job as stored. Safe to call
        again (a finished job does nothing) and after a crash (resumes)."""
        now = self.clock.now
        self.store.cascade_quarantine(job_id, now())
        for step in PURGE_STEPS:
            while True:
                n = self.store.cascade_purge_batch(job_id, step, self.batch_size, now())
                if self.on_batch is not None and n:
                    self.on_batch(step, n)
                if n < self.batch_size:
                    break
        self.store.cascade_finish(job_id, now())
        return self.store.job(job_id)

    def purge_due(self) -> list[str]:
        """Purge every job whose deadline has come; returns their ids."""
        now = self.clock.now()
        done = []
        for job in self.store.jobs():
            if job["state"] != "purged" and job["purge_by"] <= now:
                self.purge(job["job_id"])
                done.append(job["job_id"])
        return done

    def resume(self) -> list[str]:
        """After a crash: quarantine any job that was opened but not quarantined, and purge the
        due ones. Returns the ids of jobs touched."""
        touched = []
        for job in self.store.jobs():
            if job["state"] == "open":
                self.store.cascade_quarantine(job["job_id"], self.clock.now())
                touched.append(job["job_id"])
        return sorted(set(touched) | set(self.purge_due()))
