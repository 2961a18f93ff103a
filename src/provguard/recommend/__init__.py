"""Friend recommendation with policy-gated signals, and its offline evaluation.

Pure: numpy arrays and scipy sparse matrices in and out.
"""

from provguard.recommend.evaluate import coverage, holdout_split, mrr, recall_at_k
from provguard.recommend.graph import adjacency, degrees, edges
from provguard.recommend.rank import (
    GateResult,
    Recommendations,
    allow_all,
    recommend,
    top_k_rows,
)
from provguard.recommend.signals import (
    Signal,
    common_neighbours,
    handle_similarity,
    surname_key,
    two_hop_candidates,
)

__all__ = [
    "GateResult",
    "Recommendations",
    "Signal",
    "adjacency",
    "allow_all",
    "common_neighbours",
    "coverage",
    "degrees",
    "edges",
    "handle_similarity",
    "holdout_split",
    "mrr",
    "recall_at_k",
    "recommend",
    "surname_key",
    "top_k_rows",
    "two_hop_candidates",
]
