"""Masking sensitive values in audit entries without changing the caller's objects."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.masking import ERROR_CODE, Masker
from provguard.clock import FixedClock

SECRET = "ya29.a0AfH6SMBx-very-secret-token"


def test_tokens_masked_in_log_but_not_for_caller(tmp_path: Path) -> None:
    log = SqliteAuditLog(
        tmp_path / "a.db",
        clock=FixedClock(datetime(2019, 3, 20, tzinfo=UTC)),
        masker=Masker.for_deployment(mask_handles=True, secret=b"k"),
    )
    payload = {
        "stage": "token_exchange",
        "exchange": {"access_token": SECRET, "scopes": ["snsapi_userinfo"]},
        "headers": ["Bearer " + SECRET],
        "profile": {"handle": "小明🌟", "subject_id": 7},
    }
    before = copy.deepcopy(payload)
    log.append("token.exchange", payload)
    assert payload == before  # what the caller holds is unchanged
    (stored,) = list(log.entries())
    text = stored.stored_payload()
    assert SECRET not in text and "小明" not in text
    assert stored.payload["exchange"]["scopes"] == ["snsapi_userinfo"]
    assert stored.payload["profile"]["subject_id"] == 7
    masked = stored.payload["exchange"]["access_token"]
    assert (
        masked.startswith("masked:hmac-sha256:") and len(masked) == len("masked:hmac-sha256:") + 16
    )
    # the same token masks to the same pseudonym (linkable), a different one does not
    log.append("token.exchange", {"access_token": SECRET})
    log.append("token.exchange", {"access_token": SECRET + "x"})
    e2, e3 = list(log.entries(start=2))
    assert e2.payload["access_token"] == masked != e3.payload["access_token"]
    assert log.verify().ok


def test_handles_kept_unless_configured() -> None:
    assert Masker().mask({"handle": "a", "token": "t"}) == {"handle": "a", "token": "masked"}


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12))
json_tree = st.recursive(
    json_leaf,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(st.sampled_from(["a", "token", "Code", "x", "handle"]), kids, max_size=4),
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "token", "ACCESS_TOKEN"]), json_tree))
def test_no_value_under_a_secret_key_survives(payload: dict[str, object]) -> None:
    masker = Masker()
    before = copy.deepcopy(payload)
    out = masker.mask(payload)
    assert payload == before

    def check(value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k.lower() == "code" and isinstance(v, str) and ERROR_CODE.fullmatch(v):
                    assert v.startswith("PG")  # an error code is evidence: kept
                elif k.lower() in masker.keys:
                    assert v == "masked"
                else:
                    check(v)
        elif isinstance(value, list):
            for v in value:
                check(v)

    check(out)
    if not masker.needs_masking(payload):
        assert out == payload


def test_error_codes_kept_oauth_codes_masked(tmp_path: Path) -> None:
    log = SqliteAuditLog(tmp_path / "a.db", masker=Masker.for_deployment(secret=b"k"))
    oauth_code = "071Ab2ll2YtzZd4Kxqml2SzFuS1Ab2lf"  # the shape of a WeChat authorization code
    refused = {"code": "PG153", "error": "GrantStateError", "reason": "state mismatch"}
    callback = {"stage": "callback", "query": {"code": oauth_code, "state": "s1"}}
    log.append("grant.refused", refused)
    log.append("grant.callback", callback)
    r, c = list(log.entries())
    assert r.payload == refused  # the refusal's error code survives
    assert oauth_code not in c.stored_payload()
    assert c.payload["query"]["code"].startswith("masked:hmac-sha256:")
    assert c.payload["query"]["state"] == "s1"
    assert log.verify().ok


def test_only_the_exact_error_code_shape_is_kept() -> None:
    m = Masker()
    for kept in ("PG150", "PG000", "PG999"):
        assert m.mask({"code": kept}) == {"code": kept}
        assert m.mask({"Code": kept}) == {"Code": kept}
        assert not m.needs_masking({"nested": [{"code": kept}]})
    for masked in ("PG15", "PG1500", "pg150", " PG150", "PG150\n", "xPG150", 150, None):
        assert m.mask({"code": masked}) == {"code": "masked"}, masked
        assert m.needs_masking({"code": masked})
    # other secret keys are masked even when they look like an error code
    assert m.mask({"token": "PG150", "password": "PG150"}) == {
        "token": "masked",
        "password": "masked",
    }
    # a deployment can turn the exception off
    strict = Masker(keep_error_codes=False)
    assert strict.mask({"code": "PG150"}) == {"code": "masked"}


def test_grant_refused_entry_keeps_its_code(tmp_path: Path) -> None:
    from provguard.grants.connector import refuse
    from provguard.grants.errors import GrantInputError

    log = SqliteAuditLog(tmp_path / "a.db", masker=Masker.for_deployment())
    exc = GrantInputError("parameter 'grant_type': bad")
    refuse(log, exc, provider="wechat")
    (e,) = list(log.entries(kind="grant.refused"))
    assert e.payload["code"] == exc.code and exc.code.startswith("PG")
    assert e.payload["provider"] == "wechat"
