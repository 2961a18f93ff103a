"""Session 6: a unionid join refused with PG141 (the registry's grant times cannot all be true)
is audited like the same refusal at the token exchange and /link doors (``grant.refused``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from provguard.grants.errors import ImpossibleGrantFactsError

from .conftest import World

BEFORE_ORDER = datetime(2019, 2, 1, tzinfo=UTC)


def test_unionid_join_refusal_is_audited(world: World) -> None:
    a_douyin = world.sign_in("alice").json()["grant"]  # granted at T0 (2019-06-30)
    world.sign_in("alice", app="duoshan")
    world.store.record_first_use(a_douyin, "duoshan", BEFORE_ORDER)  # before the grant
    unionid = world.platform.unionid("bytedance-open-account", "alice")
    with pytest.raises(ImpossibleGrantFactsError):
        world.service.gate.join_on_unionid("duoshan", unionid)
    assert world.store.transfer_attempts() == []  # nothing decided or recorded
    world.service.flush()
    refused = [dict(e.payload) for e in world.audit.entries(kind="grant.refused")]
    assert len(refused) == 1
    (r,) = refused
    assert (r["code"], r["door"], r["client"], r["grant"]) == (
        "PG141",
        "unionid_join",
        "duoshan",
        a_douyin,
    )
    assert "precedes 'grant_granted_at'" in str(r["reason"])
    assert world.audit.verify().ok
