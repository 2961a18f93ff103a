"""Which SQL functions a policy-aware query may call: an allowlist of pure functions.

A policy-aware query may only compute from the labelled columns it reads. DuckDB also offers
functions that read *other* data: the host's settings and environment (``current_setting``,
``getenv``, ``duckdb_settings()``, ``pragma_*``), files (``read_csv``, ``read_parquet``,
``glob``, ``sniff_csv``), other tables by name (``query_table``, ``query``), the catalog
(``duckdb_tables()``, ``current_schema``) or randomness. Their results have no provenance, so
they could bring unlabelled data (or a probe of the host) into a labelled result.

The check is an **allowlist**, not a denylist: every DuckDB release adds functions, and a
denylist lets each new one through until somebody notices; an allowlist refuses a function it
does not know (a false refusal costs the user one line in :data:`ALLOWED_FUNCTIONS`, a missed
denial leaks). Functions are matched by what sqlglot parses them into: a typed expression class
(its ``key``, e.g. ``upper``, ``count``, ``substring``) or, for functions sqlglot does not type,
the DuckDB name (:data:`ALLOWED_NAMES`). Table functions in ``FROM`` are refused the same way.
``UNNEST``/``EXPLODE`` and ``COLUMNS(...)`` are left to the lineage check (PG161), which has
its own message.
"""

from __future__ import annotations

from sqlglot import exp

from provguard.sqlgen.errors import QueryError

#: sqlglot expression keys of pure functions of their arguments (scalar, aggregate, window)
ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    [
        "abs",
        "acos",
        "acosh",
        "asin",
        "asinh",
        "atan",
        "atan2",
        "atanh",
        "cbrt",
        "ceil",
        "cos",
        "cosh",
        "cot",
        "degrees",
        "exp",
        "factorial",
        "floor",
        "ln",
        "log",
        "pi",
        "pow",
        "radians",
        "round",
        "sign",
        "sin",
        "sinh",
        "sqrt",
        "tan",
        "tanh",
        "trunc",
        "and",
        "or",
        "xor",
        "if",
        "case",
        "cast",
        "trycast",
        "coalesce",
        "nullif",
        "greatest",
        "least",
        "nvl2",
        "exists",
        "ascii",
        "chr",
        "concat",
        "concatws",
        "left",
        "right",
        "length",
        "bitlength",
        "bytelength",
        "lower",
        "upper",
        "initcap",
        "substring",
        "strposition",
        "trim",
        "pad",
        "repeat",
        "replace",
        "reverse",
        "split",
        "splitpart",
        "translate",
        "startswith",
        "endswith",
        "contains",
        "levenshtein",
        "jarowinklersimilarity",
        "regexpextract",
        "regexpextractall",
        "regexplike",
        "regexpilike",
        "regexpreplace",
        "regexpsplit",
        "regexpfullmatch",
        "regexpcount",
        "md5",
        "sha",
        "sha2",
        "hex",
        "lowerhex",
        "unhex",
        "tobase64",
        "base64encode",
        "date",
        "datetime",
        "time",
        "timestamp",
        "datediff",
        "dateadd",
        "datesub",
        "datetrunc",
        "timestamptrunc",
        "timestampadd",
        "timestampdiff",
        "timestampsub",
        "unicode",
        "datetimetrunc",
        "extract",
        "day",
        "dayofmonth",
        "dayofweek",
        "dayofweekiso",
        "dayofyear",
        "hour",
        "minute",
        "second",
        "month",
        "monthname",
        "dayname",
        "quarter",
        "week",
        "weekofyear",
        "year",
        "yearofweek",
        "yearofweekiso",
        "lastday",
        "strtotime",
        "strtodate",
        "timetostr",
        "timestrtotime",
        "timestrtodate",
        "unixtotime",
        "timetounix",
        "datestrtodate",
        "datetodatestr",
        "makeinterval",
        "count",
        "countif",
        "sum",
        "avg",
        "min",
        "max",
        "median",
        "mode",
        "quantile",
        "approxquantile",
        "percentilecont",
        "percentiledisc",
        "stddev",
        "stddevpop",
        "stddevsamp",
        "variance",
        "variancepop",
        "corr",
        "covarpop",
        "covarsamp",
        "anyvalue",
        "first",
        "last",
        "firstvalue",
        "lastvalue",
        "nthvalue",
        "argmax",
        "argmin",
        "approxdistinct",
        "arrayagg",
        "groupconcat",
        "bitwiseoragg",
        "bitwiseandagg",
        "bitwisexoragg",
        "logicaland",
        "logicalor",
        "rownumber",
        "rank",
        "denserank",
        "percentrank",
        "cumedist",
        "ntile",
        "lag",
        "lead",
        "grouping",
        "array",
        "arraysize",
        "arraycontains",
        "struct",
        "structextract",
    ]
)

#: DuckDB names (lower case) of pure functions that sqlglot parses as anonymous calls
ALLOWED_NAMES: frozenset[str] = frozenset(
    [
        "prefix",
        "suffix",
        "starts_with",
        "ends_with",
        "strip_accents",
        "nfc_normalize",
        "lcase",
        "ucase",
        "ltrim",
        "rtrim",
        "lpad",
        "rpad",
        "instr",
        "position",
        "strpos",
        "damerau_levenshtein",
        "jaro_similarity",
        "hamming",
        "mismatches",
        "jaccard",
        "editdist3",
        "bit_count",
        "bit_length",
        "even",
        "gcd",
        "lcm",
        "log2",
        "log10",
        "isnan",
        "isinf",
        "isfinite",
        "date_part",
        "datepart",
        "date_diff",
        "make_date",
        "make_time",
        "make_timestamp",
        "to_timestamp",
        "epoch",
        "epoch_ms",
        "epoch_us",
        "string_agg",
        "list",
        "bool_and",
        "bool_or",
        "arg_max",
        "arg_min",
        "max_by",
        "min_by",
        "product",
        "fsum",
        "favg",
        "entropy",
        "kurtosis",
        "skewness",
        "mad",
        "histogram",
        "hash",
        "to_seconds",
        "to_minutes",
        "to_hours",
        "to_days",
    ]
)

#: left to the lineage check, which refuses them with its own message (PG161)
_LINEAGE_CHECKED: tuple[type[exp.Expr], ...] = (exp.Unnest, exp.Explode, exp.Columns)


def function_name(node: exp.Func) -> str:
    """The name shown for ``node``: the DuckDB name of an anonymous call, else the SQL name
    sqlglot prints for the typed expression (upper case)."""
    if isinstance(node, (exp.Anonymous, exp.AnonymousAggFunc)):
        return str(node.name).lower()
    return node.sql_name().lower()


def allowed(node: exp.Func) -> bool:
    """True when ``node`` is a call of an allowlisted pure function (or left to lineage)."""
    if isinstance(node, _LINEAGE_CHECKED):
        return True
    if isinstance(node, (exp.Anonymous, exp.AnonymousAggFunc)):
        return str(node.name).lower() in ALLOWED_NAMES
    return node.key in ALLOWED_FUNCTIONS


def check_functions(statement: exp.Expr) -> None:
    """Refuse ``statement`` (a parsed query, before the rewrite adds its own functions) if it
    calls a function outside the allowlist, as a scalar, aggregate, window or table function.

    Raises :class:`~provguard.sqlgen.errors.QueryError` (PG160) naming the function."""
    for node in statement.find_all(exp.Func):
        if allowed(node):
            continue
        name = function_name(node)
        where = "table function" if isinstance(node.parent, exp.Table) else "function"
        raise QueryError(
            f"{where} {name}() is not on provguard's allowlist of pure SQL functions: a"
            " policy-aware query may only compute from the labelled columns it reads, and"
            f" {name}() could read unlabelled data (settings, environment, files, the catalog"
            " or other tables) into the result; see docs/dataplane.md (allowed functions)"
        )
