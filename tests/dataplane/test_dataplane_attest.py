"""``provguard.dataplane.attest`` on the Python API: digests, ledgers and the table check.

Real files and a real hash-chained audit log (SQLite); the CLI paths are in
``tests/cli/test_cli_base_attestation.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import canonical_json
from provguard.dataplane.attest import (
    BASE_TABLES_KEY,
    NO_SIDECAR,
    REGISTER_KIND,
    REGISTERED_KEY,
    BaseTablesLedger,
    RegistrationsLedger,
    StoreAttestation,
    base_digests,
    base_tables_payload,
    check_table_file,
    declaration_digest,
    provguard_wrote,
    statement_tables,
)
from provguard.dataplane.store import AuditLabelsLedger
from provguard.errors import UnattestedLabelsError
from provguard.sqlgen import QueryError, SchemaRegistry, TableSpec


def _write(root: Path, name: str, rows: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.parquet"
    pq.write_table(pa.table({"subject_id": list(range(rows)), "handle": ["a"] * rows}), path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- statement tables
@pytest.mark.parametrize(
    ("sql", "tables"),
    [
        ("SELECT handle FROM profiles", ("profiles",)),
        # a CTE named like a stored table still reads it in its body: both are checked
        ("WITH profiles AS (SELECT * FROM profiles) SELECT handle FROM profiles", ("profiles",)),
        (
            "WITH e AS (SELECT * FROM edges) SELECT * FROM e JOIN profiles p ON true",
            ("e", "edges", "profiles"),
        ),
        ("CREATE TABLE h AS SELECT handle FROM profiles", ("h", "profiles")),
        ("SELECT 1 WHERE EXISTS (SELECT 1 FROM recommendations)", ("recommendations",)),
        ("SELECT count(*) FROM PROFILES", ("profiles",)),
        ('SELECT count(*) FROM "Profiles" JOIN main.Edges ON true', ("edges", "profiles")),
        ("SELEC handle FROM", ()),
    ],
)
def test_statement_tables(sql: str, tables: tuple[str, ...]) -> None:
    assert statement_tables(sql) == tables


# ---------------------------------------------------------------------------- digests
def test_base_digests_are_the_files_sha256_and_the_sidecars_spec(tmp_path: Path) -> None:
    path = _write(tmp_path, "profiles")
    d = base_digests(tmp_path, "profiles")
    assert (d.file_sha256, d.spec_sha256, d.data_root) == (
        _sha(path),
        NO_SIDECAR,
        str(tmp_path.resolve()),
    )
    spec = {
        "columns": {"handle": {"categories": ["user.name.nickname"]}},
        "labels_normalised": True,
    }
    (tmp_path / "_labels").mkdir()
    (tmp_path / "_labels" / "profiles.json").write_text(json.dumps({"spec": spec}, indent=3))
    want = hashlib.sha256(canonical_json(spec).encode()).hexdigest()
    assert base_digests(tmp_path, "profiles").spec_sha256 == want
    assert base_tables_payload(tmp_path, ["profiles", "missing"]) == {
        BASE_TABLES_KEY: {"profiles": base_digests(tmp_path, "profiles").as_payload()}
    }
    assert base_tables_payload(tmp_path, ["missing"]) == {}


_CATS = st.sampled_from(["user.name.nickname", "user.avatar", "user.unique_id"])
_COLUMNS = st.dictionaries(
    st.sampled_from(["a", "b", "c", "handle", "nick"]),
    st.fixed_dictionaries(
        {"categories": st.lists(_CATS, max_size=2, unique=True)},
        optional={
            "origins": st.lists(
                st.sampled_from(["wechat", "qq", "douyin"]), min_size=1, max_size=3, unique=True
            )
        },
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(_COLUMNS, st.randoms(use_true_random=False))
def test_declaration_digest_depends_on_the_declaration_not_its_spelling(
    columns: dict[str, dict[str, list[str]]], rnd: object
) -> None:
    """Key order and YAML/JSON spelling do not change the digest; a changed value does."""
    import random

    assert isinstance(rnd, random.Random)
    names = list(columns)
    rnd.shuffle(names)
    shuffled = {n: dict(reversed(list(columns[n].items()))) for n in names}
    a = TableSpec.model_validate({"columns": columns})
    b = TableSpec.model_validate({"columns": shuffled})
    assert declaration_digest(a) == declaration_digest(b)
    first = names[0]
    changed = dict(shuffled)
    changed[first] = {**shuffled[first], "origins": ["apple"]}
    if shuffled[first].get("origins") != ["apple"]:
        c = TableSpec.model_validate({"columns": changed})
        assert declaration_digest(c) != declaration_digest(a)


def test_declaration_digest_of_a_yaml_and_a_json_file(tmp_path: Path) -> None:
    yml = tmp_path / "s.yaml"
    yml.write_text(
        "tables:\n  pp:\n    columns:\n      nick: {origins: [douyin], categories: []}\n"
    )
    js = tmp_path / "s.json"
    js.write_text(
        json.dumps(
            {"tables": {"pp": {"columns": {"nick": {"categories": [], "origins": ["douyin"]}}}}}
        )
    )
    a = SchemaRegistry.load(yml).tables["pp"]
    b = SchemaRegistry.load(js).tables["pp"]
    assert declaration_digest(a) == declaration_digest(b)
    # an explicit default is a different declaration than an omitted one only if it is spelled
    c = TableSpec.model_validate({"columns": {"nick": {"origins": ["douyin"]}}})
    assert declaration_digest(c) != declaration_digest(a)


# ---------------------------------------------------------------------------- files
def test_check_table_file(tmp_path: Path) -> None:
    root = tmp_path / "data"
    path = _write(root, "own")
    assert check_table_file(root, "own") == path
    assert check_table_file(root, "absent") is None
    outside = _write(tmp_path / "platform", "provider_profiles")
    (root / "ln.parquet").symlink_to(Path("..") / "platform" / "provider_profiles.parquet")
    with pytest.raises(QueryError, match="is a symbolic link"):
        check_table_file(root, "ln")
    (root / "dangling.parquet").symlink_to(tmp_path / "nowhere.parquet")
    with pytest.raises(QueryError, match="is a symbolic link"):
        check_table_file(root, "dangling")
    os.link(outside, root / "hard.parquet")
    with pytest.raises(QueryError, match="is a hard link"):
        check_table_file(root, "hard")
    # a data folder reached through a link is still the folder its files live in
    (tmp_path / "alias").symlink_to(root)
    assert check_table_file(tmp_path / "alias", "own") == tmp_path / "alias" / "own.parquet"
    assert QueryError.code == "PG160"


# ---------------------------------------------------------------------------- ledgers
def _record(db: Path, kind: str, key: str, table: str, digests: dict[str, str]) -> int:
    with SqliteAuditLog(db) as log:
        return log.append(kind, {key: {table: digests}}).seq


def test_ledgers_read_their_own_records_newest_first(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    path = _write(tmp_path / "data", "profiles")
    first = base_digests(tmp_path / "data", "profiles").as_payload()
    s1 = _record(db, "job.data", BASE_TABLES_KEY, "profiles", first)
    second = {**first, "file_sha256": "0" * 64}
    s2 = _record(db, "data.store_masks", BASE_TABLES_KEY, "profiles", second)
    _record(db, "query", BASE_TABLES_KEY, "profiles", first)  # not a writer's kind: ignored
    rec = BaseTablesLedger(db).newest("profiles")
    assert rec is not None and (rec.seq, rec.kind) == (s2, "data.store_masks")
    assert rec.digests.file_sha256 == "0" * 64
    # records of one kind are invisible to the others
    assert AuditLabelsLedger(db).newest("profiles") is None
    assert RegistrationsLedger(db).newest("profiles") is None
    r = _record(db, REGISTER_KIND, REGISTERED_KEY, "pp", first)
    got = RegistrationsLedger(db).newest("pp")
    assert got is not None and got.seq == r
    assert s1 < s2 < r and _sha(path) == first["file_sha256"]


def test_an_edited_record_is_not_in_the_chain(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    data = tmp_path / "data"
    _write(data, "profiles")
    honest = base_digests(data, "profiles").as_payload()
    seq = _record(db, "job.data", BASE_TABLES_KEY, "profiles", {**honest, "file_sha256": "1" * 64})
    con = sqlite3.connect(db)
    payload = json.dumps({BASE_TABLES_KEY: {"profiles": honest}})
    con.execute("UPDATE audit_log SET payload = ? WHERE seq = ?", (payload, seq))
    con.commit()
    con.close()
    with pytest.raises(UnattestedLabelsError, match="is not in the audit chain") as info:
        BaseTablesLedger(db).newest("profiles")
    assert info.value.differs == ("entry",)


def test_store_attestation_checks_base_and_declared_tables(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    data = tmp_path / "data"
    _write(data, "profiles")
    _write(data, "edges")
    _write(data, "pp")
    spec = TableSpec.model_validate({"columns": {"handle": {"origins": ["douyin"]}}})
    check = StoreAttestation(data, db, base_tables={"profiles", "edges"}, declared={"pp": spec})
    # no writer recorded this folder: base tables are read as unrecorded; pp is not registered
    assert {t: a.status for t, a in check.check(["profiles", "edges"]).items()} == {
        "profiles": "unrecorded",
        "edges": "unrecorded",
    }
    with pytest.raises(UnattestedLabelsError, match="no audit entry registers it"):
        check.check(["pp"])
    assert not provguard_wrote(db)
    seq = _record(
        db, "job.data", BASE_TABLES_KEY, "profiles", base_digests(data, "profiles").as_payload()
    )
    reg = _record(
        db,
        REGISTER_KIND,
        REGISTERED_KEY,
        "pp",
        {"file_sha256": _sha(data / "pp.parquet"), "spec_sha256": declaration_digest(spec)},
    )
    check = StoreAttestation(data, db, base_tables={"profiles", "edges"}, declared={"pp": spec})
    assert provguard_wrote(db)
    got = check.check(["profiles", "pp", "h", "nothing"])
    assert {t: (a.status, a.seq) for t, a in got.items()} == {
        "profiles": ("recorded", seq),
        "pp": ("registered", reg),
    }
    # edges: a job wrote this folder, and no entry records edges
    with pytest.raises(UnattestedLabelsError, match="has no audit entry recording its writing"):
        check.check(["edges"])
    _write(data, "profiles", rows=6)
    with pytest.raises(UnattestedLabelsError) as info:
        check.check(["profiles"])
    assert info.value.differs == ("file_sha256",) and info.value.table == "profiles"
    other = TableSpec.model_validate({"columns": {"handle": {"origins": ["wechat"]}}})
    with pytest.raises(UnattestedLabelsError) as info:
        StoreAttestation(data, db, base_tables=(), declared={"pp": other}).check(["pp"])
    assert info.value.differs == ("spec_sha256",)
    check.close()
