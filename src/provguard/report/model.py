"""The compliance report's view model: plain, validated values the main job fills in.

Every model is an immutable pydantic v2 model (``frozen=True``, unknown fields rejected,
counts ``>= 0``); sequences are tuples (lists are accepted and converted). Sections that a run
did not produce are ``None`` and the report says so. Dates are calendar dates; ``datetime`` fields
must be timezone-aware. Nothing here computes anything -- the aggregation for tables and charts
lives in :mod:`provguard.report.render`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MIN_QUERIES",
    "AuditSummary",
    "CampaignPoint",
    "CampaignProgress",
    "ChainCheckView",
    "CheckpointView",
    "ComplianceMetricRow",
    "DataSource",
    "DecisionCount",
    "DiscrepancyView",
    "Effect",
    "ExchangeOutcome",
    "IdenticalRow",
    "InstrumentView",
    "MetricRow",
    "PolicyRecordView",
    "RankerMargin",
    "RecommendationSummary",
    "RemovedSignal",
    "ReportModel",
    "RevocationRow",
    "RevocationSummary",
    "RuleView",
    "ScanRow",
    "ShortList",
    "SignInRow",
    "SignInSummary",
    "StoredCards",
    "TableCheckView",
    "TimeBucket",
    "TokenExchangeRow",
    "TransferSample",
    "TransferSummary",
]

Effect = Literal["permit", "deny", "not_applicable"]
Count = Field(ge=0)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleView(_Frozen):
    """One rule of an instrument: ``rule_id``, ``effect`` (``deny``/``permit``), a one-line
    ``summary`` in plain words, the author's description (e.g. "Douyin may not use WeChat/QQ
    handles or pictures to recommend friends"), and ``scope``: the machine scope that was
    enforced (:meth:`provguard.policy.model.Rule.summary`, e.g. ``deny display/use; purposes:
    social.friend_recommendation; apps: douyin; data: profile.avatar, profile.handle; origins:
    apple``). The report shows both, the scope first: a description may name origins or
    providers the scope does not include (fresh user 10, H4). ``scope`` ``None``: not recorded
    (a model built by hand, or a log from before runs chained their policy)."""

    rule_id: str
    effect: Literal["permit", "deny"]
    summary: str
    scope: str | None = None


class PolicyRecordView(_Frozen):
    """The policy a run enforced, as its ``job.policy`` audit entry records it: ``digest`` the
    SHA-256 (64 hex) of the policy files as query entries compute it
    (:func:`provguard.cli.query.policy_digest`), ``files`` (path relative to the policy folder
    → SHA-256), ``seq`` the entry's number in the audit log (``None``: the job's report before
    the entry's number was known). ``recorded`` False: the log has no such entry (a run from
    before this record existed); ``digest`` is then empty."""

    recorded: bool = True
    digest: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    files: dict[str, str] = Field(default_factory=dict)
    seq: int | None = Field(default=None, ge=1)

    @property
    def short(self) -> str:
        """The digest's first 12 hex digits."""
        return self.digest[:12]


class InstrumentView(_Frozen):
    """A legal instrument the policy enforces.

    ``kind`` e.g. ``court_order.preliminary_injunction``; ``title`` its short name (headings);
    ``citation`` the case number or reference as a court would cite it (shown below the
    title); ``effective_until`` free text (a date, or an event such as "the final judgment");
    ``in_force`` whether it applied at the report's ``as_of`` date; ``None`` when the status
    is withheld because the control store's ``instrument_events`` disagree with the audit chain
    (``effective_until`` then holds the PG340 statement, :class:`ChainCheckView`).
    """

    id: str
    kind: str
    issuer: str
    citation: str
    title: str = ""
    issued: date | None = None
    effective_from: date | None = None
    effective_until: str = "until further order"
    in_force: bool | None
    rules: tuple[RuleView, ...] = ()


class DataSource(_Frozen):
    """Where the data behind the report came from: ``graph_name`` (e.g. ``ego-Facebook``),
    ``citation`` (the dataset's citation string), optional ``description``, node/edge counts."""

    graph_name: str
    citation: str
    description: str = ""
    nodes: int | None = Field(default=None, ge=0)
    edges: int | None = Field(default=None, ge=0)


class DecisionCount(_Frozen):
    """``count`` decisions with this (determining ``rule_id`` or ``None``, ``app``, ``purpose``,
    ``action``, ``effect``). Rows should be unique on the five keys; duplicates are summed."""

    rule_id: str | None
    app: str
    purpose: str
    action: str
    effect: Effect
    count: int = Count


class TransferSample(_Frozen):
    """One onward transfer of a login grant: ``transfer_id``, the data ``subject`` (display id or
    handle), ``first_used_at`` (when the recipient first used the grant; ``None`` = never),
    ``decision`` and the determining ``rule`` (``None`` when no rule applied)."""

    transfer_id: str
    subject: str
    first_used_at: AwareDatetime | None
    decision: Effect
    rule: str | None = None
    recipient: str = ""


class TransferSummary(_Frozen):
    """Counts of grant transfers by outcome, and a small ``sample`` table.

    ``total`` must be at least ``denied + grandfathered_permitted + not_applicable``; the rest are
    "permitted for another reason" (shown as such).
    """

    total: int = Count
    denied: int = Count
    grandfathered_permitted: int = Count
    not_applicable: int = Count
    sample: tuple[TransferSample, ...] = ()

    @model_validator(mode="after")
    def _parts_fit_total(self) -> TransferSummary:
        parts = self.denied + self.grandfathered_permitted + self.not_applicable
        if parts > self.total:
            raise ValueError(f"transfer counts add up to {parts}, more than total {self.total}")
        return self

    @property
    def other_permitted(self) -> int:
        """Transfers permitted for a reason other than grandfathering."""
        return self.total - self.denied - self.grandfathered_permitted - self.not_applicable


class ScanRow(_Frozen):
    """The profile-match scan of one client ``app``: profiles scanned and profiles whose handle
    matched the provider's exactly / after normalisation (width, script, decorations), whose
    picture matched (perceptual hash), and either. ``truth_*`` are the sandbox's ground-truth
    counts of profiles that really copied the handle / picture / either (``None`` on real
    data, where no ground truth exists)."""

    app: str
    profiles_scanned: int = Count
    handle_exact: int = Count
    handle_normalised: int = Count
    picture: int = Count
    either: int = Count
    truth_handle: int | None = Field(default=None, ge=0)
    truth_picture: int | None = Field(default=None, ge=0)
    truth_either: int | None = Field(default=None, ge=0)


MIN_QUERIES = 100
"""Rows of the cost-of-compliance table measured on fewer queries than this are flagged as too
few to compare methods on (the report says so next to the row)."""


class MetricRow(_Frozen):
    """A recommendation-quality metric (e.g. ``Recall@10``) without and with the policy, both in
    [0, 1]. When the metric is a share of a counted set, ``unit`` names it (``queries``,
    ``querying users``, ``users``) and ``denominator`` is its size, so the change can be read
    as a net number of queries / users (:attr:`net_change`); ``None`` for a mean such as MRR."""

    name: str
    value_without: float
    value_with: float
    unit: str | None = None
    denominator: int | None = Field(default=None, ge=0)
    #: 95 % paired-bootstrap interval ``(low, high)`` of ``value_with - value_without`` over the
    #: evaluated users (``provguard.recommend.protocol.paired_bootstrap``); None: not computed
    interval: tuple[float, float] | None = None

    @property
    def delta(self) -> float:
        """``value_with - value_without`` (negative: the policy cost quality)."""
        return self.value_with - self.value_without

    def rounded_delta(self, digits: int = 4) -> float:
        """The change computed from the two values as shown (rounded to ``digits``), so the
        Change column agrees with the columns beside it."""
        return round(round(self.value_with, digits) - round(self.value_without, digits), digits)

    @property
    def net_change(self) -> int | None:
        """Net number of ``unit`` whose outcome changed (``delta * denominator``, rounded:
        e.g. +2 queries newly hit in the top 10), or ``None`` without a unit."""
        if self.unit is None or self.denominator is None:
            return None
        return round(self.delta * self.denominator)


class RemovedSignal(_Frozen):
    """A recommendation signal the policy removed (``signal``, e.g. ``handle_similarity``),
    how many candidate scores it touched (``count``) and the deciding ``rule_id``."""

    signal: str
    count: int = Count
    rule_id: str


class ComplianceMetricRow(_Frozen):
    """One row of the cost-of-compliance table (docs/recommendation.md): a policy bundle
    (``none``, ``injunction``, ``strict``), a method (a heuristic or ``learned_ranker``), a
    query slice (``all``, ``cold_start``), the metrics in [0, 1] (None: empty slice; ``coverage``
    = share of users with a recommendation, ``catalogue_coverage_at_10`` = share of all users
    that appear in some top-10 list, Ge et al., RecSys 2010), the ``queries`` / querying
    ``users`` counted and how many signals the bundle removed."""

    policy: str
    method: str
    slice: str
    recall_at_10: float | None = None
    mrr: float | None = None
    hits_at_50: float | None = None
    coverage: float | None = None
    catalogue_coverage_at_10: float | None = None
    queries: int = Field(default=0, ge=0)
    users: int = Field(default=0, ge=0)
    signals_removed: int = Field(default=0, ge=0)


class RankerMargin(_Frozen):
    """Learned ranker minus the best single heuristic (``baseline``) under one ``policy``, per
    metric (positive: the ranker is better); ``forbidden_removed`` signals the policy removed
    from the ranker."""

    policy: str
    baseline: str
    recall_at_10: float
    mrr: float
    hits_at_50: float
    coverage: float
    forbidden_removed: int = Field(default=0, ge=0)
    catalogue_coverage_at_10: float | None = None

    @property
    def beats_on_every_metric(self) -> bool:
        """Strictly better on Recall@10, MRR, Hits@50 and catalogue coverage@10 (when known);
        user coverage not worse (it is equal by construction: the same candidate pool)."""
        catalogue = self.catalogue_coverage_at_10
        return (
            self.recall_at_10 > 0
            and self.mrr > 0
            and self.hits_at_50 > 0
            and self.coverage >= 0
            and (catalogue is None or catalogue > 0)
        )


class ShortList(_Frozen):
    """A user whose stored list is shorter than k: ``viewer`` got ``cards`` recommendations;
    ``pool`` is the size of their candidate pool (people two steps away in the follow graph
    who are not already friends; ``None``: not computed)."""

    viewer: int = Count
    cards: int = Count
    pool: int | None = Field(default=None, ge=0)


class StoredCards(_Frozen):
    """What the run stored of its recommendations (``path``, e.g.
    ``data/recommendations.parquet``): ``rows`` cards for ``viewers`` of ``users`` users, at
    most ``k`` each, computed once, under the policy. ``short_viewers`` users got 1..k-1 cards
    and ``empty_viewers`` none; ``pool_bound`` of those ``short_viewers + empty_viewers`` have
    a candidate pool smaller than k (every candidate they have is shown); ``examples`` lists
    up to 10 of them.

    Inferred origins (fresh-user finding F1): ``inferred_handles`` / ``inferred_pictures``
    card values (a candidate's handle / picture on a card) the profile-match scan flags as
    copies of the candidate's WeChat/QQ value beyond their recorded label, and of them
    ``withheld_inferred_handles`` / ``withheld_inferred_pictures`` withheld *only because* of
    that inferred origin (their recorded label alone is allowed). ``None``: not recorded (an
    evidence file of an older run). These count *cards*: one person's copied handle is on the
    card of every viewer it is recommended to. ``inferred_handle_people`` /
    ``inferred_picture_people`` / ``withheld_inferred_handle_people`` /
    ``withheld_inferred_picture_people`` count the distinct people (candidates) whose handle /
    picture those cards show (``None``: not recorded)."""

    path: str
    rows: int = Count
    viewers: int = Count
    users: int = Count
    k: int = Count
    short_viewers: int = Count
    empty_viewers: int = Count
    pool_bound: int = Count
    examples: tuple[ShortList, ...] = ()
    inferred_handles: int | None = Field(default=None, ge=0)
    inferred_pictures: int | None = Field(default=None, ge=0)
    withheld_inferred_handles: int | None = Field(default=None, ge=0)
    withheld_inferred_pictures: int | None = Field(default=None, ge=0)
    inferred_handle_people: int | None = Field(default=None, ge=0)
    inferred_picture_people: int | None = Field(default=None, ge=0)
    withheld_inferred_handle_people: int | None = Field(default=None, ge=0)
    withheld_inferred_picture_people: int | None = Field(default=None, ge=0)


class IdenticalRow(_Frozen):
    """Under ``policy``, on ``slice``, the learned ranker's row equals ``method``'s on every
    metric."""

    policy: str
    slice: str
    method: str


class RecommendationSummary(_Frozen):
    """Friend recommendation with and without the policy: ``users`` of the graph,
    ``recs_per_user`` (k), the learned ranker's quality ``metrics`` and the
    ``removed_signals``; the cost-of-compliance table (``compliance``), the ranker's
    ``margins`` over the best heuristic per policy, and the evaluation ``protocol`` in one
    paragraph (the table's caption); ``ranker_weights`` the ranker's fusion weight per policy.
    ``stored``: what the run kept of its recommendations
    (``None``: not recorded, e.g. an evidence file of an older run); ``eval_users``: users
    whose queries were evaluated (a seeded sample, or all; ``None``: not recorded)."""

    users: int = Count
    recs_per_user: int = Count
    metrics: tuple[MetricRow, ...] = ()
    removed_signals: tuple[RemovedSignal, ...] = ()
    compliance: tuple[ComplianceMetricRow, ...] = ()
    margins: tuple[RankerMargin, ...] = ()
    protocol: str = ""
    stored: StoredCards | None = None
    eval_users: int | None = Field(default=None, ge=0)
    #: policy -> the learned ranker's fusion weight chosen on validation users (0: resource
    #: allocation's ranking alone); empty: not recorded (an older run's evidence)
    ranker_weights: dict[str, float] = Field(default_factory=dict)

    def row(
        self, policy: str, method: str = "learned_ranker", slice_name: str = "all"
    ) -> ComplianceMetricRow | None:
        """The cost-of-compliance row of (``policy``, ``method``, ``slice_name``), if any."""
        for r in self.compliance:
            if (r.policy, r.method, r.slice) == (policy, method, slice_name):
                return r
        return None

    def identical_rows(self) -> tuple[IdenticalRow, ...]:
        """Where the learned ranker's row equals a heuristic's on every metric (e.g. the
        ranker's validated fusion weight chose its anchor, resource allocation, alone)."""
        out: list[IdenticalRow] = []
        keys = ("recall_at_10", "mrr", "hits_at_50", "coverage", "catalogue_coverage_at_10")
        for lr in self.compliance:
            if lr.method != "learned_ranker" or lr.recall_at_10 is None:
                continue
            for h in self.compliance:
                if (h.policy, h.slice) != (lr.policy, lr.slice) or h.method == lr.method:
                    continue
                if all(getattr(h, k) == getattr(lr, k) for k in keys):
                    out.append(IdenticalRow(policy=lr.policy, slice=lr.slice, method=h.method))
                    break
        return tuple(out)


class CheckpointView(_Frozen):
    """An Ed25519-signed checkpoint of the audit chain (:mod:`provguard.audit.signing`):
    ``count`` entries with head ``head_hash``, signed at ``signed_at`` by key ``key_id``;
    ``signature_ok`` whether its Ed25519 signature (RFC 8032) verified with the public key in
    ``key_file`` (``None``: not checked -- no public key was given or found beside the log, or
    the key found is another one, ``public_key_id``); ``key_file`` names that key file
    (``"audit.pub"`` when found beside the log, else the path given with ``--public-key``);
    ``public_key_id`` the key id of that file's key; ``head_in_log`` whether the log still
    holds ``count`` entries with entry #``count`` hashing to ``head_hash`` (``False``: the log was
    truncated or rewritten after signing; ``None``: not compared)."""

    count: int = Count
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    signed_at: AwareDatetime
    key_id: str
    signature_ok: bool | None = None
    key_file: str | None = None
    public_key_id: str | None = None
    head_in_log: bool | None = None


class TimeBucket(_Frozen):
    """Decisions recorded in the audit log during ``[start, start + seconds)`` (audit time,
    UTC), by effect."""

    start: AwareDatetime
    seconds: int = Field(ge=1)
    permit: int = Count
    deny: int = Count
    not_applicable: int = Count


class RevocationRow(_Frozen):
    """One revocation job of the grant registry (:mod:`provguard.grants.revocation`): the grant
    it revokes, why and from where, when it was requested, the purge deadline, its ``state``
    (``open`` / ``quarantined`` / ``purged``), when it completed, and rows purged per kind
    (``tokens``, ``values``, ``derived``) against those expected at quarantine."""

    job_id: str
    grant_id: str
    reason: str
    source: str
    requested_at: AwareDatetime
    purge_by: AwareDatetime
    state: str
    completed_at: AwareDatetime | None = None
    expected: dict[str, int] = Field(default_factory=dict)
    purged: dict[str, int] = Field(default_factory=dict)

    @property
    def on_time(self) -> bool | None:
        """Purged by the deadline (``None`` while not purged)."""
        if self.completed_at is None or self.state != "purged":
            return None
        return self.completed_at <= self.purge_by


class RevocationSummary(_Frozen):
    """Revocations and purges as the grant registry holds them at ``as_of_time``: jobs by
    state, purges late or overdue (deadline passed, not purged), rows purged per kind, and the
    jobs themselves (newest first, at most 50 shown; ``jobs`` counts all). ``source``: the
    database file read."""

    jobs: int = Count
    open: int = Count
    quarantined: int = Count
    purged: int = Count
    purged_late: int = Count
    overdue: int = Count
    rows_purged: dict[str, int] = Field(default_factory=dict)
    as_of_time: AwareDatetime
    source: str = ""
    rows: tuple[RevocationRow, ...] = ()


ExchangeOutcome = Literal["denied", "permitted", "grandfathered", "not_applicable"]


class SignInRow(_Frozen):
    """Sign-ins of one client ``app`` through one ``provider`` (OAuth authorization-code flow,
    :mod:`provguard.grants.connector`) as the grant registry holds them: ``started`` login
    sessions (``/login/{provider}/{app}/start``), ``completed`` sign-ins (a grant was recorded),
    ``not_completed`` (started minus completed: abandoned at the platform's consent page,
    expired, or refused at the callback), and the resulting grants by ``status`` now
    (``active``, ``revoked``, ``purged``...)."""

    provider: str
    app: str
    started: int = Count
    completed: int = Count
    statuses: dict[str, int] = Field(default_factory=dict)

    @property
    def not_completed(self) -> int:
        return max(self.started - self.completed, 0)


class TokenExchangeRow(_Frozen):
    """``count`` onward-transfer attempts (RFC 8693 token exchange, or account linking) of the
    grants of ``from_app`` by ``to_app`` with one ``outcome``: ``denied``; ``grandfathered``
    (permitted by the rule's stated exception, e.g. first used before the order);
    ``permitted`` (permitted otherwise); ``not_applicable`` (no rule applied) -- and the
    ``rule_id`` / ``instrument_id`` that decided it (``None`` when no rule applied)."""

    from_app: str
    to_app: str
    kind: str
    outcome: ExchangeOutcome
    rule_id: str | None = None
    instrument_id: str | None = None
    count: int = Count


class SignInSummary(_Frozen):
    """The grant registry's sign-ins (by provider and client app) and token exchanges (by
    outcome and deciding rule), read from ``source`` (the registry's database file or URL,
    password hidden) at ``as_of_time``. This is the *registry* (``grants.db``: real sign-ins
    over HTTP); the control store's sandbox grants (``grt_...``) are section 3's transfers."""

    source: str
    as_of_time: AwareDatetime
    sign_ins: tuple[SignInRow, ...] = ()
    exchanges: tuple[TokenExchangeRow, ...] = ()

    def _count(self, *outcomes: str) -> int:
        return sum(r.count for r in self.exchanges if r.outcome in outcomes)

    @property
    def completed(self) -> int:
        """Sign-ins completed (grants recorded)."""
        return sum(r.completed for r in self.sign_ins)

    @property
    def started(self) -> int:
        return sum(r.started for r in self.sign_ins)

    @property
    def exchanges_total(self) -> int:
        return self._count("denied", "permitted", "grandfathered", "not_applicable")

    @property
    def exchanges_denied(self) -> int:
        return self._count("denied")

    @property
    def exchanges_permitted(self) -> int:
        """All permitted exchanges, grandfathered ones included."""
        return self._count("permitted", "grandfathered")

    @property
    def exchanges_grandfathered(self) -> int:
        return self._count("grandfathered")


class CampaignPoint(_Frozen):
    """Targets per state after one ``operation`` (``start``, ``dispatch``, ``rescan``...) at
    ``at``. ``chained_seq``: the audit entry that records this snapshot (a chained ``campaign
    start / dispatch / rescan`` entry naming it, or the job's ``campaign`` entry of the run that
    wrote it); ``None``: no chain entry backs it (fresh user 11, M3). ``basis``: for a chained
    rescan that did not compare the store's attested profiles with the recorded export, what it
    compared instead (:func:`provguard.campaign.chained.comparison_note`; fresh user 13, H1)."""

    at: AwareDatetime
    operation: str
    counts: dict[str, int]
    chained_seq: int | None = None
    basis: str | None = None


class CampaignProgress(_Frozen):
    """A remediation campaign: the rule and instrument it enforces, targets per state now, and
    its history (counts per state over time, oldest first) from the campaign store."""

    campaign_id: str
    rule_id: str
    instrument_id: str
    created_at: AwareDatetime
    states: dict[str, int]
    history: tuple[CampaignPoint, ...] = ()

    @property
    def targets(self) -> int:
        return sum(self.states.values())


class AuditSummary(_Frozen):
    """The audit log's state when the report was made: ``entries``, ``head_hash`` (64 hex),
    ``verify_ok``, and the verifier's ``reason`` / ``first_bad_seq`` when broken."""

    entries: int = Count
    head_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    verify_ok: bool
    reason: str | None = None
    first_bad_seq: int | None = Field(default=None, ge=1)
    log_path: str = ""
    checkpoint: CheckpointView | None = None


class DiscrepancyView(_Frozen):
    """One disagreement between a control-store ``table`` and the hash-chained audit log: the
    row ``key`` has ``table_value`` in ``field`` where chained entry #``seq`` has
    ``chain_value`` (``None``: absent -- no row, or no entry)."""

    table: str
    key: str
    field: str
    table_value: str | None = None
    chain_value: str | None = None
    seq: int | None = Field(default=None, ge=1)


class TableCheckView(_Frozen):
    """The cross-check of one control-store ``table`` feeding report ``section``: ``rows``
    read, ``entries`` chained entries compared, ``matched`` rows equal to their entry,
    ``discrepancies`` found; ``unchained`` rows that legitimately have no chain record (a
    campaign started with ``provguard campaign start``); ``present`` the store has the table."""

    table: str
    section: str
    rows: int = Count
    entries: int = Count
    matched: int = Count
    discrepancies: int = Count
    unchained: tuple[str, ...] = ()
    present: bool = True


class ChainCheckView(_Frozen):
    """The cross-check of the control store's tables against the audit chain
    (:mod:`provguard.audit.crosscheck`) made before the report was filled: per table, the
    first ``discrepancies`` (at most 20 kept; ``total_discrepancies`` counts all) and what the
    chain does not record (``not_in_chain``: source -> report sections). A section whose table
    disagrees shows the ``code`` (PG340) statement instead of its figures."""

    code: str = "PG340"
    tables: tuple[TableCheckView, ...] = ()
    discrepancies: tuple[DiscrepancyView, ...] = ()
    total_discrepancies: int = Count
    not_in_chain: dict[str, str] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.total_discrepancies == 0

    def failed(self, table: str) -> bool:
        """Whether ``table`` disagrees with the chain."""
        return any(t.table == table and t.discrepancies for t in self.tables)

    def statement(self, table: str) -> str:
        """The sentence printed in place of a withheld section's figures (empty when
        ``table`` agrees)."""
        t = next((t for t in self.tables if t.table == table), None)
        if t is None or not t.discrepancies:
            return ""
        first = [d for d in self.discrepancies if d.table == table][:3]
        examples = "; ".join(
            f"{d.key} {d.field}: table {_value(d.table_value)}, "
            f"{'entry #' + str(d.seq) if d.seq else 'chain'} {_value(d.chain_value)}"
            for d in first
        )
        return (
            f"[{self.code}] Withheld: the {_owner(table)}'s {table} table disagrees with the "
            f"hash-chained audit log in {t.discrepancies:,} place"
            f"{'s' if t.discrepancies != 1 else ''} ({t.matched:,} of {t.rows:,} rows match), "
            f"so its figures are not evidence and are not shown"
            + (f". First: {examples}" if examples else "")
        )


def _owner(table: str) -> str:
    """Where a cross-checked table lives: the grant registry (``grants.db``) or the control
    store."""
    registry = (
        "oauth_grants",
        "revocation_jobs",
        "recipient_first_use",
        "separate_consents",
        "oauth_tokens",
        "transfer_attempts",
    )
    return "grant registry" if table in registry else "control store"


def _value(value: str | None) -> str:
    return "has nothing" if value is None else f"has {value}"


class AuditOffView(_Frozen):
    """A ``service.audit_off`` entry of the chain: the HTTP service started with
    ``--audit-mode off`` at ``started_at`` (process ``pid``) and from then on answered
    decisions without recording them, so their number is unknown. ``seq``: the entry."""

    seq: int = Field(ge=1)
    started_at: str = ""
    pid: int | None = None


class ReportModel(_Frozen):
    """Everything the compliance report shows.

    ``generated_at`` when the report was made (aware datetime); ``as_of`` the date the policy was
    evaluated at. ``decision_counts`` (the job run's decisions, as of ``as_of``) feeds the
    per-rule / per-app / per-purpose tables, the per-rule chart and the summary's totals;
    ``service_decision_counts`` (decisions the HTTP service made, each at its own request time,
    some on facts the caller asserted) get a table of their own and are in no total;
    ``decisions_over_time`` (optional) the time-series chart. Optional sections (``None``) are
    reported as "not run".
    """

    title: str
    generated_at: AwareDatetime
    as_of: date
    data_source: DataSource
    instruments: tuple[InstrumentView, ...]
    decision_counts: tuple[DecisionCount, ...] = ()
    service_decision_counts: tuple[DecisionCount, ...] = ()
    transfers: TransferSummary | None = None
    scan: tuple[ScanRow, ...] | None = None
    recommendations: RecommendationSummary | None = None
    audit: AuditSummary | None = None
    notes: tuple[str, ...] = ()
    operator: str = Field(default="", description="who ran the job (organisation / person)")
    decisions_over_time: tuple[TimeBucket, ...] = ()
    revocations: RevocationSummary | None = None
    campaigns: tuple[CampaignProgress, ...] | None = None
    sign_ins: SignInSummary | None = None
    #: the control store's tables cross-checked against the audit chain (None: not checked,
    #: e.g. a model built by hand); a disagreeing table's sections are withheld
    chain_check: ChainCheckView | None = None
    #: the policy the run enforced, from its chained ``job.policy`` entry (None: not known,
    #: e.g. a model built by hand)
    policy: PolicyRecordView | None = None
    #: the chain's ``service.audit_off`` entries: periods in which the HTTP service answered
    #: decisions unrecorded, so ``service_decision_counts`` is a lower bound when any exists
    service_audit_off: tuple[AuditOffView, ...] = ()

    def generated_at_utc(self) -> datetime:
        """``generated_at`` as a UTC datetime."""
        return self.generated_at.astimezone(UTC)
