"""Profile display: may an app show a profile's handle and picture? (the order's third rule)

Each app profile's handle and picture are decided for action ``display``, purpose
``profile.display``, with the value's provenance label. A denied value is replaced by the app's
placeholder (a neutral handle built from the account id, the default picture). Every shown
value keeps its provenance label (``shown_handle_origins`` / ``shown_avatar_origins``, the
registry's bitmask): the original value's label when it is shown, the app's own origin for a
placeholder. So a query over the displayed values is checked like one over ``profiles``.

The decisions are labelled too: under the injunction a ``deny`` says exactly that the withheld
value came from WeChat or QQ, so ``handle_decision`` / ``avatar_decision`` carry the original
value's label (``handle_decision_origins`` / ``avatar_decision_origins``; ``unknown`` for a value
without one) and ``rule_id``, which names the rule that denied either value, carries the union of
both (``rule_id_origins``).
"""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa

from provguard.decide import DecisionPoint, Request
from provguard.job.decisions import DecisionRecorder
from provguard.provenance import OriginRegistry

PLACEHOLDER_AVATAR = "placeholder:default"

DISPLAY_SCHEMA = pa.schema(
    [
        ("app_id", pa.string()),
        ("subject_id", pa.int64()),
        ("account_id", pa.string()),
        ("handle_decision", pa.string()),
        ("avatar_decision", pa.string()),
        ("rule_id", pa.string()),
        ("shown_handle", pa.string()),
        ("shown_avatar_key", pa.string()),
        ("shown_handle_origins", pa.uint64()),
        ("shown_avatar_origins", pa.uint64()),
        ("handle_decision_origins", pa.uint64()),
        ("avatar_decision_origins", pa.uint64()),
        ("rule_id_origins", pa.uint64()),
    ]
)


def first_party_mask(registry: OriginRegistry, app_id: str) -> int:
    """The label of a value the app itself made (a placeholder): the app's own origin bit, or
    0 (``unknown``) when the registry does not know the app."""
    try:
        return registry.mask([app_id])
    except (KeyError, ValueError):
        return 0


def placeholder_handle(app_id: str, account_id: str) -> str:
    """The neutral handle an app shows instead of a forbidden one (``<app> user <id tail>``)."""
    return f"{app_id} user {account_id[-6:]}"


def decide_display(
    labelled: pa.Table,
    pdp: DecisionPoint,
    registry: OriginRegistry,
    at: datetime,
    recorder: DecisionRecorder,
    *,
    purpose: str = "profile.display",
) -> pa.Table:
    """Decide handle and picture display for every labelled profile (:mod:`.ingest` schema).

    Returns a table of :data:`DISPLAY_SCHEMA`: one row per profile, the decisions, the values
    shown and their labels (module docstring)."""
    out: dict[str, list[object]] = {name: [] for name in DISPLAY_SCHEMA.names}
    unknown = registry.mask(["unknown"])
    for row in labelled.to_pylist():
        rules: list[str] = []
        effects = []
        for category, mask, field_name in (
            ("user.name.nickname", row["handle_origins"], "handle"),
            ("user.avatar", row["avatar_origins"], "avatar"),
        ):
            d = pdp.decide(
                Request(
                    app=row["app_id"],
                    action="display",
                    category=category,
                    origins=registry.names_of(mask),
                    at=at,
                    purpose=purpose,
                )
            )
            recorder.record(
                d,
                "profile_display",
                {"subject_id": row["subject_id"], "app": row["app_id"], "field": field_name},
            )
            effects.append(d.effect)
            rules.extend(r.rule_id for r in d.determining if d.effect == "deny")
        out["app_id"].append(row["app_id"])
        out["subject_id"].append(row["subject_id"])
        out["account_id"].append(row["account_id"])
        out["handle_decision"].append(effects[0])
        out["avatar_decision"].append(effects[1])
        out["rule_id"].append(rules[0] if rules else None)
        out["shown_handle"].append(
            row["handle"]
            if effects[0] != "deny"
            else placeholder_handle(row["app_id"], row["account_id"])
        )
        out["shown_avatar_key"].append(
            row["avatar_key"] if effects[1] != "deny" else PLACEHOLDER_AVATAR
        )
        own = first_party_mask(registry, row["app_id"])
        out["shown_handle_origins"].append(
            (row["handle_origins"] or 0) if effects[0] != "deny" else own
        )
        out["shown_avatar_origins"].append(
            (row["avatar_origins"] or 0) if effects[1] != "deny" else own
        )
        # a decision is a function of the original's label: it keeps that label
        handle_label = row["handle_origins"] or unknown
        avatar_label = row["avatar_origins"] or unknown
        out["handle_decision_origins"].append(handle_label)
        out["avatar_decision_origins"].append(avatar_label)
        out["rule_id_origins"].append(handle_label | avatar_label)
    return pa.table(out, schema=DISPLAY_SCHEMA)
