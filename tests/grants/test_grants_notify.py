"""Provider notifications: bounded retry with backoff from the sandbox platform's outbox,
idempotent handling by notification id at the service, and a callback down past the budget
(reported, kept, delivered later). Also RFC 7009 at the sandbox platform's own endpoint."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from provguard.grants.server import LoopbackServer

from .conftest import DOUYIN_SECRET, DUOSHAN_SECRET, World


class FlakyCallback:
    """A callback in front of the service: the first ``fail`` calls answer 503 without passing
    the notification on; with ``lose_ack`` the next one is passed on but answered 500 (the
    platform never sees the service's 200)."""

    def __init__(self, target: str, fail: int, *, lose_ack: bool = False) -> None:
        self.target, self.fail, self.lose_ack = target, fail, lose_ack
        self.calls: list[str] = []

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append(request.headers["x-sandbox-event-id"])
        if len(self.calls) <= self.fail:
            return Response(status_code=503)
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                self.target,
                content=body,
                headers={k: v for k, v in request.headers.items() if k.startswith("x-sandbox")},
            )
        if self.lose_ack:
            self.lose_ack = False
            return Response(status_code=500)
        return Response(r.content, status_code=r.status_code)


@pytest.fixture
def flaky(world: World) -> Iterator[tuple[FlakyCallback, list[float]]]:
    cb = FlakyCallback(f"{world.service_url}/notifications/wechat", fail=0)
    srv = LoopbackServer(Starlette(routes=[Route("/cb", cb.handle, methods=["POST"])])).start()
    app = world.platform.apps["douyin"]
    world.platform.register_app(dataclasses.replace(app, notify_url=f"{srv.url}/cb"))
    delays: list[float] = []
    world.platform.sleep = delays.append
    try:
        yield cb, delays
    finally:
        srv.stop()


def test_retry_fails_twice_then_succeeds(
    world: World, flaky: tuple[FlakyCallback, list[float]]
) -> None:
    cb, delays = flaky
    cb.fail = 2
    alice = world.sign_in("alice").json()
    (d,) = world.platform.revoke_authorization("alice", "douyin")
    assert (d.status, d.attempts, d.delivered) == (200, 3, True)
    assert delays == [0.05, 0.1]  # exponential backoff between the tries
    assert cb.calls == [d.event_id] * 3  # the same notification id every time
    (job,) = world.store.jobs()
    assert job["grant_id"] == alice["grant"] and job["state"] == "quarantined"
    assert world.store.values(alice["grant"]) == []
    assert world.platform.undelivered() == []


def test_redelivery_after_lost_ack_acts_once(
    world: World, flaky: tuple[FlakyCallback, list[float]]
) -> None:
    cb, _ = flaky
    cb.lose_ack = True
    alice = world.sign_in("alice").json()
    (d,) = world.platform.revoke_authorization("alice", "douyin")
    assert (d.status, d.attempts) == (200, 2)
    (job,) = world.store.jobs()
    assert job["grant_id"] == alice["grant"]
    world.service.flush()
    opened = [e.payload for e in world.audit.entries(kind="grant.revocation_opened")]
    quarantined = [e.payload for e in world.audit.entries(kind="grant.quarantined")]
    assert len(opened) == len(quarantined) == 1
    # an explicit replay of the same signed notification: same answer, nothing new
    row = world.platform.outbox[d.event_id]
    r = httpx.post(
        f"{world.service_url}/notifications/wechat", content=row.body, headers=row.headers
    )
    assert (r.status_code, r.json()["job"]) == (200, job["job_id"])
    world.service.flush()
    assert len(list(world.audit.entries(kind="grant.quarantined"))) == 1
    # a delivered row is not sent again
    assert world.platform.deliver(d.event_id).attempts == 2 and len(cb.calls) == 2


def test_callback_down_longer_than_budget(
    world: World, flaky: tuple[FlakyCallback, list[float]]
) -> None:
    cb, delays = flaky
    cb.fail = 10**6
    world.platform.retry_attempts = 4
    world.platform.retry_backoff_max = 0.15
    alice = world.sign_in("alice").json()
    (d,) = world.platform.revoke_authorization("alice", "douyin")
    assert (d.status, d.attempts, d.delivered) == (503, 4, False)
    assert delays == [0.05, 0.1, 0.15]  # capped
    # reported, not lost; the service has not acted (no notification reached it)
    assert [(u.event_id, u.event, u.attempts) for u in world.platform.undelivered()] == [
        (d.event_id, "authorization_revoked", 4)
    ]
    assert world.store.jobs() == []
    assert world.store.grant(alice["grant"]).status == "active"  # type: ignore[union-attr]
    # the callback comes back: redelivery delivers the same notification, the cascade runs
    cb.fail = 0
    (again,) = world.platform.redeliver()
    assert (again.event_id, again.status, again.attempts) == (d.event_id, 200, 5)
    assert world.platform.undelivered() == []
    (job,) = world.store.jobs()
    assert job["grant_id"] == alice["grant"]


def test_no_callback_registered_is_reported(world: World) -> None:
    app = world.platform.apps["duoshan"]
    world.platform.register_app(dataclasses.replace(app, notify_url=None))
    world.sign_in("bob", app="duoshan")
    (d,) = world.platform.revoke_authorization("bob", "duoshan")
    assert (d.status, d.attempts, d.delivered) == (0, 0, False)
    assert [u.event_id for u in world.platform.undelivered()] == [d.event_id]


def test_sandbox_rfc7009(world: World) -> None:
    """The sandbox platform's RFC 7009 endpoint: section 2.1 (another client's token refused,
    stays valid), 2.2 (unknown token 200), 2.2.1 (unsupported hint)."""
    alice = world.sign_in("alice").json()
    token = world.store.token_secret(alice["grant"], "access")
    assert token is not None
    url = f"{world.platform_url}/sandbox/oauth2/revoke"
    userinfo = f"{world.platform_url}/sns/userinfo"
    openid = world.platform.openid("douyin", "alice")

    def alive() -> bool:
        body = httpx.get(userinfo, params={"access_token": token, "openid": openid}).json()
        return "nickname" in body

    assert alive()
    r = httpx.post(url, data={"token": token}, auth=("duoshan", DUOSHAN_SECRET))
    assert (r.status_code, r.json()["error"]) == (400, "unauthorized_client")
    assert alive()
    r = httpx.post(url, data={"token": token}, auth=("duoshan", "wrong"))
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    r = httpx.post(
        url, data={"token": token, "token_type_hint": "id_token"}, auth=("douyin", DOUYIN_SECRET)
    )
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_token_type")
    assert (
        httpx.post(url, data={"token": "nope"}, auth=("douyin", DOUYIN_SECRET)).status_code == 200
    )
    assert alive()
    r = httpx.post(
        url,
        data={"token": token, "token_type_hint": "refresh_token"},
        auth=("douyin", DOUYIN_SECRET),
    )
    assert r.status_code == 200 and not alive()
