"""The one composition root: which adapter backs which port, and where files go in an output
folder.

    <out>/control.db        SQLite: instruments, rules, events, grants, transfers, audit log
    <out>/platform/*.parquet the sandbox platform as built (ground truth included)
    <out>/data/*.parquet     data plane: labelled profiles, recommendations, scans, audits
    <out>/report.html        the compliance report; <out>/evidence.json its data
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from provguard.adapters.audit_sqlite import SqliteAuditLog
from provguard.adapters.control_sqlite import SqlControlStore
from provguard.adapters.data_duckdb import ParquetDataStore
from provguard.clock import Clock


@dataclass
class Workspace:
    root: Path
    control: SqlControlStore
    data: ParquetDataStore
    audit: SqliteAuditLog

    @property
    def platform_dir(self) -> Path:
        return self.root / "platform"

    @property
    def report_path(self) -> Path:
        return self.root / "report.html"

    @property
    def evidence_path(self) -> Path:
        return self.root / "evidence.json"

    def close(self) -> None:
        self.audit.close()
        self.control.engine.dispose()


def open_workspace(root: Path, clock: Clock | None = None) -> Workspace:
    """Create (or reopen) an output folder with its stores."""
    root.mkdir(parents=True, exist_ok=True)
    db = root / "control.db"
    return Workspace(
        root=root,
        control=SqlControlStore(db),
        data=ParquetDataStore(root / "data"),
        audit=SqliteAuditLog(db, clock=clock, synchronous="NORMAL"),
    )
