"""What a chained campaign operation records, and which platform export a rescan may read (pure).

Every operation that moves campaign targets -- the main job's run (entry kind ``campaign``),
``provguard campaign start`` / ``dispatch`` / ``rescan`` (kinds :data:`START_KIND`,
:data:`DISPATCH_KIND`, :data:`RESCAN_KIND`) -- appends a hash-chained audit entry in the same
database transaction as the state change (fresh user 11, M3). This module builds those payloads
and decides whether a rescan may read a platform export.

**The export a rescan reads.** A rescan compares the client app's profiles with the provider's
copy of the same data subjects (``provider_profiles`` and the provider's pictures). A provider
export edited so that nothing matches any more (nicknames suffixed, pictures rotated) would mark
every target ``changed`` while the app still shows the copies. So the provider side of the
export is pinned: :func:`export_digests` computes, besides the SHA-256 of every file read, the
*provider digest* -- SHA-256 over the provider profiles (canonical JSON lines sorted by
(provider, subject)) and the SHA-256 of the bytes of every picture they reference. The job
records it in its ``campaign`` entry (``export``); each chained rescan records the digest it
read. :func:`check_export` refuses (:class:`ExportMismatchError`, PG411) a rescan whose provider
digest differs from the newest recorded one unless the caller passes an explicit reason
(``--new-export REASON``): the platform published a new export. The override is recorded in the
rescan's entry (old digest, new digest, reason) and the new digest is the baseline from then on.

A legitimate rescan changes the *app side* only: Duoshan's users changed their handles or
pictures (``app_profiles``, and the app's pictures in ``pictures.parquet``), which the provider
digest does not cover; the files' SHA-256 are still recorded, so an auditor sees which app
profiles were compared.

**The app profiles a rescan compares** (fresh user 13, H1). By default the data store's own
``profiles`` table, attested like ``provguard query`` attests it (PG210 on an edited file); a
file named with ``--profiles`` is not the store's attested table, so it needs a reason
(:func:`check_profiles_reason`), recorded in the entry, and report section 3c shows the rescan
row as compared with an unattested file (:func:`comparison_note`), as it shows a
``--new-export`` override and its reason. **The rescan's time** (M2) lies between the
campaign's newest recorded operation and now (:func:`check_rescan_time`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from provguard.errors import InputError
from provguard.report.anchor import file_sha256

__all__ = [
    "DISPATCH_KIND",
    "EXPORT_FILES",
    "RESCAN_KIND",
    "START_KIND",
    "ExportDigests",
    "ExportMismatchError",
    "check_export",
    "check_profiles_reason",
    "check_rescan_time",
    "comparison_note",
    "export_digests",
    "file_sha256",
    "provider_digest",
    "recorded_export",
]

START_KIND = "campaign.start"
DISPATCH_KIND = "campaign.dispatch"
RESCAN_KIND = "campaign.rescan"
EXPORT_FILES = ("provider_profiles", "pictures", "app_profiles", "subjects")
"""The platform tables a rescan reads (``<folder>/<name>.parquet``), in this order."""


class ExportMismatchError(InputError):
    """A rescan was given a platform export whose provider side is not the one recorded."""

    code = "PG411"


@dataclass(frozen=True)
class ExportDigests:
    """``files``: SHA-256 (hex) of each file read, by file name; ``provider``: the provider
    digest (:func:`provider_digest`); ``folder``: the folder as given (absolute)."""

    folder: str
    files: Mapping[str, str]
    provider: str

    def payload(self) -> dict[str, object]:
        """The ``export`` field of a chained entry."""
        return {
            "folder": self.folder,
            "files": dict(sorted(self.files.items())),
            "provider_digest": self.provider,
        }


def provider_digest(provider_profiles: pa.Table, pictures: pa.Table) -> str:
    """SHA-256 (hex) of the provider side of a platform export.

    Args:
        provider_profiles: columns ``provider``, ``subject_id``, ``unionid``, ``nickname``,
            ``avatar_key`` (the sandbox schema; other columns ignored).
        pictures: columns ``avatar_key`` and ``data`` (encoded bytes).

    Returns:
        64 hex characters: SHA-256 over one canonical JSON line per provider profile (sorted
        by provider, subject id) carrying its fields and the SHA-256 of its picture's bytes
        (``null`` when the picture is missing). Independent of row order, file encoding and
        the app's own rows and pictures.

    Raises:
        InputError: a column is missing.
    """
    need = {"provider", "subject_id", "unionid", "nickname", "avatar_key"}
    if not need <= set(provider_profiles.column_names):
        missing = ", ".join(sorted(need - set(provider_profiles.column_names)))
        raise InputError(f"provider_profiles lacks column(s) {missing}")
    if not {"avatar_key", "data"} <= set(pictures.column_names):
        raise InputError("pictures lacks column avatar_key or data")
    rows = provider_profiles.select(sorted(need)).to_pylist()
    wanted = {r["avatar_key"] for r in rows}
    keys = pictures.column("avatar_key").to_pylist()
    blobs = pictures.column("data")
    picture_sha: dict[str, str] = {}
    for i, key in enumerate(keys):
        if key in wanted:
            data = blobs[i].as_py()
            picture_sha[key] = hashlib.sha256(data or b"").hexdigest()
    h = hashlib.sha256()
    for r in sorted(rows, key=lambda r: (str(r["provider"]), int(r["subject_id"]))):
        line = {**r, "picture_sha256": picture_sha.get(r["avatar_key"])}
        h.update(json.dumps(line, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def export_digests(folder: Path, provider_profiles: pa.Table, pictures: pa.Table) -> ExportDigests:
    """The digests of the platform export in ``folder`` whose tables were read as given.

    ``files`` holds the SHA-256 of each of :data:`EXPORT_FILES` present in ``folder``.
    Raises ``OSError`` when a file cannot be read, :class:`InputError` as
    :func:`provider_digest`."""
    files = {
        f"{name}.parquet": file_sha256(folder / f"{name}.parquet")
        for name in EXPORT_FILES
        if (folder / f"{name}.parquet").is_file()
    }
    return ExportDigests(str(folder.resolve()), files, provider_digest(provider_profiles, pictures))


def recorded_export(payload: Mapping[str, Any]) -> str | None:
    """The provider digest a chained campaign entry's payload records (``export``), or None."""
    export = payload.get("export")
    if isinstance(export, Mapping):
        d = export.get("provider_digest")
        if isinstance(d, str):
            return d
    return None


def check_export(
    recorded: str | None, recorded_seq: int | None, current: str, new_export: str | None
) -> dict[str, object] | None:
    """Whether a rescan may read an export whose provider digest is ``current``.

    Args:
        recorded: the newest provider digest chained for the campaign (``None``: none, a run
            from before exports were recorded or a campaign started elsewhere).
        recorded_seq: the seq of the entry recording it.
        current: the provider digest of the export given.
        new_export: the reason of an explicit override (``--new-export``), or None.

    Returns:
        ``None`` when the digests are equal (and no override was given); otherwise the
        override record ``{"reason", "replaces", "replaces_seq"}`` for the entry.

    Raises:
        ExportMismatchError: the digests differ (or none is recorded) and no reason was given,
            or a reason is given for the export already recorded.
    """
    reason = new_export.strip() if new_export is not None else None
    if new_export is not None and not reason:
        raise ExportMismatchError("--new-export needs a reason (who published it, and why)")
    if recorded == current:
        if reason:
            raise ExportMismatchError(
                f"--new-export: this export's provider digest {current[:16]}… is the one "
                f"already recorded (entry #{recorded_seq}); nothing to override"
            )
        return None
    if not reason:
        if recorded is None:
            raise ExportMismatchError(
                "no provider export is recorded for this campaign in the audit chain (a run "
                "from before exports were recorded); pass --new-export REASON to record this "
                f"one (provider digest {current[:16]}…)"
            )
        raise ExportMismatchError(
            f"the platform export's provider side (provider profiles and their pictures, "
            f"digest {current[:16]}…) is not the one recorded in audit entry "
            f"#{recorded_seq} ({recorded[:16]}…): a rescan against it would compare the "
            "app's profiles with other provider data. Rescan against the recorded export, or "
            "pass --new-export REASON if the platform published a new export (recorded in the "
            "audit chain)"
        )
    return {"reason": reason, "replaces": recorded, "replaces_seq": recorded_seq}


def check_rescan_time(
    at: datetime,
    *,
    started: datetime,
    newest: datetime | None,
    now: datetime,
    ignore_after_days: int,
    slack: timedelta = timedelta(minutes=5),
) -> None:
    """Refuse a rescan time outside the campaign's life, or a negative grace period.

    Args:
        at: the rescan's time (``--at``), timezone-aware.
        started: the campaign's start (``campaigns.created_at``).
        newest: the time of its newest progress snapshot (``None``: none yet).
        now: the current time (UTC); ``at`` may exceed it by at most ``slack`` (clock skew).
        ignore_after_days: ``--ignore-after-days``, days (>= 0).

    Raises:
        InputError (PG100): ``at`` before ``started`` or before ``newest`` (a backdated
            snapshot would be listed out of order as evidence), after ``now + slack``, or a
            negative ``ignore_after_days``.
    """
    if ignore_after_days < 0:
        raise InputError(f"--ignore-after-days must be >= 0 (days), got {ignore_after_days}")
    if at < started:
        raise InputError(
            f"--at {at.isoformat()} is before the campaign started ({started.isoformat()}): "
            "a rescan cannot precede the campaign it moves"
        )
    if newest is not None and at < newest:
        raise InputError(
            f"--at {at.isoformat()} is before the campaign's newest recorded operation "
            f"({newest.isoformat()}): its snapshots are evidence in time order, a backdated "
            "rescan would be listed out of order"
        )
    if at > now + slack:
        raise InputError(f"--at {at.isoformat()} is in the future (now {now.isoformat()})")


def check_profiles_reason(why: str | None) -> str:
    """The reason for comparing app profiles from a file other than the store's attested
    ``profiles`` (``--profiles FILE --why TEXT``), stripped. Raises :class:`InputError`
    (PG100) when it is missing or blank: such a comparison is not vouched for by the chain,
    so whoever runs it must say why (the reason is recorded and shown in report section 3c)."""
    reason = why.strip() if why is not None else ""
    if not reason:
        raise InputError(
            "--profiles FILE is not the data store's attested profiles table: pass --why TEXT "
            "(why this file is the app's profiles; recorded in the audit chain and shown in "
            "the report), or omit --profiles to compare the store's attested profiles"
        )
    return reason


def comparison_note(payload: Mapping[str, Any]) -> str | None:
    """What report section 3c says about a chained rescan's comparison basis, from the
    ``campaign.rescan`` entry's ``payload``: app profiles compared from a file rather than the
    attested store table (path, SHA-256 prefix, reason) and a ``--new-export`` override (its
    reason, the digest and entry it replaced). ``None`` when neither applies (store profiles
    attested, or the export's own ``app_profiles``, against the recorded export)."""
    notes: list[str] = []
    profiles = payload.get("profiles")
    if isinstance(profiles, Mapping) and profiles.get("source") == "file":
        digest = str(profiles.get("sha256") or "")[:16]
        why = profiles.get("why")
        notes.append(
            f"compared app profiles from an unattested file {profiles.get('path')} "
            f"(SHA-256 {digest}…), not the store's attested profiles; reason: "
            + (str(why) if why else "none recorded")
        )
    override = payload.get("new_export")
    if isinstance(override, Mapping):
        replaced = override.get("replaces_seq")
        notes.append(
            f"new provider export accepted (--new-export), reason: {override.get('reason')}; "
            + (
                f"replaces the export recorded in entry #{replaced}"
                if replaced is not None
                else "no export was recorded before"
            )
        )
    return "; ".join(notes) or None
