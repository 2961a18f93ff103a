"""Which column of a labelled table holds which data category, and where its label is.

A *labelled table* keeps, for each protected column, a companion *origins column*: an unsigned
64-bit integer whose bit ``i`` means origin ``OriginRegistry.names[i]`` (bit 0 is ``unknown``,
then ``user_input``, ``wechat``, ``qq``, ``apple``, ``google``, ``douyin``, ``duoshan`` in the
built-in registry; DuckDB type ``UBIGINT``, Spark ``BIGINT`` holding the same 64 bits). A column
may instead carry a constant label (``origins: [douyin, duoshan]`` for first-party system data).

The registry is written in YAML (or built in Python)::

    tables:
      profiles:
        columns:
          handle:     {categories: [user.name.nickname], origins_column: handle_origins}
          app_id:     {origins: [douyin, duoshan]}
        rows:                                    # optional: a label for the whole row
          category: user.social.friend_list      # a deny on it filters the row out
          origins_column: edge_origins

Origins columns are managed by provguard: a policy-aware query cannot read them directly (it
reads the ``<column>__origins`` companion of its output instead), which keeps labels unforgeable.
A table created with ``CREATE TABLE ... AS`` under a policy gets a derived spec
(:meth:`TableSpec.derived`): each output column ``c`` labelled by ``c__origins``, and a *row
label* (:class:`RowLabelSpec`, stored per row in ``__row__origins``): the origins of the values
that decided which rows exist (the query's ``WHERE``, ``JOIN ... ON``, ``GROUP BY``, ``HAVING``,
``QUALIFY``, ``ORDER BY``/``LIMIT``). Every later query over the table folds the row label into
each output's label and checks it like a control position, so ``SELECT count(*) FROM t`` is as
constrained as the query that made ``t``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from provguard.errors import InputError
from provguard.taxonomy import DATA_CATEGORIES

ORIGINS_SUFFIX = "__origins"
#: ``TableSpec.controller`` of a table made without a policy (no app) from rows of several
#: controllers: no policy-aware query may read it
ANY_CONTROLLER = "*"
#: the per-row row-label column of a table created by ``CREATE TABLE AS`` (:class:`RowLabelSpec`)
ROW_LABEL = "__row" + ORIGINS_SUFFIX
#: the stored column holding a table's per-row data labels packed side by side
#: (:attr:`TableSpec.labels_packed`, :meth:`TableSpec.packed_fields`)
PACKED_LABELS = "__packed" + ORIGINS_SUFFIX
#: bits per packed label: a field holds any label of a registry of up to 16 origins
PACKED_WIDTH = 16
#: labels per packed column (64 bits)
PACKED_FIELDS = 64 // PACKED_WIDTH
_NAME = r"^[a-z_][a-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Strict):
    """One data column: its data ``categories`` (taxonomy keys; empty = not restricted personal
    data, never checked against the policy but still labelled) and its label: the companion
    ``origins_column`` (per row) or the constant ``origins``. Neither means ``unknown``."""

    categories: tuple[str, ...] = ()
    origins_column: str | None = Field(default=None, pattern=_NAME)
    origins: tuple[str, ...] | None = None
    #: a stored companion holding the keyed hash of the value (HMAC-SHA256 hex, computed once
    #: at load time under the key identified by the table's ``hash_key_id``); managed by
    #: provguard like origins columns (:func:`provguard.dataplane.with_stored_hashes`)
    hash_column: str | None = Field(default=None, pattern=_NAME)
    #: stored masks (:mod:`provguard.sqlgen.stored`): mask fingerprint (64 hex digits) -> the
    #: companion column holding the rewrite's masked value under the verdict it fingerprints;
    #: read only on an exact fingerprint match, hidden from queries like origins columns
    stored_masks: dict[str, str] = Field(default_factory=dict)
    #: the stored value was computed by the query that made the table (an expression,
    #: aggregate, window...), not a protected column passed through: like a computed output, it
    #: is nullified wherever a rule masks it (``hash``/``redact``/``placeholder`` would leak it)
    derived: bool = False

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.origins_column is not None and self.origins is not None:
            raise ValueError("give either origins_column or constant origins, not both")
        for c in self.categories:
            if c not in DATA_CATEGORIES:
                raise ValueError(f"unknown data category '{c}'")
        for fp, companion in self.stored_masks.items():
            if not _is_fingerprint(fp) or not _valid_name(companion):
                raise ValueError(f"bad stored mask '{fp}' -> '{companion}'")
        return self


def _is_fingerprint(text: str) -> bool:
    return len(text) == 64 and all(ch in "0123456789abcdef" for ch in text)


class RowSpec(_Strict):
    """A label for whole rows: a deny on ``category`` for a row's origins drops the row."""

    category: str
    origins_column: str = Field(pattern=_NAME)

    @model_validator(mode="after")
    def _check(self) -> RowSpec:
        if self.category not in DATA_CATEGORIES:
            raise ValueError(f"unknown data category '{self.category}'")
        return self


class RowLabelSpec(_Strict):
    """Why the rows of a table exist: the per-row bitmask ``origins_column`` holds the origins of
    the values that decided whether the row is there (implicit flows of the query that created
    the table: ``WHERE``, ``JOIN ... ON``, ``GROUP BY``, ``HAVING``, ``QUALIFY``, ``ORDER BY``
    with ``LIMIT``), ``categories`` their data categories and ``sources`` the base columns as
    ``table.column``. A query reading the table ORs the row label into every output's label and
    checks ``categories`` like a control position (a deny without a mask refuses the query, one
    with a mask drops the rows whose row label it hits). A row label of 0 means that no data
    decided the row's existence (not ``unknown``)."""

    categories: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    origins_column: str = Field(default=ROW_LABEL, pattern=_NAME)

    @model_validator(mode="after")
    def _check(self) -> RowLabelSpec:
        for c in self.categories:
            if c not in DATA_CATEGORIES:
                raise ValueError(f"unknown data category '{c}'")
        for src in self.sources:
            if "." not in src:
                raise ValueError(f"row label source '{src}' is not 'table.column'")
        return self

    def source_pairs(self) -> frozenset[tuple[str, str]]:
        """``sources`` as ``(table, column)`` pairs."""
        out = set()
        for src in self.sources:
            table, column = src.split(".", 1)
            out.add((table, column))
        return frozenset(out)


class TableSpec(_Strict):
    """The data columns of one labelled table (origins columns are not listed here)."""

    columns: dict[str, ColumnSpec] = Field(min_length=1)
    rows: RowSpec | None = None
    #: the per-row label of the rows' existence (tables made by ``CREATE TABLE AS``)
    row_label: RowLabelSpec | None = None
    #: the fingerprint (:func:`provguard.sqlgen.keyed.key_id`) of the key the stored hash
    #: columns were computed with; a rewrite under another key computes the hash instead
    hash_key_id: str | None = None
    #: the per-row origins columns of the data columns hold no 0 or NULL (rewritten as the
    #: ``unknown`` bit at load: :meth:`provguard.dataplane.LabelledStore.normalise_labels`), so
    #: the rewrite reads them as they are, without ``COALESCE(NULLIF(x, 0), unknown)``
    labels_normalised: bool = False
    #: the normalised labels of the first :data:`PACKED_FIELDS` origins columns (sorted by name)
    #: are also stored side by side in one uint64 column :data:`PACKED_LABELS`, each in a
    #: :data:`PACKED_WIDTH`-bit field (:meth:`packed_fields`), written in the same statement as
    #: the normalisation and protected like it (the Parquet masks token): a selective scan
    #: reads one label column instead of one per output (DuckDB pays per column and vector)
    labels_packed: bool = False
    #: controller isolation (PIPL Art. 23): the data column naming the app that collected each
    #: row (``app_id`` in ``profiles``); a policy-aware query by app X reads the table only
    #: through the row filter ``<controller_column> = 'X'``, in every scope
    controller_column: str | None = Field(default=None, pattern=_NAME)
    #: the app that owns every row (a table made by ``CREATE TABLE AS`` under a policy belongs
    #: to the app that made it): a policy-aware query by another app is refused (PG162);
    #: :data:`ANY_CONTROLLER` (made without a policy from rows of several controllers): every
    #: policy-aware query is refused
    controller: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TableSpec:
        hidden = self.origins_columns() | self.hash_columns() | self.mask_columns()
        if self.controller_column is not None and self.controller_column not in self.columns:
            raise ValueError(
                f"controller column '{self.controller_column}' is not a column of the table"
            )
        if self.hash_columns() and self.hash_key_id is None:
            raise ValueError("hash columns need the hash_key_id of the key they were made with")
        if self.labels_packed and not (self.labels_normalised and self.packed_fields()):
            raise ValueError("packed labels need normalised per-row origins columns")
        if self.labels_packed:
            hidden = hidden | {PACKED_LABELS}
        for name in self.columns:
            if not _valid_name(name):
                raise ValueError(f"bad column name '{name}' (lowercase letters, digits, _)")
            if name in hidden:
                raise ValueError(f"column '{name}' is also used as an origins column")
        if self.row_label is not None:
            used = {c.origins_column for c in self.columns.values() if c.origins_column}
            if self.rows is not None:
                used.add(self.rows.origins_column)
            if self.row_label.origins_column in used | self.hash_columns() | self.mask_columns():
                raise ValueError(
                    f"row label column '{self.row_label.origins_column}' is also used as"
                    " another label or hash column"
                )
        return self

    def origins_columns(self) -> frozenset[str]:
        """The provenance columns of this table (hidden from policy-aware queries)."""
        names = {c.origins_column for c in self.columns.values() if c.origins_column}
        if self.rows is not None:
            names.add(self.rows.origins_column)
        if self.row_label is not None:
            names.add(self.row_label.origins_column)
        return frozenset(names)

    def hash_columns(self) -> frozenset[str]:
        """The stored keyed-hash companions of this table (hidden from queries)."""
        return frozenset(c.hash_column for c in self.columns.values() if c.hash_column)

    def mask_columns(self) -> frozenset[str]:
        """The stored-mask companions of this table (hidden from queries)."""
        return frozenset(m for c in self.columns.values() for m in c.stored_masks.values())

    def packable_columns(self) -> tuple[str, ...]:
        """The per-row origins columns of the data columns that a packed label column holds,
        in field order: the first :data:`PACKED_FIELDS` by name. Fixed by the spec's columns
        alone, so no stored field can be narrowed or moved."""
        names = sorted({c.origins_column for c in self.columns.values() if c.origins_column})
        return tuple(names[:PACKED_FIELDS])

    def packed_fields(self) -> dict[str, int]:
        """Origins column -> bit offset of its :data:`PACKED_WIDTH`-bit field in
        :data:`PACKED_LABELS` (label = ``(packed >> offset) & 0xFFFF``); empty when the labels
        are not packed."""
        if not self.labels_packed:
            return {}
        return {n: k * PACKED_WIDTH for k, n in enumerate(self.packable_columns())}

    @classmethod
    def derived(
        cls,
        columns: Iterable[tuple[str, Iterable[str]]],
        row_label: RowLabelSpec | None = None,
        *,
        computed: Iterable[str] = (),
        controller: str | None = None,
    ) -> TableSpec:
        """The spec of a table created by a policy-aware ``CREATE TABLE AS``: each
        ``(name, categories)`` output column labelled by its ``name__origins`` companion, and
        the rows by ``row_label`` (:class:`RowLabelSpec`, column ``__row__origins``). The
        columns named in ``computed`` hold computed values (``ColumnSpec.derived``);
        ``controller``: the app that made it and owns its rows (:attr:`controller`)."""
        made = set(computed)
        return cls(
            columns={
                name: ColumnSpec(
                    categories=tuple(sorted(set(cats))),
                    origins_column=name + ORIGINS_SUFFIX,
                    derived=name in made,
                )
                for name, cats in columns
            },
            row_label=row_label,
            controller=controller,
        )


class SchemaRegistry(_Strict):
    """Labelled tables by name. Raises :class:`InputError` (via :meth:`table`) for a table that is
    not registered: a policy-aware query never reads unlabelled data."""

    tables: dict[str, TableSpec] = {}

    def table(self, name: str) -> TableSpec:
        try:
            return self.tables[name]
        except KeyError:
            known = ", ".join(sorted(self.tables)) or "none"
            raise InputError(
                f"table '{name}' has no provenance schema (known: {known}); declare its columns'"
                " categories and labels before querying it under a policy"
            ) from None

    def with_table(self, name: str, spec: TableSpec) -> SchemaRegistry:
        if not _valid_name(name):
            raise InputError(f"bad table name '{name}' (lowercase letters, digits, _)")
        tables = dict(self.tables)
        tables[name] = spec
        return SchemaRegistry(tables=tables)

    @classmethod
    def parse(cls, raw: Mapping[str, object], source: str = "<schema>") -> SchemaRegistry:
        """Validate a mapping (from YAML/JSON); raises :class:`InputError` naming ``source``."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InputError(f"{source}: {where}: {first['msg']}") from None

    @classmethod
    def load(cls, path: str | Path) -> SchemaRegistry:
        """Read a YAML or JSON registry file; raises :class:`InputError` on a bad file."""
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            raw = json.loads(text) if p.suffix == ".json" else YAML(typ="safe").load(text)
        except (OSError, ValueError, YAMLError) as exc:
            raise InputError(f"cannot read schema registry {p}: {exc}") from None
        if not isinstance(raw, dict):
            raise InputError(f"{p}: a schema registry is a mapping with key 'tables'")
        return cls.parse(raw, str(p))


#: name parts provguard gives its own companion columns (labels, stored hashes and masks)
RESERVED_PARTS = (ORIGINS_SUFFIX, "__mask_", "__hmac", "__row", "__packed")


def reserved_name(name: str) -> str | None:
    """Why ``name`` may not name a table or column a query creates (a companion's form, or not
    lowercase letters, digits and ``_`` with a letter first), or None when it may."""
    import re

    part = next((p for p in RESERVED_PARTS if p in name), None)
    if part is not None:
        return f"'{part}' is reserved for provguard's companion columns"
    if re.match(r"^[a-z][a-z0-9_]*$", name) is None:
        return "use lowercase letters, digits and _, starting with a letter"
    return None


def _valid_name(name: str) -> bool:
    import re

    return re.match(_NAME, name) is not None and not name.endswith(ORIGINS_SUFFIX)


_FIRST_PARTY = ("douyin", "duoshan")

#: The labelled app profiles written by the main job (``provguard.job.ingest``).
PROFILES = TableSpec(
    columns={
        "app_id": ColumnSpec(origins=_FIRST_PARTY),
        "subject_id": ColumnSpec(origins=_FIRST_PARTY),
        "account_id": ColumnSpec(categories=("user.unique_id",), origins=_FIRST_PARTY),
        "handle": ColumnSpec(categories=("user.name.nickname",), origins_column="handle_origins"),
        "handle_grant": ColumnSpec(categories=("grant.login",), origins_column="handle_origins"),
        "avatar_key": ColumnSpec(categories=("user.avatar",), origins_column="avatar_origins"),
        "avatar_grant": ColumnSpec(categories=("grant.login",), origins_column="avatar_origins"),
        "grant_id": ColumnSpec(categories=("grant.login",), origins=("wechat", "qq")),
        "created_at": ColumnSpec(origins=_FIRST_PARTY),
    },
    controller_column="app_id",
)


def default_schema() -> SchemaRegistry:
    """The registry of the tables the main job writes: ``profiles``."""
    return SchemaRegistry(tables={"profiles": PROFILES})


#: The app's follow graph written by the main job (``edges``): first-party social data.
EDGES = TableSpec(
    columns={
        "src": ColumnSpec(categories=("user.social.friend_list",), origins=_FIRST_PARTY),
        "dst": ColumnSpec(categories=("user.social.friend_list",), origins=_FIRST_PARTY),
    }
)

#: What each app shows for a profile (``profile_display``). The shown handle/avatar carry their
#: per-row labels (``shown_*_origins``: the original value's label when it is shown, the app's
#: own origin for a placeholder), so a query over them is checked like one over ``profiles``;
#: the decision columns keep the withheld value's label and category. Rows belong to the app in
#: ``app_id`` (controller isolation, as ``profiles``).
PROFILE_DISPLAY = TableSpec(
    columns={
        "app_id": ColumnSpec(origins=_FIRST_PARTY),
        "subject_id": ColumnSpec(origins=_FIRST_PARTY),
        "account_id": ColumnSpec(categories=("user.unique_id",), origins=_FIRST_PARTY),
        # a decision (and the rule that denied) says where the withheld value came from: it
        # keeps that value's label and category (job/display.py)
        "handle_decision": ColumnSpec(
            categories=("user.name.nickname",), origins_column="handle_decision_origins"
        ),
        "avatar_decision": ColumnSpec(
            categories=("user.avatar",), origins_column="avatar_decision_origins"
        ),
        "rule_id": ColumnSpec(
            categories=("user.name.nickname", "user.avatar"), origins_column="rule_id_origins"
        ),
        "shown_handle": ColumnSpec(
            categories=("user.name.nickname",), origins_column="shown_handle_origins"
        ),
        "shown_avatar_key": ColumnSpec(
            categories=("user.avatar",), origins_column="shown_avatar_origins"
        ),
    },
    controller_column="app_id",
)

#: The friend-recommendation cards (``recommendations``): viewer/candidate pairs come from the
#: follow graph (first-party social data), shown handle/avatar as in ``profile_display``. Rows
#: belong to the app in ``app_id`` whose cards they are (controller isolation, as ``profiles``).
#: ``*_inferred_origins`` (the origins the profile-match scan inferred for a copied value, part
#: of the decision's label) say where the value came from, as the decisions do: they carry the
#: decision's label and category.
RECOMMENDATIONS = TableSpec(
    columns={
        "app_id": ColumnSpec(origins=_FIRST_PARTY),
        "viewer": ColumnSpec(categories=("user.social.friend_list",), origins=_FIRST_PARTY),
        "rank": ColumnSpec(origins=_FIRST_PARTY),
        "candidate": ColumnSpec(categories=("user.social.friend_list",), origins=_FIRST_PARTY),
        "score": ColumnSpec(origins=_FIRST_PARTY),
        "shown_handle": ColumnSpec(
            categories=("user.name.nickname",), origins_column="shown_handle_origins"
        ),
        "shown_avatar_key": ColumnSpec(
            categories=("user.avatar",), origins_column="shown_avatar_origins"
        ),
        "handle_decision": ColumnSpec(
            categories=("user.name.nickname",), origins_column="handle_decision_origins"
        ),
        "avatar_decision": ColumnSpec(
            categories=("user.avatar",), origins_column="avatar_decision_origins"
        ),
        "handle_inferred_origins": ColumnSpec(
            categories=("user.name.nickname",), origins_column="handle_decision_origins"
        ),
        "avatar_inferred_origins": ColumnSpec(
            categories=("user.avatar",), origins_column="avatar_decision_origins"
        ),
    },
    controller_column="app_id",
)


def job_schema() -> SchemaRegistry:
    """The registry of every job table that can be queried under a policy: ``profiles`` (per-row
    labels), ``edges``, ``profile_display`` and ``recommendations`` (columns with no category
    are unprotected: labelled, never checked). ``profiles``, ``profile_display`` and
    ``recommendations`` declare ``controller_column: app_id`` (an app reads only its own rows);
    ``edges`` has no controller column. The job's other tables
    (``transfer_audit``, ``picture_hashes``, ``profile_scan``, ``campaign_targets``) have no
    provenance schema and are refused (PG160)."""
    return SchemaRegistry(
        tables={
            "profiles": PROFILES,
            "edges": EDGES,
            "profile_display": PROFILE_DISPLAY,
            "recommendations": RECOMMENDATIONS,
        }
    )


#: Every table the main job writes (``provguard.job.run``). Only those in :func:`job_schema`
#: have a provenance schema; the others hold values derived from platform data whose origins
#: the rows do not record, so no schema can label them and none may be supplied for them:
#:
#: - ``picture_hashes`` (``avatar_key, pdq, quality, dihedral, chroma``): perceptual hashes of
#:   every stored picture. The avatar key's prefix is where the app keeps the file, not where
#:   the picture came from: ``douyin/avatars/...`` keys hold pictures imported from WeChat/QQ
#:   (the ``profiles`` row carries that origin in ``avatar_origins``, the hash row does not).
#: - ``profile_scan`` (``app_id, subject_id, provider, handle_similarity, ...``): each row
#:   compares an app profile with the ``provider``'s copy; ``provider`` labels one side, but the
#:   app side's handle/picture origins (user input, WeChat, QQ) are not in the row.
#: - ``campaign_targets`` (``provider, fields, origin_kind, score, ...``): who must change a
#:   copied handle/picture, derived from the scan; same gap.
#: - ``transfer_audit``: the grant-transfer decisions (grant ids, providers, rule ids).
JOB_TABLES: frozenset[str] = frozenset(
    {
        "profiles",
        "edges",
        "profile_display",
        "recommendations",
        "picture_hashes",
        "profile_scan",
        "campaign_targets",
        "transfer_audit",
    }
)

#: The job's tables that have no provenance schema (refused by queries and by ``--schema``).
UNLABELLED_JOB_TABLES: frozenset[str] = JOB_TABLES - {
    "profiles",
    "edges",
    "profile_display",
    "recommendations",
}
