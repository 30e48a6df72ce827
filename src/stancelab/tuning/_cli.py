"""Command functions for ``stancelab finetune`` / ``evaluate`` / ``table`` (typer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stancelab.conversation._console import (
    DryRunOption,
    MaxCostOption,
    MeasureOption,
    ProgressEveryOption,
    YesOption,
    friendly_errors,
    terminal_confirm,
)
from stancelab.conversation._tally import default_max_cost
from stancelab.tuning._evaluate import TASKS, evaluate
from stancelab.tuning._pipeline import STAGE_NAMES, run_finetune
from stancelab.tuning._report import table

app = typer.Typer(
    help="Self-fine-tuning: datasets, LoRA/DPO training, benchmarks.", no_args_is_help=True
)


@app.command("finetune")
@friendly_errors
def finetune_command(
    file: Annotated[Path, typer.Argument(help="Fine-tuning YAML file")],
    stage: Annotated[
        list[str] | None,
        typer.Option("--stage", help=f"Run only this stage (repeatable): {', '.join(STAGE_NAMES)}"),
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Run from this stage on")] = None,
    dry_run: DryRunOption = False,
    measure: MeasureOption = True,
    max_cost: MaxCostOption = None,
    yes: YesOption = False,
    progress_every: ProgressEveryOption = 60.0,
) -> None:
    """Run the whole loop: questions, datasets, training, export, debates, benchmarks.

    A stage whose output is already on disk is skipped, so a rerun continues where an
    interrupted one stopped; delete a stage's files to run it again. The estimate of
    what the chosen stages still need is printed before the first model call.
    """

    run_finetune(
        file,
        only=stage,
        start=start,
        estimate=True,
        measure=measure,
        dry_run=dry_run,
        max_cost=max_cost if max_cost is not None else default_max_cost(),
        yes=yes,
        confirm=terminal_confirm(),
        progress_every=progress_every,
    )


@app.command("evaluate")
@friendly_errors
def evaluate_command(
    model: Annotated[str, typer.Argument(help="Embedded model name, GGUF path or HF folder")],
    adapter: Annotated[
        list[Path] | None,
        typer.Option("--adapter", help="PEFT adapter folder(s), merged in order (NWP then DPO)"),
    ] = None,
    task: Annotated[
        list[str] | None, typer.Option("--task", help="mmlu and/or hellaswag (default: both)")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder with mmlu/ and hellaswag/ files in the original formats"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Items per task (for quick checks)")] = None,
    num_fewshot: Annotated[int, typer.Option(help="Few-shot examples")] = 0,
    allow_network: Annotated[
        bool,
        typer.Option(
            help="Read the benchmarks from the Hugging Face hub when no data_dir is given"
        ),
    ] = False,
) -> None:
    """MMLU and HellaSwag accuracy through lm-evaluation-harness."""

    scores = evaluate(
        model,
        task or list(TASKS),
        data_dir,
        adapters=adapter or [],
        limit=limit,
        num_fewshot=num_fewshot,
        allow_network=allow_network,
    )
    typer.echo(json.dumps(scores))


@app.command("table")
@friendly_errors
def table_command(
    results: Annotated[Path, typer.Argument(help="results.json or the run's output folder")],
) -> None:
    """Print the Table-1 style summary (per adapter rank) of a fine-tuning run."""

    typer.echo(table(results))


def main() -> None:
    """Entry point when run as ``python -m stancelab.tuning._cli``."""
    app()


if __name__ == "__main__":
    main()
