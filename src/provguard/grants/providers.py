"""How to talk to each open platform: endpoint paths, scopes, and what each profile field is.

The paths are those of the real platforms' documented login APIs (WeChat Open Platform "网站应用
微信登录" / 公众号网页授权, QQ Connect "OAuth2.0 开发文档"); :mod:`provguard.sandbox.oauth_provider`
serves the same paths on loopback. ``revoke_path`` (RFC 7009) is an extension: neither real
platform publishes a revocation endpoint, they notify apps instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from provguard.grants.errors import UnknownAppError


@dataclass(frozen=True)
class ProviderProfile:
    """One provider's login API.

    ``token_method``: HTTP method of the token endpoint (WeChat: ``GET`` with ``appid`` and
    ``secret`` in the query; QQ: ``POST`` form, ``client_id`` / ``client_secret``).
    ``fields``: profile field -> data category; fields not listed are recorded as ``user``.
    """

    name: str
    authorize_path: str
    token_path: str
    refresh_path: str
    userinfo_path: str
    me_path: str | None
    revoke_path: str
    default_scope: str
    token_method: str
    fields: tuple[tuple[str, str], ...]

    def category_of(self, field: str) -> str:
        for name, category in self.fields:
            if name == field:
                return category
        return "user"


WECHAT = ProviderProfile(
    name="wechat",
    authorize_path="/connect/oauth2/authorize",
    token_path="/sns/oauth2/access_token",
    refresh_path="/sns/oauth2/refresh_token",
    userinfo_path="/sns/userinfo",
    me_path=None,
    revoke_path="/sandbox/oauth2/revoke",
    default_scope="snsapi_userinfo",
    token_method="GET",
    fields=(
        ("openid", "user.unique_id.openid"),
        ("unionid", "user.unique_id.unionid"),
        ("nickname", "user.name.nickname"),
        ("headimgurl", "user.avatar"),
    ),
)

QQ = ProviderProfile(
    name="qq",
    authorize_path="/oauth2.0/authorize",
    token_path="/oauth2.0/token",
    refresh_path="/oauth2.0/token",
    userinfo_path="/user/get_user_info",
    me_path="/oauth2.0/me",
    revoke_path="/sandbox/oauth2/revoke",
    default_scope="get_user_info",
    token_method="POST",
    fields=(
        ("openid", "user.unique_id.openid"),
        ("unionid", "user.unique_id.unionid"),
        ("nickname", "user.name.nickname"),
        ("figureurl", "user.avatar"),
        ("figureurl_1", "user.avatar"),
        ("figureurl_2", "user.avatar"),
        ("figureurl_qq_1", "user.avatar"),
        ("figureurl_qq_2", "user.avatar"),
    ),
)

PROVIDERS: dict[str, ProviderProfile] = {p.name: p for p in (WECHAT, QQ)}


def provider_profile(name: str) -> ProviderProfile:
    """The profile of provider ``name``; raises :class:`UnknownAppError` for another name."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UnknownAppError(
            f"unknown provider '{name}'; known: {', '.join(sorted(PROVIDERS))}"
        ) from None
