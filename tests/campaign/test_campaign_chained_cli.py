"""``provguard campaign`` on a stand-alone campaign store (no job folder, no data store, no key):
``start`` records the export it read, ``rescan`` compares the export's own ``app_profiles``
(Duoshan's profiles changed there: accepted) and refuses an edited provider side (PG411); the
store's cross-check agrees with the chain after every command."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import check_store
from provguard.adapters.platform_files import write_platform
from provguard.cli.campaign import campaign_app

from .conftest import Scanned

RULE = "duoshan-no-platform-profile"
runner = CliRunner()


def _kinds(db: Path) -> list[str]:
    with SqliteAuditLog(db, create=False) as log:
        return [e.kind for e in log.entries()]


def test_standalone_store_start_rescan_from_the_export(scanned: Scanned, tmp_path: Path) -> None:
    folder = tmp_path / "platform"
    write_platform(scanned.platform, folder)
    db = tmp_path / "c.db"
    common = ["--store", str(db), "--campaign", "c1"]
    r = runner.invoke(
        campaign_app,
        ["start", "--rule", RULE, "--platform", str(folder), "--at", "2019-07-01", *common],
    )
    assert r.exit_code == 0, r.output
    assert _kinds(db) == ["campaign.start"]
    with SqliteAuditLog(db, create=False) as log:
        (entry,) = list(log.entries())
    assert entry.payload["export"]["files"]["app_profiles.parquet"]
    states = entry.payload["states"]
    assert (
        states["pending"] + states["exempt"] == entry.payload["added"] == entry.payload["targets"]
    )
    assert states["pending"] > 0
    assert check_store(db).ok
    con = sqlite3.connect(db)
    app, subject = con.execute(
        "SELECT app_id, subject_id FROM campaign_targets WHERE state='pending' "
        "ORDER BY subject_id LIMIT 1"
    ).fetchone()
    con.close()
    # Duoshan's profile changed in the export (handle and picture): a legitimate rescan
    apps = pq.read_table(folder / "app_profiles.parquet")
    rows = apps.to_pylist()
    other = next(r["avatar_key"] for r in rows if r["subject_id"] != subject)
    for row in rows:
        if (row["app_id"], row["subject_id"]) == (app, subject):
            row["handle"], row["avatar_key"] = "totally different ✓", other
    pq.write_table(pa.Table.from_pylist(rows, schema=apps.schema), folder / "app_profiles.parquet")
    rescan = ["rescan", "--platform", str(folder), "--at", "2019-07-02", *common]
    r = runner.invoke(campaign_app, rescan)
    assert r.exit_code == 0, r.output
    assert "pending->changed: 1" in r.output and "compared export profiles" in r.output
    assert _kinds(db) == ["campaign.start", "campaign.rescan"]
    assert check_store(db).ok
    # the provider side edited: refused, nothing written
    prov = pq.read_table(folder / "provider_profiles.parquet")
    nick = pa.array([n + "·" for n in prov.column("nickname").to_pylist()])
    prov = prov.set_column(prov.schema.get_field_index("nickname"), "nickname", nick)
    pq.write_table(prov, folder / "provider_profiles.parquet")
    r = runner.invoke(campaign_app, rescan)
    assert r.exit_code == 2 and "[PG411]" in r.output
    assert _kinds(db) == ["campaign.start", "campaign.rescan"]
