"""Fresh user 11, M3, on a real job folder (the main job on the first 600 lines of ego-Facebook):
``provguard campaign rescan`` / ``dispatch`` chain their state change, a rescan refuses a
provider export the chain does not record, and section 3c marks what the chain backs.

The attack: the provider export edited with pyarrow (nicknames suffixed, the provider's
pictures rotated; Duoshan's profiles untouched) used to mark every notified target ``changed``
with no audit entry. Now it is PG411 and nothing moves; with ``--new-export REASON`` it is
accepted and the reason, both digests and the states are chained and signed.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from collections import Counter
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.campaign_sqlite import SqlCampaignStore
from provguard.adapters.control_sqlite import check_store
from provguard.audit.chain import AuditEntry
from provguard.campaign.chained import (
    ExportMismatchError,
    check_export,
    provider_digest,
)
from provguard.cli.audit import audit_app
from provguard.cli.campaign import campaign_app, chained_operation
from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html

runner = CliRunner()
AT = "2019-07-01T00:00:00+00:00"  # one day after the run: nobody is ignored yet


def _campaign(folder: Path) -> str:
    con = sqlite3.connect(folder / "control.db")
    (cid,) = con.execute("SELECT campaign_id FROM campaigns").fetchone()
    con.close()
    return str(cid)


def _states(folder: Path) -> dict[str, int]:
    con = sqlite3.connect(folder / "control.db")
    rows = con.execute("SELECT state, count(*) FROM campaign_targets GROUP BY state").fetchall()
    con.close()
    return {str(s): int(n) for s, n in rows}


def _log_count(folder: Path) -> int:
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        return log.count()


def _entries(folder: Path, kind: str) -> list[AuditEntry]:
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        return list(log.entries(kind=kind))


def _rescan(folder: Path, *extra: str) -> tuple[int, str]:
    r = runner.invoke(
        campaign_app,
        [
            "rescan",
            "--store",
            str(folder / "control.db"),
            "--platform",
            str(folder / "platform"),
            "--campaign",
            _campaign(folder),
            "--at",
            AT,
            *extra,
        ],
    )
    return r.exit_code, " ".join(r.output.split())


def _edit_provider_export(folder: Path) -> None:
    """The finding's kind of edit, made with pyarrow: every provider nickname replaced and the
    provider's pictures rotated among the provider's users (each subject's provider picture is
    now another subject's); Duoshan's profiles untouched."""
    plat = folder / "platform"
    prov = pq.read_table(plat / "provider_profiles.parquet")
    nick = pa.array([f"p{int(s):07d}" for s in prov.column("subject_id").to_pylist()])
    prov = prov.set_column(prov.schema.get_field_index("nickname"), "nickname", nick)
    pq.write_table(prov, plat / "provider_profiles.parquet")
    keys = sorted(set(prov.column("avatar_key").to_pylist()))
    pics = pq.read_table(plat / "pictures.parquet")
    blobs = dict(
        zip(pics.column("avatar_key").to_pylist(), pics.column("data").to_pylist(), strict=True)
    )
    shifted = {k: blobs[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}
    data = [shifted.get(k, blobs[k]) for k in pics.column("avatar_key").to_pylist()]
    pics = pics.set_column(pics.schema.get_field_index("data"), "data", pa.array(data, pa.binary()))
    pq.write_table(pics, plat / "pictures.parquet")


def _section(html: str, name: str) -> str:
    start = html.index(f'aria-labelledby="{name}">')
    part = html[start : html.index("</section>", start)]
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", part)).split())


def _verify(folder: Path) -> tuple[int, str]:
    r = runner.invoke(audit_app, ["verify", "--log", str(folder / "control.db")])
    return r.exit_code, " ".join(r.output.split())


def test_the_job_records_the_export_it_wrote(folder: Path) -> None:
    (entry,) = _entries(folder, "campaign")
    export = entry.payload["export"]
    plat = folder / "platform"
    want = provider_digest(
        pq.read_table(plat / "provider_profiles.parquet"), pq.read_table(plat / "pictures.parquet")
    )
    assert export["provider_digest"] == want
    assert set(export["files"]) == {
        "provider_profiles.parquet",
        "pictures.parquet",
        "app_profiles.parquet",
        "subjects.parquet",
    }
    first, last = entry.payload["progress"]
    assert 1 <= first < last  # the run's start and dispatch snapshots


def test_edited_provider_export_is_refused_and_nothing_moves(folder: Path) -> None:
    before, count = _states(folder), _log_count(folder)
    assert before.get("notified", 0) > 0
    _edit_provider_export(folder)
    code, out = _rescan(folder)
    assert code == 2, out
    assert "[PG411]" in out and "not the one recorded in audit entry" in out
    assert _states(folder) == before and _log_count(folder) == count
    assert check_store(folder / "control.db").ok


def test_new_export_override_is_chained_signed_and_becomes_the_baseline(
    folder: Path, small_job_folder: Path
) -> None:
    before = _states(folder)
    (job,) = _entries(folder, "campaign")
    _edit_provider_export(folder)
    code, out = _rescan(folder, "--new-export", "WeChat re-published its export on 2019-07-01")
    assert code == 0, out
    # nothing matches the edited provider copy any more: every notified target "changed"
    assert _states(folder) == {"changed": before["notified"], "exempt": before["exempt"]}
    (entry,) = _entries(folder, "campaign.rescan")
    p = entry.payload
    assert p["moved"] == {"notified->changed": before["notified"]}
    assert p["states"]["changed"] == before["notified"] and p["states_before"] == {
        **{k: 0 for k in p["states"]},
        **before,
    }
    assert p["new_export"]["reason"] == "WeChat re-published its export on 2019-07-01"
    assert p["new_export"]["replaces"] == job.payload["export"]["provider_digest"]
    assert p["new_export"]["replaces_seq"] == job.seq
    assert p["export"]["provider_digest"] != job.payload["export"]["provider_digest"]
    assert p["profiles"]["source"] == "store" and len(p["profiles"]["sha256"]) == 64
    assert (
        p["export"]["files"]["pictures.parquet"]
        != job.payload["export"]["files"]["pictures.parquet"]
    )
    assert f"audit: signed checkpoint at entry #{entry.seq}" in out
    code, text = _verify(folder)
    assert code == 0, text
    assert "cross-check campaigns: 1 rows, 1 match the chain, 0 discrepancies" in text
    # the new export is the baseline now: the original one is refused in turn
    for name in ("provider_profiles", "pictures"):
        shutil.copy(
            small_job_folder / "platform" / f"{name}.parquet",
            folder / "platform" / f"{name}.parquet",
        )
    count = _log_count(folder)
    code, out = _rescan(folder)
    assert code == 2 and "[PG411]" in out and f"audit entry #{entry.seq}" in out
    code, out = _rescan(folder, "--new-export", "  ")
    assert code == 2 and "[PG411] --new-export needs a reason" in out
    assert _log_count(folder) == count


def test_changed_duoshan_profiles_are_a_legitimate_rescan_then_reverted_and_dispatched(
    folder: Path,
) -> None:
    before = _states(folder)
    control = folder / "control.db"
    con = sqlite3.connect(control)
    notified = con.execute(
        "SELECT app_id, subject_id FROM campaign_targets WHERE state='notified' "
        "ORDER BY subject_id LIMIT 5"
    ).fetchall()
    con.close()
    chosen = {(str(a), int(s)) for a, s in notified}
    assert len(chosen) == 5
    store_profiles = folder / "data" / "profiles.parquet"
    original = pq.read_table(store_profiles)
    rows = original.to_pylist()
    # a picture no provider profile uses: the app's own upload
    provider_keys = set(
        pq.read_table(folder / "platform" / "provider_profiles.parquet")
        .column("avatar_key")
        .to_pylist()
    )
    own = next(
        r["avatar_key"]
        for r in rows
        if r["avatar_key"] not in provider_keys and r["subject_id"] not in {s for _, s in chosen}
    )
    for r in rows:
        if (r["app_id"], r["subject_id"]) in chosen:
            r["handle"] = f"brand new handle {r['subject_id']} ✓"
            r["avatar_key"] = own
    # Duoshan's new export of its profiles: a file beside the store (the attested store table
    # itself cannot be edited in place: PG210), compared with a stated reason
    export = folder / "duoshan-profiles-2019-07.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=original.schema), export)
    code, out = _rescan(folder, "--profiles", str(export), "--why", "Duoshan's July export")
    assert code == 0, out
    assert "notified->changed: 5" in out
    assert _states(folder)["changed"] == 5
    assert _states(folder)["notified"] == before["notified"] - 5
    (entry,) = _entries(folder, "campaign.rescan")
    assert entry.payload["new_export"] is None and entry.payload["moved"] == {
        "notified->changed": 5
    }
    assert entry.payload["export_recorded_seq"] == _entries(folder, "campaign")[0].seq
    assert check_store(control).ok

    # the five revert to the copy (the store's attested table): pending again with a new
    # notice, then dispatched (chained)
    code, out = _rescan(folder)
    assert code == 0 and "changed->pending: 5" in out
    mailbox = folder / "outbox.jsonl"
    lines_before = len(mailbox.read_text(encoding="utf-8").splitlines())
    r = runner.invoke(
        campaign_app,
        [
            "dispatch",
            "--store",
            str(control),
            "--mailbox",
            str(mailbox),
            "--campaign",
            _campaign(folder),
            "--rate",
            "1000",
            "--batch",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "sent 5, failed 0, gave up 0" in r.output
    dispatches = _entries(folder, "campaign.dispatch")
    assert [e.payload["sent"] for e in dispatches] == [3, 2]
    assert dispatches[-1].payload["states"] == {**dispatches[-1].payload["states"], **before}
    assert _states(folder) == before
    new = mailbox.read_text(encoding="utf-8").splitlines()[lines_before:]
    assert len(new) == 5 and all(":notice:2" in json.loads(x)["message_id"] for x in new)
    assert check_store(control).ok
    code, text = _verify(folder)
    assert code == 0, text
    # section 3c: every snapshot is chained; the Now row is the newest entry's states
    model = build_model_from_store(folder)
    assert model.campaigns is not None
    (c,) = model.campaigns
    assert all(p.chained_seq is not None for p in c.history)
    assert [p.operation for p in c.history][-4:] == ["rescan", "rescan", "dispatch", "dispatch"]
    assert c.history[-1].chained_seq == dispatches[-1].seq
    text = _section(render_html(model), "s-campaigns")
    assert f"chained #{dispatches[-1].seq}" in text
    assert text.count("chained #") == len(c.history)
    assert text.count("not chained") == 1  # the legend: no row is unchained


def test_an_unchained_snapshot_withholds_3c(folder: Path) -> None:
    """A rescan through the store API (no chain entry), as `campaign rescan` did before."""
    control = folder / "control.db"
    before = _states(folder)
    db = SqlCampaignStore(control)
    moved = db.apply_rescan(
        _campaign(folder), [], datetime(2019, 7, 30, tzinfo=UTC), ignore_after=timedelta(days=30)
    )
    db.engine.dispose()
    assert moved == {"notified->changed": before["notified"]}
    res = check_store(control)
    assert res.failed_tables() == ("campaigns",)
    fields = Counter(d.field for d in res.discrepancies)
    assert fields == Counter({"history": 1, "campaign_targets": 1})
    model = build_model_from_store(folder)
    assert model.campaigns is None
    text = _section(render_html(model), "s-campaigns")
    assert "[PG340] Withheld" in text and "Now" not in text


def test_a_crash_inside_the_operation_leaves_neither_states_nor_entry(folder: Path) -> None:
    control = folder / "control.db"
    before, count = _states(folder), _log_count(folder)
    cid = _campaign(folder)

    def op(store: SqlCampaignStore) -> dict[str, object]:
        store.apply_rescan(
            cid, [], datetime(2019, 7, 30, tzinfo=UTC), ignore_after=timedelta(days=30)
        )
        raise RuntimeError("power cut after the targets moved")

    with pytest.raises(RuntimeError):
        chained_operation(control, cid, "campaign.rescan", op, at=datetime.now(UTC))
    assert _states(folder) == before and _log_count(folder) == count
    assert check_store(control).ok


def test_check_export_decisions() -> None:
    assert check_export("a" * 64, 7, "a" * 64, None) is None
    with pytest.raises(ExportMismatchError, match="entry #7"):
        check_export("a" * 64, 7, "b" * 64, None)
    with pytest.raises(ExportMismatchError, match="no provider export is recorded"):
        check_export(None, None, "b" * 64, None)
    with pytest.raises(ExportMismatchError, match="nothing to override"):
        check_export("a" * 64, 7, "a" * 64, "why")
    assert check_export("a" * 64, 7, "b" * 64, " new export ") == {
        "reason": "new export",
        "replaces": "a" * 64,
        "replaces_seq": 7,
    }
    assert ExportMismatchError.code == "PG411"


def test_provider_digest_ignores_order_and_the_app_side(small_job_folder: Path) -> None:
    plat = small_job_folder / "platform"
    prov = pq.read_table(plat / "provider_profiles.parquet")
    pics = pq.read_table(plat / "pictures.parquet")
    d = provider_digest(prov, pics)
    assert provider_digest(prov.take(list(reversed(range(prov.num_rows)))), pics) == d
    keys = set(prov.column("avatar_key").to_pylist())
    app_only = pc.invert(pc.is_in(pics.column("avatar_key"), pa.array(sorted(keys))))
    assert provider_digest(prov, pics.filter(pc.invert(app_only))) == d  # app pictures dropped
    nick = prov.column("nickname").to_pylist()
    nick[0] = nick[0] + "!"
    edited = prov.set_column(prov.schema.get_field_index("nickname"), "nickname", pa.array(nick))
    assert provider_digest(edited, pics) != d
