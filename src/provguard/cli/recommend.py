"""``provguard recommend evaluate``: the cost-of-compliance table on a real graph.

Builds the sandbox platform on the graph (profiles, logins, pictures), makes the split of
``docs/recommendation.md`` (random edge split for a ``pairs`` graph such as ego-Facebook, time
split for a ``timestamped`` one such as CollegeMsg), and prints policy x method x slice metrics:
one table with full names when it fits the terminal (or with ``--wide``); otherwise a narrower
table with the methods and metrics abbreviated and a legend under it (readable at 80 columns);
on a terminal too narrow even for that, one block of lines per row.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from provguard.cli.common import console, handles_errors
from provguard.config import DEFAULT_GRAPH
from provguard.errors import InputError

if TYPE_CHECKING:
    from provguard.recommend.protocol import ComplianceRow

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
    ranker: Annotated[
        str,
        typer.Option(
            help="logistic (the default), hgb, lgbm, lgbm-cv, lgbm-fwd, lgbm-fwd-ens,"
            " lgbm-fwd-head or lgbm-fwd-head1 (docs/recommendation.md; the lgbm-* rankers take"
            " minutes per graph)."
        ),
    ] = "logistic",
    out: Annotated[Path | None, typer.Option(help="Write the rows as JSON here.")] = None,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide",
            help="Always print the table with full names (default: abbreviated, with a "
            "legend, when the full one does not fit the terminal).",
        ),
    ] = False,
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
    render_rows(rows, console, wide=wide)
    console.print(f"{split.name}: {dict(split.notes)}; pool recall {pool_recall(split):.4f}")
    if out is not None:
        out.write_text(json.dumps([r.as_dict() for r in rows], indent=2), encoding="utf-8")
        console.print(f"written to {out}")


METRICS: tuple[tuple[str, str, str], ...] = (
    ("recall_at_10", "Recall@10", "R@10"),
    ("mrr", "MRR", "MRR"),
    ("hits_at_50", "Hits@50", "H@50"),
    ("coverage", "user coverage", "UCov"),
    ("catalogue_coverage_at_10", "catalogue coverage@10", "CCov"),
)
"""(attribute, full column name, abbreviation) of the printed metrics."""
METHOD_ABBREVIATIONS = {
    "common_neighbours": "CN",
    "adamic_adar": "AA",
    "resource_allocation": "RA",
    "preferential_attachment": "PA",
    "learned_ranker": "LR",
}
LEGEND = (
    "R@10 = Recall@10, MRR = MRR@50, H@50 = Hits@50, UCov = user coverage, CCov = catalogue "
    "coverage@10, rm = signals the policy removed; CN = common_neighbours, AA = adamic_adar, "
    "RA = resource_allocation, PA = preferential_attachment, LR = learned_ranker"
)


def _cells(r: ComplianceRow) -> list[str]:
    return [f"{getattr(r, attr):.4f}" for attr, _, _ in METRICS]


def _natural_width(out: Console, table: Table) -> int:
    return Measurement.get(out, out.options.update_width(1 << 16), table).maximum


def render_rows(rows: list[ComplianceRow], out: Console, *, wide: bool = False) -> None:
    """Print the cost-of-compliance rows on ``out``: the full table when it fits ``out.width``
    (or ``wide``); else an abbreviated table (``R@10``, ``RA``, ...) followed by
    :data:`LEGEND`; else, on a very narrow terminal, one block per row
    (``policy / method / slice`` then ``name value`` lines). Nothing is cut with an ellipsis."""
    full = Table("policy", "method", "slice", *(name for _, name, _ in METRICS), "removed")
    for r in rows:
        full.add_row(r.policy, r.method, r.slice, *_cells(r), str(len(r.signals_removed)))
    if wide or _natural_width(out, full) <= out.width:
        out.print(full)
        return
    short = Table(
        "policy", "method", "slice", *(a for _, _, a in METRICS), "rm",
        box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
    )  # fmt: skip
    for col in short.columns[3:]:
        col.justify = "right"
    for r in rows:
        method = METHOD_ABBREVIATIONS.get(r.method, r.method)
        short.add_row(r.policy, method, r.slice, *_cells(r), str(len(r.signals_removed)))
    if _natural_width(out, short) <= out.width:
        out.print(short)
        out.print(LEGEND, soft_wrap=False, overflow="fold")
        return
    for r in rows:
        out.print(f"{r.policy} / {r.method} / {r.slice}", overflow="fold")
        for (_, name, _), cell in zip(METRICS, _cells(r), strict=True):
            out.print(f"  {name:<22} {cell}")
        out.print(f"  {'signals removed':<22} {len(r.signals_removed)}")
