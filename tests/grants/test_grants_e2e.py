"""The issue's "Done when", end to end over HTTP, on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from provguard.grants.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from provguard.provenance import OriginRegistry

from .conftest import GRANTED_EARLY, RP_SECRETS, USERS, World

INSTRUMENT = "cn-tj-binhai-2019-douyin-duoshan"


def exchange(world: World, subject_token: str, client: str = "duoshan") -> object:
    return world.post(
        "/oauth2/token",
        {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "audience": client,
            "client_id": client,
            "client_secret": RP_SECRETS[client],
        },
    )


def test_sign_in_transfer_revoke_purge(world: World) -> None:
    store = world.store
    # 1. sign in over HTTP through the sandbox platform
    r = world.sign_in("alice")
    assert r.status_code == 200, r.text
    alice = r.json()
    grant = store.grant(alice["grant"])
    assert grant is not None and grant.app_id == "douyin" and grant.status == "active"
    assert grant.openid == world.platform.openid("douyin", "alice")
    assert grant.unionid == world.platform.unionid("bytedance-open-account", "alice")

    # the labelled profile is in the store
    values = {v.field: v for v in store.values(grant.grant_id)}
    wechat_mask = OriginRegistry().mask(["wechat"])
    assert values["nickname"].value == USERS["alice"]
    assert values["nickname"].category == "user.name.nickname"
    assert values["headimgurl"].category == "user.avatar"
    assert values["headimgurl"].value.startswith(world.platform_url + "/sandbox/avatar/")
    assert values["unionid"].category == "user.unique_id.unionid"
    assert all(v.origin_mask == wechat_mask for v in values.values())
    assert all(v.grants == frozenset({grant.grant_id}) for v in values.values())
    assert set(values) == {
        "openid",
        "unionid",
        "nickname",
        "sex",
        "province",
        "city",
        "country",
        "headimgurl",
        "privilege",
    }
    assert alice["values"] == 9
    assert values["sex"].category == "user" and values["privilege"].value == "[]"

    # derived values carry the grant: a feature of the handle, and a score derived from it
    now = world.clock.now()
    f1, m1, g1 = store.add_derived(
        "handle_trigrams", "xiao|ai a", [values["nickname"].value_id], now
    )
    _f2, m2, g2 = store.add_derived("match_score", "0.93", [f1, values["headimgurl"].value_id], now)
    assert (m1, g1) == (wechat_mask, frozenset({grant.grant_id}))
    assert (m2, g2) == (wechat_mask, frozenset({grant.grant_id}))

    # 2. duoshan's token exchange is denied, citing the rule and the instrument
    r = exchange(world, alice["session_token"])
    assert r.status_code == 400
    body = r.json()
    assert body["error"] == "invalid_target" and body["code"] == "PG159"
    assert (body["rule"], body["instrument"]) == ("no-login-grant-transfer", INSTRUMENT)

    # 3. a grandfathered account (first used by duoshan before 2019-03-20) is permitted
    bob = world.sign_in_at("bob", GRANTED_EARLY)  # signed in before duoshan first used it
    store.record_first_use(bob["grant"], "duoshan", datetime(2019, 2, 1, tzinfo=UTC))
    r = exchange(world, bob["session_token"])
    assert r.status_code == 200, r.text
    issued = r.json()
    assert issued["issued_token_type"] == ACCESS_TOKEN_TYPE and issued["token_type"] == "Bearer"
    assert 0 < issued["expires_in"] <= 3600
    bob_values = {v.field: v for v in store.values(bob["grant"])}
    b1, _, _ = store.add_derived(
        "handle_trigrams", "bao|bob", [bob_values["nickname"].value_id], now
    )
    # mixing both grants: the derived value carries both, and goes with either
    mixed, _, mixed_grants = store.add_derived("pair_score", "0.1", [f1, b1], now)
    assert mixed_grants == frozenset({grant.grant_id, bob["grant"]})

    attempts = {(a.grant_id, a.effect, a.excepted, a.rule_id) for a in store.transfer_attempts()}
    assert attempts == {
        (grant.grant_id, "deny", False, "no-login-grant-transfer"),
        (bob["grant"], "permit", True, "no-login-grant-transfer"),
    }

    # 4. the user revokes douyin at the platform: the notification quarantines at once
    r = world.post("/__unused__", {})  # the service answers 404 for unknown paths
    assert r.status_code == 404
    import httpx

    r = httpx.post(
        f"{world.platform_url}/sandbox/users/alice/revoke", data={"app_id": "douyin"}, timeout=10
    )
    assert r.status_code == 200
    assert [d["status"] for d in r.json()["deliveries"]] == [200]
    assert store.values(grant.grant_id) == []
    assert len(store.values(grant.grant_id, status="quarantined")) == len(values)
    derived_active = {d["value_id"] for d in store.derived()}
    assert derived_active == {b1}
    assert exchange(world, alice["session_token"]).json()["code"] == "PG154"  # revoked
    (job,) = store.jobs()
    assert job["state"] == "quarantined" and job["reason"] == "authorization_revoked"
    assert job["purge_by"] == world.clock.now() + timedelta(days=15)
    assert store.remaining(grant.grant_id)["values"] == len(
        values
    )  # not purged before the deadline
    assert world.service.cascade.purge_due() == []

    # ...and purged by the deadline; a query proves nothing remains
    world.clock.advance(15 * 86400)
    assert world.service.cascade.purge_due() == [job["job_id"]]
    world.service.flush()
    assert store.remaining(grant.grant_id) == {
        "tokens": 0,
        "values": 0,
        "derived": 0,
        "label_links": 0,
        "first_use": 0,
        "consents": 0,
        "subject_ids": 0,
    }
    done = store.job(job["job_id"])
    assert done["state"] == "purged"
    assert (done["purged_tokens"], done["purged_values"], done["purged_derived"]) == (
        done["expected_tokens"],
        done["expected_values"],
        3,
    )
    assert done["steps"] == ["quarantine", "tokens", "derived", "values", "grant"]
    # bob's grant is untouched, and so are the values derived from it alone
    assert len(store.values(bob["grant"])) == len(bob_values)
    assert {d["value_id"] for d in store.derived()} == {b1}
    assert mixed not in {d["value_id"] for d in store.derived(status="quarantined")}
    # a second notification for the same grant changes nothing
    world.platform.revoke_authorization("alice", "douyin")
    assert len(store.jobs()) == 1

    # the audit log holds the story, chained, and no secret
    world.service.flush()
    kinds = [e.kind for e in world.audit.entries()]
    for kind in ("grant.login", "grant.transfer", "grant.quarantined", "grant.purged"):
        assert kind in kinds
    assert kinds.count("grant.purged") == 1
    assert world.audit.verify().ok
    dump = "".join(e.stored_payload() for e in world.audit.entries())
    assert alice["session_token"] not in dump and issued["access_token"] not in dump
