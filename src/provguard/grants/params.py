"""OAuth request parameters given at most once (RFC 6749 sections 3.1 and 3.2).

RFC 6749 section 3.1 (authorization endpoint, its requests and the responses redirected back to
the client) and section 3.2 (token endpoint) both say: "Request and response parameters MUST NOT
be included more than once." RFC 7009 section 2.1 (revocation) and RFC 8693 section 2.1 (token
exchange) use the same ``application/x-www-form-urlencoded`` encoding. A server that lets the
last (or first) of two values win lets an intermediary or a confused client smuggle a second
value past whatever checked the first, so both HTTP faces of provguard refuse such a request:
the grant registry's own server (:func:`provguard.grants.service.create_app`, forms and the
sign-in callback's query) and the provguard service
(:func:`provguard.service.tokens.single_valued_form`). One check, :func:`single_valued`, serves
both.
"""

from __future__ import annotations

from collections.abc import Iterable

from provguard.grants.errors import GrantInputError

__all__ = ["single_valued"]


def single_valued(items: Iterable[tuple[str, object]]) -> dict[str, str]:
    """The parameters ``items`` (name, value pairs in request order, e.g. Starlette's
    ``form.multi_items()`` or :func:`urllib.parse.parse_qsl` with ``keep_blank_values=True``)
    as a ``{name: str(value)}`` dict.

    Raises :class:`~provguard.grants.errors.GrantInputError` (``PG150``, HTTP 400, OAuth error
    ``invalid_request``) naming every parameter given more than once, in order of first
    repetition -- an empty repeated value counts too. Names are cut to 64 characters in the
    message; values never appear in it (they may be secrets)."""
    out: dict[str, str] = {}
    repeated: list[str] = []
    for name, value in items:
        if name in out:
            if name not in repeated:
                repeated.append(name)
            continue
        out[name] = str(value)
    if repeated:
        names = ", ".join(f"'{n[:64]}'" for n in repeated)
        raise GrantInputError(
            f"parameter {names} given more than once (RFC 6749 sections 3.1 and 3.2: request "
            "and response parameters MUST NOT be included more than once)"
        )
    return out
