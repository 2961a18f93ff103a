"""Remediation campaigns: select the profiles a rule forbids, notify, track, rescan.

:mod:`.model` selects targets (policy decision per matched field, real-name exemption, recorded
vs inferred origin); :mod:`.outbox` delivers notices; the state lives in
:class:`provguard.adapters.campaign_sqlite.SqlCampaignStore`.
"""

from provguard.campaign.model import STATES, State, Target, select_targets
from provguard.campaign.outbox import DeliveryError, DispatchResult, TokenBucket, dispatch

__all__ = [
    "STATES",
    "DeliveryError",
    "DispatchResult",
    "State",
    "Target",
    "TokenBucket",
    "dispatch",
    "select_targets",
]
