"""QQ Connect end to end over HTTP: authorize -> token (POST, fmt=json) -> /oauth2.0/me with
unionid=1 -> /user/get_user_info; every value labelled with origin qq. And the connector's
refresh-token call on the injectable clock."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from provguard.grants.errors import ExpiredGrantError, ProviderError
from provguard.provenance import OriginRegistry

from .conftest import USERS, World

QQ_FIELDS = {
    "openid",
    "unionid",
    "nickname",
    "gender",
    "figureurl",
    "figureurl_1",
    "figureurl_2",
    "figureurl_qq_1",
    "figureurl_qq_2",
}


def userinfo(world: World, access: str, openid: str, app: str = "douyin") -> dict[str, object]:
    r = httpx.get(
        f"{world.platform_url}/user/get_user_info",
        params={"access_token": access, "openid": openid, "oauth_consumer_key": app},
        timeout=10,
    )
    body: dict[str, object] = r.json()
    return body


def test_qq_sign_in_records_labelled_profile(qq_world: World) -> None:
    world, store = qq_world, qq_world.store
    r = world.sign_in("carol")
    assert r.status_code == 200, r.text
    out = r.json()
    grant = store.grant(out["grant"])
    assert grant is not None and (grant.provider, grant.app_id) == ("qq", "douyin")
    # QQ ids: openid 32 upper-hex per app, unionid per developer (read from /oauth2.0/me)
    assert grant.openid == world.platform.openid("douyin", "carol")
    assert len(grant.openid) == 32 and grant.openid == grant.openid.upper()
    assert grant.unionid == world.platform.unionid("bytedance-open-account", "carol")
    assert grant.unionid.startswith("UID_")
    assert grant.scopes == "get_user_info"

    values = {v.field: v for v in store.values(grant.grant_id)}
    assert set(values) == QQ_FIELDS and out["values"] == len(QQ_FIELDS)  # ret / msg dropped
    qq_mask = OriginRegistry().mask(["qq"])
    assert qq_mask != OriginRegistry().mask(["wechat"])
    assert all(v.origin_mask == qq_mask for v in values.values())
    assert all(v.grants == frozenset({grant.grant_id}) for v in values.values())
    assert values["nickname"].value == USERS["carol"]
    assert values["nickname"].category == "user.name.nickname"
    avatar = f"{world.platform_url}/sandbox/avatar/{grant.openid}.png"
    assert values["figureurl_qq_1"].value == f"{avatar}?s=40"
    assert values["figureurl_qq_2"].value == f"{avatar}?s=100"
    for f in ("figureurl", "figureurl_1", "figureurl_2", "figureurl_qq_1", "figureurl_qq_2"):
        assert values[f].category == "user.avatar"
    assert values["gender"].category == "user" and values["gender"].value == "男"
    # the avatar URL is a real picture at the platform
    png = httpx.get(values["figureurl_qq_1"].value, timeout=10)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"

    # the same user at the other app of the developer: another openid, the same unionid
    other = store.grant(world.sign_in("carol", app="duoshan").json()["grant"])
    assert other is not None and other.openid != grant.openid
    assert other.unionid == grant.unionid

    # a login audit event, and the stored provider access token works at the platform
    world.service.flush()
    assert [e.kind for e in world.audit.entries()].count("grant.login") == 2
    access = store.token_secret(grant.grant_id, "access")
    assert access is not None
    assert userinfo(world, access, grant.openid)["nickname"] == USERS["carol"]


def test_wechat_refresh_on_the_clock(world: World) -> None:
    store = world.store
    grant_id = world.sign_in("alice").json()["grant"]
    grant = store.grant(grant_id)
    assert grant is not None
    old_access = store.token_secret(grant_id, "access")
    assert old_access is not None

    def wechat_userinfo(access: str) -> dict[str, object]:
        r = httpx.get(
            f"{world.platform_url}/sns/userinfo",
            params={"access_token": access, "openid": grant.openid},
            timeout=10,
        )
        body: dict[str, object] = r.json()
        return body

    assert wechat_userinfo(old_access)["nickname"] == USERS["alice"]
    world.clock.advance(7200)  # WeChat access tokens live 7200 s
    assert wechat_userinfo(old_access)["errcode"] == 42001

    connector = world.service.connector("wechat", "douyin")
    expires = connector.refresh(grant_id)
    assert expires == world.clock.now() + timedelta(seconds=7200)
    new_access = store.token_secret(grant_id, "access")
    assert new_access is not None and new_access != old_access
    assert wechat_userinfo(new_access)["nickname"] == USERS["alice"]
    # the old access token is superseded in the registry; the new one is live until `expires`
    with pytest.raises(ExpiredGrantError):
        store.find_token(old_access, world.clock.now())
    match = store.find_token(new_access, world.clock.now(), kinds=("access",))
    assert match.expires_at == expires and match.grant.grant_id == grant_id
    world.service.flush()
    rotated = [e.payload for e in world.audit.entries(kind="grant.token_rotated")]
    assert len(rotated) == 1 and rotated[0]["kind"] == "access"
    assert new_access not in "".join(e.stored_payload() for e in world.audit.entries())

    # the refresh token dies after 30 days on the same clock: refused before any call, audited
    world.clock.advance(30 * 86400)
    before = store.counts()["oauth_tokens"]
    with pytest.raises(ExpiredGrantError, match="expired"):
        connector.refresh(grant_id)
    assert store.counts()["oauth_tokens"] == before
    refused = [e.payload for e in world.audit.entries(kind="grant.refused")]
    assert refused[-1]["door"] == "refresh" and refused[-1]["code"] == "PG154"


def test_qq_refresh_and_revoked_at_provider(qq_world: World) -> None:
    world, store = qq_world, qq_world.store
    grant_id = world.sign_in("bob").json()["grant"]
    grant = store.grant(grant_id)
    assert grant is not None
    connector = world.service.connector("qq", "douyin")
    world.clock.advance(3600)
    expires = connector.refresh(grant_id)
    assert expires == world.clock.now() + timedelta(seconds=world.platform.access_ttl)
    access = store.token_secret(grant_id, "access")
    assert access is not None
    assert userinfo(world, access, grant.openid)["nickname"] == USERS["bob"]
    # the provider side withdraws the refresh token (RFC 7009 at the sandbox): refresh fails
    # with the provider's code, and the stored token is untouched
    assert connector.revoke_at_provider(grant_id)
    with pytest.raises(ProviderError) as info:
        connector.refresh(grant_id)
    assert (info.value.code, info.value.provider_code) == ("PG157", "100015")
    assert store.token_secret(grant_id, "access") == access
