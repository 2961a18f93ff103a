"""Shared CLI helpers: error printing with the stable code, the default policy folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from provguard.errors import ProvguardError

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
