"""``provguard sandbox build``: a sandbox platform on a real graph, written as Parquet."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from provguard.cli.common import console, handles_errors
from provguard.config import DEFAULT_GRAPH

sandbox_app = typer.Typer(help="Build the sandbox platform.", no_args_is_help=True)


@sandbox_app.command("build")
@handles_errors
def build_cmd(
    out: Annotated[Path, typer.Option(help="Folder for one Parquet file per table.")] = Path(
        "out/platform"
    ),
    graph: Annotated[Path, typer.Option(help="Edge list (SNAP format).")] = DEFAULT_GRAPH,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Turn a graph into a platform: users, apps, grants, provider copies, profiles, transfers."""
    from provguard.adapters.graph_files import read_edge_list
    from provguard.adapters.platform_files import write_platform
    from provguard.sandbox import build_platform

    graph_edges = read_edge_list(graph)
    platform = build_platform(graph_edges, seed=seed)
    write_platform(platform, out)
    table = Table("ground truth", "count")
    for key, value in platform.summary().items():
        table.add_row(key, str(value))
    console.print(table)
    console.print(f"written to {out}")
