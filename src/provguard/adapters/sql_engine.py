"""Opening a SQLAlchemy store: one place for URL handling, SQLite pragmas and errors.

A store is given a SQLAlchemy URL (``postgresql+psycopg://...``) or a file path (SQLite). SQLite
files run in WAL mode with a 30 s busy timeout, so a reader never blocks the writer and a crash
mid-transaction leaves the previous state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from provguard.errors import StoreError


def store_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL for ``url_or_path`` (a bare path becomes an absolute SQLite URL)."""
    url = str(url_or_path)
    return url if "://" in url else f"sqlite:///{Path(url).resolve()}"


def open_store(
    url_or_path: str | Path,
    metadata: MetaData,
    what: str,
    *,
    synchronous: str | None = "NORMAL",
) -> Engine:
    """An engine with ``metadata``'s tables created.

    ``synchronous``: SQLite's ``PRAGMA synchronous`` (None keeps SQLite's default, FULL).
    Raises :class:`StoreError` naming ``what`` (the password of a URL is never shown).
    """
    url = store_url(url_or_path)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})

            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                if synchronous is not None:
                    cur.execute(f"PRAGMA synchronous={synchronous}")
                cur.close()

            event.listen(engine, "connect", _pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(engine)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or type(exc).__name__
        raise StoreError(f"cannot open {what} {shown}: {reason}") from None
    return engine
