"""Error codes are stable identifiers: every error class has its own, in the documented form."""

from __future__ import annotations

import importlib
import pkgutil
import re

import provguard
from provguard.errors import ProvguardError


def _all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    sub: type
    for sub in cls.__subclasses__():
        out.add(sub)
        out |= _all_subclasses(sub)
    return out


def test_codes_are_unique_and_well_formed() -> None:
    for mod in pkgutil.walk_packages(provguard.__path__, "provguard."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)
    seen: dict[str, str] = {}
    for cls in _all_subclasses(ProvguardError) | {ProvguardError}:
        code = cls.__dict__.get("code")
        if code is None:
            continue  # inherits its parent's code on purpose (e.g. a grouping of located errors)
        assert re.fullmatch(r"PG\d{3}", code), (cls, code)
        name = f"{cls.__module__}.{cls.__qualname__}"
        assert code not in seen, f"{code} used by {seen.get(code)} and {name}"
        seen[code] = name
