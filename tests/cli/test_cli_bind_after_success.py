"""Session 7 (fresh user 9, low): a command on a data folder that is not yet bound to a control
store binds it (``data/_control_store.json``) only once it succeeded and its audit entry is
written. Before, ``provguard query`` bound the folder before running, so a query refused by the
policy (PG162) or failing on its policy path (PG160, an unknown ``--app``) left the folder bound;
``provguard data ...`` bound it in ``_open`` before checking the table or the app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.data import data_app
from provguard.cli.query import query_app
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import CONTROL_BINDING_FILE, control_store_id

from .test_cli_query import _args, random_profiles

REFUSED = "SELECT a.handle FROM profiles a JOIN profiles b ON a.handle = b.handle"
"""A self-join on handles: refused under friend recommendation (PG162)."""


@pytest.fixture()
def unbound(tmp_path: Path) -> Path:
    """A data folder with labelled ``profiles`` and a control store beside it, not bound."""
    from provguard.adapters.control_sqlite import SqlControlStore

    data = tmp_path / "data"
    LabelledStore(data).data.write_table("profiles", random_profiles(40, seed=5))
    SqlControlStore(tmp_path / "control.db").engine.dispose()
    assert not (data / CONTROL_BINDING_FILE).exists()
    return data


def _invoke(app: Any, args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def _queries(store: Path) -> list[dict[str, Any]]:
    with SqliteAuditLog(store.parent / "control.db") as log:
        return [dict(e.payload) for e in log.entries(kind="query")]


def _bound(store: Path) -> bool:
    return (store / CONTROL_BINDING_FILE).exists()


def test_a_refused_query_does_not_bind(unbound: Path) -> None:
    res = _invoke(query_app, [*_args(unbound), REFUSED])
    assert res.exit_code == 2, res.output
    assert "PG162" in res.output
    (entry,) = _queries(unbound)
    assert entry["outcome"] == "refused" and entry["error_code"] == "PG162"
    assert not _bound(unbound)
    assert "bound the data folder" not in res.output


def test_a_query_failing_on_its_policy_path_does_not_bind(unbound: Path) -> None:
    args = _args(unbound)
    args[args.index("douyin")] = "douyinn"  # a misspelt app: refused before anything is read
    res = _invoke(query_app, [*args, "SELECT subject_id FROM profiles"])
    assert res.exit_code == 2, res.output
    (entry,) = _queries(unbound)
    assert entry["outcome"] != "rows"
    assert not _bound(unbound)
    # a statement the rewrite cannot compile (an unknown column) fails the same way
    res = _invoke(query_app, [*_args(unbound), "SELECT no_such_column FROM profiles"])
    assert res.exit_code == 2, res.output
    assert len(_queries(unbound)) == 2
    assert not _bound(unbound)


def test_a_successful_query_binds_after_its_entry(unbound: Path) -> None:
    assert _invoke(query_app, [*_args(unbound), REFUSED]).exit_code == 2
    ok = _invoke(query_app, [*_args(unbound), "SELECT subject_id FROM profiles"])
    assert ok.exit_code == 0, ok.output
    assert "bound the data folder" in " ".join(ok.output.split())
    assert [e["outcome"] for e in _queries(unbound)] == ["refused", "rows"]
    sid = control_store_id(unbound.parent / "control.db", create=False)
    assert sid is not None and sid in (unbound / CONTROL_BINDING_FILE).read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["normalise-labels", "--table", "no_such_table"],
        ["drop-masks", "--table", "no_such_table"],
        [
            "store-masks",
            "--app",
            "douyinn",
            "--purpose",
            "social.friend_recommendation",
        ],
    ],
    ids=["normalise-unknown-table", "drop-masks-unknown-table", "store-masks-unknown-app"],
)
def test_a_failing_data_command_does_not_bind(unbound: Path, args: list[str]) -> None:
    res = _invoke(data_app, [*args, "--store", str(unbound)])
    assert res.exit_code != 0, res.output
    assert not _bound(unbound)
    with SqliteAuditLog(unbound.parent / "control.db") as log:
        assert not [e for e in log.entries() if e.kind.startswith("data.")]


def test_a_successful_data_command_binds_after_its_entry(unbound: Path) -> None:
    res = _invoke(data_app, ["normalise-labels", "--store", str(unbound)])
    assert res.exit_code == 0, res.output
    assert _bound(unbound)
    with SqliteAuditLog(unbound.parent / "control.db") as log:
        assert [e.kind for e in log.entries(kind="data.normalise_labels")] == [
            "data.normalise_labels"
        ]
