"""The remediation campaign of the main job: Duoshan's notice, run under the order's third rule.

Targets are the Duoshan profiles whose handle or picture still copies the provider's and whose
use the rule forbids (:func:`provguard.campaign.model.select_targets`: recorded origins, and
*inferred* ones for re-typed copies); a handle-only copy that is the subject's real name is
exempt, as in Duoshan's notice. Each target gets one notice through the outbox (delivered to a
JSON-lines mailbox file in the output folder), and the campaign's state lives in the control
store.

Reruns in the same folder (fresh user 10, H4 side effect): the campaign id is the rule and the
``as of`` day, and the store is idempotent -- a rerun extends the campaign with the targets it
newly found and never re-notifies one already in it, nor drops one (notices were sent). So the
campaign's targets are the rows the store holds for it, which is what the run chains
(``targets``) and what the report's cross-check compares with ``campaign_targets``; what this
run itself selected is ``selected`` (``added`` of them new). Before, the chained ``targets`` was
this run's selection: a rerun under a policy selecting fewer chained a count the table
contradicted, and the job's own report withheld section 3c (PG340).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from provguard.adapters.campaign_sqlite import JsonlMailbox, SqlCampaignStore
from provguard.campaign.model import Target, select_targets
from provguard.campaign.outbox import dispatch
from provguard.policy import PolicySet

CAMPAIGN_RULE = "duoshan-no-platform-profile"


@dataclass(frozen=True)
class CampaignResult:
    """One run's campaign step. ``targets``: the campaign's targets in the store after the run
    (every state, earlier runs' included; ``sum(states.values())``); ``exempt`` / ``inferred``
    / ``exempt_reasons``: among this run's selection; ``notified``: notices sent by this run;
    ``states``: targets per state now; ``selected``: targets this run's scan and policy
    selected (``None``: not recorded, a result built by hand), ``added``: how many of them
    were not yet in the campaign."""

    campaign_id: str
    rule_id: str
    instrument_id: str
    targets: int
    exempt: int
    inferred: int
    notified: int
    states: dict[str, int]
    exempt_reasons: dict[str, int]
    selected: int | None = None
    added: int | None = None
    #: ``[first, last]`` seq of the ``campaign_progress`` snapshots this run wrote (the report
    #: marks them chained by this run's ``campaign`` entry); ``None``: not recorded
    progress: list[int] | None = None


def run_campaign(
    scan: pa.Table,
    app_profiles: pa.Table,
    subjects: pa.Table,
    policy: PolicySet,
    at: datetime,
    store_path: Path,
    mailbox_path: Path,
    *,
    rule_id: str = CAMPAIGN_RULE,
) -> tuple[CampaignResult, list[Target]]:
    """Select, start and dispatch the campaign; idempotent across reruns on the same store
    (see the module docstring). Returns the :class:`CampaignResult` and this run's selection.
    Raises :class:`~provguard.errors.InputError` when the campaign id exists for another rule,
    :class:`~provguard.errors.StoreError` on store failure."""
    real_names = dict(
        zip(
            subjects.column("subject_id").to_pylist(),
            subjects.column("real_name").to_pylist(),
            strict=True,
        )
    )
    instrument_id, targets = select_targets(
        scan, app_profiles, policy, rule_id, at, real_names=real_names
    )
    campaign_id = f"{rule_id}@{at.date().isoformat()}"
    store = SqlCampaignStore(store_path)
    try:
        first = _last_progress_seq(store, campaign_id) + 1
        started = store.start(campaign_id, rule_id, instrument_id, targets, at)
        sent = dispatch(store, campaign_id, JsonlMailbox(mailbox_path), now=lambda: at)
        states = store.counts(campaign_id)
        last = _last_progress_seq(store, campaign_id)
    finally:
        store.engine.dispose()
    exempt = [t for t in targets if t.exempt_reason]
    return (
        CampaignResult(
            campaign_id=campaign_id,
            rule_id=rule_id,
            instrument_id=instrument_id,
            targets=sum(states.values()),
            exempt=len(exempt),
            inferred=sum(1 for t in targets if t.origin_kind == "inferred"),
            notified=sent.sent,
            states=dict(sorted(states.items())),
            exempt_reasons=dict(Counter(t.exempt_reason or "" for t in exempt)),
            selected=len(targets),
            added=started["added"],
            progress=[first, last],
        ),
        targets,
    )


def _last_progress_seq(store: SqlCampaignStore, campaign_id: str) -> int:
    """The seq of the campaign's newest ``campaign_progress`` snapshot (0: none)."""
    from sqlalchemy import func, select

    from provguard.adapters.campaign_sqlite import progress

    with store.engine.connect() as conn:
        got = conn.execute(
            select(func.max(progress.c.seq)).where(progress.c.campaign_id == campaign_id)
        ).scalar()
    return int(got or 0)
