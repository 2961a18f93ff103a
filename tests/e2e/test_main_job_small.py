"""The main job on the first 1,200 lines of the real ego-Facebook graph (run once).

Stored keyed hashes: the job stores the keyed hashes of ``profiles`` when it has a hash key
(``$PROVGUARD_HASH_KEY``): ``provguard query`` under a policy that hashes WeChat handles then
reads the stored ``handle__hmac`` and returns exactly HMAC-SHA256(handle) under that key
(:func:`provguard.sqlgen.hmac_hex`); a query under another key computes its own; a rerun without
a key leaves no stored hash and no stale sidecar behind.

The cards' decisions: ``recommendations.handle_decision`` / ``avatar_decision`` say whether the
candidate's withheld value came from WeChat/QQ, so each carries the original value's label
(``*_decision_origins``), and the job schema names those labels: a query over the decisions is
refused for friend recommendation as one over the withheld values is.

Inferred origins (fresh-user finding F1): a candidate's handle/picture the run's own scan flags as
a copy of the provider's value is decided with the provider as origin beside its recorded label;
the cards and the display rows keep the inferred bits apart (``*_inferred_origins``). The cards
belong to the app in ``app_id`` (finding F11): another app's query reads none of them."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.data_duckdb import ParquetDataStore
from provguard.cli.query import query_app
from provguard.config import RunSettings
from provguard.dataplane import LabelledStore
from provguard.job.run import RunResult, run_main_job, store_profile_hashes
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import (
    QueryError,
    QueryPolicy,
    QueryRefused,
    hmac_hex,
    job_schema,
)
from provguard.sqlgen.keyed import key_id

KEY = "job-hash-key-0123456789abcdef"
OTHER_KEY = "another-deployment-key-987654"
PROTECTED = ("account_id", "avatar_grant", "avatar_key", "grant_id", "handle", "handle_grant")


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    work = tmp_path_factory.mktemp("job-hashes")
    lines = (repo_root / "data/graphs/snap-ego-facebook.txt").read_text().splitlines()
    path = work / "ego-facebook-1200.txt"
    path.write_text("\n".join(lines[:1200]) + "\n")
    return path


@pytest.fixture(scope="module")
def keyed_run(
    graph: Path, repo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, RunResult]:
    out = tmp_path_factory.mktemp("keyed") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROVGUARD_HASH_KEY", KEY)
        result = run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    return out, result


def _bare(out: Path) -> Path:
    """A copy of the job's data without its control store: the test mask policy alone may be
    applied to it (beside the job's control.db, every recorded instrument must be loaded, and
    the injunction refuses what the mask policy would hash)."""
    data = out.parent / f"{out.name}-bare" / "data"
    if not data.exists():
        shutil.copytree(out / "data", data)
        # the job binds its data folder to its control store (findings I-4): this deliberate
        # copy without it is unbound, so its first query binds it to a control store of its own
        (data / "_control_store.json").unlink()
    return data


def _query(out: Path, repo_root: Path, sql: str, *extra: str) -> list[dict[str, object]]:
    masks = repo_root / "tests/golden/sqlgen/policy-masks.yaml"
    args = [
        "--app", "douyin", "--purpose", "social.friend_recommendation",
        "--store", str(_bare(out)), "--policy", str(masks), "--at", "2019-06-30",
        "--json", "--raw-labels", "--limit", "100000", *extra, sql,
    ]  # fmt: skip
    r = CliRunner().invoke(query_app, args)
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.output.splitlines() if line.startswith("{")]


def test_the_job_stores_the_hashes_of_the_protected_columns(
    keyed_run: tuple[Path, RunResult],
) -> None:
    out, result = keyed_run
    sh = result.stored_hashes
    assert sh is not None and sh.table == "profiles"
    assert sh.key_id == key_id(KEY.encode()) and KEY not in sh.key_id
    assert sh.columns == PROTECTED
    table = pq.read_table(out / "data" / "profiles.parquet")
    assert table.num_rows == result.labelled.num_rows > 0
    for col in PROTECTED:
        values = table.column(col).to_pylist()
        hashes = table.column(col + "__hmac").to_pylist()
        assert hashes == [None if v is None else hmac_hex(str(v), KEY.encode()) for v in values]
    sidecar = json.loads((out / "data" / "_labels" / "profiles.json").read_text())
    assert sidecar["spec"]["hash_key_id"] == sh.key_id
    assert KEY not in json.dumps(sidecar)


def test_a_query_returns_the_stored_hmac_of_wechat_handles(
    keyed_run: tuple[Path, RunResult], repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, result = keyed_run
    monkeypatch.setenv("PROVGUARD_HASH_KEY", KEY)
    sql = "SELECT app_id, subject_id, handle FROM profiles"
    rows = _query(out, repo_root, sql)
    wechat = default_registry().mask(["wechat"])
    truth = {
        (r["app_id"], r["subject_id"]): r
        for r in result.labelled.to_pylist()
        if r["app_id"] == "douyin"  # the querying app reads only the rows it collected
    }  # the job's own labelled table
    assert len(rows) == len(truth) and {row["app_id"] for row in rows} == {"douyin"}
    hashed = 0
    for row in rows:
        src = truth[(row["app_id"], row["subject_id"])]
        if src["handle_origins"] & wechat and src["handle"] is not None:
            assert row["handle"] == hmac_hex(src["handle"], KEY.encode())
            hashed += 1
    assert hashed > 50
    # the rewrite reads the stored companion (no per-cell HMAC) under this key...
    shown = CliRunner().invoke(
        query_app,
        [
            "--app", "douyin", "--purpose", "social.friend_recommendation",
            "--store", str(_bare(out)), "--at", "2019-06-30", "--show-sql", "--limit", "1",
            "--policy", str(repo_root / "tests/golden/sqlgen/policy-masks.yaml"), sql,
        ],
    )  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert "handle__hmac" in shown.output and "SHA256" not in shown.output.upper()
    # ...and under another key computes its own: a stale stored hash never comes back
    monkeypatch.setenv("PROVGUARD_HASH_KEY", OTHER_KEY)
    other = {(r["app_id"], r["subject_id"]): r["handle"] for r in _query(out, repo_root, sql)}
    for (app, subject), src in truth.items():
        if src["handle_origins"] & wechat and src["handle"] is not None:
            assert other[(app, subject)] == hmac_hex(src["handle"], OTHER_KEY.encode())


def test_without_a_key_nothing_is_stored_and_no_stale_sidecar_stays(
    keyed_run: tuple[Path, RunResult],
    repo_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The keyed folder rerun without a key, at the job's ingest step (``profiles`` rewritten
    as labelled, then :func:`store_profile_hashes` with no key): no companion is stored, the
    sidecar naming the old ones is gone, and a query computes the HMAC itself."""
    out, result = keyed_run
    data = tmp_path / "data"
    shutil.copytree(out / "data", data)
    stale = data / "_labels" / "profiles.json"
    assert stale.is_file()
    ParquetDataStore(data).write_table("profiles", result.labelled)  # what the job writes
    assert store_profile_hashes(data, None) is None
    assert not stale.exists()
    names = pq.read_schema(data / "profiles.parquet").names
    assert not [n for n in names if n.endswith("__hmac")]
    monkeypatch.setenv("PROVGUARD_HASH_KEY", KEY)
    rows = _query(data.parent, repo_root, "SELECT app_id, subject_id, handle FROM profiles")
    truth = {(r["app_id"], r["subject_id"]): r for r in result.labelled.to_pylist()}
    wechat = default_registry().mask(["wechat"])
    checked = 0
    for row in rows:
        src = truth[(row["app_id"], row["subject_id"])]
        if src["handle_origins"] & wechat and src["handle"] is not None:
            assert row["handle"] == hmac_hex(src["handle"], KEY.encode())
            checked += 1
    assert checked > 50
    # and a keyed rerun of the step stores them again, under the new key's fingerprint
    again = store_profile_hashes(data, OTHER_KEY.encode())
    assert again is not None and again.key_id == key_id(OTHER_KEY.encode())


def test_a_keyed_rerun_over_a_keyed_folder_rekeys(
    keyed_run: tuple[Path, RunResult], tmp_path: Path
) -> None:
    """A rerun with another key in a folder whose sidecar names the first key's companions: the
    fresh table gets the new key's hashes (the old sidecar cannot make the step fail)."""
    out, result = keyed_run
    data = tmp_path / "data"
    shutil.copytree(out / "data", data)
    ParquetDataStore(data).write_table("profiles", result.labelled)  # what the job writes
    again = store_profile_hashes(data, OTHER_KEY.encode())
    assert again is not None and again.key_id == key_id(OTHER_KEY.encode())
    table = pq.read_table(data / "profiles.parquet")
    assert table.column("handle__hmac").to_pylist() == [
        None if v is None else hmac_hex(v, OTHER_KEY.encode())
        for v in table.column("handle").to_pylist()
    ]
    sidecar = json.loads((data / "_labels" / "profiles.json").read_text())
    assert sidecar["spec"]["hash_key_id"] == again.key_id


def test_a_short_key_fails_before_anything_is_written(
    graph: Path, repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVGUARD_HASH_KEY", "short")
    out = tmp_path / "out"
    with pytest.raises(QueryError) as err:
        run_main_job(RunSettings(out=out, graph=graph, policy=repo_root / "policies"))
    assert err.value.code == "PG160" and "5 bytes" in err.value.message
    assert not out.exists()


# ------------------------------------------------------------------ the cards' decision labels


def _scan_inferred(result: RunResult) -> dict[tuple[str, int, str], int]:
    """(app, subject, field) -> the provider bits the run's scan matched for that field and
    the recorded label lacks, recomputed here from the scan rows (field: handle / avatar)."""
    reg = default_registry()
    labels = {(r["app_id"], r["subject_id"]): r for r in result.labelled.to_pylist()}
    out: dict[tuple[str, int, str], int] = {}
    for row in result.scan.to_pylist():
        p = labels[(row["app_id"], row["subject_id"])]
        bit = reg.mask([row["provider"]])
        for field, hit in (("handle", row["handle_match"]), ("avatar", row["picture_match"])):
            if hit and not p[f"{field}_origins"] & bit:
                key = (row["app_id"], row["subject_id"], field)
                out[key] = out.get(key, 0) | bit
    return out


def test_card_decisions_carry_the_original_values_labels(
    keyed_run: tuple[Path, RunResult],
) -> None:
    out, result = keyed_run
    reg = default_registry()
    platform_bits = reg.mask(["wechat", "qq"])
    unknown = reg.mask(["unknown"])
    app = result.settings.app
    inferred = _scan_inferred(result)
    profiles = {r["subject_id"]: r for r in result.labelled.to_pylist() if r["app_id"] == app}
    cards = pq.read_table(out / "data" / "recommendations.parquet").to_pylist()
    assert len(cards) > 1000
    denied = by_inference = 0
    for card in cards:
        assert card["app_id"] == app
        p = profiles[card["candidate"]]
        for field, label in (("handle", "handle_origins"), ("avatar", "avatar_origins")):
            extra = inferred.get((app, card["candidate"], field), 0)
            assert card[f"{field}_inferred_origins"] == extra
            carried = card[f"{field}_decision_origins"]
            assert carried == ((p[label] | extra) or unknown)
            # the decision reveals exactly whether the withheld value came from WeChat/QQ,
            # recorded or inferred by the scan
            assert (card[f"{field}_decision"] == "deny") == bool(carried & platform_bits)
            denied += card[f"{field}_decision"] == "deny"
            by_inference += bool(extra) and not p[label] & platform_bits
    assert denied > 100 and by_inference > 100
    counts = result.recommendations.inferred_cards
    assert counts["withheld_handles"] + counts["withheld_pictures"] == by_inference


def test_no_card_shows_a_value_the_scan_flags_as_a_copy(
    keyed_run: tuple[Path, RunResult],
) -> None:
    """The finding's own repro: cards joined with the run's profile_scan."""
    import duckdb

    out, _result = keyed_run
    data = out / "data"
    con = duckdb.connect()
    shown = con.execute(
        f"""SELECT count(*) FROM '{data}/recommendations.parquet' rc
            JOIN '{data}/profile_scan.parquet' sc
              ON sc.app_id = rc.app_id AND sc.subject_id = rc.candidate
            WHERE (rc.handle_decision <> 'deny' AND sc.handle_match)
               OR (rc.avatar_decision <> 'deny' AND sc.picture_match)"""
    ).fetchone()
    flagged = con.execute(
        f"""SELECT count(*) FROM '{data}/recommendations.parquet' rc
            JOIN '{data}/profile_scan.parquet' sc
              ON sc.app_id = rc.app_id AND sc.subject_id = rc.candidate
            WHERE sc.handle_match OR sc.picture_match"""
    ).fetchone()
    assert shown == (0,) and flagged is not None and flagged[0] > 100


def test_inferred_origins_agree_with_the_campaigns_inferred_kind(
    keyed_run: tuple[Path, RunResult], repo_root: Path
) -> None:
    """Differential: the campaign's target selection (its own ``inferred`` kind, per target)
    against the inferred bits the display and the cards were decided on, for Duoshan."""
    from provguard.campaign.model import select_targets

    out, result = keyed_run
    _instrument, targets = select_targets(
        result.scan,
        result.platform.app_profiles,
        result.policy,
        "duoshan-no-platform-profile",
        datetime(2019, 6, 30, tzinfo=UTC),
    )
    display = {
        r["subject_id"]: r
        for r in pq.read_table(out / "data" / "profile_display.parquet").to_pylist()
        if r["app_id"] == "duoshan"
    }
    assert targets and sum(t.origin_kind == "inferred" for t in targets) > 5
    for t in targets:
        row = display[t.subject_id]
        bits = [row[f"{f}_inferred_origins"] for f in t.fields.split(",")]
        assert (t.origin_kind == "inferred") == any(bits), t
        for f in t.fields.split(","):
            assert row[f"{f}_decision"] == "deny", t  # every copied value is withheld
    # and every Duoshan value with an inferred origin is a campaign target's field
    fields = {(t.subject_id, f) for t in targets for f in t.fields.split(",")}
    for sid, row in display.items():
        for f in ("handle", "avatar"):
            if row[f"{f}_inferred_origins"]:
                assert (sid, f) in fields


def test_duoshan_reads_none_of_douyins_cards(keyed_run: tuple[Path, RunResult]) -> None:
    out, result = keyed_run
    store = LabelledStore(out / "data", base=job_schema())
    at = datetime(2019, 6, 30, tzinfo=UTC)
    policies = load_policy_dir(Path(__file__).resolve().parents[2] / "policies")

    def count(app: str) -> int:
        qp = QueryPolicy(policies, default_registry(), app=app, purpose="profile.display", at=at)
        got = store.query("SELECT count(*) AS n FROM recommendations", qp).table
        return int(got.column("n")[0].as_py())

    assert count("duoshan") == 0
    assert count("douyin") == result.recommendations.cards.num_rows > 1000
    qp = QueryPolicy(policies, default_registry(), app="duoshan", purpose="profile.display", at=at)
    rows = store.query("SELECT viewer, candidate, rank, score FROM recommendations", qp).table
    assert rows.num_rows == 0


def test_display_decisions_carry_the_original_values_labels(
    keyed_run: tuple[Path, RunResult],
) -> None:
    out, result = keyed_run
    reg = default_registry()
    platform_bits = reg.mask(["wechat", "qq"])
    unknown = reg.mask(["unknown"])
    profiles = {(r["app_id"], r["subject_id"]): r for r in result.labelled.to_pylist()}
    inferred = _scan_inferred(result)
    rows = pq.read_table(out / "data" / "profile_display.parquet").to_pylist()
    assert len(rows) == len(profiles)
    denied = 0
    for row in rows:
        p = profiles[(row["app_id"], row["subject_id"])]
        labels = []
        for field, label in (("handle", "handle_origins"), ("avatar", "avatar_origins")):
            extra = inferred.get((row["app_id"], row["subject_id"], field), 0)
            assert row[f"{field}_inferred_origins"] == extra
            carried = row[f"{field}_decision_origins"]
            assert carried == ((p[label] | extra) or unknown)
            labels.append(carried)
            if row["app_id"] == "duoshan":
                # the order's third rule: duoshan shows no WeChat/QQ value
                assert (row[f"{field}_decision"] == "deny") == bool(carried & platform_bits)
            denied += row[f"{field}_decision"] == "deny"
        assert row["rule_id_origins"] == labels[0] | labels[1]
        assert (row["rule_id"] is not None) == (
            "deny" in (row["handle_decision"], row["avatar_decision"])
        )
    assert denied > 100


def test_labelled_decisions_are_checked_like_the_withheld_values(
    keyed_run: tuple[Path, RunResult], repo_root: Path
) -> None:
    out, _result = keyed_run
    store = LabelledStore(out / "data", base=job_schema())

    def policy(purpose: str) -> QueryPolicy:
        return QueryPolicy(
            load_policy_dir(repo_root / "policies"),
            default_registry(),
            app="douyin",
            purpose=purpose,
            at=datetime(2019, 6, 30, tzinfo=UTC),
        )

    leak = "SELECT candidate, handle_decision FROM recommendations WHERE handle_decision = 'deny'"
    with pytest.raises(QueryRefused) as err:
        store.query(leak, policy("social.friend_recommendation"))
    assert err.value.code == "PG162" and "no-platform-profile-in-friend-recommendation" in str(
        err.value.message
    )
    grouped = "SELECT avatar_decision, count(*) AS n FROM recommendations GROUP BY 1"
    with pytest.raises(QueryRefused):
        store.query(grouped, policy("social.friend_recommendation"))
    # the rest of the cards stays queryable, and display may still read the decisions
    ok = store.query(
        "SELECT viewer, candidate, score FROM recommendations LIMIT 5",
        policy("social.friend_recommendation"),
    )
    assert ok.table.num_rows == 5
    shown = store.query(leak, policy("profile.display")).table
    assert shown.num_rows > 0 and set(shown.column("handle_decision").to_pylist()) == {"deny"}
    # the display table's decisions and rule ids are labelled the same way
    for sql in (
        "SELECT handle_decision, count(*) AS n FROM profile_display GROUP BY 1",
        "SELECT subject_id FROM profile_display WHERE rule_id IS NOT NULL",
        "SELECT subject_id, avatar_decision FROM profile_display",
    ):
        with pytest.raises(QueryRefused):
            store.query(sql, policy("social.friend_recommendation"))
    ok = store.query(
        "SELECT app_id, subject_id FROM profile_display LIMIT 3",
        policy("social.friend_recommendation"),
    )
    assert ok.table.num_rows == 3


def test_the_run_summary_names_the_stored_hashes_and_the_key_fingerprint(
    keyed_run: tuple[Path, RunResult], capsys: pytest.CaptureFixture[str]
) -> None:
    from provguard.cli.run import _summary

    _summary(keyed_run[1])
    flat = " ".join(capsys.readouterr().out.split())
    assert f"HMAC-SHA256 under key fingerprint {key_id(KEY.encode())}" in flat
    assert "keyed hashes stored: profiles (account_id, avatar_grant" in flat


def test_the_policy_change_has_an_interval_and_the_ranker_weights_are_recorded(
    keyed_run: tuple[Path, RunResult],
) -> None:
    out, result = keyed_run
    rec = result.recommendations
    assert set(rec.policy_intervals) == {"recall_at_10", "mrr", "hits_at_50"}
    deltas = {q.metric.split("@")[0].lower(): q.with_policy - q.without_policy for q in rec.quality}
    for key, (low, high) in rec.policy_intervals.items():
        assert low <= high
        # the full-sample change lies inside its own percentile interval
        assert (
            low - 1e-12
            <= deltas[{"recall_at_10": "recall", "hits_at_50": "hits"}.get(key, key)]
            <= high + 1e-12
        )
    assert set(rec.ranker_weights) == {"none", "injunction", "strict"}
    assert all(0.0 <= w <= 1.0 for w in rec.ranker_weights.values())
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "95 % paired-bootstrap intervals of the change over the evaluated users" in html
    evidence = json.loads((out / "evidence.json").read_text(encoding="utf-8"))
    assert json.dumps(evidence).count('"ranker_weights"') >= 1


def _lax_copy(repo_root: Path, folder: Path) -> Path:
    """The shipped order with its profile rules narrowed to another category: same instrument
    id, title, rule ids and descriptions (fresh user 11, H1)."""
    text = (repo_root / "policies/cn-tj-binhai-2019-douyin-duoshan.yaml").read_text("utf-8")
    lax = text.replace(
        "categories: [user.name.nickname, user.avatar]", "categories: [user.unique_id]"
    )
    assert lax != text
    folder.mkdir(exist_ok=True)
    (folder / "cn.yaml").write_text(lax, encoding="utf-8")
    return folder


def test_a_query_or_service_under_another_bundle_than_the_job_enforced_is_refused(
    keyed_run: tuple[Path, RunResult], repo_root: Path, tmp_path: Path
) -> None:
    """The job's store is governed by the bundle files its job.policy entry records: an edited
    copy served raw QQ handles to Douyin's friend recommendation (H1). Extra bundles may be
    added: they can only add denies."""
    from provguard.adapters.audit_sqlite import SqliteAuditLog
    from provguard.errors import PolicyMismatchError
    from provguard.service.app import ServiceSettings, open_state

    out, _ = keyed_run
    lax = _lax_copy(repo_root, tmp_path / "lax")
    base = ["--app", "douyin", "--purpose", "social.friend_recommendation",
            "--store", str(out / "data")]  # fmt: skip
    sql = "SELECT subject_id, handle FROM profiles LIMIT 3"
    r = CliRunner().invoke(query_app, [*base, "--policy", str(lax), sql])
    assert r.exit_code == 2, r.output
    flat = " ".join(r.output.split())
    assert "[PG103]" in flat and "lacks cn-tj-binhai-2019-douyin-duoshan.yaml" in flat
    with SqliteAuditLog(out / "control.db", create=False) as log:
        last = [dict(e.payload) for e in log.entries(kind="query")][-1]
    assert last["outcome"] == "refused" and last["error_code"] == "PG103"
    # the enforced bundle plus extras: allowed (the handle itself is still refused: PG162)
    extras = [
        "--policy",
        str(repo_root / "policies"),
        "--policy",
        str(repo_root / "policies/extra"),
    ]
    r = CliRunner().invoke(query_app, [*base, *extras, sql])
    assert r.exit_code == 2 and "[PG162]" in r.output, r.output
    count = "SELECT app_id, count(*) AS n FROM profiles GROUP BY app_id"
    r = CliRunner().invoke(query_app, [*base, *extras, count])
    assert r.exit_code == 0, r.output
    # the HTTP service refuses to start under the edited copy
    with pytest.raises(PolicyMismatchError, match="lacks cn-tj-binhai"):
        open_state(ServiceSettings(store=out, policy=lax, api_keys=None))
