"""Terminal output shared by every command: consoles and one-line errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from stancelab.conversation._tally import MAX_COST_ENV
from stancelab.engine import StancelabError

console = Console()
err_console = Console(stderr=True)

# The options every command that prints an estimate takes (run, replicate, finetune).
DryRunOption = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the estimate (requests, tokens, time, cost) and stop."),
]
MeasureOption = Annotated[
    bool,
    typer.Option(
        "--measure/--no-measure",
        help="Open the models to count tokens and time a few seconds of work.",
    ),
]
MaxCostOption = Annotated[
    float | None,
    typer.Option(
        "--max-cost", help=f"Ask before running above this cost in USD (default: ${MAX_COST_ENV})."
    ),
]
YesOption = Annotated[bool, typer.Option("--yes", help="Run whatever the estimated cost.")]
ProgressEveryOption = Annotated[
    float,
    typer.Option(
        "--progress-every", help="Seconds between progress lines when output is not a terminal."
    ),
]


def terminal_confirm() -> Callable[[str], bool] | None:
    """Asks the person at a terminal yes or no; None when the output is not a terminal
    (a batch job), where nobody could answer."""
    return (lambda question: typer.confirm(question)) if console.is_terminal else None


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
