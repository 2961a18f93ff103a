"""The sentences of report section 5 (friend recommendation), computed from the model's values
so that a court reader cannot misread what was stored, what was measured on how many queries,
and why the cost of compliance is what it is.

Every function takes :mod:`provguard.report.model` values and returns plain text (the template
escapes it). Numbers use thousands separators; shares are given with the count they rest on.
"""

from __future__ import annotations

from provguard.report.model import (
    MIN_QUERIES,
    ComplianceMetricRow,
    MetricRow,
    RecommendationSummary,
    StoredCards,
)

__all__ = [
    "NIL_SHARE",
    "cost_sentence",
    "headline_caption",
    "identical_sentences",
    "interval_text",
    "net_change_text",
    "ranker_weights_sentence",
    "stored_sentence",
    "thin_rows",
    "withheld_inferred_sentence",
]

NIL_SHARE = 0.01
"""A change of quality is called nil when the net number of queries (Recall) and of querying
users (Hits) whose outcome changed is at most this share of them (1 %)."""


def _n(value: int) -> str:
    return f"{value:,}"


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{_n(count)} {one if count == 1 else (many or one + 's')}"


def stored_sentence(stored: StoredCards | None, k: int) -> str:
    """What ``recommendations.parquet`` holds and what it does not (with ``k`` per user).

    E.g. "data/recommendations.parquet holds 40,384 recommendations for 4,039 of 4,039 users,
    computed once, with the policy ... 1 user got fewer than 10: ... (user 3980: 4 cards,
    4 candidates). Recommendations without the policy are not stored: ..."."""
    not_stored = (
        "Recommendations without the policy are not stored: they were computed only for the "
        "evaluation below, on held-out friendships, to measure what compliance costs."
    )
    if stored is None:
        return (
            "This run's evidence does not record how many recommendations were stored. "
            + not_stored
        )
    head = (
        f"{stored.path} holds {_plural(stored.rows, 'recommendation')} for "
        f"{_n(stored.viewers)} of {_plural(stored.users, 'user')}, computed once, with the "
        f"policy (the learned ranker under the policy, on the whole follow graph, at most "
        f"{stored.k} per user)."
    )
    lacking = stored.short_viewers + stored.empty_viewers
    if lacking == 0:
        return f"{head} Every user got {stored.k}. {not_stored}"
    parts = []
    if stored.short_viewers:
        parts.append(f"{_plural(stored.short_viewers, 'user')} got fewer than {stored.k}")
    if stored.empty_viewers:
        parts.append(f"{_plural(stored.empty_viewers, 'user')} got none")
    examples = "; ".join(
        f"user {e.viewer}: {_plural(e.cards, 'recommendation')}"
        + (f", {_plural(e.pool, 'candidate')}" if e.pool is not None else "")
        for e in stored.examples
    )
    pool = (
        "the candidates are the people two steps away in the follow graph who are not already "
        "friends"
    )
    if stored.pool_bound == lacking:
        who = "this user has" if lacking == 1 else "each of them has"
        why = f"{who} fewer than {stored.k} candidates and is shown every one ({pool})"
    else:
        why = (
            f"{_n(stored.pool_bound)} of them have fewer than {stored.k} candidates ({pool}); "
            f"for the other {_n(lacking - stored.pool_bound)} the ranker returned fewer than "
            "their candidates"
        )
    more = " (first 10)" if lacking > len(stored.examples) else ""
    label = "Example" if len(stored.examples) == 1 else "Examples"
    return f"{head} {' and '.join(parts)}: {why}. {label}{more}: {examples}. {not_stored}"


def _on_cards(count: int, people: int | None, noun: str) -> str:
    """``count`` card values of kind ``noun`` and, when recorded, the distinct people they
    belong to: "3,545 card handles (332 distinct people's handles)"."""
    head = f"{_n(count)} card {noun if count == 1 else noun + 's'}"
    if people is None or count == 0:
        return head
    if people == 1:
        return f"{head} (1 person's {noun})"
    return f"{head} ({_n(people)} distinct people's {noun}s)"


def withheld_inferred_sentence(stored: StoredCards | None) -> str:
    """How many card values were withheld because the profile-match scan found them to be
    copies of the candidate's WeChat/QQ value (an *inferred* origin, beside the recorded label),
    or ``""`` when the evidence does not record it (an older run).

    A card value is one candidate's handle or picture on one viewer's card, so one person's
    copied handle counts once per card it is on; the sentence gives both numbers when the run
    recorded the people (:class:`StoredCards` ``*_people``; an older run: the card count only).
    E.g. (the demo) "The profile-match scan (section 4) flags 3,545 card handles (332 distinct
    people's handles) and 1,668 card pictures (159 distinct people's pictures) as copies ...:
    3,545 card handles (332 distinct people's handles) and 1,668 card pictures (159 distinct
    people's pictures) were withheld (the placeholder shown instead) because of the inferred
    origin alone."."""
    if stored is None:
        return ""
    handles, pictures = stored.inferred_handles, stored.inferred_pictures
    w_handles, w_pictures = stored.withheld_inferred_handles, stored.withheld_inferred_pictures
    if handles is None or pictures is None or w_handles is None or w_pictures is None:
        return ""
    if handles == 0 and pictures == 0:
        return (
            "The profile-match scan (section 4) flags none of the handles or pictures on these "
            "cards as a copy of the candidate's WeChat/QQ value beyond its recorded origin."
        )
    flagged = (
        _on_cards(handles, stored.inferred_handle_people, "handle")
        + " and "
        + _on_cards(pictures, stored.inferred_picture_people, "picture")
    )
    withheld = (
        _on_cards(w_handles, stored.withheld_inferred_handle_people, "handle")
        + " and "
        + _on_cards(w_pictures, stored.withheld_inferred_picture_people, "picture")
    )
    return (
        f"The profile-match scan (section 4) flags {flagged} as copies of the "
        "candidate's WeChat/QQ value that the app did not record as coming from there (e.g. "
        "re-typed or re-uploaded, recorded as the user's own input). Such a copy originates at "
        "WeChat/QQ, so each is decided with that inferred origin beside its recorded one: "
        f"{withheld} were withheld (the placeholder shown instead) because of the inferred "
        "origin alone. A card value is one candidate's handle or picture on one viewer's card: "
        "a person recommended to many viewers counts once per card. "
        "The cards table keeps recorded and inferred origins apart "
        "(handle_inferred_origins, avatar_inferred_origins)."
    )


def headline_caption(r: RecommendationSummary) -> str:
    """The caption of the with/without table: which ranker, on how many sampled users,
    querying users and queries."""
    row = r.row("none")
    base = "The learned ranker's quality without and with the policy, on held-out friendships"
    if row is None:
        return base + "."
    sampled = (
        f"{_n(r.eval_users)} of {_n(r.users)} users sampled"
        if r.eval_users is not None and r.eval_users < r.users
        else f"all {_n(r.users)} users"
    )
    return (
        f"{base}: {sampled}; {_n(row.users)} of them have a held-out friend and ask "
        f"{_plural(row.queries, 'query', 'queries')} (one per held-out friend). Change = the "
        "difference of the two rounded values shown; net = the number of queries or users "
        "whose outcome the policy changed, gains minus losses."
    )


def net_change_text(m: MetricRow) -> str:
    """``"+2 of 4,435 queries"`` (or ``"—"`` for a mean such as MRR)."""
    net = m.net_change
    if net is None or m.denominator is None or m.unit is None:
        return "—"
    return f"{net:+,d} of {_n(m.denominator)} {m.unit}"


def _metric(r: RecommendationSummary, prefix: str) -> MetricRow | None:
    return next((m for m in r.metrics if m.name.lower().startswith(prefix)), None)


def cost_sentence(r: RecommendationSummary) -> str:
    """Why the cost of compliance is what it is: the forbidden signals the policy removed,
    how many candidate scores they had, and the net number of queries / users that changed."""
    recall, hits = _metric(r, "recall"), _metric(r, "hits")
    removed = r.removed_signals
    if not removed:
        return (
            "The policy removed no signal the learned ranker uses, so both columns measure the "
            "same ranker."
        )
    rules = ", ".join(sorted({s.rule_id for s in removed}))
    scores = sum(s.count for s in removed)
    signals = ", ".join(f"{s.signal} ({_n(s.count)})" for s in removed)
    out = (
        f"The policy removed {_plural(len(removed), 'signal')} from the learned ranker (rule "
        f"{rules}): {signals} -- {_plural(scores, 'candidate score')} in all on the whole "
        "graph, each computed from values whose origin the rule forbids for this purpose."
    )
    counted = [m for m in (recall, hits) if m is not None and m.net_change is not None]
    if not counted:
        return out
    changes = " and ".join(
        f"{m.name}{' changed' if i == 0 else ''} by a net {net_change_text(m)}"
        for i, m in enumerate(counted)
    )
    out += f" Without them, {changes}."
    nil = all(
        m.denominator is not None and abs(m.net_change or 0) <= NIL_SHARE * m.denominator
        for m in counted
    )
    if nil:
        out += (
            f" That is at most {NIL_SHARE:.0%} of them: the cost of compliance is nil here, "
            "because on this graph those signals tell the ranker almost nothing the friendship "
            "structure does not already tell it."
        )
    elif recall is not None and recall.delta < 0:
        out += " That is the cost of compliance in recommendation quality."
    with_ci = [m for m in r.metrics if m.interval is not None]
    if with_ci:
        spans = "; ".join(f"{m.name} {interval_text(m)}" for m in with_ci)
        zero = all(m.interval is not None and m.interval[0] <= 0 <= m.interval[1] for m in with_ci)
        out += (
            f" 95 % paired-bootstrap intervals of the change over the evaluated users: {spans}"
            + (" -- every one contains 0, so no change is shown beyond noise." if zero else ".")
        )
    else:
        out += (
            " No confidence interval is given: the run's evidence keeps each metric's total,"
            " not each query's outcome."
        )
    return out


def interval_text(m: MetricRow) -> str:
    """``"[-0.0012, +0.0021]"``: the 95 % interval of the change, or ``"—"`` if not computed."""
    if m.interval is None:
        return "—"
    return f"[{m.interval[0]:+.4f}, {m.interval[1]:+.4f}]"


POLICY_ORDER = ("none", "injunction", "strict")
"""The cost-of-compliance table's policies, in the order the report lists them."""


def ranker_weights_sentence(r: RecommendationSummary) -> str:
    """The learned ranker's fusion weight per policy in one sentence, e.g. ``"Fusion weight
    of the learned ranker, chosen on validation users under each policy: none 0.8,
    injunction 0.8, strict 0 (0 = resource allocation's ranking alone, 1 = the model's
    alone)."``; ``""`` when the run recorded none (an older run's evidence).

    The weight is ``beta`` of the anchored rank fusion of :mod:`provguard.recommend.ranker`
    (a weighted geometric mean of the model's and resource allocation's per-user ranks)."""
    if not r.ranker_weights:
        return ""
    known = [p for p in POLICY_ORDER if p in r.ranker_weights]
    order = known + sorted(p for p in r.ranker_weights if p not in POLICY_ORDER)
    listed = ", ".join(f"{p} {r.ranker_weights[p]:g}" for p in order)
    return (
        "Fusion weight of the learned ranker, chosen on validation users under each policy: "
        f"{listed} (0 = resource allocation's ranking alone, 1 = the model's alone)."
    )


def identical_sentences(r: RecommendationSummary) -> list[str]:
    """One sentence per policy where the learned ranker's rows equal a heuristic's on every
    metric (its fusion weight, chosen on validation users, kept the anchor alone)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for same in r.identical_rows():
        groups.setdefault((same.policy, same.method), []).append(same.slice)
    out = []
    for (policy, method), slices in groups.items():
        rows = (
            f"row (slice {slices[0]}) equals"
            if len(slices) == 1
            else f"rows (slices {', '.join(slices)}) equal"
        )
        weight = r.ranker_weights.get(policy)
        chosen = (
            "identical rows indicate (the weight itself is not recorded in this run's "
            "evidence; docs/recommendation.md)."
            if weight is None
            else f"happened here: the weight chosen under {policy} is {weight:g}"
            " (docs/recommendation.md)."
            if weight == 0
            else f"is not what happened here (weight {weight:g}): the two rankings agree on"
            " every evaluated query."
        )
        out.append(
            f"Under {policy}, the learned ranker's {rows} {method}'s on every metric. The "
            f"ranker blends its model's ranking with {method}'s by a weight chosen on "
            f"validation users; a weight of 0 keeps {method}'s ranking exactly, which {chosen}"
        )
    return out


def thin_rows(rows: tuple[ComplianceMetricRow, ...]) -> int:
    """How many rows rest on fewer than :data:`MIN_QUERIES` queries (flagged in the table)."""
    return sum(1 for c in rows if c.queries < MIN_QUERIES)
