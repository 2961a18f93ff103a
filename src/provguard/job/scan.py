"""The profile-match scan: app profiles whose handle or picture copies the provider's copy.

Pictures are hashed once per distinct picture (PDQ with quality, centre-square crop, the 8
dihedral variants: :func:`provguard.similarity.pictures.hash_picture_table`); the comparison is
:func:`provguard.similarity.scan.scan_profiles` (v1 columns: exact / NFKC-normalised handle,
picture hash equality; v2 columns: calibrated handle match, picture match within the calibrated
radius). The result is summarised per app beside the sandbox's ground truth (how each profile
was made), so a reader sees what the scan finds and misses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from provguard.similarity.pictures import hash_picture_table
from provguard.similarity.scan import scan_profiles


def hash_pictures(pictures: pa.Table) -> pa.Table:
    """PDQ hashes of every picture (``avatar_key``, ``data`` = encoded bytes).

    Returns ``avatar_key``, ``pdq`` (32 bytes), ``quality`` (0..100), ``dihedral`` (the 8
    variants) and ``chroma`` (mean chromaticity), as :func:`hash_picture_table`. The main job
    calls it once per run and hands the table to both the recommendation stage and the
    profile-match scan.

    Raises:
        InputError: as :func:`hash_picture_table` (a missing column, a null key, an
            undecodable picture).
    """
    return hash_picture_table(pictures)


@dataclass(frozen=True)
class ScanSummary:
    app_id: str
    profiles: int
    compared: int  # profiles with a provider copy
    handle_exact: int  # v1
    handle_normalized: int  # v1: equal after NFKC + case folding, not exact
    picture_equal: int  # v1: PDQ hash equality
    any_match: int  # v1
    handle_match: int  # v2: calibrated handle match (exact included)
    picture_match: int  # v2: within the calibrated Hamming radius, quality-gated
    copy_match: int  # v2: handle or picture
    truth_handle_copies: int  # sandbox: handle copied (any edit) from the provider copy
    truth_picture_copies: int  # sandbox: picture copied (any edit)
    truth_either: int
    truth_handle_edits: dict[str, int]
    truth_picture_edits: dict[str, int]


def run_scan(
    app_profiles: pa.Table, provider_profiles: pa.Table, picture_hashes: pa.Table
) -> tuple[pa.Table, list[ScanSummary]]:
    """Scan every app profile; returns the scan table and one summary per app."""
    result = scan_profiles(app_profiles, provider_profiles, picture_hashes)
    summaries = []
    for app in sorted(set(app_profiles.column("app_id").to_pylist())):
        rows = result.filter(pc.equal(result.column("app_id"), app))
        profs = app_profiles.filter(pc.equal(app_profiles.column("app_id"), app))
        handle_edits = Counter(profs.column("handle_edit").to_pylist())
        picture_edits = Counter(profs.column("avatar_edit").to_pylist())
        either = sum(
            1
            for h, a in zip(
                profs.column("handle_edit").to_pylist(),
                profs.column("avatar_edit").to_pylist(),
                strict=True,
            )
            if h != "user_input" or a != "user_input"
        )

        def count(col: str, table: pa.Table = rows) -> int:
            return int(pc.sum(table.column(col)).as_py() or 0)

        summaries.append(
            ScanSummary(
                app_id=app,
                profiles=len(profs),
                compared=len(rows),
                handle_exact=count("handle_exact"),
                handle_normalized=count("handle_normalized"),
                picture_equal=count("picture_equal"),
                any_match=count("any_match"),
                handle_match=count("handle_match"),
                picture_match=count("picture_match"),
                copy_match=count("copy_match"),
                truth_handle_copies=sum(n for e, n in handle_edits.items() if e != "user_input"),
                truth_picture_copies=sum(n for e, n in picture_edits.items() if e != "user_input"),
                truth_either=either,
                truth_handle_edits=dict(sorted(handle_edits.items())),
                truth_picture_edits=dict(sorted(picture_edits.items())),
            )
        )
    return result, summaries
