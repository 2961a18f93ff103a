"""``provguard query`` as a fresh user meets it: every job table that has a provenance schema is
queryable, the others are named in the error; labels print as origin names; a short hash key
fails only the queries that emit a hash mask."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.cli.data import data_app
from provguard.cli.query import label_names, query_app
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import bind_data_store
from provguard.provenance import default_registry

ROOT = Path(__file__).resolve().parents[2]
INJUNCTION = ROOT / "policies"
MASKS = ROOT / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"
REG = default_registry()
LABELS = [REG.mask(n) for n in (["user_input"], ["wechat"], ["qq"], ["unknown"], ["qq", "wechat"])]


def random_profiles(n: int, seed: int) -> pa.Table:
    """A labelled ``profiles`` table (the job's schema) with mixed handle/avatar labels."""
    from provguard.job.ingest import LABELLED_PROFILE_SCHEMA

    rnd = random.Random(seed)
    base = datetime(2018, 1, 1, tzinfo=UTC)
    rows = [
        {
            "app_id": "douyin" if i % 2 == 0 else "duoshan",
            "subject_id": i,
            "account_id": f"acc{i}",
            "handle": rnd.choice(["小明", "wxAlice", "qq_bob", "eve"]),
            "handle_origins": rnd.choice([*LABELS, 0]),
            "handle_grant": f"grt_{i}",
            "avatar_key": f"av/{rnd.randrange(5):04d}.jpg",
            "avatar_origins": rnd.choice(LABELS),
            "avatar_grant": f"grt_{i}",
            "grant_id": f"grt_{i}",
            "created_at": base + timedelta(hours=i),
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=LABELLED_PROFILE_SCHEMA)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    ls = LabelledStore(data)
    ls.data.write_table("profiles", random_profiles(40, seed=3))
    ls.data.write_table(
        "edges", pa.table({"src": pa.array([0, 0, 1], pa.int64()), "dst": [1, 2, 2]})
    )
    ls.data.write_table(
        "profile_display",
        pa.table(
            {
                "app_id": ["douyin", "douyin"],
                "subject_id": pa.array([0, 1], pa.int64()),
                "account_id": ["dy000000", "dy000001"],
                "handle_decision": ["permit", "deny"],
                "avatar_decision": ["permit", "permit"],
                "rule_id": ["", "no-platform-profile-in-friend-recommendation"],
                "shown_handle": ["小明", "douyin user 000001"],
                "shown_avatar_key": ["av/0001.jpg", "placeholder:default"],
                # the shown values' labels: a WeChat handle shown as is; a placeholder (douyin's)
                "shown_handle_origins": pa.array(
                    [REG.mask(["wechat"]), REG.mask(["douyin"])], pa.uint64()
                ),
                "shown_avatar_origins": pa.array(
                    [REG.mask(["user_input"]), REG.mask(["douyin"])], pa.uint64()
                ),
            }
        ),
    )
    ls.data.write_table("transfer_audit", pa.table({"transfer_id": ["t1"]}))
    # the control store beside the data, as the job leaves it: every query is audited there
    from provguard.adapters.control_sqlite import SqlControlStore

    SqlControlStore(tmp_path / "control.db")
    bind_data_store(data, tmp_path / "control.db")  # as the job binds its data folder (I-4)
    return data


def _args(store: Path, policy: Path = INJUNCTION) -> list[str]:
    return [
        "--app",
        "douyin",
        "--purpose",
        "social.friend_recommendation",
        "--store",
        str(store),
        "--at",
        "2019-06-01",
        "--policy",
        str(policy),
    ]


def test_other_job_tables_are_queryable(store: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(query_app, [*_args(store), "--json", "SELECT * FROM edges"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("{")]
    assert len(lines) == 3
    assert '"src__origins": "douyin|duoshan"' in lines[0]
    res = runner.invoke(
        query_app,
        [*_args(store), "SELECT app_id, count(*) AS n FROM profile_display GROUP BY app_id"],
    )
    assert res.exit_code == 0, res.output
    assert "1 row(s)" in res.output
    assert "note: app_id, n: no data category" in res.output
    assert "unprotected" in res.output
    # a display decision says where the withheld handle came from: it keeps the handle's label
    res = runner.invoke(
        query_app,
        [
            *_args(store),
            "SELECT handle_decision, count(*) AS n FROM profile_display GROUP BY handle_decision",
        ],
    )
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "PG162" in flat and "no-platform-profile-in-friend-recommendation" in flat


def test_shown_handles_keep_their_labels(store: Path) -> None:
    """``profile_display.shown_handle`` carries the shown value's label: a WeChat handle shown
    by douyin is masked under a mask policy and refused under the injunction (a self-join on
    it for friend matching is the order's first rule), the placeholder passes."""
    runner = CliRunner()
    res = runner.invoke(
        query_app,
        [*_args(store, MASKS), "--json", "SELECT subject_id, shown_handle FROM profile_display"],
        env={"PROVGUARD_HASH_KEY": "0123456789abcdef0123"},
    )
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.output.splitlines() if ln.startswith("{")]
    assert len(rows) == 2
    assert '"shown_handle__origins": "wechat"' in rows[0] and "小明" not in rows[0]
    assert '"shown_handle": "douyin user 000001"' in rows[1]
    assert '"shown_handle__origins": "douyin"' in rows[1]
    res = runner.invoke(
        query_app,
        [
            *_args(store),
            "SELECT a.subject_id AS x, b.subject_id AS y FROM profile_display a "
            "JOIN profile_display b ON a.shown_handle = b.shown_handle",
        ],
    )
    assert res.exit_code != 0 and "PG162" in res.output, res.output


def test_table_without_schema_names_the_queryable_tables(store: Path) -> None:
    res = CliRunner().invoke(query_app, [*_args(store), "SELECT * FROM transfer_audit"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "PG160" in text
    assert "transfer_audit have no provenance schema" in text
    assert "Queryable in" in text and "edges, profile_display, profiles" in text
    assert "stored without a schema: transfer_audit" in text
    # a job table cannot be declared: the message does not suggest --schema for it
    assert "transfer_audit: written by the main job without per-row origins" in text
    assert "--schema" not in text
    res = CliRunner().invoke(query_app, [*_args(store), "SELECT * FROM my_own_table"])
    assert "--schema FILE" in " ".join(res.output.split())


def test_labels_print_as_origin_names_or_raw(store: Path) -> None:
    sql = "SELECT subject_id, handle_grant FROM profiles ORDER BY subject_id LIMIT 40"
    named = CliRunner().invoke(query_app, [*_args(store, MASKS), "--json", "--limit", "40", sql])
    raw = CliRunner().invoke(
        query_app, [*_args(store, MASKS), "--json", "--limit", "40", "--raw-labels", sql]
    )
    assert named.exit_code == 0 and raw.exit_code == 0, named.output + raw.output
    import json

    n_rows = [json.loads(ln) for ln in named.output.splitlines() if ln.startswith("{")]
    r_rows = [json.loads(ln) for ln in raw.output.splitlines() if ln.startswith("{")]
    assert len(n_rows) == len(r_rows) > 0
    for n, r in zip(n_rows, r_rows, strict=True):
        assert isinstance(r["handle_grant__origins"], int)
        names = set(n["handle_grant__origins"].split("|"))
        assert names == set(REG.names_of(r["handle_grant__origins"]))
        assert n["subject_id__origins"] == "douyin|duoshan"


def test_label_names() -> None:
    assert label_names(REG.mask(["wechat", "qq"]), REG) == "wechat|qq"
    assert label_names(0, REG) == "-"
    assert label_names(None, REG) is None
    assert label_names(1 << 40, REG) == "bit40"


def test_short_hash_key_fails_only_when_a_hash_is_emitted(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVGUARD_HASH_KEY", "short")
    runner = CliRunner()
    ok = runner.invoke(query_app, [*_args(store, MASKS), "SELECT subject_id FROM profiles"])
    assert ok.exit_code == 0, ok.output
    # the masks policy hashes WeChat handles: the key is needed now
    bad = runner.invoke(query_app, [*_args(store, MASKS), "SELECT handle FROM profiles"])
    assert bad.exit_code == 2
    text = " ".join(bad.output.split())
    assert "PG160" in text and "$PROVGUARD_HASH_KEY is 5 bytes" in text
    assert "at least 16 bytes" in text
    monkeypatch.setenv("MY_KEY", "0123456789abcdef0123")
    good = runner.invoke(
        query_app,
        [*_args(store, MASKS), "--hash-key-env", "MY_KEY", "SELECT handle FROM profiles"],
    )
    assert good.exit_code == 0, good.output


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_schema_file_cannot_redefine_a_builtin_table(store: Path, tmp_path: Path) -> None:
    """Issue 4 L6: ``profiles.handle: {origins: [douyin]}`` would relabel WeChat handles as
    first-party; the file may only add tables."""
    bad = tmp_path / "launder.yaml"
    bad.write_text(
        "tables:\n  profiles:\n    columns:\n      handle: {origins: [douyin]}\n"
        "      subject_id: {origins: [douyin]}\n",
        encoding="utf-8",
    )
    before = _files(store)
    res = CliRunner().invoke(
        query_app, [*_args(store), "--schema", str(bad), "SELECT subject_id, handle FROM profiles"]
    )
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "PG160" in text
    assert "--schema may only add tables; it redefines 'profiles' (built-in job schema)" in text
    assert _files(store) == before


def test_schema_file_adds_a_table(store: Path, tmp_path: Path) -> None:
    """A table of the user's own (not one the job writes) can be declared and queried; the
    job's unlabelled tables cannot (tests/cli/test_cli_query_audit.py)."""
    LabelledStore(store).data.write_table("team_lookup", pa.table({"transfer_id": ["t1"]}))
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "tables:\n  team_lookup:\n    columns:\n      transfer_id: {origins: [douyin]}\n",
        encoding="utf-8",
    )
    # a declared table is read only as registered (session 8)
    res = CliRunner().invoke(
        query_app,
        [*_args(store), "--schema", str(extra), "--json", "SELECT transfer_id FROM team_lookup"],
    )
    assert res.exit_code != 0 and "no audit entry registers it" in " ".join(res.output.split())
    reg = CliRunner().invoke(
        data_app,
        ["register", "--store", str(store), "--schema", str(extra), "--table", "team_lookup"],
    )
    assert reg.exit_code == 0, reg.output
    res = CliRunner().invoke(
        query_app,
        [*_args(store), "--schema", str(extra), "--json", "SELECT transfer_id FROM team_lookup"],
    )
    assert res.exit_code == 0, res.output
    assert '{"transfer_id": "t1", "transfer_id__origins": "douyin"}' in res.output
    job_table = tmp_path / "job.yaml"
    job_table.write_text(extra.read_text().replace("team_lookup", "transfer_audit"))
    res = CliRunner().invoke(
        query_app,
        [*_args(store), "--schema", str(job_table), "SELECT transfer_id FROM transfer_audit"],
    )
    assert res.exit_code != 0 and "PG160" in res.output and "'transfer_audit'" in res.output


_NICK = "categories: [user.name.nickname], origins: [wechat]"


@pytest.mark.parametrize(
    ("table_extra", "column"),
    [
        ("    hash_key_id: 0123456789abcdef\n", f"{{{_NICK}, hash_column: raw}}"),
        ("", f"{{{_NICK}, stored_masks: {{'{'ab' * 32}': raw}}}}"),
        ("", f"{{{_NICK}, derived: true}}"),
        ("    labels_normalised: true\n", f"{{{_NICK}}}"),
    ],
)
def test_schema_file_cannot_declare_provguard_managed_fields(
    store: Path, tmp_path: Path, table_extra: str, column: str
) -> None:
    """A declared stored mask / hash companion would be read as the masked value unchecked:
    only provguard writes those fields."""
    LabelledStore(store).data.write_table("mine", pa.table({"handle": ["小明"], "raw": ["小明"]}))
    extra = tmp_path / "mine.yaml"
    extra.write_text(
        f"tables:\n  mine:\n{table_extra}    columns:\n      handle: {column}\n",
        encoding="utf-8",
    )
    res = CliRunner().invoke(
        query_app, [*_args(store), "--schema", str(extra), "SELECT handle FROM mine"]
    )
    flat = " ".join(res.output.split())
    assert res.exit_code == 2, res.output
    assert "PG160" in flat and "--schema may not set mine." in flat
    assert "小明" not in res.output


def test_schema_file_cannot_redefine_a_table_created_in_the_store(
    store: Path, tmp_path: Path
) -> None:
    made = CliRunner().invoke(
        query_app, [*_args(store), "CREATE TABLE feats AS SELECT subject_id FROM profiles"]
    )
    assert made.exit_code == 0, made.output
    assert "created labelled table feats" in made.output
    bad = tmp_path / "feats.yaml"
    bad.write_text(
        "tables:\n  feats:\n    columns:\n      subject_id: {origins: [douyin]}\n", encoding="utf-8"
    )
    res = CliRunner().invoke(
        query_app, [*_args(store), "--schema", str(bad), "SELECT subject_id FROM feats"]
    )
    assert res.exit_code == 2, res.output
    assert "redefines 'feats' (created in the store)" in " ".join(res.output.split())


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE t AS SELECT subject_id FROM profiles",
        "CREATE TABLE main.t9 AS SELECT subject_id FROM profiles",
    ],
)
def test_create_temp_or_qualified_is_refused_and_writes_nothing(store: Path, sql: str) -> None:
    """Issue 4 C3: a TEMP table would be written to the persistent store, ``main.t9`` as
    ``t9``; both are refused (PG160) before anything is written."""
    before = _files(store)
    res = CliRunner().invoke(query_app, [*_args(store), sql])
    assert res.exit_code == 2, res.output
    assert "PG160" in res.output
    assert _files(store) == before


def test_recorded_instrument_events_apply(store: Path) -> None:
    """A final judgment recorded in the control store beside the data ends the injunction for
    ``provguard query`` too (as for ``decide --store``); ``--control-store`` may not name another
    when the data has its own."""
    from datetime import date

    from provguard.adapters.control_sqlite import SqlControlStore

    join = (
        "SELECT a.subject_id AS x, b.subject_id AS y FROM profiles a "
        "JOIN profiles b ON a.handle = b.handle AND a.subject_id < b.subject_id"
    )
    runner = CliRunner()
    before = runner.invoke(query_app, [*_args(store), join])
    assert before.exit_code != 0 and "PG162" in before.output
    elsewhere = store.parent / "elsewhere.db"
    SqlControlStore(elsewhere).record_event(
        "cn-tj-binhai-2019-douyin-duoshan", "final_judgment", date(2019, 5, 1)
    )
    # a copy with a final judgment cannot decide a query on data that has its own control store
    named = runner.invoke(query_app, [*_args(store), "--control-store", str(elsewhere), join])
    assert named.exit_code != 0 and "may not name another" in " ".join(named.output.split())
    unchanged = runner.invoke(query_app, [*_args(store), join])  # not beside: no event there
    assert unchanged.exit_code != 0 and "PG162" in unchanged.output
    SqlControlStore(store.parent / "control.db").record_event(
        "cn-tj-binhai-2019-douyin-duoshan", "final_judgment", date(2019, 5, 1)
    )
    beside = runner.invoke(query_app, [*_args(store), join])
    assert beside.exit_code == 0, beside.output
    assert "row(s)" in beside.output


def test_nullified_derived_columns_are_explained(store: Path) -> None:
    """``LOWER(handle)`` under a hash rule is nullified, and the output says why."""
    res = CliRunner().invoke(
        query_app,
        [*_args(store, MASKS), "SELECT subject_id, lower(handle) AS h FROM profiles"],
        env={"PROVGUARD_HASH_KEY": "k" * 32},
    )
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "note: h: nullified, not withheld/redacted/hashed (derived from a masked column" in flat


def test_row_labels_of_a_created_table_are_shown_and_enforced(store: Path) -> None:
    """Issue 4 L5 end to end: a table made from a handle self-join under profile.display cannot
    be counted under friend recommendation; OR REPLACE / IF NOT EXISTS say what they did."""
    display = [*_args(store)]
    display[display.index("social.friend_recommendation")] = "profile.display"
    join = (
        "SELECT a.subject_id AS x FROM profiles a JOIN profiles b ON a.handle = b.handle"
        " AND a.subject_id < b.subject_id"
    )
    runner = CliRunner()
    made = runner.invoke(query_app, [*display, "--json", f"CREATE TABLE m AS {join}"])
    assert made.exit_code == 0, made.output
    assert '"__row__origins": "' in made.output  # printed as origin names
    count = runner.invoke(query_app, [*_args(store), "SELECT count(*) AS n FROM m"])
    assert count.exit_code == 2 and "PG162" in count.output
    assert "no-platform-profile-in-friend-recommendation" in " ".join(count.output.split())
    again = runner.invoke(query_app, [*display, f"CREATE TABLE IF NOT EXISTS m AS {join}"])
    assert again.exit_code == 0 and "kept as it is" in again.output
    replaced = runner.invoke(query_app, [*display, f"CREATE OR REPLACE TABLE m AS {join}"])
    assert replaced.exit_code == 0 and "replaced labelled table m" in replaced.output
    source = runner.invoke(
        query_app, [*display, "CREATE OR REPLACE TABLE profiles AS SELECT * FROM profiles"]
    )
    assert source.exit_code == 2 and "PG160" in source.output


# Issue 4, item 4: adversarial queries a fresh user tried under the injunction. The first four
# returned raw or unlabelled handle data before the fix (COLUMNS(), a table used as a value,
# positional #n, a named WINDOW partitioned by handle); the others were already refused.
ATTEMPTS = [
    ("SELECT COLUMNS('hand.*') FROM profiles", "PG161"),
    ("SELECT p FROM profiles p", "PG161"),
    ("SELECT #4 FROM profiles", "PG161"),
    (
        "SELECT subject_id, count(*) OVER w AS c FROM profiles WINDOW w AS (PARTITION BY handle)",
        "PG161",
    ),
    (
        "SELECT a.subject_id FROM profiles a SEMI JOIN profiles b"
        " ON a.handle = b.handle AND a.subject_id <> b.subject_id",
        "PG161",
    ),
    (
        "SELECT a.subject_id FROM profiles a ANTI JOIN profiles b"
        " ON a.handle = b.handle AND a.subject_id <> b.subject_id",
        "PG161",
    ),
    (
        "SELECT a.subject_id AS x FROM profiles a ASOF JOIN profiles b ON a.handle >= b.handle",
        "PG162",
    ),
    (
        "SELECT a.subject_id AS x FROM profiles a POSITIONAL JOIN"
        " (SELECT handle FROM profiles ORDER BY handle) b",
        "PG162",
    ),
    ("SELECT count(*) FILTER (WHERE handle LIKE 'wx%') AS n FROM profiles", "PG162"),
    ("SELECT * REPLACE (lower(handle) AS app_id) FROM profiles", "PG162"),
    (
        "SELECT a.subject_id AS x FROM profiles a JOIN profiles b"
        " ON hash(a.handle) = hash(b.handle)",
        "PG162",
    ),
    ("SELECT min(subject_id) AS m FROM profiles GROUP BY GROUPING SETS ((handle), ())", "PG162"),
    (
        "SELECT subject_id FROM profiles LIMIT 5"
        " OFFSET (SELECT count(*) FROM profiles WHERE handle = 'x')",
        "PG162",
    ),
    # method-call syntax reads the column through a bare identifier the qualifier never binds
    # (session 5's fresh user: raw QQ handles came out labelled douyin|duoshan)
    ("SELECT subject_id, handle.lcase() AS h, avatar_key.ltrim() AS av FROM profiles", "PG161"),
    ("SELECT subject_id, (handle).ucase() AS h FROM profiles", "PG161"),
    ("SELECT subject_id FROM profiles p WHERE p.handle.suffix('e')", "PG161"),
    ("SELECT subject_id FROM profiles ORDER BY avatar_key.rtrim() LIMIT 2", "PG161"),
    (
        "SELECT count(*) AS pairs FROM profiles a JOIN profiles b"
        " ON a.handle.lcase() = b.handle.lcase() AND a.subject_id < b.subject_id",
        "PG161",
    ),
    ("CREATE TABLE laund AS SELECT subject_id, handle.lcase() AS h FROM profiles", "PG161"),
    # ORDER BY ALL sorts by every column, handles included, so the LIMIT picks rows by handle
    (
        "SELECT subject_id FROM (SELECT handle, subject_id FROM profiles ORDER BY ALL LIMIT 3) t",
        "PG161",
    ),
]


@pytest.mark.parametrize(("sql", "code"), ATTEMPTS)
def test_adversarial_queries_are_refused(store: Path, sql: str, code: str) -> None:
    res = CliRunner().invoke(query_app, [*_args(store), "--json", sql])
    assert res.exit_code == 2, res.output
    assert code in res.output
    assert "温" not in res.output and "wxAlice" not in res.output and "qq_bob" not in res.output


def test_a_column_in_an_unread_clause_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: were a clause ever skipped by the labeller (here: the named-window
    check switched off), its columns are found unlabelled and the query refused."""
    import importlib

    from provguard.sqlgen import LineageError, default_schema

    rw = importlib.import_module("provguard.sqlgen.rewrite")
    original = rw._Labeller._check

    def skip_window_check(self: object, scope: object) -> None:
        sel = scope.expression  # type: ignore[attr-defined]
        windows = sel.args.get("windows")
        sel.set("windows", None)
        try:
            original(self, scope)
        finally:
            sel.set("windows", windows)

    monkeypatch.setattr(rw._Labeller, "_check", skip_window_check)
    with pytest.raises(LineageError, match="clause without lineage support"):
        rw.rewrite(
            "SELECT subject_id, count(*) OVER w AS c FROM profiles"
            " WINDOW w AS (PARTITION BY handle ORDER BY subject_id)",
            default_schema(),
        )


def test_a_policy_without_the_recorded_instruments_is_refused_and_the_policy_is_logged(
    store: Path,
) -> None:
    """The job records the instruments it enforced in the control store: a query on that data
    may add bundles (``--policy`` repeated) but never drop one (a bundle swapped in would return
    raw WeChat handles); the audit entry names the instruments and the policy files' digest."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.adapters.control_sqlite import SqlControlStore
    from provguard.policy import load_policy_dir

    SqlControlStore(store.parent / "control.db").save_bundles(load_policy_dir(INJUNCTION).bundles)
    sql = "SELECT subject_id, handle FROM profiles"
    swapped = CliRunner().invoke(
        query_app, [*_args(store, MASKS), sql], env={"PROVGUARD_HASH_KEY": "0123456789abcdef0123"}
    )
    flat = " ".join(swapped.output.split())
    assert swapped.exit_code == 2 and "PG160" in flat
    assert "records instrument(s) cn-tj-binhai-2019-douyin-duoshan" in flat
    both = CliRunner().invoke(
        query_app,
        [*_args(store, MASKS), "--policy", str(INJUNCTION), sql],
        env={"PROVGUARD_HASH_KEY": "0123456789abcdef0123"},
    )
    # the injunction applies again: the handles are refused, not hashed
    assert both.exit_code == 2 and "no-platform-profile-in-friend-recommendation" in both.output
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        entries = [dict(e.payload) for e in log.entries(kind="query")]
    assert entries[-1]["instruments"] == ["cn-tj-binhai-2019-douyin-duoshan", "test-masks"]
    assert entries[-2]["instruments"] == ["test-masks"]
    assert len(str(entries[-1]["policy_digest"])) == 64
    assert entries[-1]["policy_digest"] != entries[-2]["policy_digest"]


def test_a_past_evaluation_time_is_said_and_recorded(store: Path) -> None:
    from provguard.adapters.audit_sqlite import SqliteAuditLog

    res = CliRunner().invoke(query_app, [*_args(store), "SELECT subject_id FROM profiles LIMIT 1"])
    assert res.exit_code == 0, res.output
    assert "not now" in " ".join(res.output.split())
    now = CliRunner().invoke(
        query_app,
        ["--app", "douyin", "--purpose", "profile.display", "--store", str(store),
         "--policy", str(INJUNCTION), "SELECT subject_id FROM profiles LIMIT 1"],
    )  # fmt: skip
    assert now.exit_code == 0 and "not now" not in now.output, now.output
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        flags = [e.payload["backdated"] for e in log.entries(kind="query")]
    assert flags[-2:] == [True, False]


def test_an_app_reads_only_the_rows_it_collected(store: Path) -> None:
    """Fresh user 6, F6: duoshan reading douyin's login grant ids, and huoshan (--any-app)
    reading douyin's raw handles, get none of douyin's rows (controller isolation); douyin
    reads its own 20 of the 40 rows. The audit entry of each run is written as before."""
    runner = CliRunner()
    grants = (
        "SELECT subject_id, account_id, grant_id, handle_grant FROM profiles"
        " WHERE app_id = 'douyin' AND grant_id IS NOT NULL"
    )

    def rows(app: str, purpose: str, sql: str, *extra: str) -> list[str]:
        args = [*_args(store), "--json", "--limit", "100", *extra, sql]
        args[1], args[3] = app, purpose
        res = runner.invoke(query_app, args)
        assert res.exit_code == 0, res.output
        return [ln for ln in res.output.splitlines() if ln.startswith("{")]

    assert rows("duoshan", "account", grants) == []
    which = (
        "SELECT count(*) AS n FROM profiles WHERE app_id = 'douyin' AND handle_grant IS NOT NULL"
    )
    assert rows("duoshan", "account", which) == ['{"n": 0, "n__origins": "-"}']
    raw = "SELECT subject_id, handle, avatar_key FROM profiles WHERE app_id = 'douyin'"
    assert rows("huoshan", "social.friend_recommendation", raw, "--any-app") == []
    mine = rows("douyin", "account", grants)
    assert len(mine) == 20 and all('"account_id": "acc' in r for r in mine)
    # duoshan's own rows are duoshan's to read
    assert len(rows("duoshan", "account", "SELECT subject_id FROM profiles")) == 20


def test_backdating_never_answers_what_the_policy_now_refuses(store: Path) -> None:
    """``--at`` before the order took effect answered the handle self-join (the friend-matching
    signal the order forbids) today (fresh user 10, M1). A backdated query runs only when the
    policy now rewrites it the same way; otherwise PG162, audited as refused."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog

    runner = CliRunner()
    join = (
        "SELECT a.subject_id AS s1, b.subject_id AS s2 FROM profiles a JOIN profiles b"
        " ON a.handle = b.handle AND a.subject_id < b.subject_id"
    )
    before_order = [*_args(store)]
    before_order[before_order.index("2019-06-01")] = "2019-03-01"
    res = runner.invoke(query_app, [*before_order, join])
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "PG162" in flat and "backdated to 2019-03-01" in flat
    assert "no-platform-profile-in-friend-recommendation" in flat
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        last = [dict(e.payload) for e in log.entries(kind="query")][-1]
    assert last["outcome"] == "refused" and last["backdated"] is True
    assert last["rule_ids"] == ["no-platform-profile-in-friend-recommendation"]
    # a backdated query that today's policy answers the same way still runs
    count = "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id"
    res = runner.invoke(query_app, [*before_order, count])
    assert res.exit_code == 0, res.output


def test_a_renamed_copy_of_a_labelled_table_cannot_be_declared_with_constant_origins(
    store: Path, tmp_path: Path
) -> None:
    """A byte copy of profiles.parquet under a new name, declared with ``origins:
    [user_input]``, served the QQ handles and the refused handle self-join (fresh user 11, H2):
    a declared file holding label columns the declaration ignores is refused; the schema file
    a query ran under is in its audit entry."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog

    (store / "contacts_import.parquet").write_bytes((store / "profiles.parquet").read_bytes())
    lax = tmp_path / "lax.yaml"
    lax.write_text(
        "tables:\n  contacts_import:\n    columns:\n      subject_id: {categories: []}\n"
        "      handle: {categories: [], origins: [user_input]}\n",
        encoding="utf-8",
    )
    res = CliRunner().invoke(
        query_app,
        [*_args(store), "--schema", str(lax), "SELECT subject_id, handle FROM contacts_import"],
    )
    assert res.exit_code == 2, res.output
    flat = " ".join(res.output.split())
    assert "PG160" in flat and "handle_origins" in flat and "would ignore" in flat
    # declaring the file's own label column reads it: the policy then refuses the handles
    honest = tmp_path / "honest.yaml"
    honest.write_text(
        lax.read_text(encoding="utf-8").replace(
            "{categories: [], origins: [user_input]}",
            "{categories: [user.name.nickname], origins_column: handle_origins}",
        )
        + "      avatar_key: {categories: [user.avatar], origins_column: avatar_origins}\n",
        encoding="utf-8",
    )
    reg = CliRunner().invoke(
        data_app,
        ["register", "--store", str(store), "--schema", str(honest), "--table", "contacts_import"],
    )
    assert reg.exit_code == 0, reg.output  # a declared table is read only as registered
    res = CliRunner().invoke(
        query_app,
        [*_args(store), "--schema", str(honest), "SELECT subject_id, handle FROM contacts_import"],
    )
    assert res.exit_code == 2 and "PG162" in res.output, res.output
    with SqliteAuditLog(store.parent / "control.db", create=False) as log:
        last = [dict(e.payload) for e in log.entries(kind="query")][-1]
    assert last["schema"]["tables"] == ["contacts_import"]  # type: ignore[index]
    assert len(last["schema"]["sha256"]) == 64  # type: ignore[index]


def test_an_engine_error_does_not_quote_a_masked_value(store: Path) -> None:
    """A cast that fails on a handle the policy masks printed the handle in DuckDB's message,
    so a filter per row read every redacted value (fresh user 11, H4): literals are scrubbed."""
    handles = pq.read_table(store / "profiles.parquet").column("handle").to_pylist()
    res = CliRunner().invoke(
        query_app,
        [*_args(store, MASKS), "SELECT subject_id, CAST(handle AS INTEGER) AS x FROM profiles"],
        env={"PROVGUARD_HASH_KEY": "0123456789abcdef0123"},
    )
    assert res.exit_code != 0, res.output
    flat = " ".join(res.output.split())
    assert (
        "PG200" in flat
        and "Conversion Error (message withheld: the query reads protected values)" in flat
    )
    assert not [h for h in handles if h and h in res.output]
