"""Fresh user 13, H1 / M2, on a real job folder (the main job on the first 600 lines of
ego-Facebook): what a ``provguard campaign rescan`` may compare and when.

* H1: the store's ``data/profiles.parquet`` is attested like ``provguard query`` attests it
  (an edited file: PG210, nothing moves, no entry); ``--profiles FILE`` (not the attested
  table) needs ``--why``, which is chained and shown in report section 3c beside the row, as
  is a ``--new-export`` override and its reason.
* M2: ``--at`` before the campaign's start / newest operation, or in the future, and a
  negative ``--ignore-after-days`` are refused (PG100), nothing written.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.audit.chain import AuditEntry
from provguard.campaign.chained import check_rescan_time, comparison_note
from provguard.cli.campaign import campaign_app
from provguard.errors import InputError
from provguard.report.from_store import build_model_from_store
from provguard.report.render import render_html

runner = CliRunner()
AT = "2019-07-01T00:00:00+00:00"  # one day after the run


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


def _rescans(folder: Path) -> list[AuditEntry]:
    with SqliteAuditLog(folder / "control.db", create=False) as log:
        return list(log.entries(kind="campaign.rescan"))


def _rescan(folder: Path, *extra: str, at: str = AT) -> tuple[int, str]:
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
            at,
            *extra,
        ],
    )
    return r.exit_code, " ".join(r.output.split())


def _forge(src: Path, dst: Path) -> None:
    """The finding's forgery: Duoshan rows get a new handle and no picture."""
    t = pq.read_table(src)
    duo = pc.equal(t.column("app_id"), "duoshan")
    subj = pc.cast(t.column("subject_id"), pa.string())
    handle = pc.if_else(duo, pc.binary_join_element_wise("nick_", subj, ""), t.column("handle"))
    avatar = pc.if_else(duo, pa.scalar(None, t.schema.field("avatar_key").type), t["avatar_key"])
    t = t.set_column(t.schema.get_field_index("handle"), "handle", handle)
    t = t.set_column(t.schema.get_field_index("avatar_key"), "avatar_key", avatar)
    pq.write_table(t, dst)


def _section(html: str, name: str) -> str:
    start = html.index(f'aria-labelledby="{name}">')
    part = html[start : html.index("</section>", start)]
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", part)).split())


# ------------------------------------------------------------------ H1


def test_edited_store_profiles_are_refused_pg210_and_nothing_moves(folder: Path) -> None:
    before, count = _states(folder), _log_count(folder)
    assert before.get("notified", 0) > 0
    store_profiles = folder / "data" / "profiles.parquet"
    _forge(store_profiles, folder / "forged.parquet")
    shutil.move(folder / "forged.parquet", store_profiles)
    code, out = _rescan(folder)
    assert code == 2, out
    assert "[PG210]" in out and "table 'profiles' does not match audit entry" in out
    assert _states(folder) == before and _log_count(folder) == count
    # naming the store's own file with --profiles is the same attested read
    code, out = _rescan(folder, "--profiles", str(store_profiles))
    assert code == 2 and "[PG210]" in out
    assert _log_count(folder) == count


def test_default_rescan_records_the_attestation(folder: Path) -> None:
    code, out = _rescan(folder)
    assert code == 0, out
    (entry,) = _rescans(folder)
    prof = entry.payload["profiles"]
    assert prof["source"] == "store"
    assert prof["attested"]["status"] == "recorded" and prof["attested"]["seq"] < entry.seq
    assert comparison_note(entry.payload) is None
    model = build_model_from_store(folder)
    assert model.campaigns is not None
    assert all(p.basis is None for c in model.campaigns for p in c.history)


def test_forged_profiles_file_needs_why_and_is_shown_unattested_in_3c(
    folder: Path, tmp_path: Path
) -> None:
    before, count = _states(folder), _log_count(folder)
    forged = tmp_path / "forged_profiles.parquet"
    _forge(folder / "data" / "profiles.parquet", forged)
    code, out = _rescan(folder, "--profiles", str(forged))
    assert code == 2, out
    assert "[PG100]" in out and "--why" in out and "not the data store's attested" in out
    code, out = _rescan(folder, "--profiles", str(forged), "--why", "   ")
    assert code == 2 and "[PG100]" in out
    assert _states(folder) == before and _log_count(folder) == count
    reason = "Duoshan's export of 2019-07-01 sent by its counsel"
    code, out = _rescan(folder, "--profiles", str(forged), "--why", reason)
    assert code == 0, out
    assert _states(folder).get("changed") == before["notified"]
    (entry,) = _rescans(folder)
    prof = entry.payload["profiles"]
    assert prof["source"] == "file" and prof["why"] == reason
    assert prof["path"] == str(forged.resolve()) and len(prof["sha256"]) == 64
    model = build_model_from_store(folder)
    assert model.campaigns is not None
    (c,) = model.campaigns
    noted = [p for p in c.history if p.basis is not None]
    assert len(noted) == 1 and noted[0].operation == "rescan"
    assert noted[0].chained_seq == entry.seq
    text = _section(render_html(model), "s-campaigns")
    assert f"chained #{entry.seq} unattested basis" in text
    assert f"unattested file {forged.resolve()} (SHA-256 {prof['sha256'][:16]}…)" in text
    assert f"reason: {reason}" in text


def test_new_export_override_and_reason_are_shown_in_3c(folder: Path) -> None:
    plat = folder / "platform"
    prov = pq.read_table(plat / "provider_profiles.parquet")
    nick = pc.binary_join_element_wise("x_", prov.column("nickname"), "")
    prov = prov.set_column(prov.schema.get_field_index("nickname"), "nickname", nick)
    pq.write_table(prov, plat / "provider_profiles.parquet")
    code, out = _rescan(folder, "--new-export", "platform republished")
    assert code == 0, out
    (entry,) = _rescans(folder)
    text = _section(render_html(build_model_from_store(folder)), "s-campaigns")
    replaced = entry.payload["new_export"]["replaces_seq"]
    assert "new provider export accepted (--new-export), reason: platform republished" in text
    assert f"replaces the export recorded in entry #{replaced}" in text
    assert text.count("unattested basis") == 1


# ------------------------------------------------------------------ M2


def test_backdated_or_future_at_and_negative_days_are_refused(folder: Path) -> None:
    before, count = _states(folder), _log_count(folder)
    code, out = _rescan(folder, at="2018-01-01")
    assert code == 2 and "[PG100]" in out and "before the campaign started" in out, out
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    code, out = _rescan(folder, at=future)
    assert code == 2 and "[PG100]" in out and "in the future" in out
    code, out = _rescan(folder, "--ignore-after-days", "-5", at="2019-08-01")
    assert code == 2 and "[PG100]" in out and "--ignore-after-days must be >= 0" in out
    assert _states(folder) == before and _log_count(folder) == count
    # after a rescan on 2019-08-01, one on 2019-07-15 would be listed out of order
    code, out = _rescan(folder, at="2019-08-01")
    assert code == 0, out
    code, out = _rescan(folder, at="2019-07-15")
    assert code == 2 and "before the campaign's newest recorded operation" in out
    code, out = _rescan(folder, at="2019-08-01")  # the same time again is in order
    assert code == 0, out


def test_check_rescan_time_bounds() -> None:
    start = datetime(2019, 6, 30, tzinfo=UTC)
    now = datetime(2020, 1, 1, tzinfo=UTC)
    ok = dict(started=start, newest=start, now=now, ignore_after_days=0)
    check_rescan_time(start, **ok)  # type: ignore[arg-type]
    check_rescan_time(now + timedelta(minutes=4), **ok)  # type: ignore[arg-type]
    for at in (start - timedelta(seconds=1), now + timedelta(minutes=6)):
        with pytest.raises(InputError):
            check_rescan_time(at, **ok)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=">= 0"):
        check_rescan_time(start, started=start, newest=None, now=now, ignore_after_days=-1)
