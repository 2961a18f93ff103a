"""The first profile-match scan: app profiles whose handle or picture equals the provider's copy.

Pictures are hashed once per distinct picture (PDQ, 256 bits); the comparison itself is
:func:`provguard.similarity.scan.scan_profiles`. The result is summarised per app beside the
sandbox's ground truth (how each profile was made), so a reader sees what v1 finds and misses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from provguard.similarity.pictures import decode_image, pdq_hash
from provguard.similarity.scan import scan_profiles


def hash_pictures(pictures: pa.Table) -> pa.Table:
    """PDQ hash and quality of every picture. ``pictures``: avatar_key, data (encoded bytes).

    Returns a table avatar_key (string), pdq (binary, 32 bytes), quality (int32, 0..100).
    """
    keys = pictures.column("avatar_key").to_pylist()
    hashes: list[bytes] = []
    quality: list[int] = []
    for data in pictures.column("data").to_pylist():
        h, q = pdq_hash(decode_image(data))
        hashes.append(h)
        quality.append(q)
    return pa.table(
        {
            "avatar_key": pa.array(keys, pa.string()),
            "pdq": pa.array(hashes, pa.binary()),
            "quality": pa.array(quality, pa.int32()),
        }
    )


@dataclass(frozen=True)
class ScanSummary:
    app_id: str
    profiles: int
    compared: int  # profiles with a provider copy
    handle_exact: int
    handle_normalized: int
    picture_equal: int
    any_match: int
    truth_handle_copies: int  # sandbox: handle copied (any edit) from the provider copy
    truth_picture_copies: int  # sandbox: picture copied (any edit)
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
                truth_handle_copies=sum(n for e, n in handle_edits.items() if e != "user_input"),
                truth_picture_copies=sum(n for e, n in picture_edits.items() if e != "user_input"),
                truth_handle_edits=dict(sorted(handle_edits.items())),
                truth_picture_edits=dict(sorted(picture_edits.items())),
            )
        )
    return result, summaries
