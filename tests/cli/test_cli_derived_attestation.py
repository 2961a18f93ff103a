"""Findings I-3 and I-4 through the CLI.

I-3: a derived table's labels live in a sidecar (``_labels/<t>.json``) beside its Parquet file,
and the identity check (labels token, file stat) lives there too, so someone who can write the
data folder could empty a column's categories, or forge labels and copy the new file's stat into
the sidecar: later honest queries read WeChat/QQ handles as unprotected or app-native. Now the
audit entry of every write of a derived table records the file's SHA-256 and the spec digest,
and ``provguard query`` / ``provguard data`` read a derived table only while both match the
newest chained entry that wrote it (PG210 otherwise). Each attack is first shown to work on the
Python API without an audit log (so the test can fail), then refused through the CLI.

I-4: a data folder is bound to its control store; a copy queried with another control store is
refused (PG101).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import canonical_json
from provguard.cli.data import data_app
from provguard.cli.query import query_app
from provguard.dataplane import LabelledStore
from provguard.dataplane.store import (
    CONTROL_BINDING_FILE,
    AuditLabelsLedger,
    bind_data_store,
    control_store_id,
)
from provguard.errors import UnattestedLabelsError
from provguard.policy import load_policy_dir
from provguard.provenance import default_registry
from provguard.sqlgen import QueryPolicy, QueryRefused
from provguard.sqlgen.schema import job_schema

from .test_cli_query import INJUNCTION, _args, random_profiles

REG = default_registry()
MASKS = INJUNCTION.parent / "tests" / "golden" / "sqlgen" / "policy-masks.yaml"
HASH_KEY = "provguard-cli-attestation-key"
RAW = {"小明", "wxAlice", "qq_bob", "eve"}  # the handles random_profiles draws from
AT = datetime(2019, 6, 1, tzinfo=UTC)
MAKE = "CREATE TABLE h AS SELECT subject_id, handle FROM profiles"
READ = "SELECT subject_id, handle FROM h"


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A data folder with labelled ``profiles`` (40 rows, two apps) and its control store
    beside it, bound as the job binds them."""
    from provguard.adapters.control_sqlite import SqlControlStore

    data = tmp_path / "data"
    LabelledStore(data).data.write_table("profiles", random_profiles(40, seed=3))
    SqlControlStore(tmp_path / "control.db").engine.dispose()
    bind_data_store(data, tmp_path / "control.db")
    return data


def _display(store: Path) -> list[str]:
    """Douyin under profile.display: the injunction lets it read (and store) handles."""
    args: list[str] = _args(store)
    args[args.index("social.friend_recommendation")] = "profile.display"
    return args


def _invoke(app: Any, args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def _make(store: Path, sql: str = MAKE) -> None:
    made = _invoke(query_app, [*_display(store), sql])
    assert made.exit_code == 0, made.output


def _sidecar_path(store: Path, name: str = "h") -> Path:
    return store / "_labels" / f"{name}.json"


def _sidecar(store: Path, name: str = "h") -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(_sidecar_path(store, name).read_text(encoding="utf-8"))
    return raw


def _entries(store: Path, kind: str) -> list[Any]:
    with SqliteAuditLog(store.parent / "control.db") as log:
        return list(log.entries(kind=kind))


def _unledgered_rows(store: Path, policy_file: Path = INJUNCTION) -> list[Any]:
    """``READ`` under friend recommendation on the Python API without an audit log (today's
    behaviour there)."""
    ls = LabelledStore(store, base=job_schema())
    policy = QueryPolicy(
        load_policy_dir(policy_file),
        REG,
        app="douyin",
        purpose="social.friend_recommendation",
        at=AT,
        hash_key=HASH_KEY,
    )
    rows: list[Any] = ls.query(READ, policy).table.to_pylist()
    return rows


def _raw_handles(rows: list[Any]) -> int:
    """How many rows show a handle as stored (not hashed, redacted or withheld)."""
    return sum(r["handle"] in RAW for r in rows)


def _text(result: Any) -> str:
    return " ".join(result.output.split())


def test_an_honest_create_table_as_records_its_digests_and_reads(store: Path) -> None:
    _make(store)
    entry = _entries(store, "query")[-1]
    recorded = entry.payload["derived_labels"]["h"]
    data = store / "h.parquet"
    assert recorded == {
        "data_root": str(store.resolve()),
        "file_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
        "spec_sha256": hashlib.sha256(
            canonical_json(_sidecar(store)["spec"]).encode("utf-8")
        ).hexdigest(),
    }
    assert entry.payload["tables_created"] == ["h"]
    read = _invoke(query_app, [*_display(store), "--json", READ])
    assert read.exit_code == 0, read.output
    rows = [json.loads(line) for line in read.output.splitlines() if line.startswith("{")]
    assert len(rows) == 20  # douyin's 20 of the 40 rows (controller isolation)
    # and under friend recommendation the WeChat/QQ handles are refused as the injunction says
    honest = _invoke(query_app, [*_args(store), READ])
    assert honest.exit_code == 2 and "PG162" in honest.output


def test_an_edited_sidecar_is_refused(store: Path) -> None:
    """Attack 1: empty the handle column's categories in the sidecar."""
    _make(store)
    raw = _sidecar(store)
    raw["spec"]["columns"]["handle"]["categories"] = []
    _sidecar_path(store).write_text(json.dumps(raw), encoding="utf-8")
    # without the audit log the edit works: raw WeChat/QQ handles under friend recommendation
    leaked = _unledgered_rows(store)
    assert len(leaked) == 20
    assert {r["handle"] for r in leaked} & {"wxAlice", "qq_bob", "小明", "eve"}
    res = _invoke(query_app, [*_args(store), READ])
    assert res.exit_code == 2
    text = _text(res)
    assert "PG210" in text and "table 'h'" in text
    assert "labels sidecar's spec digest" in text
    assert "Parquet file's SHA-256" not in text  # only the sidecar differs
    # the refusal is itself audited, as refused with its code
    last = _entries(store, "query")[-1]
    assert last.payload["outcome"] == "refused" and last.payload["error_code"] == "PG210"
    # so is a count, a join and an EXISTS over it: every read names the table
    for sql in (
        "SELECT count(*) AS n FROM h",
        "SELECT p.subject_id FROM profiles p JOIN h ON p.subject_id = h.subject_id",
        "SELECT subject_id FROM profiles p WHERE EXISTS (SELECT 1 FROM h)",
    ):
        again = _invoke(query_app, [*_display(store), sql])
        assert again.exit_code == 2 and "PG210" in again.output, sql


def test_forged_labels_with_the_stat_copied_are_refused(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack 2: every label forged to user_input (row labels zeroed) with pyarrow, metadata and
    labels token kept, and the new file's stat copied into the sidecar's ``labels_file``.
    Under a mask policy (per-row masks: hash WeChat, redact QQ, placeholder for unknown) the
    forged labels would return every handle as stored."""
    monkeypatch.setenv("PROVGUARD_HASH_KEY", HASH_KEY)
    _make(store)
    honest = _unledgered_rows(store, MASKS)
    assert len(honest) == 20 and _raw_handles(honest) < 20  # some handles are masked
    path = store / "h.parquet"
    t = pq.read_table(path)
    clean = pa.array([REG.mask(["user_input"])] * t.num_rows, pa.uint64())
    t = t.set_column(t.schema.get_field_index("handle__origins"), "handle__origins", clean)
    zero = pa.array([0] * t.num_rows, pa.uint64())
    t = t.set_column(t.schema.get_field_index("__row__origins"), "__row__origins", zero)
    pq.write_table(t, path)
    st = os.stat(path)
    raw = _sidecar(store)
    raw["labels_file"] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    _sidecar_path(store).write_text(json.dumps(raw, indent=2, sort_keys=True), encoding="utf-8")
    # without the audit log the forgery works: every handle as stored
    assert _raw_handles(_unledgered_rows(store, MASKS)) == 20
    res = _invoke(query_app, [*_args(store, MASKS), READ])
    assert res.exit_code == 2
    text = _text(res)
    assert "PG210" in text and "table 'h'" in text and "Parquet file's SHA-256" in text
    assert "spec digest" not in text  # only the file differs
    # the load-time commands refuse it too (a rewrite would record the forgery as provguard's)
    norm = _invoke(data_app, ["normalise-labels", "--store", str(store), "--table", "h"])
    assert norm.exit_code == 2 and "PG210" in norm.output
    # CREATE OR REPLACE makes it readable again, with honest labels and masks
    _make(store, "CREATE OR REPLACE TABLE h AS SELECT subject_id, handle FROM profiles")
    again = _invoke(query_app, [*_args(store, MASKS), "--json", READ])
    assert again.exit_code == 0, again.output
    rows = [json.loads(x) for x in again.output.splitlines() if x.startswith("{")]
    assert len(rows) == 20 and _raw_handles(rows) == _raw_handles(honest)


def test_a_derived_table_no_entry_wrote_is_refused(store: Path) -> None:
    """A derived table made on the Python API (or copied in with its sidecar) has no chained
    entry: the CLI refuses it, naming the table."""
    ls = LabelledStore(store, base=job_schema())
    policy = QueryPolicy(
        load_policy_dir(INJUNCTION), REG, app="douyin", purpose="profile.display", at=AT
    )
    ls.query(MAKE, policy)
    assert len(ls.query(READ, policy).table) == 20  # the Python API keeps today's behaviour
    res = _invoke(query_app, [*_display(store), READ])
    assert res.exit_code == 2
    assert "PG210" in res.output and "no audit entry records its writing" in _text(res)


def test_or_replace_declassify_and_data_commands_keep_a_table_readable(store: Path) -> None:
    _make(store)
    replaced = _invoke(
        query_app,
        [*_display(store), "CREATE OR REPLACE TABLE h AS SELECT subject_id, handle FROM profiles"],
    )
    assert replaced.exit_code == 0 and "replaced labelled table h" in replaced.output
    kept = _invoke(query_app, [*_display(store), f"CREATE TABLE IF NOT EXISTS {MAKE[13:]}"])
    assert kept.exit_code == 0 and "kept as it is" in kept.output
    assert "derived_labels" not in _entries(store, "query")[-1].payload  # nothing written
    assert _invoke(query_app, [*_display(store), READ]).exit_code == 0
    # declassify WeChat from the handles (Python API, audited in the same control store)
    control = store.parent / "control.db"
    ls = LabelledStore(store, base=job_schema(), ledger=AuditLabelsLedger(control))
    with SqliteAuditLog(control) as log:
        done = ls.declassify(
            "h", "handle", "wechat", actor="ops", reason="re-entered by the user", at=AT, audit=log
        )
    assert done.rows > 0
    entry = _entries(store, "declassify")[-1]
    assert (
        entry.payload["derived_labels"]["h"]["file_sha256"]
        == hashlib.sha256((store / "h.parquet").read_bytes()).hexdigest()
    )
    after = _invoke(query_app, [*_display(store), "--json", "--raw-labels", READ])
    assert after.exit_code == 0, after.output
    labels = [json.loads(x)["handle__origins"] for x in after.output.splitlines() if "{" in x]
    assert labels and all(not label & REG.mask(["wechat"]) for label in labels)
    # a load-time rewrite through `provguard data` records the new digests in its own entry
    norm = _invoke(data_app, ["normalise-labels", "--store", str(store), "--table", "h"])
    assert norm.exit_code == 0, norm.output
    assert "h" in _entries(store, "data.normalise_labels")[-1].payload["derived_labels"]
    assert _invoke(query_app, [*_display(store), READ]).exit_code == 0


def test_an_edited_audit_entry_vouches_for_nothing(store: Path) -> None:
    """Editing the CTAS entry's recorded digests in control.db to match a forged file breaks
    the hash chain: the entry is not in the chain, so the table is refused."""
    _make(store)
    seq = _entries(store, "query")[-1].seq
    path = store / "h.parquet"
    t = pq.read_table(path)
    clean = pa.array([REG.mask(["user_input"])] * t.num_rows, pa.uint64())
    pq.write_table(
        t.set_column(t.schema.get_field_index("handle__origins"), "handle__origins", clean), path
    )
    forged = hashlib.sha256(path.read_bytes()).hexdigest()
    st = os.stat(path)
    raw = _sidecar(store)
    raw["labels_file"] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    _sidecar_path(store).write_text(json.dumps(raw), encoding="utf-8")
    con = sqlite3.connect(store.parent / "control.db")
    (payload,) = con.execute("SELECT payload FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    body = json.loads(payload)
    body["derived_labels"]["h"]["file_sha256"] = forged
    con.execute("UPDATE audit_log SET payload = ? WHERE seq = ?", (canonical_json(body), seq))
    con.commit()
    con.close()
    with pytest.raises(UnattestedLabelsError, match="is not in the audit chain"):
        AuditLabelsLedger(store.parent / "control.db").newest("h")
    res = _invoke(query_app, [*_args(store), READ])
    assert res.exit_code == 2 and "PG210" in res.output and "audit chain" in _text(res)


def test_with_the_signing_key_an_unsigned_entry_vouches_for_nothing(store: Path) -> None:
    """With ``audit.pub`` beside the control store, the CTAS entry is signed by the query
    (``cover_own_entry``); an entry appended without the key, recording a forged file's
    digests, is not covered by a signed checkpoint and vouches for nothing."""
    from provguard.audit.folder import cover_tail, folder_signing_key

    folder = store.parent
    folder_signing_key(folder)
    with SqliteAuditLog(folder / "control.db") as log:
        log.append("note", {"setup": True})
        assert cover_tail(log, folder).signed is not None
    _make(store)
    assert _invoke(query_app, [*_display(store), READ]).exit_code == 0
    # the forgery: labels rewritten, stat copied, and a matching entry appended (no key)
    path = store / "h.parquet"
    t = pq.read_table(path)
    clean = pa.array([REG.mask(["user_input"])] * t.num_rows, pa.uint64())
    pq.write_table(
        t.set_column(t.schema.get_field_index("handle__origins"), "handle__origins", clean), path
    )
    st = os.stat(path)
    raw = _sidecar(store)
    raw["labels_file"] = {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    _sidecar_path(store).write_text(json.dumps(raw), encoding="utf-8")
    digests = {
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "spec_sha256": hashlib.sha256(canonical_json(raw["spec"]).encode()).hexdigest(),
    }
    (folder / "audit-key.pem").rename(folder / "elsewhere.pem")  # the attacker has no key
    with SqliteAuditLog(folder / "control.db") as log:
        log.append("query", {"derived_labels": {"h": digests}, "outcome": "rows"})
    res = _invoke(query_app, [*_args(store), READ])
    assert res.exit_code == 2
    text = _text(res)
    assert "PG210" in text and "not covered by a checkpoint signed" in text


# ------------------------------------------------------------------------ I-4: the binding


def test_a_copied_data_folder_with_another_control_store_is_refused(
    store: Path, tmp_path: Path
) -> None:
    control = store.parent / "control.db"
    bound = control_store_id(control, create=False)
    assert bound is not None
    assert json.loads((store / CONTROL_BINDING_FILE).read_text())["control_store_id"] == bound
    # the easy case: copy data/ away without control.db, query with a control store of one's own
    away = tmp_path / "away"
    shutil.copytree(store, away / "data")
    mine = away / "mine.db"
    with SqliteAuditLog(mine) as log:
        log.append("note", {"mine": True})
    res = _invoke(
        query_app,
        [*_display(away / "data"), "--control-store", str(mine), "SELECT subject_id FROM profiles"],
    )
    assert res.exit_code == 2
    text = _text(res)
    assert "PG101" in text and bound in text and "has no store id" in text
    # a control store with an id of its own is refused the same way
    other = control_store_id(mine, create=True)
    res = _invoke(
        query_app,
        [*_display(away / "data"), "--control-store", str(mine), "SELECT subject_id FROM profiles"],
    )
    assert res.exit_code == 2 and f"store id {other}" in _text(res)
    # and the default (a fresh control.db beside the copy) is refused before it is made
    res = _invoke(query_app, [*_display(away / "data"), "SELECT subject_id FROM profiles"])
    assert res.exit_code == 2 and "PG101" in res.output and "does not exist" in _text(res)
    assert not (away / "control.db").exists()
    with SqliteAuditLog(mine) as log:
        assert [e.kind for e in log.entries()] == ["note"]  # the copy's log never saw a query
    # the data commands too
    res = _invoke(
        data_app, ["normalise-labels", "--store", str(away / "data"), "--control-store", str(mine)]
    )
    assert res.exit_code == 2 and "PG101" in res.output
    # the genuine pair still works
    ok = _invoke(query_app, [*_display(store), "SELECT subject_id FROM profiles"])
    assert ok.exit_code == 0, ok.output


def test_an_unbound_data_folder_is_bound_on_first_use(tmp_path: Path, store: Path) -> None:
    """A data folder made before bindings (or not by the job) is bound to the control store of
    its first query, which then holds."""
    (store / CONTROL_BINDING_FILE).unlink()
    first = _invoke(query_app, [*_display(store), "SELECT subject_id FROM profiles"])
    assert first.exit_code == 0, first.output
    assert "bound the data folder" in _text(first)
    sid = control_store_id(store.parent / "control.db", create=False)
    assert json.loads((store / CONTROL_BINDING_FILE).read_text())["control_store_id"] == sid
    # rebinding is the job's business: binding again to the same store keeps the id
    assert bind_data_store(store, store.parent / "control.db") == sid


def test_an_edited_base_table_sidecar_cannot_relabel_it(store: Path) -> None:
    """The same edit on a base table's sidecar (``_labels/profiles.json``, written by
    ``provguard data normalise-labels`` or the job's stored hashes): its categories, labels and
    controller column come from the schema; the sidecar only adds what provguard computed."""
    norm = _invoke(data_app, ["normalise-labels", "--store", str(store), "--table", "profiles"])
    assert norm.exit_code == 0, norm.output
    raw = _sidecar(store, "profiles")
    assert raw["spec"]["labels_normalised"] is True
    raw["spec"]["columns"]["handle"]["categories"] = []
    raw["spec"]["columns"]["handle"]["origins_column"] = None
    raw["spec"]["columns"]["handle"]["origins"] = ["douyin"]
    raw["spec"]["controller_column"] = None
    _sidecar_path(store, "profiles").write_text(json.dumps(raw), encoding="utf-8")
    sql = "SELECT subject_id, handle FROM profiles"
    # through the CLI the edited sidecar no longer matches the data.normalise_labels entry that
    # recorded it (session 8: base tables attested), whatever the purpose
    for args in (_args(store), _display(store)):
        refused = _invoke(query_app, [*args, sql])
        assert refused.exit_code != 0 and "PG210" in refused.output
        assert "its labels sidecar's spec digest is" in " ".join(refused.output.split())
    # and without the audit log (the Python API) the overlay still keeps the schema's labels
    ls = LabelledStore(store, base=job_schema())
    with pytest.raises(QueryRefused):  # the injunction still applies
        ls.query(sql, _query_policy("social.friend_recommendation"))
    shown = ls.query(sql, _query_policy("profile.display"))
    rows = shown.table.to_pylist()
    assert len(rows) == 20  # douyin's rows only: the controller column is the schema's
    truth = {
        r["subject_id"]: r["handle_origins"] or REG.mask(["unknown"])
        for r in random_profiles(40, seed=3).to_pylist()
    }
    assert {r["subject_id"]: r["handle__origins"] for r in rows} == {
        s: truth[s] for s in range(0, 40, 2)
    }


def _query_policy(purpose: str) -> QueryPolicy:
    return QueryPolicy(
        load_policy_dir(INJUNCTION), REG, app="douyin", purpose=purpose, at=datetime.now(UTC)
    )


def test_a_table_another_folder_wrote_is_not_this_folders(store: Path) -> None:
    """Fresh user 9, G16: two data folders bound to one control store; a table made in B,
    copied with its sidecar into A (the sidecar's file identity edited to the copy's), was
    served in A: the ledger's newest entry for the name vouched for B's file. The entry now
    records the folder it wrote in."""
    from provguard.dataplane.store import LABELS_FILE_KEY, _file_identity

    other = store.parent / "data_b"
    LabelledStore(other).data.write_table("profiles", random_profiles(40, seed=4))
    bind_data_store(other, store.parent / "control.db")
    _make(other)
    (entry,) = [e for e in _entries(store, "query") if "derived_labels" in e.payload]
    assert entry.payload["derived_labels"]["h"]["data_root"] == str(other.resolve())
    shutil.copy2(other / "h.parquet", store / "h.parquet")
    (store / "_labels").mkdir(exist_ok=True)
    sidecar = _sidecar(other)
    sidecar[LABELS_FILE_KEY] = _file_identity(os.stat(store / "h.parquet"))
    _sidecar_path(store).write_text(json.dumps(sidecar), encoding="utf-8")
    res = _invoke(query_app, [*_display(store), READ])
    assert res.exit_code != 0, res.output
    assert "PG210" in res.output and f"wrote it in the data folder {other.resolve()}" in res.output
    # in B, where it was written, it reads
    res = _invoke(query_app, [*_display(other), READ])
    assert res.exit_code == 0, res.output
