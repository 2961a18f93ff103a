"""OAuth grants: sign-in through an open platform, the grant registry, onward-transfer control
and revocation cascades (see docs/grants.md).

- :class:`LoginConnector` — the authorization-code flow with PKCE (Authlib client), recording the
  grant and every profile value with its provenance label;
- :class:`TransferGate` — RFC 8693 token exchange, account linking and unionid joins, each decided
  by the PDP and audited;
- :class:`RevocationCascade` — RFC 7009 / provider notifications: quarantine, then purge grant,
  tokens, values and derived values, idempotently and resumably;
- :class:`GrantService` / :func:`create_app` — the HTTP face.
"""

from provguard.grants.connector import ClientCredentials, LoginConnector, LoginResult
from provguard.grants.crypto import TokenCipher, constant_time_equals, generate_key
from provguard.grants.model import GrantRecord, LabelledValue, TransferAttempt
from provguard.grants.providers import PROVIDERS, QQ, WECHAT, ProviderProfile, provider_profile
from provguard.grants.revocation import RevocationCascade
from provguard.grants.service import GrantService, create_app, flush_outbox
from provguard.grants.transfer import TransferGate, TransferResult

__all__ = [
    "PROVIDERS",
    "QQ",
    "WECHAT",
    "ClientCredentials",
    "GrantRecord",
    "GrantService",
    "LabelledValue",
    "LoginConnector",
    "LoginResult",
    "ProviderProfile",
    "RevocationCascade",
    "TokenCipher",
    "TransferAttempt",
    "TransferGate",
    "TransferResult",
    "constant_time_equals",
    "create_app",
    "flush_outbox",
    "generate_key",
    "provider_profile",
]
