"""Shared CLI helpers: error printing with the stable code, the default policy folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console

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
        err_console.print(f"[bold red]error[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(code=2) from None


def handles_errors(fn: Callable[..., None]) -> Callable[..., None]:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> None:
        with user_errors():
            fn(*args, **kwargs)

    return wrapper
