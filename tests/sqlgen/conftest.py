from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from provguard.job.ingest import LABELLED_PROFILE_SCHEMA
from provguard.policy import load_policy_dir
from provguard.policy.model import PolicySet
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "sqlgen"
#: the deployment key of the keyed hash mask in these tests
HASH_KEY = b"provguard-test-hash-key"
AT = datetime(2019, 6, 1, tzinfo=UTC)
REG = default_registry()
# labels seen in real exports (one origin) plus mixed and unrecorded ones
LABELS = [
    REG.mask(["user_input"]),
    REG.mask(["wechat"]),
    REG.mask(["qq"]),
    REG.mask(["unknown"]),
    REG.mask(["wechat", "user_input"]),
    REG.mask(["qq", "wechat"]),
    0,
]
HANDLES = ["小明", "wxAlice", "qq_bob", "Ｃａｒｏｌ", "dave🐱", "小红书", "eve", None]


def make_profiles(
    rows: Sequence[tuple[int, str, int | None, int, int | None, int]],
) -> pa.Table:
    """A labelled profiles table: (subject_id, app_id, handle#, h_label, avatar#, a_label)."""
    base = datetime(2018, 1, 1, tzinfo=UTC)
    data: dict[str, list[object]] = {f.name: [] for f in LABELLED_PROFILE_SCHEMA}
    for i, (sid, app, h, hl, a, al) in enumerate(rows):
        data["app_id"].append(app)
        data["subject_id"].append(sid)
        data["account_id"].append(f"{app[:2]}{sid:06d}")
        data["handle"].append(None if h is None else HANDLES[h % len(HANDLES)])
        data["handle_origins"].append(hl)
        data["handle_grant"].append(f"grt_{sid}")
        data["avatar_key"].append(None if a is None else f"av/{a:04d}.jpg")
        data["avatar_origins"].append(al)
        data["avatar_grant"].append(f"grt_{sid}")
        data["grant_id"].append(f"grt_{sid}")
        data["created_at"].append(base + timedelta(hours=i))
    return pa.table(data, schema=LABELLED_PROFILE_SCHEMA)


def own_rows(t: pa.Table, app: str = "douyin") -> pa.Table:
    """The rows of ``t`` that app ``app`` collected (``app_id``): what controller isolation lets
    a policy-aware query by ``app`` read, so the plain query over them is the reference."""
    return pa.Table.from_pylist([r for r in t.to_pylist() if r["app_id"] == app], schema=t.schema)


def random_profiles(n: int, seed: int) -> pa.Table:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            (
                i // 2,
                "douyin" if i % 2 == 0 else "duoshan",
                rnd.randrange(len(HANDLES)),
                rnd.choice(LABELS),
                rnd.randrange(6) if rnd.random() > 0.1 else None,
                rnd.choice(LABELS),
            )
        )
    return make_profiles(rows)


@pytest.fixture(scope="session")
def mask_policy() -> PolicySet:
    return load_policy_dir(GOLDEN / "policy-masks.yaml")


@pytest.fixture()
def qpolicy(mask_policy: PolicySet) -> QueryPolicy:
    return QueryPolicy(
        mask_policy,
        default_registry(),
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=HASH_KEY,
    )


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    pytest.importorskip("pyspark")
    from provguard.adapters.spark_engine import SparkEngine

    engine = SparkEngine()
    yield engine
    engine.stop()
