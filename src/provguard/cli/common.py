"""Shared CLI helpers: error printing with the stable code, the default policy folder, and the
parsing of dates and date-times given as options."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from provguard.errors import InputError, ProvguardError, RequestError

console = Console()
err_console = Console(stderr=True)

DEFAULT_POLICY_DIR = Path("policies")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a :class:`ProvguardError` into a message on stderr and exit code 2 (no traceback)."""
    try:
        yield
    except ProvguardError as exc:
        _fail(str(exc))
    except ValidationError as exc:  # settings built from options
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        _fail(f"[PG100] invalid option: {problems}")
    except OSError as exc:  # an output folder that is a file, a path that cannot be created
        where = f" ({exc.filename})" if exc.filename else ""
        _fail(f"[PG200] cannot read or write{where}: {exc.strerror or exc}")


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def handles_errors(fn: Callable[..., None]) -> Callable[..., None]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> None:
        with user_errors():
            fn(*args, **kwargs)

    return wrapper


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(value: str, option: str = "--date") -> date:
    """A calendar day written ``YYYY-MM-DD``.

    Raises :class:`~provguard.errors.InputError` (``PG100``) saying what is wrong: the format
    (``must be YYYY-MM-DD``) or the real calendar error (``month must be in 1..12``, ``day is out
    of range for month``).
    """
    text = value.strip()
    if not _DAY.match(text):
        raise InputError(f"{option} must be YYYY-MM-DD, not '{value}'")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InputError(f"{option} '{value}' is not a calendar day: {exc}") from None


def parse_instant(value: str, option: str = "--at") -> datetime:
    """An instant given on the command line, read exactly as the HTTP API reads it.

    ``YYYY-MM-DD`` is that day's midnight UTC; a date-time must carry its UTC offset
    (``2019-03-20T07:00+08:00``, ``...Z``): a naive date-time is refused, since the same text
    means different instants in different zones. Raises
    :class:`~provguard.errors.RequestError` (``PG140``) with the real parse error (``month must
    be in 1..12``) or, for a naive time, a hint how to write it.
    """
    text = value.strip()
    if _DAY.match(text):
        try:
            d = date.fromisoformat(text)
        except ValueError as exc:
            raise RequestError(f"{option} '{value}' is not a calendar day: {exc}") from None
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    try:
        t = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RequestError(
            f"{option} '{value}' is not an ISO-8601 date or date-time: {exc}"
        ) from None
    if t.tzinfo is None:
        raise RequestError(
            f"{option} '{value}' has no UTC offset; hint: write {text}Z (UTC) or "
            f"{text}+08:00 (China Standard Time); a plain YYYY-MM-DD means midnight UTC"
        )
    return t
