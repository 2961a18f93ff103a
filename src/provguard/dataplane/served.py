"""The fast layout written by default: labels normalised and the masks of every (app, purpose)
pair the policy *serves* stored beside a freshly written table.

Stored masks (:mod:`provguard.dataplane.masks`) take the per-row masking ``CASE`` out of a query,
but only for a verdict whose fingerprint was stored. :func:`served_pairs` lists the pairs whose
verdict masks something, and :func:`store_served_masks` stores them. ``provguard run`` and
``provguard data load`` call it after writing ``profiles``; ``--no-store-masks`` opts out.

**How the pairs are chosen** (:func:`served_pairs`, deterministic, sorted by app then purpose):

- **apps:** every app the policy set names, :meth:`~provguard.policy.PolicySet.known_apps`. That
  is the bundles' ``known_apps`` and every app listed or excluded in a rule's ``apps`` or
  ``recipients``.
- **purposes:** every key of the set's purpose taxonomy, built-in plus extensions (12 built-in
  keys). Ancestors are included: a deny on ``social.friend_recommendation`` also covers
  ``social``.
- **action:** ``use``, the action every query is checked under.
- **time:** one given instant (``provguard run``: the job's ``as_of``; ``data load``: now).

A pair is served when the verdict of ``SELECT <col> FROM <table>`` masks at least one column
:func:`~provguard.dataplane.masks.maskable_columns` returns. That is exactly when
:meth:`LabelledStore.store_masks <provguard.dataplane.LabelledStore.store_masks>` would store
something. A column the policy refuses outright, or does not mask, serves no pair. So under the
shipped injunction, where every deny is a refusal with no ``mask`` obligation, no pair is served
and only the labels are normalised.

**The hash key.** A column whose verdict has a ``hash`` branch needs the deployment's key
(``$PROVGUARD_HASH_KEY``). Without one that column is left out of the pair and listed in
:attr:`ServedPair.needs_key`. The pair's other columns are still stored. This is reported, never
an error. Queries on a left-out column mask per row, and ask for the key then, as before.

**Pairs with the same verdict** give the same fingerprints. Their companions are shared:
:func:`store_served_masks` rewrites the table only for a pair that brings a fingerprint not
stored yet, and records an audit entry for every pair.

**Staleness.** A stored mask is read only while the query's own verdict gives the same
fingerprint. After an instrument event, an edited bundle, a new hash key or another app or
purpose, queries fall back to the per-row ``CASE``: slower, never wrong. ``provguard data
store-masks`` (or a rerun of the job or of the load) stores the new fingerprints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from provguard.dataplane.masks import mask_fingerprints, maskable_columns
from provguard.errors import StoreError
from provguard.policy import PolicySet
from provguard.provenance import OriginRegistry
from provguard.sqlgen import QueryPolicy, SchemaRegistry
from provguard.sqlgen.keyed import key_id

if TYPE_CHECKING:
    from provguard.dataplane.store import LabelledStore

#: the action whose verdict the stored masks serve: every query is checked as a ``use``
SERVED_ACTION = "use"
#: audit entry kinds, the same as ``provguard data normalise-labels`` / ``data store-masks``
NORMALISE_KIND = "data.normalise_labels"
STORE_MASKS_KIND = "data.store_masks"
#: payload key listing the columns left out for want of a hash key (only when there are some)
SKIPPED_KEY = "skipped_without_hash_key"


@dataclass(frozen=True)
class ServedPair:
    """One ``(app, purpose)`` the policy serves with masks on a table.

    ``fingerprints``: column -> fingerprint, 64 hex digits
    (:func:`provguard.sqlgen.stored.mask_fingerprint`), of the masks stored or to be stored.
    ``needs_key``: columns whose mask has a ``hash`` branch while no hash key is configured.
    They are left out, and their queries mask per row."""

    app: str
    purpose: str
    fingerprints: Mapping[str, str]
    needs_key: tuple[str, ...] = ()


def served_pairs(
    policy: PolicySet,
    schema: SchemaRegistry,
    registry: OriginRegistry,
    at: datetime,
    *,
    table: str = "profiles",
    hash_key: bytes | None = None,
) -> tuple[ServedPair, ...]:
    """The ``(app, purpose)`` pairs ``policy`` serves with masks on ``table`` at ``at``.

    The module docstring says how pairs are chosen. The result is sorted by ``(app,
    purpose)``. A pair appears when it has a fingerprint or a column left out for want of a
    key. The function only rewrites queries: no I/O, no environment read. The key is
    ``hash_key`` (None: no key).

    Args:
        policy: the policy set (with its instrument events applied).
        schema: the registry describing ``table`` as it is stored now (normalised or not: the
            fingerprints name the label expression).
        registry: the origins of the bitmasks.
        at: the time the verdicts are taken at (timezone-aware).
        table: the table (default ``profiles``).
        hash_key: the deployment's key of the ``hash`` mask (>= 16 bytes), or None.

    Raises:
        QueryError: (PG160) ``table`` is not in ``schema``.
        RequestError: a category of ``table`` is unknown to the policy's taxonomy.
    """
    spec = schema.table(table)
    columns = maskable_columns(spec)
    out: list[ServedPair] = []
    if not columns:
        return ()
    for app in sorted(policy.known_apps()):
        for purpose in sorted(policy.taxonomy.purposes.keys):
            qp = _policy(policy, registry, app, purpose, at, hash_key)
            needs_key: list[str] = []
            keyed: list[str] = []
            for name in columns:
                verdict = qp.verdict(spec.columns[name].categories)
                if any(verdict.refused.values()) or not any(verdict.masks.values()):
                    continue  # refused, or nothing masked: nothing to store (no rewrite needed)
                if verdict.masks.get("hash") and hash_key is None:
                    needs_key.append(name)
                else:
                    keyed.append(name)
            fps = mask_fingerprints(table, schema, qp, columns=keyed) if keyed else {}
            if fps or needs_key:
                out.append(ServedPair(app, purpose, dict(sorted(fps.items())), tuple(needs_key)))
    return tuple(out)


def _policy(
    policy: PolicySet,
    registry: OriginRegistry,
    app: str,
    purpose: str,
    at: datetime,
    hash_key: bytes | None,
) -> QueryPolicy:
    # hash_key=None would make QueryPolicy read $PROVGUARD_HASH_KEY; served_pairs never emits a
    # hash branch without a key (those columns are left out), so the key is then never read
    return QueryPolicy(
        policy,
        registry,
        app=app,
        purpose=purpose,
        at=at,
        action=SERVED_ACTION,
        hash_key=hash_key,
        hash_key_source="$PROVGUARD_HASH_KEY",
    )


@dataclass(frozen=True)
class StoredMasks:
    """What :func:`store_served_masks` did to ``table``.

    ``labels_normalised``: whether the labels were normalised. ``pairs``: every served pair
    (:class:`ServedPair`, with what was left out for want of a key). ``rewrites``: how many
    times the table was rewritten to add companions; pairs sharing fingerprints share one.
    ``at``: the verdicts' time. ``hash_key_id``: the key's public fingerprint, or None.
    ``seconds``: wall time of the whole step. ``audit_entries``: ``(kind, payload)`` per step,
    for the caller to append to the audit log. They are a ``data.normalise_labels`` entry, then
    one ``data.store_masks`` entry per pair, as the ``provguard data`` commands write them."""

    table: str
    labels_normalised: bool
    pairs: tuple[ServedPair, ...]
    rewrites: int
    at: datetime
    hash_key_id: str | None
    seconds: float
    audit_entries: tuple[tuple[str, dict[str, object]], ...]

    @property
    def stored(self) -> tuple[ServedPair, ...]:
        """The pairs with at least one stored fingerprint."""
        return tuple(p for p in self.pairs if p.fingerprints)

    @property
    def skipped(self) -> tuple[ServedPair, ...]:
        """The pairs with columns left out for want of a hash key."""
        return tuple(p for p in self.pairs if p.needs_key)

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns that got at least one stored mask, sorted."""
        return tuple(sorted({c for p in self.pairs for c in p.fingerprints}))

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The distinct fingerprints stored, sorted."""
        return tuple(sorted({fp for p in self.pairs for fp in p.fingerprints.values()}))

    def summary(self) -> str:
        """One line for a console: what was stored, with 12-digit fingerprint prefixes."""
        head = f"{self.table}: labels normalised" if self.labels_normalised else self.table
        if not self.stored:
            text = (
                f"{head}; no (app, purpose) pair is served with stored masks (the policy"
                " refuses or allows every protected column)"
            )
        else:
            pairs = ", ".join(f"{p.app}/{p.purpose}" for p in self.stored)
            fps = ", ".join(fp[:12] for fp in self.fingerprints)
            text = (
                f"{head}; stored masks for {len(self.stored)} (app, purpose) pair(s): {pairs};"
                f" columns {', '.join(self.columns)}; fingerprints {fps}"
            )
        for p in self.skipped:
            text += (
                f"; skipped for {p.app}/{p.purpose}: {', '.join(p.needs_key)} (the 'hash' mask"
                " needs $PROVGUARD_HASH_KEY)"
            )
        return f"{text} ({self.seconds:.2f} s)"


def store_served_masks(
    ls: LabelledStore,
    policy: PolicySet,
    at: datetime,
    *,
    table: str = "profiles",
    hash_key: bytes | None = None,
) -> StoredMasks:
    """Normalise ``table``'s labels, then store the masks of every pair :func:`served_pairs`
    lists, on the table as normalised.

    This is what ``provguard run`` and ``provguard data load`` do after writing ``profiles``.
    Each pair's masks are stored by :meth:`LabelledStore.store_masks
    <provguard.dataplane.LabelledStore.store_masks>` under ``QueryPolicy(app, purpose, use,
    at)``. The function writes no audit entry: :attr:`StoredMasks.audit_entries` holds those of
    ``provguard data normalise-labels`` and ``data store-masks``, same kinds and payloads. A
    ``data.store_masks`` payload also lists ``skipped_without_hash_key`` when columns were left
    out.

    Raises:
        StoreError: I/O failure, or the stored fingerprints differ from those predicted
            (nothing is recorded then).
        InputError: ``table`` has no per-row labels, or a masked column is neither text nor
            integer (:func:`~provguard.dataplane.masks.check_mask_types`).
    """
    t0 = time.perf_counter()
    entries: list[tuple[str, dict[str, object]]] = []
    ls.normalise_labels(table)
    entries.append((NORMALISE_KIND, {"table": table, **ls.derived_labels_payload(table)}))
    pairs = served_pairs(policy, ls.schema, ls.registry, at, table=table, hash_key=hash_key)
    kid = key_id(hash_key) if hash_key else None
    rewrites = 0
    for pair in pairs:
        qp = _policy(policy, ls.registry, pair.app, pair.purpose, at, hash_key)
        if pair.fingerprints:
            spec = ls.schema.table(table)
            present = all(
                fp in spec.columns[col].stored_masks for col, fp in pair.fingerprints.items()
            )
            if not present:
                got = ls.store_masks(table, qp, columns=list(pair.fingerprints))
                rewrites += 1
                if got != dict(pair.fingerprints):
                    raise StoreError(
                        f"stored masks of {table} for {pair.app}/{pair.purpose} have other"
                        f" fingerprints than predicted ({got} vs {dict(pair.fingerprints)})"
                    )
        payload: dict[str, object] = {
            "table": table,
            "app": pair.app,
            "purpose": pair.purpose,
            "actions": list(qp.actions),
            "at": at.isoformat(),
            "fingerprints": dict(pair.fingerprints),
            "hash_key_id": kid,
        }
        if pair.needs_key:
            payload[SKIPPED_KEY] = list(pair.needs_key)
        entries.append((STORE_MASKS_KIND, {**payload, **ls.derived_labels_payload(table)}))
    return StoredMasks(
        table=table,
        labels_normalised=True,
        pairs=pairs,
        rewrites=rewrites,
        at=at,
        hash_key_id=kid,
        seconds=time.perf_counter() - t0,
        audit_entries=tuple(entries),
    )
