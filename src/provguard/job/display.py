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

Inferred origins (fresh-user finding F1): a value the app recorded as ``user_input`` but that the
profile-match scan flags as a copy of the provider's value (re-typed from WeChat, re-uploaded
from QQ) *originates* at that provider. :func:`with_inferred_origins` adds the provider's bit to
such a value (``handle_inferred_origins`` / ``avatar_inferred_origins``: only the bits the scan
added, 0 when none), the same criterion as the remediation campaign's ``inferred`` kind
(:func:`provguard.campaign.model.select_targets`: a scan match whose recorded source is not the
provider). :func:`decide_display` then decides on the recorded label *and* the inferred bits;
the output keeps both apart: ``*_inferred_origins`` are the inferred bits, the other label
columns hold their union with the recorded label, so the recorded label is
``*_origins & ~*_inferred_origins``. The audit context of such a decision names them
(``"inferred": [...]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import numpy as np
import pyarrow as pa

from provguard.decide import DecisionPoint, Request
from provguard.errors import InputError
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
        ("handle_inferred_origins", pa.uint64()),
        ("avatar_inferred_origins", pa.uint64()),
    ]
)

INFERRED_COLUMNS = ("handle_inferred_origins", "avatar_inferred_origins")
"""The columns :func:`with_inferred_origins` adds (uint64 origin bitmasks, 0: nothing inferred)."""

_SCAN_NEEDED = ("app_id", "subject_id", "provider", "handle_match", "picture_match")


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


def with_inferred_origins(labelled: pa.Table, scan: pa.Table, registry: OriginRegistry) -> pa.Table:
    """``labelled`` plus :data:`INFERRED_COLUMNS`: per profile, the origins the profile-match
    scan infers for its handle and picture beyond the recorded label.

    For each scan row (one per app profile and provider copy of the same subject,
    :func:`provguard.similarity.scan.scan_profiles` v2 columns ``handle_match`` /
    ``picture_match``), a matched field gets the provider's origin bit unless its recorded label
    (``handle_origins`` / ``avatar_origins``) already has it -- the campaign's ``inferred`` kind
    (:func:`provguard.campaign.model.select_targets`), per field. A profile with no scan row, or
    no match, gets 0. No second matcher: the scan's verdicts are used as they are.

    Args:
        labelled: ``(p,)`` rows of the :mod:`.ingest` schema (at least ``app_id``,
            ``subject_id``, ``handle_origins``, ``avatar_origins``).
        scan: the scan table (at least ``app_id``, ``subject_id``, ``provider``,
            ``handle_match``, ``picture_match``).
        registry: the origin registry of the labels.

    Returns:
        ``labelled`` (same rows, same order) with two uint64 columns appended (an existing pair
        is replaced).

    Raises:
        InputError: a required column is missing, or a scan ``provider`` is not an origin of
            ``registry`` (an unknown provider cannot be labelled; nothing is guessed).
    """
    missing = [c for c in _SCAN_NEEDED if c not in scan.column_names]
    missing_l = [
        c
        for c in ("app_id", "subject_id", "handle_origins", "avatar_origins")
        if c not in labelled.column_names
    ]
    if missing or missing_l:
        raise InputError(
            "cannot infer origins: "
            + "; ".join(
                f"{what} column(s) {', '.join(cols)}"
                for what, cols in (("the scan lacks", missing), ("the profiles lack", missing_l))
                if cols
            )
        )
    index = {
        key: i
        for i, key in enumerate(
            zip(
                labelled.column("app_id").to_pylist(),
                labelled.column("subject_id").to_pylist(),
                strict=True,
            )
        )
    }
    recorded = (
        [int(m or 0) for m in labelled.column("handle_origins").to_pylist()],
        [int(m or 0) for m in labelled.column("avatar_origins").to_pylist()],
    )
    inferred = (np.zeros(labelled.num_rows, np.uint64), np.zeros(labelled.num_rows, np.uint64))
    bits: dict[str, int] = {}
    for row in scan.select(list(_SCAN_NEEDED)).to_pylist():
        i = index.get((row["app_id"], row["subject_id"]))
        if i is None or not (row["handle_match"] or row["picture_match"]):
            continue
        provider = row["provider"]
        if provider not in bits:
            bits[provider] = 1 << registry.bit(provider)
        bit = bits[provider]
        for field, hit in enumerate((row["handle_match"], row["picture_match"])):
            if hit and not recorded[field][i] & bit:
                inferred[field][i] |= np.uint64(bit)
    out = labelled
    for name, values in zip(INFERRED_COLUMNS, inferred, strict=True):
        if name in out.column_names:
            out = out.drop_columns([name])
        out = out.append_column(name, pa.array(values, pa.uint64()))
    return out


def inferred_masks(labelled: pa.Table) -> tuple[list[int], list[int]]:
    """The :data:`INFERRED_COLUMNS` of ``labelled`` as ints (all 0 when the table has none:
    a table not passed through :func:`with_inferred_origins` decides on recorded labels)."""
    zeros = [0] * labelled.num_rows
    if INFERRED_COLUMNS[0] not in labelled.column_names:
        return zeros, list(zeros)
    return (
        [int(m or 0) for m in labelled.column(INFERRED_COLUMNS[0]).to_pylist()],
        [int(m or 0) for m in labelled.column(INFERRED_COLUMNS[1]).to_pylist()],
    )


def inferred_context(registry: OriginRegistry, inferred: int) -> Mapping[str, object]:
    """The audit context entry naming a decision's inferred origins (``{"inferred": [names]}``,
    sorted), or ``{}`` when nothing was inferred, so recorded-only decisions keep their
    payload."""
    return {"inferred": sorted(registry.names_of(inferred))} if inferred else {}


def decide_display(
    labelled: pa.Table,
    pdp: DecisionPoint,
    registry: OriginRegistry,
    at: datetime,
    recorder: DecisionRecorder,
    *,
    purpose: str = "profile.display",
) -> pa.Table:
    """Decide handle and picture display for every labelled profile (:mod:`.ingest` schema,
    optionally with :data:`INFERRED_COLUMNS` from :func:`with_inferred_origins`: each value is
    then decided on its recorded label plus its inferred origins).

    Returns a table of :data:`DISPLAY_SCHEMA`: one row per profile, the decisions, the values
    shown and their labels (module docstring)."""
    out: dict[str, list[object]] = {name: [] for name in DISPLAY_SCHEMA.names}
    unknown = registry.mask(["unknown"])
    inf_handle, inf_avatar = inferred_masks(labelled)
    for i, row in enumerate(labelled.to_pylist()):
        rules: list[str] = []
        effects = []
        # the value's provenance: its recorded label plus what the scan inferred (a copy)
        handle_mask = (row["handle_origins"] or 0) | inf_handle[i]
        avatar_mask = (row["avatar_origins"] or 0) | inf_avatar[i]
        for category, mask, field_name, inferred in (
            ("user.name.nickname", handle_mask, "handle", inf_handle[i]),
            ("user.avatar", avatar_mask, "avatar", inf_avatar[i]),
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
                {
                    "subject_id": row["subject_id"],
                    "app": row["app_id"],
                    "field": field_name,
                    **inferred_context(registry, inferred),
                },
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
        out["shown_handle_origins"].append(handle_mask if effects[0] != "deny" else own)
        out["shown_avatar_origins"].append(avatar_mask if effects[1] != "deny" else own)
        # a decision is a function of the original's label: it keeps that label
        handle_label = handle_mask or unknown
        avatar_label = avatar_mask or unknown
        out["handle_decision_origins"].append(handle_label)
        out["avatar_decision_origins"].append(avatar_label)
        out["rule_id_origins"].append(handle_label | avatar_label)
        out["handle_inferred_origins"].append(inf_handle[i])
        out["avatar_inferred_origins"].append(inf_avatar[i])
    return pa.table(out, schema=DISPLAY_SCHEMA)
