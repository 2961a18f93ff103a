"""``provguard query`` refuses statements other than a query or ``CREATE TABLE AS`` by name, as
fresh user 11 met them (issue 4): one PG160 line naming the statement, exit code 2, nothing
written beside the store, the refusal audited with the statement's name as its kind; a locking
read is one clean PG160 without sqlglot's warning; and ``USING SAMPLE 5 ROWS`` gives 5 of the
app's rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.query import query_app
from provguard.sqlgen.statement import NOT_ALLOWED

from .test_cli_query import _args
from .test_cli_query import store as store  # the fixture


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "control.db" and not p.name.startswith("control.db-")
    }


def _query_entries(store: Path) -> list[dict[str, object]]:
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        return [dict(e.payload) for e in log.entries(kind="query")]


@pytest.mark.parametrize(
    ("sql", "name", "kind"),
    [
        ("CREATE MACRO m(x) AS x", "CREATE MACRO", "create_macro"),
        ("CREATE VIEW v AS SELECT handle FROM profiles", "CREATE VIEW", "create_view"),
        ("EXPORT DATABASE '{out}/export'", "EXPORT DATABASE", "unparsable"),
        ("COPY profiles TO '{out}/leak.csv'", "COPY", "copy"),
        ("ATTACH '{out}/other.db' AS other", "ATTACH", "attach"),
        ("CHECKPOINT", "CHECKPOINT", "checkpoint"),
        ("SET threads = 1", "SET", "set"),
        ("INSTALL httpfs", "INSTALL", "install"),
        ("INSERT INTO profiles SELECT * FROM profiles", "INSERT", "insert"),
    ],
)
def test_statements_are_refused_by_name_and_write_nothing(
    store: Path, sql: str, name: str, kind: str
) -> None:
    root = store.parent
    before = _files(root)
    res = CliRunner().invoke(query_app, [*_args(store), sql.format(out=root)])
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error")]
    assert errors == [f"error [PG160] {NOT_ALLOWED.format(name=name)}"]
    assert "PG161" not in res.output and "Falling back" not in res.output
    assert _files(root) == before  # no export, copy, attached database or view file
    entry = _query_entries(store)[-1]
    assert entry["outcome"] == "refused" and entry["error_code"] == "PG160"
    assert entry["statement_kind"] == kind


def test_a_locking_read_is_one_clean_refusal(store: Path) -> None:
    res = CliRunner().invoke(
        query_app, [*_args(store), "SELECT subject_id FROM profiles FOR UPDATE"]
    )
    assert res.exit_code == 2, res.output
    assert "Locking reads" not in res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error [PG160] locking reads (FOR UPDATE")
    assert _query_entries(store)[-1]["error_code"] == "PG160"


def test_a_rows_sample_gives_that_many_of_the_apps_rows(store: Path) -> None:
    for n in (5, 12):
        res = CliRunner().invoke(
            query_app,
            [
                *_args(store),
                "--json",
                f"SELECT subject_id, app_id FROM profiles USING SAMPLE {n} ROWS",
            ],
        )
        assert res.exit_code == 0, res.output
        rows = [json.loads(ln) for ln in res.output.splitlines() if ln.startswith("{")]
        assert len(rows) == n
        assert {r["app_id"] for r in rows} == {"douyin"}
        assert all(r["subject_id"] % 2 == 0 for r in rows)  # Douyin's rows are the even ones
