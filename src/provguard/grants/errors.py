"""Errors of the grant registry, the login connector and the transfer gate.

Codes extend the tree in :mod:`provguard.errors` (``PG15x`` input, ``PG25x`` store)::

    InputError                     PG100
    └── GrantInputError            PG150  a refused OAuth / grant input
        ├── StateMismatchError     PG151  unknown, reused or expired ``state`` (CSRF check)
        ├── CodeReplayError        PG152  an authorization code presented twice
        ├── MalformedTokenError    PG153  a token that is not one we issued / cannot parse
        ├── ExpiredGrantError      PG154  a token or grant past its expiry, or revoked
        ├── UnknownAppError        PG155  a client app the registry / provider does not know
        │   └── UnauthorizedClientError PG155  an authenticated client acting on a token that
        │                                      was not issued to it (RFC 7009 section 2.1)
        ├── PkceError              PG156  missing or wrong PKCE ``code_verifier`` (RFC 7636)
        ├── ProviderError          PG157  the provider answered with an error
        ├── SignatureError         PG158  a provider notification whose HMAC does not verify
        ├── TransferDeniedError    PG159  the PDP denied an onward transfer (carries the decision)
        └── ImpossibleGrantFactsError PG141  the registry's grant times cannot all be true (a
                                             first use by the recipient before the grant was
                                             given, or after the exchange): nothing is decided

Every error carries ``oauth_error`` (the RFC 6749 / RFC 8693 error code an HTTP endpoint answers
with) and ``http_status``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from provguard.errors import InputError

if TYPE_CHECKING:
    from provguard.decide import Decision


class GrantInputError(InputError):
    code = "PG150"
    oauth_error = "invalid_request"
    http_status = 400


class StateMismatchError(GrantInputError):
    code = "PG151"
    oauth_error = "invalid_request"


class CodeReplayError(GrantInputError):
    code = "PG152"
    oauth_error = "invalid_grant"


class MalformedTokenError(GrantInputError):
    code = "PG153"
    oauth_error = "invalid_grant"


class ExpiredGrantError(GrantInputError):
    code = "PG154"
    oauth_error = "invalid_grant"


class UnknownAppError(GrantInputError):
    code = "PG155"
    oauth_error = "invalid_client"
    http_status = 401


class UnauthorizedClientError(UnknownAppError):
    """An authenticated client asked to act on a token issued to another client (RFC 7009
    section 2.1: the server verifies the token was issued to the requesting client and refuses
    otherwise; the RFC 6749 section 5.2 error is ``unauthorized_client``)."""

    oauth_error = "unauthorized_client"
    http_status = 400


class UnsupportedTokenTypeError(GrantInputError):
    """A ``token_type_hint`` this server does not revoke (RFC 7009 section 2.2.1)."""

    oauth_error = "unsupported_token_type"


class PkceError(GrantInputError):
    code = "PG156"
    oauth_error = "invalid_grant"


class ProviderError(GrantInputError):
    """The provider refused; ``provider_code`` is its own error code (WeChat ``errcode``)."""

    code = "PG157"
    oauth_error = "invalid_grant"

    def __init__(self, message: str, provider_code: str | None = None) -> None:
        self.provider_code = provider_code
        super().__init__(message)


class SignatureError(GrantInputError):
    code = "PG158"
    oauth_error = "invalid_request"
    http_status = 401


class ImpossibleGrantFactsError(GrantInputError):
    """The grant registry's facts about a grant cannot all be true, so no transfer of it is
    decided: the recipient's recorded first use precedes the grant's ``granted_at`` or lies after
    the time of the transfer (:func:`provguard.decide.check_grant_times`,
    docs/policy-language.md "Grant facts"). Code ``PG141``: the registry's facts, next to
    :class:`~provguard.errors.RequestError`'s ``PG140`` for a caller's (its message is carried);
    HTTP 400
    ``invalid_request`` (RFC 8693 section 2.2.2: the ``subject_token``'s grant is unusable).
    Nothing is recorded: no transfer attempt, no token, no first use."""

    code = "PG141"
    oauth_error = "invalid_request"


class TransferDeniedError(GrantInputError):
    """An onward transfer the PDP denied; ``decision`` holds the rules and instruments.

    HTTP 400 ``invalid_target``: RFC 8693 section 2.2.2 answers a token request that is
    unacceptable by policy with an RFC 6749 section 5.2 error response (400), and names
    ``invalid_target`` for a server unwilling to issue a token for the audience."""

    code = "PG159"
    oauth_error = "invalid_target"  # RFC 8693 section 2.2.2
    http_status = 400

    def __init__(self, message: str, decision: Decision) -> None:
        self.decision = decision
        super().__init__(message)
