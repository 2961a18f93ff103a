"""Transfer audit: every grant one app passed on to another, decided under the policy.

A duoshan account made by reusing a douyin "Sign in with WeChat/QQ" login is a transfer of
douyin's grant (category ``grant.login``, origin = the provider) to duoshan. Each transfer is
decided at the run's ``as_of`` time with the time duoshan first used the grant, so an
instrument's exception for accounts that logged in before the order (grandfathering) applies.
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from provguard.decide import DecisionPoint, Request
from provguard.job.decisions import DecisionRecorder

TRANSFER_AUDIT_SCHEMA = pa.schema(
    [
        ("transfer_id", pa.string()),
        ("grant_id", pa.string()),
        ("subject_id", pa.int64()),
        ("provider", pa.string()),
        ("from_app", pa.string()),
        ("to_app", pa.string()),
        ("first_used_at", pa.timestamp("us", tz="UTC")),
        ("decision", pa.string()),
        ("excepted", pa.bool_()),
        ("rule_id", pa.string()),
        ("explanation", pa.string()),
    ]
)


def audit_transfers(
    transfers: pa.Table, pdp: DecisionPoint, at: datetime, recorder: DecisionRecorder
) -> pa.Table:
    """Decide every row of ``transfers`` (sandbox ``transfers`` schema) at ``at``.

    Returns one row per transfer with :data:`TRANSFER_AUDIT_SCHEMA`: the decision
    (``permit``/``deny``/``not_applicable``), whether it is a permit by exception (grandfathered),
    the determining rule and its explanation.
    """
    out: dict[str, list[object]] = {name: [] for name in TRANSFER_AUDIT_SCHEMA.names}
    for row in transfers.to_pylist():
        d = pdp.decide(
            Request(
                app=row["from_app"],
                action="transfer",
                category="grant.login",
                origins=frozenset({row["provider"]}),
                at=at,
                recipient=row["to_app"],
                grant_first_used_by_recipient_at=row["first_used_at"],
            )
        )
        recorder.record(
            d,
            "transfer_audit",
            {
                "transfer_id": row["transfer_id"],
                "grant_id": row["grant_id"],
                "subject_id": row["subject_id"],
            },
        )
        for name in (
            "transfer_id",
            "grant_id",
            "subject_id",
            "provider",
            "from_app",
            "to_app",
            "first_used_at",
        ):
            out[name].append(row[name])
        out["decision"].append(d.effect)
        out["excepted"].append(d.excepted)
        first = d.determining[0] if d.determining else None
        out["rule_id"].append(first.rule_id if first else None)
        out["explanation"].append(first.explanation if first else "no rule in force matches")
    return pa.table(out, schema=TRANSFER_AUDIT_SCHEMA)
