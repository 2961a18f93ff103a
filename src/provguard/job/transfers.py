"""Transfer audit: every grant one app passed on to another, decided under the policy.

A duoshan account made by reusing a douyin "Sign in with WeChat/QQ" login is a transfer of
douyin's grant (category ``grant.login``, origin = the provider) to duoshan. Each transfer is
decided at the run's ``as_of`` time with the time duoshan first used the grant, so an
instrument's exception for accounts that logged in before the order (grandfathering) applies,
and with the grant's own recorded facts (when it was given, and its status: a revoked or
expired grant is no working login and is never grandfathered, docs/policy-language.md).
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
    transfers: pa.Table,
    pdp: DecisionPoint,
    at: datetime,
    recorder: DecisionRecorder,
    grants: pa.Table | None = None,
) -> pa.Table:
    """Decide every row of ``transfers`` (sandbox ``transfers`` schema) at ``at``.

    ``grants`` (sandbox ``grants`` schema: ``grant_id``, ``granted_at``, ``status``): each
    transfer's request carries its grant's ``granted_at`` and ``status`` (a grant missing from it
    is decided on the transfer's facts alone). Without ``grants`` no grant facts are sent.

    Returns one row per transfer with :data:`TRANSFER_AUDIT_SCHEMA`: the decision
    (``permit``/``deny``/``not_applicable``), whether it is a permit by exception (grandfathered),
    the determining rule and its explanation.
    """
    out: dict[str, list[object]] = {name: [] for name in TRANSFER_AUDIT_SCHEMA.names}
    facts: dict[str, tuple[datetime | None, str | None]] = {}
    if grants is not None:
        facts = {
            g["grant_id"]: (g["granted_at"], g["status"])
            for g in grants.select(["grant_id", "granted_at", "status"]).to_pylist()
        }
    for row in transfers.to_pylist():
        granted_at, status = facts.get(row["grant_id"], (None, None))
        d = pdp.decide(
            Request(
                app=row["from_app"],
                action="transfer",
                category="grant.login",
                origins=frozenset({row["provider"]}),
                at=at,
                recipient=row["to_app"],
                grant_first_used_by_recipient_at=row["first_used_at"],
                grant_granted_at=granted_at,
                grant_status=status,
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
