"""Policy bundles: an instrument (court order, platform terms, statute, ...) and its rules.

Layers, as in Cedar: :mod:`.source` reads YAML keeping each key's file:line:col, :mod:`.model`
defines the typed AST (pydantic), :mod:`.loader` validates source into the AST and reports every
error at once with its location.
"""

from provguard.policy.loader import (
    load_bundle,
    load_bundle_text,
    load_policy_dir,
    load_policy_dirs,
)
from provguard.policy.model import (
    Bundle,
    DataTarget,
    EventEnd,
    Instrument,
    PolicySet,
    Rule,
    Selector,
    Unless,
)

__all__ = [
    "Bundle",
    "DataTarget",
    "EventEnd",
    "Instrument",
    "PolicySet",
    "Rule",
    "Selector",
    "Unless",
    "load_bundle",
    "load_bundle_text",
    "load_policy_dir",
    "load_policy_dirs",
]
