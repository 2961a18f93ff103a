"""Origins and provenance labels.

An *origin* is where a value came from: a provider (``wechat``, ``qq``), ``user_input``, a
first-party app (``douyin``), or ``unknown``. Origins are interned to bit positions so a label is a
single unsigned integer (at most 64 origins per registry, the width of DuckDB's UBIGINT). A
*provenance label* is the set of origins (plus the grant ids) a value depends on; derived values
take
the union of their inputs' labels, and only :func:`declassify` removes an origin.
"""

from provguard.provenance.label import Declassification, ProvenanceLabel, declassify, union
from provguard.provenance.origins import KNOWN_ORIGINS, UNKNOWN, OriginRegistry, default_registry

__all__ = [
    "KNOWN_ORIGINS",
    "UNKNOWN",
    "Declassification",
    "OriginRegistry",
    "ProvenanceLabel",
    "declassify",
    "default_registry",
    "union",
]
