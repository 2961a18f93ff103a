"""Friend-recommendation benchmark: speed vs networkx, RA quality, cost of compliance, Spark.

Run: ``.venv/bin/python bench/bench_recommend.py [--skip-spark] [--skip-compliance]
[--skip-speed] [--seeds 7,0] [--ranker logistic|hgb|lgbm|lgbm-cv|lgbm-fwd|lgbm-fwd-ens|lgbm-fwd-head|lgbm-fwd-head1]
[--datasets ego,msg]
[--policies none,injunction,strict]`` (the cost-of-compliance tables, the ranker-minus-best-
heuristic margins with user and catalogue coverage, and the paired-bootstrap intervals are
printed once per split seed).
Prints markdown tables (recorded in docs/benchmarks.md, section "Recommendation").
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path

import networkx as nx
import numpy as np

from provguard.adapters.graph_files import read_edge_list, undirected_simple_edges
from provguard.job.recommendations import ranker_margins
from provguard.policy import load_policy_dir
from provguard.recommend.compare import top_k_agreement
from provguard.recommend.graph import adjacency
from provguard.recommend.heuristics import adamic_adar, resource_allocation
from provguard.recommend.protocol import (
    RANKERS,
    cost_of_compliance,
    paired_bootstrap,
    pool_recall,
    profiles_from_tables,
    random_edge_split,
    sandbox_contacts_for,
    slice_metrics,
    time_split,
)
from provguard.recommend.rank import Recommendations, allow_all, recommend, top_k_rows
from provguard.recommend.ranker import LearnedRanker
from provguard.recommend.signals import two_hop_candidates

ROOT = Path(__file__).resolve().parents[1]
EGO = ROOT / "data" / "graphs" / "snap-ego-facebook.txt"
MSG = ROOT / "data" / "graphs" / "snap-collegemsg.txt"
STRICT = ROOT / "tests" / "recommend" / "policies" / "strict-no-platform-data.yaml"


def speed() -> None:
    el = read_edge_list(EGO)
    s, d = undirected_simple_edges(el)
    a = adjacency(s, d)
    t0 = time.perf_counter()
    ours = top_k_rows(adamic_adar(a).scores, 20)
    t_ours = time.perf_counter() - t0
    g = nx.Graph()
    g.add_edges_from(zip(s.tolist(), d.tolist(), strict=True))
    r, c = two_hop_candidates(a).nonzero()
    pairs = list(zip(r.tolist(), c.tolist(), strict=True))
    t0 = time.perf_counter()
    triples = list(nx.adamic_adar_index(g, pairs))
    import scipy.sparse as sp

    m = sp.csr_matrix(
        ([p for _, _, p in triples], ([u for u, _, _ in triples], [v for _, v, _ in triples])),
        shape=a.shape,
    )
    theirs = top_k_rows(m, 20)
    t_nx = time.perf_counter() - t0
    agree = top_k_agreement(ours[0], ours[1], theirs[0], theirs[1], rtol=1e-12)
    print("| top-20 Adamic–Adar, all 4,039 users of ego-Facebook | seconds |")
    print("|---|---|")
    print(f"| provguard (scipy sparse) | {t_ours:.3f} |")
    print(f"| networkx adamic_adar_index on the same {len(pairs):,} candidate pairs | {t_nx:.2f} |")
    print(f"| ratio | {t_nx / t_ours:.1f}x |")
    print(
        f"| agreement | {agree.rows - len(agree.bad_rows)}/{agree.rows} rows agree, "
        f"{agree.exact_rows} identical order, max |Δscore| {agree.max_abs_score_diff:.1e} |"
    )


def ra_quality() -> None:
    el = read_edge_list(EGO)
    s, d = undirected_simple_edges(el)
    n = int(el.nodes.max()) + 1
    print(
        "\n| RA alone on ego-Facebook, random 10% edge split | seed | Recall@10 (micro, per "
        "query) | per-user mean recall@10 | per-user recall@10 / min(10, |T_u|) "
        "| user hit-rate@10 |"
    )
    print("|---|---|---|---|---|---|")
    for seed in (0, 7):
        split = random_edge_split(s, d, n, seed=seed)
        adj = adjacency(split.train[0], split.train[1], n)
        recs = recommend(adj, [resource_allocation(adj)], allow_all, 50)
        m10 = slice_metrics(recs, split.test, k=10, hits_k=10)
        q_u = np.concatenate(split.test)
        q_t = np.concatenate(split.test[::-1])
        hit = (recs.candidates[q_u, :10] == q_t[:, None]).any(axis=1)
        _, inv = np.unique(q_u, return_inverse=True)
        per_user = np.bincount(inv, weights=hit) / np.bincount(inv)
        print(
            f"| | {seed} | {m10.recall_at_k:.4f} | {per_user.mean():.4f} "
            f"| {m10.recall_capped:.4f} | {m10.hits:.4f} |"
        )


def compliance(
    seed: int = 7,
    ranker: str = "logistic",
    datasets: tuple[str, ...] = ("ego", "msg"),
    bundles: tuple[str, ...] = ("none", "injunction", "strict"),
) -> None:
    at = datetime(2019, 6, 30, tzinfo=UTC)
    every = {
        "none": None,
        "injunction": load_policy_dir(ROOT / "policies"),
        "strict": load_policy_dir(STRICT),
    }
    policies = {name: every[name] for name in bundles}
    from provguard.sandbox import build_platform

    for path in [{"ego": EGO, "msg": MSG}[x] for x in datasets]:
        el = read_edge_list(path)
        platform = build_platform(el, seed=7)  # the sandbox is fixed; the split seed varies
        n = int(el.nodes.max()) + 1
        prof = profiles_from_tables(n, platform.subjects, platform.app_profiles, platform.pictures)
        s, d = undirected_simple_edges(el)
        contacts = sandbox_contacts_for(s, d, prof, keep=0.5, seed=7)
        if el.time is not None:
            split = time_split(
                el.src, el.dst, el.time, n, contacts=contacts, name="collegemsg/time"
            )
        else:
            split = random_edge_split(
                s, d, n, seed=seed, contacts=contacts, name="ego-facebook/random"
            )
        t0 = time.perf_counter()
        kept: dict[tuple[str, str], Recommendations] = {}
        models: dict[str, LearnedRanker] = {}
        rows = cost_of_compliance(
            split,
            prof,
            policies,
            at=at,
            seed=seed,
            keep_recs=kept,
            ranker=ranker,
            keep_models=models,
        )
        dt = time.perf_counter() - t0
        print(
            f"\n{split.name} (seed {seed}, ranker {ranker}): {dict(split.notes)}, "
            f"pool recall {pool_recall(split):.4f}, {dt:.0f} s"
        )
        print(
            "| policy | method | slice | Recall@10 | MRR | Hits@50 | user coverage "
            "| catalogue coverage@10 | signals removed |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r.policy} | {r.method} | {r.slice} | {r.recall_at_10:.4f} | {r.mrr:.4f} "
                f"| {r.hits_at_50:.4f} | {r.coverage:.4f} | {r.catalogue_coverage_at_10:.4f} "
                f"| {len(r.signals_removed)} |"
            )
        by = {(r.policy, r.method, r.slice): r for r in rows}
        print(
            "\n| policy | ranker minus best heuristic (slice all) | ΔRecall@10 | ΔMRR "
            "| ΔHits@50 | Δuser coverage | Δcatalogue coverage@10 | better on every metric "
            "(incl. catalogue coverage) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for g in ranker_margins(rows):
            dcat = (
                by[(g.policy, "learned_ranker", "all")].catalogue_coverage_at_10
                - by[(g.policy, g.baseline, "all")].catalogue_coverage_at_10
            )
            on_all = g.beats_on_every_metric and dcat > 0
            print(
                f"| {g.policy} | {g.baseline} | {g.recall_at_10:+.4f} | {g.mrr:+.4f} "
                f"| {g.hits_at_50:+.4f} | {g.coverage:+.4f} | {dcat:+.4f} "
                f"| {'yes' if on_all else 'no'} |"
            )
        print(
            "\n| policy | catalogue coverage@10, slice all | "
            + " | ".join(dict.fromkeys(r.method for r in rows))
            + " | best heuristic on it |"
        )
        methods = list(dict.fromkeys(r.method for r in rows))
        print("|---|---|" + "---|" * len(methods) + "---|")
        for policy in dict.fromkeys(r.policy for r in rows):
            vals = {m: by[(policy, m, "all")].catalogue_coverage_at_10 for m in methods}
            best_h = max((m for m in methods if m != "learned_ranker"), key=lambda m: vals[m])
            cells = " | ".join(f"{vals[m]:.4f}" for m in methods)
            print(f"| {policy} | | {cells} | {best_h} |")
        print(
            "\n| dataset | policy | seed | ranker | beta | strength | ranker minus best "
            "heuristic, paired bootstrap over users (2,000 resamples, 95 %) | ΔRecall@10 [CI] "
            "| ΔMRR [CI] | ΔHits@50 [CI] | Δcatalogue coverage@10 | all four point estimates "
            "> 0 | all CIs > 0 |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for g in ranker_margins(rows):
            ivs = paired_bootstrap(
                kept[(g.policy, "learned_ranker")], kept[(g.policy, g.baseline)], split.test
            )
            cells = " | ".join(f"{i.delta:+.4f} [{i.low:+.4f}, {i.high:+.4f}]" for i in ivs)
            sig = "yes" if all(i.significant for i in ivs) else "no"
            dcat = g.catalogue_coverage_at_10 or 0.0
            point = "yes" if all(i.delta > 0 for i in ivs) and dcat > 0 else "no"
            mdl = models[g.policy]
            beta = f"{mdl.beta:g} (head {mdl.head})" if mdl.anchor_head else f"{mdl.beta:g}"
            print(
                f"| {split.name} | {g.policy} | {seed} | {ranker} | {beta} "
                f"| {mdl.strength:g} | {g.baseline} | {cells} | {dcat:+.4f} | {point} "
                f"| {sig} |"
            )
        print(
            "\n| policy | validation ("
            + (
                "forward: earlier graph's model on the fitting graph"
                if ranker.startswith("lgbm-fwd")
                else "inside the fitting graph"
            )
            + "): beta -> (Recall@10, MRR, Hits@50)"
            " | anchor (beta 0): Recall@10, MRR, Hits@50, catalogue coverage@10 | strength -> "
            "(Recall@10, MRR, Hits@50, catalogue coverage@10) at the chosen beta |"
        )
        print("|---|---|---|---|")
        for policy, mdl in models.items():
            val = ", ".join(
                f"{b:g}: {tuple(round(x, 4) for x in v)}" for b, v in mdl.validation.items()
            )
            cov = ", ".join(
                f"{st:g}: {tuple(round(x, 4) for x in v)}"
                for st, v in mdl.coverage_validation.items()
            )
            anchor = tuple(round(x, 4) for x in mdl.anchor_validation)
            print(f"| {policy} | {val} | {anchor if cov else '-'} | {cov or '-'} |")
        heads = {p: m for p, m in models.items() if m.anchor_head}
        if heads:
            print(
                "\n| policy | chosen (head, beta) | forward validation, gains over RA x 1e4 "
                "(Recall@10 / MRR / Hits@50) per (head, beta) |"
            )
            print("|---|---|---|")
            for policy, mdl in heads.items():
                base = mdl.anchor_validation[:3]  # RA's own lists (head 0, beta 0)
                cells = ", ".join(
                    f"({h}, {b:g}): "
                    + "/".join(f"{(x - y) * 1e4:+.0f}" for x, y in zip(v, base, strict=True))
                    for (h, b), v in sorted(mdl.head_validation.items())
                    if b > 0.0
                )
                print(f"| {policy} | ({mdl.head}, {mdl.beta:g}) | {cells} |")


def shared_hashing(rounds: int = 3) -> None:
    """The recommendation stage's picture hashing with and without the scan's hashes (issue 7,
    item 4), interleaved A, B, A, B, ... in one process; medians."""
    import os
    import statistics

    from provguard.job.scan import hash_pictures
    from provguard.sandbox import build_platform

    el = read_edge_list(EGO)
    platform = build_platform(el, seed=7)
    n = int(el.nodes.max()) + 1
    t0 = time.perf_counter()
    hashes = hash_pictures(platform.pictures)
    t_scan = time.perf_counter() - t0
    own: list[float] = []
    shared: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        a = profiles_from_tables(n, platform.subjects, platform.app_profiles, platform.pictures)
        own.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = profiles_from_tables(
            n, platform.subjects, platform.app_profiles, None, picture_hashes=hashes
        )
        shared.append(time.perf_counter() - t0)
    agree = int((a.has_hash == b.has_hash).sum())
    same = int((a.hashes == b.hashes).all(axis=1)[a.has_hash & b.has_hash].sum())
    print(
        f"\n| ego-Facebook sandbox, {platform.pictures.num_rows:,} pictures, "
        f"{int(b.has_hash.sum()):,} douyin profiles with a picture (load {os.getloadavg()[0]:.1f}) "
        "| median s |"
    )
    print("|---|---|")
    print(f"| scan stage: hash_pictures (decode, centre square, 8 dihedral PDQ) | {t_scan:.2f} |")
    print(
        f"| recommendation profiles, own PDQ pass (before; {rounds} runs) "
        f"| {statistics.median(own):.2f} |"
    )
    print(
        f"| recommendation profiles from the scan's hashes (after; {rounds} runs) "
        f"| {statistics.median(shared):.2f} |"
    )
    print(
        f"| saved per run | {statistics.median(own) - statistics.median(shared):.2f} "
        f"({agree}/{n} users agree on having a hash; {same} hashes bit-identical: the scan "
        "hashes the normalised centre square) |"
    )


def spark() -> None:
    from provguard.adapters.spark_session import (
        local_spark_session,
        spark_top_k,
        spark_unavailable_reason,
    )

    reason = spark_unavailable_reason()
    if reason:
        print(f"\nSpark skipped: {reason}")
        return
    session = local_spark_session("provguard-bench")
    session.sparkContext.setLogLevel("ERROR")
    print(
        "\n| Spark local[2] vs scipy, top-20 | method | Spark s | scipy s | rows agree "
        "| identical order | max Δ |"
    )
    print("|---|---|---|---|---|---|---|")
    from provguard.recommend.signals import common_neighbours

    fns = {
        "resource_allocation": resource_allocation,
        "adamic_adar": adamic_adar,
        "common_neighbours": common_neighbours,
    }
    for path in (MSG, EGO):
        el = read_edge_list(path)
        s, d = undirected_simple_edges(el)
        n = int(el.nodes.max()) + 1
        a = adjacency(s, d, n)
        for method in ("resource_allocation", "adamic_adar", "common_neighbours"):
            t0 = time.perf_counter()
            ids, sc = spark_top_k(session, s, d, n, method=method, k=20)
            t_spark = time.perf_counter() - t0
            t0 = time.perf_counter()
            want = top_k_rows(fns[method](a).scores, 20)
            t_sp = time.perf_counter() - t0
            ag = top_k_agreement(want[0], want[1], ids, sc)
            print(
                f"| {path.stem} | {method} | {t_spark:.1f} | {t_sp:.3f} | "
                f"{ag.rows - len(ag.bad_rows)}/{ag.rows} | {ag.exact_rows} | "
                f"{ag.max_abs_score_diff:.1e} |"
            )
    session.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--skip-spark", action="store_true")
    p.add_argument("--skip-compliance", action="store_true")
    p.add_argument("--skip-hashing", action="store_true", help="skip the shared-hashes table")
    p.add_argument("--skip-speed", action="store_true", help="skip the networkx and RA tables")
    p.add_argument("--seeds", default="7,0", help="split/ranker seeds of the compliance tables")
    p.add_argument("--ranker", default="logistic", choices=RANKERS)
    p.add_argument("--datasets", default="ego,msg", help="ego and/or msg")
    p.add_argument("--policies", default="none,injunction,strict")
    args = p.parse_args()
    if not args.skip_speed:
        speed()
        ra_quality()
    if not args.skip_compliance:
        for seed in (int(x) for x in args.seeds.split(",")):
            compliance(
                seed,
                args.ranker,
                tuple(args.datasets.split(",")),
                tuple(args.policies.split(",")),
            )
    if not args.skip_hashing:
        shared_hashing()
    if not args.skip_spark:
        spark()


if __name__ == "__main__":
    main()
