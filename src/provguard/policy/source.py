"""Read YAML into plain Python values while remembering where each key and value was.

ruamel.yaml's round-trip loader keeps 0-based (line, column) on every mapping key and sequence
item; we convert them to 1-based :class:`SourceLocation` keyed by the path of the node
(``("rules", 1, "data", "origins")``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from provguard.errors import PolicyError, SourceLocation

Path = tuple[str | int, ...]

MAX_POLICY_BYTES = 1 << 20  # 1 MiB: a policy bundle is text a person wrote
MAX_FLOW_DEPTH = 64  # nested [ / { brackets; a bundle needs four or five


def _flow_too_deep(text: str, path: str) -> SourceLocation | None:
    """Where ``[`` / ``{`` brackets first nest deeper than :data:`MAX_FLOW_DEPTH` (outside quotes
    and comments), found in one pass before the (recursive, slow) YAML parser sees the text."""
    depth = 0
    quote = ""
    line, col = 1, 0
    comment = False
    prev = "\n"
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, comment, prev = line + 1, 0, False, ch
            continue
        if comment:
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev in " \t\n":
            comment = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                return SourceLocation(path, line, col)
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch
    return None


class BadDate(str):
    """A YAML timestamp that is no calendar date or time (``2019-13-01``), kept as its text;
    ``problem`` is the real reason (``month must be in 1..12``)."""

    problem: str

    def __new__(cls, text: str, problem: str) -> BadDate:
        out = super().__new__(cls, text)
        out.problem = problem
        return out


class _Constructor(RoundTripConstructor):
    """ruamel's round-trip constructor, except that an impossible date does not abort the whole
    parse: it becomes a :class:`BadDate` the loader reports at its file:line:col, along with
    every other problem of the file."""

    def construct_yaml_timestamp(self, node: Any, values: Any = None) -> Any:
        try:
            return super().construct_yaml_timestamp(node, values)
        except ValueError as exc:
            return BadDate(str(node.value), str(exc))


_Constructor.add_constructor("tag:yaml.org,2002:timestamp", _Constructor.construct_yaml_timestamp)


@dataclass
class SourceDoc:
    """A parsed YAML document: the plain value and the location of every key (and value)."""

    path: str
    value: Any
    key_locations: dict[Path, SourceLocation] = field(default_factory=dict)
    value_locations: dict[Path, SourceLocation] = field(default_factory=dict)
    #: impossible dates (path -> why), kept as text in ``value``; see :class:`BadDate`
    bad_dates: dict[Path, str] = field(default_factory=dict)

    def locate(self, path: Path, *, prefer_value: bool = True) -> SourceLocation:
        """The closest known location of ``path`` (walking up to the parent when unknown)."""
        p = path
        while True:
            table = (self.value_locations, self.key_locations)
            for t in table if prefer_value else table[::-1]:
                if p in t:
                    return t[p]
            if not p:
                return SourceLocation(self.path, 1, 1)
            p = p[:-1]


def parse_yaml(text: str, path: str) -> SourceDoc:
    """Parse ``text``; raises :class:`PolicyError` at the YAML error's file:line:col."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_POLICY_BYTES:
        raise PolicyError(f"file larger than {MAX_POLICY_BYTES} bytes", SourceLocation(path, 1, 1))
    deep = _flow_too_deep(text, path)
    if deep is not None:
        raise PolicyError(
            f"YAML nested too deeply (more than {MAX_FLOW_DEPTH} brackets; a policy bundle is a "
            "few levels deep)",
            deep,
        )
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = SourceLocation(path, mark.line + 1, mark.column + 1) if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError(f"YAML syntax error: {problem}", loc) from None
    except YAMLError as exc:
        raise PolicyError(f"YAML error: {exc}", SourceLocation(path, 1, 1)) from None
    except ValueError as exc:  # ruamel builds dates eagerly: "day is out of range for month"
        raise PolicyError(
            f"invalid value: {exc} (an impossible date such as 2019-02-30?)",
            _locate_bad_date(text, path),
        ) from None
    except RecursionError:
        raise PolicyError(
            "YAML nested too deeply (a policy bundle is a few levels deep)",
            SourceLocation(path, 1, 1),
        ) from None
    doc = SourceDoc(path, None)
    try:
        doc.value = _plain(data, (), doc)
    except RecursionError:
        raise PolicyError(
            "YAML nested too deeply (a policy bundle is a few levels deep)",
            SourceLocation(path, 1, 1),
        ) from None
    return doc


def _plain(node: Any, path: Path, doc: SourceDoc) -> Any:
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*path, str(key))
            kpos = node.lc.key(key)
            vpos = node.lc.value(key)
            if kpos is not None:
                doc.key_locations[child] = SourceLocation(doc.path, kpos[0] + 1, kpos[1] + 1)
            if vpos is not None:
                doc.value_locations[child] = SourceLocation(doc.path, vpos[0] + 1, vpos[1] + 1)
            out[str(key)] = _plain(value, child, doc)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, value in enumerate(node):
            child = (*path, i)
            pos = node.lc.item(i)
            if pos is not None:
                doc.value_locations[child] = SourceLocation(doc.path, pos[0] + 1, pos[1] + 1)
            items.append(_plain(value, child, doc))
        return items
    if isinstance(node, BadDate):
        doc.bad_dates[path] = f"invalid date '{node}': {node.problem}"
        return str(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool | int | float) or node is None:
        return node
    # dates and timestamps stay as datetime.date / datetime.datetime
    return node


_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})(?:[Tt ](\d{1,2}):(\d{2})(?::(\d{2}))?)?")


def _locate_bad_date(text: str, path: str) -> SourceLocation:
    """The first date-like token that is not a real calendar date or time (1-based)."""
    for n, line in enumerate(text.splitlines(), start=1):
        for m in _DATE.finditer(line):
            y, mo, d = (int(g) for g in m.groups()[:3])
            hh, mm, ss = (int(g) if g else 0 for g in m.groups()[3:])
            try:
                datetime(y, mo, d, hh, mm, ss)
            except ValueError:
                return SourceLocation(path, n, m.start() + 1)
    return SourceLocation(path, 1, 1)
