"""Protocols the core depends on; adapters implement them (SQLite, DuckDB, files)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any, Protocol

import pyarrow as pa

from provguard.policy.model import Bundle


class ControlStore(Protocol):
    """The control plane: instruments and their events, grants, transfers."""

    def save_bundles(self, bundles: Iterable[Bundle]) -> None: ...

    def record_event(self, instrument_id: str, event: str, on: date) -> None: ...

    def events(self) -> Mapping[tuple[str, str], date]: ...

    def save_grants(self, grants: pa.Table) -> int: ...

    def save_transfers(self, transfers: pa.Table) -> int: ...

    def counts(self) -> dict[str, int]: ...


class DataStore(Protocol):
    """The data plane: labelled tables (profiles, edges, features) queried with SQL."""

    def write_table(self, name: str, table: pa.Table) -> None: ...

    def read_table(self, name: str) -> pa.Table: ...

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table: ...
