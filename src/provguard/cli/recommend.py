"""``provguard recommend evaluate``: the cost-of-compliance table on a real graph.

Builds the sandbox platform on the graph (profiles, logins, pictures), makes the split of
``docs/recommendation.md`` (random edge split for a ``pairs`` graph such as ego-Facebook, time
split for a ``timestamped`` one such as CollegeMsg), and prints policy x method x slice metrics.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from provguard.cli.common import console, handles_errors
from provguard.config import DEFAULT_GRAPH
from provguard.errors import InputError

recommend_app = typer.Typer(help="Friend recommendation under the policy.", no_args_is_help=True)


def _parse_policy(spec: str) -> tuple[str, Path | None]:
    name, sep, path = spec.partition("=")
    if not sep or not name:
        raise InputError(f"--policy takes NAME=PATH or NAME=none, got {spec!r}")
    return name, None if path == "none" else Path(path)


@recommend_app.command("evaluate")
@handles_errors
def evaluate_cmd(
    graph: Annotated[Path, typer.Option(help="Edge list (SNAP format).")] = DEFAULT_GRAPH,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="NAME=PATH of a policy file/folder, or NAME=none; repeatable."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (sandbox, split, ranker).")] = 7,
    keep: Annotated[float, typer.Option(help="Share of edges on provider friend lists.")] = 0.5,
    ranker: Annotated[str, typer.Option(help="logistic, hgb or lgbm.")] = "logistic",
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
) -> None:
    """Print the cost-of-compliance table (Recall@10, MRR, Hits@50, user coverage, catalogue
    coverage@10)."""
    from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
    from provguard.policy import PolicySet, load_policy_dir
    from provguard.recommend.protocol import (
        cost_of_compliance,
        pool_recall,
        profiles_from_tables,
        random_edge_split,
        sandbox_contacts_for,
        time_split,
    )
    from provguard.sandbox import build_platform

    specs = policy or ["none=none", "injunction=policies"]
    policies: dict[str, PolicySet | None] = {}
    for spec in specs:
        name, path = _parse_policy(spec)
        policies[name] = None if path is None else load_policy_dir(path)
    el = read_edge_list(graph)
    platform = build_platform(el, seed=seed)
    n = int(el.nodes.max()) + 1
    profiles = profiles_from_tables(n, platform.subjects, platform.app_profiles, platform.pictures)
    s, d = undirected_simple_edges(el)
    contacts = sandbox_contacts_for(s, d, profiles, keep=keep, seed=seed)
    if el.time is not None:
        split = time_split(el.src, el.dst, el.time, n, contacts=contacts, name=f"{graph.stem}/time")
    else:
        split = random_edge_split(
            s, d, n, seed=seed, contacts=contacts, name=f"{graph.stem}/random"
        )
    rows = cost_of_compliance(
        split, profiles, policies, at=datetime(2019, 6, 30, tzinfo=UTC), ranker=ranker, seed=seed
    )
    table = Table(
        "policy",
        "method",
        "slice",
        "Recall@10",
        "MRR",
        "Hits@50",
        "user coverage",
        "catalogue coverage@10",
        "removed",
    )
    for r in rows:
        table.add_row(
            r.policy,
            r.method,
            r.slice,
            f"{r.recall_at_10:.4f}",
            f"{r.mrr:.4f}",
            f"{r.hits_at_50:.4f}",
            f"{r.coverage:.4f}",
            f"{r.catalogue_coverage_at_10:.4f}",
            str(len(r.signals_removed)),
        )
    console.print(table)
    console.print(f"{split.name}: {dict(split.notes)}; pool recall {pool_recall(split):.4f}")
    if out is not None:
        out.write_text(json.dumps([r.as_dict() for r in rows], indent=2), encoding="utf-8")
        console.print(f"written to {out}")
