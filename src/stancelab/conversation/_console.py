"""Terminal output shared by every command: consoles and one-line errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from stancelab.engine import StancelabError

console = Console()
err_console = Console(stderr=True)


def friendly_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Turn errors a user can fix into one line on stderr and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except StancelabError as exc:
            err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; finished work is stored")
            raise typer.Exit(130) from None

    return wrapper
