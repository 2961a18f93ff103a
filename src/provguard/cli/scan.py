"""``provguard scan run``: the profile-match scan of a platform export (Parquet folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from provguard.adapters.platform_files import read_platform
from provguard.cli.common import console, user_errors
from provguard.similarity.pictures import hash_picture_table
from provguard.similarity.scan import scan_profiles

scan_app = typer.Typer(
    name="scan",
    help="Profile-match scan (handles and pictures).",
    no_args_is_help=True,
    add_completion=False,
)


@scan_app.command("run")
def run(
    platform: Annotated[Path, typer.Option(help="Platform export folder (Parquet tables).")],
    out: Annotated[Path, typer.Option(help="Where to write the scan table (Parquet).")],
) -> None:
    """Hash every picture, compare every app profile with its provider copies, write the table."""
    with user_errors():
        plat = read_platform(platform)
        hashes = hash_picture_table(plat.pictures)
        result = scan_profiles(plat.app_profiles, plat.provider_profiles, hashes)
        pq.write_table(result, out)
    for col in (
        "handle_exact",
        "handle_normalized",
        "handle_match",
        "picture_equal",
        "picture_match",
        "any_match",
        "copy_match",
    ):
        console.print(f"{col}: {int(pc.sum(result.column(col)).as_py() or 0)}")
    console.print(f"rows: {result.num_rows} -> {out}")
