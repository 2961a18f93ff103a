"""Anchor a run's report files in the audit chain, and check them when the report is rebuilt.

``provguard run`` writes ``report.html`` and ``evidence.json`` after its audit entries, then
appends one :data:`REPORT_ENTRY_KIND` (``job.report``) entry whose payload
(:func:`report_entry_payload`) records:

* ``report_sha256`` -- :func:`canonical_sha256` of ``evidence.json``'s ``report`` section, the
  digest :func:`provguard.report.render.report_digest` computes from the model;
* ``files`` -- the SHA-256 (FIPS 180-4, lowercase hex) of the bytes of ``evidence.json``,
  ``report.html``, ``data/profile_scan.parquet`` and ``data/recommendations.parquet`` (those
  present);
* ``carried`` -- :func:`carried_digests`: the digest of each part a rebuilt report carries
  over (data source, recommendation quality, the scan's ground truth, title, rule summaries,
  the job's notes), so a report rebuilt from the anchored one, which copies those parts
  verbatim, is still recognised when it is rebuilt again;
* ``run`` -- ``first_seq`` / ``last_seq``: the audit entries of the run the report describes
  (its data-store, decision, grant and campaign entries);

and signs a checkpoint over it with the run's key.

``provguard report --store`` carries over what no store keeps (the data source, the
recommendation-quality evaluation, the scan's ground truth, title, notes) from ``evidence.json``
and reads the scan from ``data/profile_scan.parquet``. :func:`find_report_entry` picks the newest
``job.report`` entry of the latest run and says whether the verified, signed chain vouches for
it; :func:`check_files` recomputes each anchored file's digest and returns one
:class:`~provguard.audit.crosscheck.TableCheck` per file (table name = the file's path in the
folder), whose discrepancy (the recomputed digest against the recorded one, or "no entry")
withholds the sections built from that file (:data:`ANCHORED_SECTIONS`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provguard.audit.chain import AuditEntry
from provguard.audit.crosscheck import SIGNATURE_FIELD, Discrepancy, TableCheck, VerifiedRange
from provguard.audit.signing import SignedCheckpoint

__all__ = [
    "ANCHORED_SECTIONS",
    "EVIDENCE_FILE",
    "REBUILT_PREFIX",
    "RECOMMENDATIONS_FILE",
    "REPORT_ENTRY_KIND",
    "REPORT_FILE",
    "SCAN_FILE",
    "AnchoredReport",
    "ReportEntry",
    "canonical_sha256",
    "carried_digests",
    "carried_parts",
    "carries_nothing",
    "check_files",
    "evidence_match",
    "evidence_report_digest",
    "file_sha256",
    "file_statement",
    "find_report_entry",
    "folder_file_checks",
    "rebuilt_entry_payload",
    "replaced_files",
    "report_entry_payload",
    "set_aside",
]

REPORT_ENTRY_KIND = "job.report"
"""The audit entry kind ``provguard run`` appends after writing its report."""

EVIDENCE_FILE = "evidence.json"
SCAN_FILE = "data/profile_scan.parquet"
RECOMMENDATIONS_FILE = "data/recommendations.parquet"
REPORT_FILE = "report.html"
"""The rendered report; its SHA-256 is in the entry's ``files`` (checked by ``audit verify``)."""

ANCHORED_SECTIONS: Mapping[str, str] = {
    EVIDENCE_FILE: "5. Recommendation quality, data source, 4. the scan's ground truth "
    "(carried over)",
    SCAN_FILE: "4. Profile-match scan",
    RECOMMENDATIONS_FILE: "5. Stored recommendation cards (carried over)",
}
"""The files the rebuilt report reads or carries over, and the sections built from them."""

_FIELD = {EVIDENCE_FILE: "report_sha256", SCAN_FILE: "sha256", RECOMMENDATIONS_FILE: "sha256"}
_CHUNK = 1 << 20


def canonical_sha256(value: Any) -> str:
    """SHA-256 hex of ``value``'s canonical JSON (sorted keys, no whitespace, UTF-8, non-ASCII
    kept): applied to a model's ``model_dump(mode="json")`` it is
    :func:`provguard.report.render.report_digest`. Raises ``TypeError`` / ``ValueError`` for a
    value JSON cannot encode."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def evidence_report_digest(doc: Any) -> str | None:
    """:func:`canonical_sha256` of an evidence document's ``report`` section (a parsed
    ``evidence.json``), recomputed -- never the ``report_sha256`` the document states. ``None``
    when ``doc`` has no ``report`` object."""
    report = doc.get("report") if isinstance(doc, Mapping) else None
    return canonical_sha256(report) if isinstance(report, Mapping) else None


def file_sha256(path: Path) -> str:
    """SHA-256 hex of the file's bytes, read in 1 MiB blocks. Raises ``OSError``."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


REBUILT_PREFIX = "Rebuilt"
"""Notes a rebuilt report adds start with this word; the job's own notes never do."""


def carried_parts(report: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a report section (``evidence.json``'s ``report``) that ``provguard report
    --store`` carries over: ``data_source``, ``recommendations``, ``scan_truth`` (per app the
    three ground-truth counts), ``title``, ``rule_summaries`` (rule id -> summary) and
    ``notes`` (those not starting with :data:`REBUILT_PREFIX`)."""
    truth = [
        {k: row.get(k) for k in ("app", "truth_handle", "truth_picture", "truth_either")}
        for row in report.get("scan") or ()
        if isinstance(row, Mapping)
    ]
    summaries = {
        str(rule.get("rule_id")): rule.get("summary")
        for inst in report.get("instruments") or ()
        if isinstance(inst, Mapping)
        for rule in inst.get("rules") or ()
        if isinstance(rule, Mapping)
    }
    notes = [n for n in report.get("notes") or () if not str(n).startswith(REBUILT_PREFIX)]
    return {
        "data_source": report.get("data_source"),
        "recommendations": report.get("recommendations"),
        "scan_truth": truth,
        "title": report.get("title"),
        "rule_summaries": summaries,
        "notes": notes,
    }


def carried_digests(report: Mapping[str, Any]) -> dict[str, str]:
    """:func:`canonical_sha256` of each of :func:`carried_parts`."""
    return {name: canonical_sha256(value) for name, value in carried_parts(report).items()}


def _read_report(path: Path) -> tuple[Mapping[str, Any] | None, str]:
    """``(report section, its digest)``, or ``(None, why)`` when unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    digest = evidence_report_digest(doc)
    if digest is None:
        return None, "no report section"
    return doc["report"], digest


def _evidence_digest(path: Path) -> str:
    return _read_report(path)[1]


def report_entry_payload(
    root: Path, *, report_sha256: str, first_seq: int, last_seq: int
) -> dict[str, object]:
    """The ``job.report`` payload for the report files just written in the output folder
    ``root``: ``report_sha256`` (the model's digest), the SHA-256 of each present file of
    ``evidence.json``, ``report.html``, ``data/profile_scan.parquet``,
    ``data/recommendations.parquet`` (``files``: path relative to ``root`` -> hex), and the
    run's entries ``first_seq``..``last_seq`` (``run``). Raises ``OSError`` when a present
    file cannot be read, ``ValueError`` when ``evidence.json`` does not hold the report of
    digest ``report_sha256`` (it was written by someone else meanwhile)."""
    stored = _evidence_digest(root / EVIDENCE_FILE)
    if stored != report_sha256:
        raise ValueError(
            f"{root / EVIDENCE_FILE} does not hold the report just written "
            f"(digest {stored}, expected {report_sha256})"
        )
    report, _ = _read_report(root / EVIDENCE_FILE)
    assert report is not None  # its digest matched just above
    files = {
        name: file_sha256(root / name)
        for name in (EVIDENCE_FILE, REPORT_FILE, SCAN_FILE, RECOMMENDATIONS_FILE)
        if (root / name).is_file()
    }
    return {
        "report_sha256": report_sha256,
        "carried": carried_digests(report),
        "files": files,
        "run": {"first_seq": first_seq, "last_seq": last_seq},
    }


@dataclass(frozen=True)
class AnchoredReport:
    """The ``job.report`` entry a run appended after writing its report (``seq``; its
    ``payload``: :func:`report_entry_payload`) and the checkpoint signed over it
    (``checkpoint``, also exported as ``checkpoint.json``)."""

    seq: int
    payload: Mapping[str, object]
    checkpoint: SignedCheckpoint


@dataclass(frozen=True)
class ReportEntry:
    """The ``job.report`` entry found for the latest run (``entry``, ``None``: none), and why
    the chain does not vouch for it (``problem``: ``None`` when it does; ``field`` the
    discrepancy field the problem is reported under)."""

    entry: AuditEntry | None
    problem: str | None = None
    field: str = SIGNATURE_FIELD

    @property
    def seq(self) -> int | None:
        return self.entry.seq if self.entry is not None else None

    def recorded(self, name: str) -> str | None:
        """The digest the entry records for the anchored file ``name`` (``None``: none)."""
        if self.entry is None:
            return None
        payload = self.entry.payload
        if name == EVIDENCE_FILE:
            value = payload.get("report_sha256")
        else:
            files = payload.get("files")
            value = files.get(name) if isinstance(files, Mapping) else None
        return value if isinstance(value, str) else None


def _run_range(entry: AuditEntry) -> tuple[int, int] | None:
    run = entry.payload.get("run")
    if not isinstance(run, Mapping):
        return None
    first, last = run.get("first_seq"), run.get("last_seq")
    if isinstance(first, int) and isinstance(last, int) and 1 <= first <= last < entry.seq:
        return first, last
    return None


def find_report_entry(
    candidates: Sequence[AuditEntry],
    counted: tuple[int, int] | None,
    verified: VerifiedRange,
) -> ReportEntry:
    """The newest of ``candidates`` (``job.report`` entries, any order) that describes the
    latest run -- its ``run`` range holds the decision entries the report counts
    (``counted``: first and last seq; ``None``: no job decisions, any run) -- checked against
    ``verified``: the entry must lie in the verified chain and, when signatures are required
    (``verified.signed`` not ``None``), be covered by a checkpoint signed with the folder's
    key. An entry failing that is returned with its ``problem``; no entry: ``entry`` ``None``."""
    for e in sorted(candidates, key=lambda c: c.seq, reverse=True):
        span = _run_range(e)
        if span is None:
            continue
        if counted is not None and not (span[0] <= counted[0] and counted[1] <= span[1]):
            continue
        if e.seq not in verified:
            return ReportEntry(e, f"entry #{e.seq} is outside the verified chain", "chain")
        if verified.signed is not None and e.seq > verified.signed:
            cover = f"signed up to #{verified.signed}" if verified.signed else "no entry is signed"
            return ReportEntry(e, f"entry #{e.seq} is not covered by a signed checkpoint ({cover})")
        return ReportEntry(e)
    return ReportEntry(None)


def carries_nothing(report: Mapping[str, Any]) -> bool:
    """Whether a report section has nothing a rebuild would carry over as figures: no
    recommendation evaluation, no scan ground truth, no job notes (what ``provguard report
    --store`` writes when it carried nothing over)."""
    parts = carried_parts(report)
    return (
        parts["recommendations"] is None
        and not parts["notes"]
        and all(
            row.get(k) is None
            for row in parts["scan_truth"]
            for k in ("truth_handle", "truth_picture", "truth_either")
        )
    )


def evidence_match(root: Path, found: ReportEntry) -> str | None:
    """How ``root/evidence.json`` matches the entry ``found``: ``"report"`` when its report
    digest (recomputed) is the one recorded -- the report the run wrote; ``"carried"`` when
    only every carried-over part (:func:`carried_digests`) matches -- a report rebuilt from
    it by ``provguard report --store``; ``None`` otherwise, or when the chain does not vouch
    for the entry, or there is none."""
    if found.entry is None or found.problem is not None:
        return None
    report, digest = _read_report(root / EVIDENCE_FILE)
    if report is None:
        return None
    if digest == found.recorded(EVIDENCE_FILE):
        return "report"
    recorded = found.entry.payload.get("carried")
    if isinstance(recorded, Mapping) and dict(recorded) == carried_digests(report):
        return "carried"
    return None


def _carries_nothing(path: Path) -> bool:
    report, _ = _read_report(path)
    return report is not None and carries_nothing(report)


def _current(root: Path, name: str) -> str | None:
    path = root / name
    if not path.is_file():
        return None
    if name == EVIDENCE_FILE:
        return _evidence_digest(path)
    try:
        return file_sha256(path)
    except OSError as exc:
        return f"unreadable ({type(exc).__name__})"


def check_files(root: Path, found: ReportEntry) -> tuple[TableCheck, ...]:
    """One check per anchored file of the output folder ``root`` that exists or that the
    entry records: ``evidence.json``'s report digest recomputed, each Parquet file's SHA-256,
    compared with what ``found`` records. A discrepancy (``table_value``: the digest now,
    ``chain_value``: the recorded one, or ``None`` when no entry records it) when they differ,
    when there is no entry (a log written before reports were anchored) or when the chain does
    not vouch for the entry (``found.problem``)."""
    out: list[TableCheck] = []
    span = _run_range(found.entry) if found.entry is not None else None
    key = f"run #{span[0]}–#{span[1]}" if span is not None else "latest run"
    for name, fieldname in _FIELD.items():
        now, recorded = _current(root, name), found.recorded(name)
        if now is None and recorded is None:
            continue
        if name == EVIDENCE_FILE and found.entry is None and _carries_nothing(root / name):
            continue  # a report rebuilt with nothing carried over: nothing to vouch for
        problem: Discrepancy | None = None
        if found.problem is not None:
            problem = Discrepancy(name, key, found.field, now, found.problem, found.seq)
        elif now != recorded and not (name == EVIDENCE_FILE and evidence_match(root, found)):
            problem = Discrepancy(name, key, fieldname, now, recorded, found.seq)
        out.append(
            TableCheck(
                table=name,
                rows=int(now is not None),
                entries=int(recorded is not None),
                matched=int(problem is None),
                discrepancies=() if problem is None else (problem,),
                present=now is not None,
            )
        )
    return tuple(out)


def file_statement(
    name: str,
    table_value: str | None,
    chain_value: str | None,
    seq: int | None,
    field: str,
    code: str = "PG340",
) -> str:
    """The sentence printed at a section whose anchored file ``name`` is withheld, from its
    discrepancy (the digest now, the recorded one, the entry's ``seq``, the ``field``)."""
    if field in (SIGNATURE_FIELD, "chain"):
        why = f"the audit chain does not vouch for the run's job.report entry ({chain_value})"
    elif seq is None:
        why = (
            "no job.report entry of the latest run records it (a log written before reports "
            "were anchored in the chain, or a run that did not finish)"
        )
    elif table_value is None:
        why = f"it is missing, but job.report entry #{seq} records it"
    else:
        what = "report digest" if field == "report_sha256" else "SHA-256"
        why = (
            f"its {what} is {_short(table_value)}, but job.report entry #{seq} records "
            f"{_short(chain_value)}: it was changed after the run"
        )
    return (
        f"[{code}] Withheld: {name} is not chain-backed -- {why} -- so the figures taken "
        "from it are not evidence and are not shown"
    )


def _short(value: str | None) -> str:
    if value is None:
        return "nothing"
    return value[:16] + "…" if len(value) == 64 else value


def folder_file_checks(root: Path, found: ReportEntry) -> tuple[TableCheck, ...]:
    """What ``provguard audit verify`` checks of the report files beside the log: each file of
    :func:`check_files` (``evidence.json``'s report digest, or every carried-over part of a
    report rebuilt from it; the two Parquet files' SHA-256) plus ``report.html``'s SHA-256
    (FIPS 180-4) against the ``files`` of the entry ``found``, the newest ``job.report`` entry.
    Only files present in ``root`` are returned (a folder holding just the log has nothing to
    compare; a missing file is no forged figure). A check fails (one
    :class:`~provguard.audit.crosscheck.Discrepancy`, ``table_value`` the digest now,
    ``chain_value`` the recorded one) when the digests differ, when the entry records nothing
    for a present file, or when the chain does not vouch for the entry (``found.problem``).
    ``found.entry`` ``None``: nothing is checked (``()``; a log with no anchored report)."""
    if found.entry is None:
        return ()
    out = [t for t in check_files(root, found) if t.present]
    path = root / REPORT_FILE
    if path.is_file():
        now, recorded = _current(root, REPORT_FILE), found.recorded(REPORT_FILE)
        span = _run_range(found.entry)
        key = f"run #{span[0]}–#{span[1]}" if span is not None else "latest run"
        problem: Discrepancy | None = None
        if found.problem is not None:
            problem = Discrepancy(REPORT_FILE, key, found.field, now, found.problem, found.seq)
        elif now != recorded:
            problem = Discrepancy(REPORT_FILE, key, "sha256", now, recorded, found.seq)
        out.append(
            TableCheck(
                table=REPORT_FILE,
                rows=1,
                entries=int(recorded is not None),
                matched=int(problem is None),
                discrepancies=() if problem is None else (problem,),
                present=True,
            )
        )
    return tuple(out)


def replaced_files(root: Path, found: ReportEntry) -> dict[str, tuple[str, str | None]]:
    """The files ``provguard report --store`` is about to rewrite in ``root``
    (``report.html``, ``evidence.json``) that are present and are not the ones the entry
    ``found`` records: name -> (SHA-256 of the file's bytes now, the recorded SHA-256 or
    ``None``). Bytes are compared for both files (a rebuilt ``evidence.json`` is anchored by
    its own entry, :func:`rebuilt_entry_payload`). Empty when there is no entry."""
    if found.entry is None:
        return {}
    files = found.entry.payload.get("files")
    recorded = files if isinstance(files, Mapping) else {}
    out: dict[str, tuple[str, str | None]] = {}
    for name in (REPORT_FILE, EVIDENCE_FILE):
        path = root / name
        if not path.is_file():
            continue
        try:
            now = file_sha256(path)
        except OSError as exc:
            now = f"unreadable ({type(exc).__name__})"
        want = recorded.get(name)
        want = want if isinstance(want, str) else None
        if now != want:
            out[name] = (now, want)
    return out


def set_aside(path: Path, seq: int | None) -> Path:
    """Rename ``path`` to ``<name>.differed-<seq>`` (``-<seq>-2``, ``-3``... when taken) in its
    folder, so a file that differed from the anchored one is kept, never overwritten. Returns
    the new path. Raises ``OSError``."""
    base = f"{path.name}.differed-{seq if seq is not None else 'unanchored'}"
    target, n = path.with_name(base), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{base}-{n}")
    path.rename(target)
    return target


def rebuilt_entry_payload(
    root: Path, previous: AuditEntry, *, report_sha256: str, replaced: Sequence[str]
) -> dict[str, object]:
    """The ``job.report`` payload ``provguard report --store`` appends after rewriting
    ``report.html`` and ``evidence.json`` in ``root`` (the folder of the anchored run): as
    :func:`report_entry_payload` for those two files (``report_sha256``: the rebuilt model's
    digest, ``carried``, their SHA-256), but the Parquet files' digests and the ``run`` range
    are copied from ``previous`` (the entry the rebuild relied on), never recomputed: a
    rebuild must not anchor a scan or cards file edited after the run. ``rebuilt``:
    ``{"previous": previous.seq, "replaced": [the files that differed from it]}``. Raises
    ``OSError`` / ``ValueError`` as :func:`report_entry_payload`, and ``ValueError`` when
    ``previous`` has no valid ``run`` range."""
    span = _run_range(previous)
    if span is None:
        raise ValueError(f"job.report entry #{previous.seq} records no run range")
    payload = report_entry_payload(
        root, report_sha256=report_sha256, first_seq=span[0], last_seq=span[1]
    )
    old = previous.payload.get("files")
    old_files = old if isinstance(old, Mapping) else {}
    files = payload["files"]
    assert isinstance(files, dict)
    for name in (SCAN_FILE, RECOMMENDATIONS_FILE):
        files.pop(name, None)
        if isinstance(old_files.get(name), str):
            files[name] = old_files[name]
    payload["rebuilt"] = {"previous": previous.seq, "replaced": sorted(replaced)}
    return payload
