"""``provguard data``: stored masks, normalised labels and stored hashes from the command line.

A stored mask is read by a query only under the verdict it was made for (the same answer as
masking per row); another purpose, a dropped mask or a re-normalised table mask per row again;
every command is an audit entry and the chain still verifies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.test_cli_query import MASKS, store  # noqa: F401  (fixture)
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app

KEY = "cli-data-hash-key-0123456789"
runner = CliRunner()


def _query(data: Path, purpose: str = "social.friend_recommendation") -> tuple[str, list[str]]:
    args = ["query", "--app", "douyin", "--purpose", purpose, "--store", str(data),
            "--policy", str(MASKS), "--at", "2019-06-30", "--json", "--show-sql", "--limit", "100",
            "SELECT subject_id, handle, avatar_key FROM profiles ORDER BY subject_id"]  # fmt: skip
    res = runner.invoke(app, args, env={"PROVGUARD_HASH_KEY": KEY, "COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.output.splitlines() if ln.startswith("{")]
    sql = "\n".join(ln for ln in res.output.splitlines() if not ln.startswith("{"))
    return sql, rows


def _kinds(data: Path) -> list[str]:
    with SqliteAuditLog(data.parent / "control.db", create=False) as log:
        assert log.verify().ok
        return [e.kind for e in log.entries() if e.kind.startswith("data.")]


@pytest.mark.parametrize("normalise", [False, True])
def test_stored_masks_answer_as_per_row_masks_and_only_for_their_verdict(
    store: Path,  # noqa: F811
    normalise: bool,
) -> None:
    sql, before = _query(store)
    # douyin's 20 of the store's 40 rows (controller isolation: never duoshan's)
    assert "__mask_" not in sql and len(before) == 20
    assert all('"app_id"' not in r for r in before)
    assert "profiles.app_id = 'douyin'" in sql
    assert any('"handle": "[withheld]"' in r for r in before)  # masks apply at all
    if normalise:
        res = runner.invoke(app, ["data", "normalise-labels", "--store", str(store)])
        assert res.exit_code == 0, res.output
    args = ["data", "store-masks", "--app", "douyin", "--purpose", "social.friend_recommendation",
            "--store", str(store), "--policy", str(MASKS), "--at", "2019-06-30"]  # fmt: skip
    res = runner.invoke(app, args, env={"PROVGUARD_HASH_KEY": KEY})
    assert res.exit_code == 0, res.output
    assert "profiles.handle: stored mask" in res.output
    sql, after = _query(store)
    assert "__mask_" in sql
    assert after == before  # the same rows, masks and labels
    # the broader purpose 'social' has the same verdict (prohibitions reach up): same masks
    assert _query(store, "social")[1] == before
    # another purpose: its own verdict (nothing masked here), never the stored masks
    other_sql, shown = _query(store, "profile.display")
    assert "__mask_" not in other_sql and not any("[withheld]" in r for r in shown)
    res = runner.invoke(app, ["data", "drop-masks", "--store", str(store)])
    assert res.exit_code == 0 and "dropped 2 stored mask(s)" in res.output, res.output
    sql, dropped = _query(store)
    assert "__mask_" not in sql and dropped == before
    expected = ["data.store_masks", "data.drop_masks"]
    assert _kinds(store) == (["data.normalise_labels", *expected] if normalise else expected)


def test_store_hashes_needs_a_key_and_records_its_fingerprint_only(
    store: Path,  # noqa: F811
) -> None:
    res = runner.invoke(
        app, ["data", "store-hashes", "--store", str(store)], env={"PROVGUARD_HASH_KEY": ""}
    )
    assert res.exit_code != 0 and "PG100" in res.output
    res = runner.invoke(
        app, ["data", "store-hashes", "--store", str(store)], env={"PROVGUARD_HASH_KEY": KEY}
    )
    assert res.exit_code == 0 and "keyed hashes stored for" in res.output, res.output
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        (entry,) = [e for e in log.entries() if e.kind == "data.store_hashes"]
    text = json.dumps(dict(entry.payload))
    assert KEY not in text and "handle" in text and entry.payload["hash_key_id"]
    sql, _ = _query(store)
    assert "__hmac" in sql
