"""Delivering campaign notices from the outbox: retried, rate-limited, crash-safe.

:func:`dispatch` takes due notices from a :class:`CampaignStore`, passes each to a ``sender``
(any callable; it raises :class:`DeliveryError` on a failed delivery) under a token-bucket rate
limit, and records the outcome per notice in its own transaction. A crash (any other exception,
or the process dying) after a delivery and before its record leaves the notice pending: the next
dispatch delivers it again with the same ``message_id`` (at-least-once; the receiver drops the
duplicate by id).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from provguard.campaign.model import OutboxMessage
from provguard.errors import InputError, ProvguardError


class DeliveryError(ProvguardError):
    """A notice could not be delivered (retryable)."""

    code = "PG410"


class CampaignStore(Protocol):
    def due(self, campaign_id: str, at: datetime, limit: int) -> list[OutboxMessage]: ...
    def mark_sent(self, msg: OutboxMessage, at: datetime) -> None: ...
    def mark_failed(
        self,
        msg: OutboxMessage,
        at: datetime,
        error: str,
        *,
        max_attempts: int,
        backoff: timedelta,
    ) -> bool: ...
    def snapshot(self, campaign_id: str, at: datetime, operation: str) -> None: ...


class TokenBucket:
    """Token-bucket rate limiter: ``rate`` notices per second on average, bursts up to ``burst``.

    ``monotonic`` and ``sleep`` are injectable (tests use a fake clock). Raises
    :class:`InputError` for a non-positive rate or burst.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise InputError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._now, self._sleep = monotonic, sleep
        self._tokens = float(burst)
        self._last = monotonic()

    def acquire(self) -> None:
        """Take one token, sleeping until one is available."""
        while True:
            now = self._now()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0 - 1e-9:  # float rounding after a sleep
                self._tokens = max(0.0, self._tokens - 1.0)
                return
            self._sleep((1.0 - self._tokens) / self.rate)


@dataclass(frozen=True)
class DispatchResult:
    sent: int
    failed: int  # failed this round, will be retried
    dead: int  # gave up (target escalated)


def dispatch(
    store: CampaignStore,
    campaign_id: str,
    sender: Callable[[OutboxMessage], None],
    *,
    now: Callable[[], datetime],
    limiter: TokenBucket | None = None,
    max_messages: int = 10_000,
    max_attempts: int = 5,
    backoff: timedelta = timedelta(minutes=5),
) -> DispatchResult:
    """Deliver up to ``max_messages`` due notices of ``campaign_id``.

    Args:
        store: the campaign store.
        sender: delivers one notice; raises :class:`DeliveryError` to ask for a retry.
        now: the (timezone-aware) clock used for due times and records.
        limiter: rate limit (None: unlimited).
        max_attempts: deliveries tried before giving up (target -> ``escalated``).
        backoff: first retry delay; doubled after each failure.

    Returns:
        :class:`DispatchResult`. Any exception other than :class:`DeliveryError` propagates
        (the notice in flight stays pending and is delivered again next time).
    """
    sent = failed = dead = 0
    for msg in store.due(campaign_id, now(), max_messages):
        if limiter is not None:
            limiter.acquire()
        try:
            sender(msg)
        except DeliveryError as exc:
            if store.mark_failed(
                msg, now(), exc.message, max_attempts=max_attempts, backoff=backoff
            ):
                dead += 1
            else:
                failed += 1
            continue
        store.mark_sent(msg, now())
        sent += 1
    store.snapshot(campaign_id, now(), "dispatch")
    return DispatchResult(sent, failed, dead)
