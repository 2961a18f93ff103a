"""Loading an app's profile export (``provguard data load``, :mod:`provguard.dataplane.export`):
the labels equal the main job's loader on the same platform in every format, bad rows are named
by file:line, field and reason and are either rejected (nothing written) or skipped (and kept in
the rejects file), and a loaded store is enforced like the job's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.cli.main import app
from provguard.dataplane.export import ExportRowError, load_export
from provguard.errors import InputError
from provguard.job.ingest import label_profiles
from provguard.provenance import default_registry
from provguard.sandbox import Platform, build_platform

ROOT = Path(__file__).resolve().parents[2]
REG = default_registry()
runner = CliRunner()

GRANTS_CSV = """grant_id,provider,openid
g1,wechat,o1
g2,qq,o2
g3,weibo,o3
g1,qq,o4
"""
# line 1 is the header; the record on line 6 spans two lines (a quoted newline), so the next
# record starts on line 8
HEADER = (
    "app_id,subject_id,account_id,handle,handle_source,avatar_key,avatar_source,grant_id,created_at"
)
PROFILES_CSV = (
    HEADER
    + """
douyin,1,dy1,小明,provider,a/1.jpg,provider,g1,2019-01-02T03:04:05+08:00
douyin,2,dy2,bob,user_input,a/2.jpg,user_input,,2019-01-02T00:00:00Z
douyin,x7,dy3,carol,user_input,,,,2019-01-02T00:00:00Z
douyin,4,dy4,dave,facebook,,,,2019-01-02T00:00:00Z
douyin,5,dy5,"two
lines",provider,a/5.jpg,provider,g3,2019-01-02T00:00:00Z
douyin,6,dy6,erin,user_input,,,,2019-01-02 00:00:00
douyin,1,dy7,dup,user_input,,,,2019-01-02T00:00:00Z
Douyin,8,dy8,frank,user_input,,,,2019-01-02T00:00:00Z
duoshan,1,ds1,小明,provider,a/9.jpg,,g2,2019-01-03T00:00:00Z
douyin,10,dy10,gina,provider,,,g404,2019-01-02T00:00:00Z
"""
)


@pytest.fixture(scope="module")
def platform() -> Platform:
    from provguard.adapters.graph_files import read_edge_list

    return build_platform(
        read_edge_list(ROOT / "data" / "graphs" / "snap-ego-facebook.txt"), seed=7
    )


def _write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".csv":
        pacsv.write_csv(table, path)
    elif path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        with path.open("w", encoding="utf-8") as fh:
            for row in table.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_labels_equal_the_jobs_loader_in_every_format(
    platform: Platform, tmp_path: Path, suffix: str
) -> None:
    expected = label_profiles(platform.app_profiles, platform.grants, REG)
    loaded = load_export(
        _write(platform.app_profiles, tmp_path / f"profiles{suffix}"),
        _write(platform.grants, tmp_path / f"grants{suffix}"),
        REG,
    )
    assert loaded.problems == ()
    assert loaded.rows_read == platform.app_profiles.num_rows == loaded.table.num_rows
    assert loaded.table.equals(expected)
    # every provider origin of the demo is present, and the counts add up per column
    assert set(loaded.origins["handle"]) == {"qq", "user_input", "wechat"}
    assert sum(loaded.origins["avatar"].values()) == loaded.table.num_rows


def test_bad_rows_are_named_by_line_field_and_reason(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.csv"
    profiles.write_text(PROFILES_CSV, encoding="utf-8")
    grants = tmp_path / "grants.csv"
    grants.write_text(GRANTS_CSV, encoding="utf-8")
    with pytest.raises(ExportRowError) as err:
        load_export(profiles, grants, REG)
    got = [(p.file, p.line, p.field) for p in err.value.problems]
    assert got == [
        ("grants.csv", 4, "provider"),  # weibo is no origin
        ("grants.csv", 5, "grant_id"),  # g1 again (first row wins)
        ("profiles.csv", 4, "subject_id"),  # x7
        ("profiles.csv", 5, "handle_source"),  # facebook
        ("profiles.csv", 8, "created_at"),  # no time zone
        ("profiles.csv", 9, "subject_id"),  # duplicate (douyin, 1): the first row wins
        ("profiles.csv", 10, "app_id"),  # Douyin
    ]
    reasons = {p.line: p.reason for p in err.value.problems if p.file == "profiles.csv"}
    assert "not an integer: 'x7'" in reasons[4]
    assert "timezone" in reasons[8] or "time zone" in reasons[8]
    assert "profiles.csv:4: subject_id:" in str(err.value)
    assert err.value.code == "PG102"


def test_skip_loads_the_good_rows_and_labels_unknown_grants_unknown(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.csv"
    profiles.write_text(PROFILES_CSV, encoding="utf-8")
    grants = tmp_path / "grants.csv"
    grants.write_text(GRANTS_CSV, encoding="utf-8")
    loaded = load_export(profiles, grants, REG, on_error="skip")
    rows = {(r["app_id"], r["subject_id"]): r for r in loaded.table.to_pylist()}
    assert sorted(rows) == [("douyin", 1), ("douyin", 2), ("douyin", 5), ("douyin", 10),
                            ("duoshan", 1)]  # fmt: skip
    names = {k: REG.names_of(r["handle_origins"]) for k, r in rows.items()}
    # g1 is on two rows (wechat, then qq): it names no provider, so its values are unknown
    assert names[("douyin", 1)] == {"unknown"}
    assert names[("douyin", 2)] == {"user_input"}
    # g3's row was bad (weibo) and g404 was never granted: a provider value through them is
    # unknown, which the shipped injunction refuses (fail closed)
    assert names[("douyin", 5)] == {"unknown"} and names[("douyin", 10)] == {"unknown"}
    assert rows[("douyin", 5)]["handle"] == "two\nlines"
    # duoshan's avatar source was not recorded: unknown, never the grant's provider
    assert names[("duoshan", 1)] == {"qq"}
    assert REG.names_of(rows[("duoshan", 1)]["avatar_origins"]) == {"unknown"}
    assert len(loaded.problems) == 7 and loaded.rows_read == 10 and loaded.grants_read == 4


def test_file_level_errors(tmp_path: Path) -> None:
    grants = tmp_path / "grants.csv"
    grants.write_text("grant_id,provider\ng1,wechat\n", encoding="utf-8")
    no_col = tmp_path / "p.csv"
    no_col.write_text("app_id,subject_id,handle\ndouyin,1,x\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column account_id, handle_source, avatar_key,"):
        load_export(no_col, grants, REG)
    other = tmp_path / "p.xlsx"
    other.write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match=r"unknown export format '\.xlsx'"):
        load_export(other, grants, REG)
    empty = tmp_path / "e.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(InputError, match="empty file"):
        load_export(empty, grants, REG)
    bad_json = tmp_path / "p.jsonl"
    bad_json.write_text('{"app_id": "douyin"\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ExportRowError) as err:
        load_export(bad_json, grants, REG)
    assert [(p.line, p.reason) for p in err.value.problems] == [
        (1, "not a JSON object"),
        (2, "not a JSON object"),
    ]
    wide = tmp_path / "w.csv"
    wide.write_text(PROFILES_CSV.splitlines()[0] + "\n" + PROFILES_CSV.splitlines()[2] + ",zz\n")
    with pytest.raises(ExportRowError, match="more field"):
        load_export(wide, grants, REG)


def _load(store: Path, profiles: Path, grants: Path, *extra: str) -> object:
    args = ["data", "load", "--profiles", str(profiles), "--grants", str(grants),
            "--store", str(store), *extra]  # fmt: skip
    return runner.invoke(app, args, env={"COLUMNS": "200"})


def test_cli_reject_writes_nothing_and_skip_keeps_every_bad_row(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.csv"
    profiles.write_text(PROFILES_CSV, encoding="utf-8")
    grants = tmp_path / "grants.csv"
    grants.write_text(GRANTS_CSV, encoding="utf-8")
    store = tmp_path / "out" / "data"
    rejects = tmp_path / "rejects.jsonl"
    res = _load(store, profiles, grants, "--rejects", str(rejects))
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    assert "[PG102] 7 bad row(s)" in res.output  # type: ignore[attr-defined]
    assert not (store / "profiles.parquet").exists()
    assert len(rejects.read_text(encoding="utf-8").splitlines()) == 7
    res = _load(store, profiles, grants, "--on-error", "skip", "--rejects", str(rejects))
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert "loaded 5 of 10 rows (7 bad row(s) left out" in res.output  # type: ignore[attr-defined]
    kept = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert kept[2]["raw"]["subject_id"] == "x7" and kept[2]["line"] == 4
    assert pq.read_table(store / "profiles.parquet").num_rows == 5
    # loading again needs --replace
    res = _load(store, profiles, grants, "--on-error", "skip")
    assert res.exit_code == 2 and "--replace" in res.output  # type: ignore[attr-defined]
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        assert log.verify().ok
        (entry,) = [dict(e.payload) for e in log.entries(kind="data.load")]
    assert entry["rows_loaded"] == 5 and entry["rows_read"] == 10
    sha = hashlib.sha256(profiles.read_bytes()).hexdigest()
    assert entry["files"]["profiles"]["sha256"] == sha  # type: ignore[index]
    assert {"file": "profiles.csv", "where": "line 4"} in entry["left_out"]  # type: ignore[operator]


def test_an_export_with_no_row_left_writes_nothing_unless_allowed(tmp_path: Path) -> None:
    """A header-only export under --replace emptied the table with rc 0 (fresh user 10, L4)."""
    profiles = tmp_path / "profiles.csv"
    profiles.write_text(PROFILES_CSV, encoding="utf-8")
    grants = tmp_path / "grants.csv"
    grants.write_text(GRANTS_CSV, encoding="utf-8")
    store = tmp_path / "out" / "data"
    res = _load(store, profiles, grants, "--on-error", "skip", "--no-store-masks")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    header_only = tmp_path / "header.csv"
    header_only.write_text(PROFILES_CSV.splitlines()[0] + "\n", encoding="utf-8")
    res = _load(store, header_only, grants, "--replace", "--on-error", "skip", "--no-store-masks")
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    assert "no row to load" in res.output and "--allow-empty" in res.output  # type: ignore[attr-defined]
    assert pq.read_table(store / "profiles.parquet").num_rows == 5
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        assert len(list(log.entries(kind="data.load"))) == 1
    res = _load(
        store, header_only, grants, "--replace", "--on-error", "skip", "--no-store-masks",
        "--allow-empty",
    )  # fmt: skip
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert pq.read_table(store / "profiles.parquet").num_rows == 0


def test_a_loaded_export_is_enforced_like_the_jobs_store(
    platform: Platform, tmp_path: Path
) -> None:
    store = tmp_path / "out" / "data"
    res = _load(
        store,
        _write(platform.app_profiles, tmp_path / "profiles.parquet"),
        _write(platform.grants, tmp_path / "grants.parquet"),
    )
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    self_join = (
        "SELECT count(*) AS pairs FROM profiles AS a JOIN profiles AS b ON a.handle = b.handle"
        " AND a.subject_id < b.subject_id"
    )
    args = ["query", "--app", "douyin", "--purpose", "social.friend_recommendation",
            "--store", str(store), "--at", "2019-06-30", self_join]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "PG162" in res.output and "no-platform-profile-in-friend-recommendation" in res.output


def _grants(tmp_path: Path, text: str = "grant_id,provider\ng1,wechat\ng2,qq\n") -> Path:
    path = tmp_path / "grants.csv"
    path.write_text(text, encoding="utf-8")
    return path


ROW = "douyin,1,a1,Alice,provider,k1,provider,g1,2019-01-01T00:00:00+08:00"


def test_a_column_or_key_twice_is_refused_not_last_one_wins(tmp_path: Path) -> None:
    """Fresh user 9, G1: a reader keeping the last of two ``handle_source`` columns labelled a
    WeChat value ``user_input``."""
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(f"{HEADER},handle_source\n{ROW},user_input\n", encoding="utf-8")
    with pytest.raises(InputError, match="handle_source appears more than once"):
        load_export(csv_file, _grants(tmp_path), REG)
    row = dict(zip(HEADER.split(","), ROW.split(","), strict=True))
    body = json.dumps(row)[:-1] + ', "handle_source": "user_input"}'
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(body + "\n", encoding="utf-8")
    with pytest.raises(ExportRowError) as err:
        load_export(jsonl, _grants(tmp_path), REG)
    assert "key 'handle_source' appears more than once" in str(err.value.problems[0].raw)


def test_a_bad_grant_row_is_not_replaced_by_a_later_one(tmp_path: Path) -> None:
    """G2: g1's first row is bad (WeChat is no origin), its second says douyin: the values that
    named g1 are unknown, not douyin's own."""
    profiles = tmp_path / "p.csv"
    profiles.write_text(f"{HEADER}\n{ROW}\n", encoding="utf-8")
    grants = _grants(tmp_path, "grant_id,provider\ng1,WeChat\ng1,douyin\n")
    loaded = load_export(profiles, grants, REG, on_error="skip")
    (row,) = loaded.table.to_pylist()
    assert REG.names_of(row["handle_origins"]) == {"unknown"}
    assert [(p.line, p.field) for p in loaded.problems] == [(2, "provider"), (3, "grant_id")]


def test_every_documented_column_must_be_there(tmp_path: Path) -> None:
    """G3: a misspelt ``Handle`` column dropped every handle with exit 0."""
    profiles = tmp_path / "p.csv"
    profiles.write_text(f"{HEADER.replace(',handle,', ',Handle,')}\n{ROW}\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column handle "):
        load_export(profiles, _grants(tmp_path), REG)
    row = dict(zip(HEADER.split(","), ROW.split(","), strict=True))
    del row["handle_source"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ExportRowError) as err:
        load_export(jsonl, _grants(tmp_path), REG)
    assert err.value.problems[0].reason == "no key handle_source (write null for no value)"


def test_bom_bounds_and_long_fields(tmp_path: Path) -> None:
    """G4-G7: Excel's byte order mark, ids beyond 64 bits, booleans as ids, future creation
    dates, and a 200,000-character field."""
    profiles = tmp_path / "p.csv"
    profiles.write_text(f"\ufeff{HEADER}\n{ROW}\n", encoding="utf-8")
    (row,) = load_export(profiles, _grants(tmp_path), REG).table.to_pylist()
    assert REG.names_of(row["handle_origins"]) == {"wechat"}
    bad = [
        ROW.replace("douyin,1,", "douyin,99999999999999999999999,"),
        ROW.replace("douyin,1,", "douyin,3,").replace("2019-01-01T", "9999-12-31T"),
        ROW.replace("douyin,1,", "douyin,4,").replace("Alice", "x" * 200_000),
    ]  # fmt: skip
    profiles.write_text(HEADER + "\n" + "\n".join(bad) + "\n", encoding="utf-8")
    loaded = load_export(profiles, _grants(tmp_path), REG, on_error="skip")
    assert [(p.line, p.field) for p in loaded.problems] == [(2, "subject_id"), (3, "created_at")]
    assert "not a 64-bit integer" in loaded.problems[0].reason
    assert "in the future" in loaded.problems[1].reason
    assert [len(r["handle"]) for r in loaded.table.to_pylist()] == [200_000]
    jsonl = tmp_path / "p.jsonl"
    row = dict(zip(HEADER.split(","), ROW.split(","), strict=True))
    jsonl.write_text(json.dumps({**row, "subject_id": True}) + "\n", encoding="utf-8")
    with pytest.raises(ExportRowError, match="not an integer: True"):
        load_export(jsonl, _grants(tmp_path), REG)


def test_a_platform_export_with_a_missing_or_mistyped_column_is_refused(
    platform: Platform, tmp_path: Path
) -> None:
    """G9: read_table(schema=...) filled a dropped ``provider`` with nulls (every label
    unknown, a different world) and cast a mistyped one."""
    from provguard.adapters.platform_files import read_platform, write_platform

    write_platform(platform, tmp_path)
    grants = pq.read_table(tmp_path / "grants.parquet")
    pq.write_table(grants.drop_columns(["provider"]), tmp_path / "grants.parquet")
    with pytest.raises(InputError, match=r"'grants' has missing column.s. provider"):
        read_platform(tmp_path)
    pq.write_table(grants, tmp_path / "grants.parquet")
    profiles = pq.read_table(tmp_path / "app_profiles.parquet")
    mistyped = profiles.set_column(1, "subject_id", profiles.column(1).cast(pa.string()))
    pq.write_table(mistyped, tmp_path / "app_profiles.parquet")
    with pytest.raises(
        InputError, match=r"mistyped column.s. subject_id \(string, expected int64\)"
    ):
        read_platform(tmp_path)


def test_a_load_reaches_the_genuine_log_or_writes_nothing(tmp_path: Path) -> None:
    """G15: ``--replace --control-store other.db`` replaced a bound folder's profiles with the
    load recorded only in other.db; G17: an unwritable control store failed after the table
    was written."""
    profiles = tmp_path / "p.csv"
    profiles.write_text(f"{HEADER}\n{ROW}\n", encoding="utf-8")
    grants = _grants(tmp_path)
    store = tmp_path / "out" / "data"
    # --no-store-masks: the file stays the one the data.load entry names (by default the load
    # then normalises the labels, a rewrite recorded in its own data.normalise_labels entry)
    res = _load(store, profiles, grants, "--no-store-masks")
    assert res.exit_code == 0, res.output  # type: ignore[attr-defined]
    assert (store / "_control_store.json").is_file()  # bound to out/control.db
    before = (store / "profiles.parquet").read_bytes()
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        (entry,) = [dict(e.payload) for e in log.entries(kind="data.load")]
    written = entry["written"]
    assert isinstance(written, dict)
    assert written["sha256"] == hashlib.sha256(before).hexdigest()
    other = tmp_path / "other.db"
    res = _load(store, profiles, grants, "--replace", "--control-store", str(other))
    assert res.exit_code == 2 and "PG101" in res.output  # type: ignore[attr-defined]
    assert (store / "profiles.parquet").read_bytes() == before and not other.exists()
    fresh = tmp_path / "fresh" / "data"
    nowhere = tmp_path / "no" / "such" / "dir" / "control.db"
    res = _load(fresh, profiles, grants, "--control-store", str(nowhere))
    assert res.exit_code == 2, res.output  # type: ignore[attr-defined]
    assert not (fresh / "profiles.parquet").exists()
