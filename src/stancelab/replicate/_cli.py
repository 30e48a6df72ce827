"""``stancelab replicate PAPER --model M [--model M2 ...]``: a paper's findings on any model.

Register in stancelab/cli.py with::

    from stancelab.replicate._cli import replicate_command
    app.command("replicate")(replicate_command)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from stancelab.conversation._console import (
    DryRunOption,
    MaxCostOption,
    MeasureOption,
    YesOption,
    console,
    friendly_errors,
    terminal_confirm,
)
from stancelab.engine import ConfigError
from stancelab.replicate._replication import papers, replicate
from stancelab.replicate._verdict import NOT_REPRODUCED, REPRODUCED

VERDICT_STYLE = {REPRODUCED: "green", NOT_REPRODUCED: "red"}


def model_option(text: str) -> str | dict[str, Any]:
    """A ``--model`` value: a name, a GGUF path, a server URL, or a model entry written as
    a YAML mapping (``{name: gpt-4o-mini, backend: openai, base_urls: [...]}``)."""
    if not text.lstrip().startswith("{"):
        return text
    try:
        entry = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = str(exc).splitlines()[0]
        raise ConfigError(f"--model {text!r} is not a YAML mapping: {problem}") from None
    if not isinstance(entry, dict):
        raise ConfigError(f"--model {text!r} is not a YAML mapping")
    return entry


def _log(message: str) -> None:
    """A progress line, never wrapped (it may go to a file); warnings in yellow."""
    style = "yellow" if message.startswith("WARNING") else None
    console.print(message, style=style, highlight=False, soft_wrap=True)


def _comma_list(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


@friendly_errors
def replicate_command(
    paper: Annotated[str, typer.Argument(help="The paper: taubenfeld2024 or jiang2025.")],
    model: Annotated[
        list[str],
        typer.Option(
            help="A model: embedded name, GGUF path, server URL, or a YAML mapping "
            "'{name: ..., backend: ..., base_urls: [...]}'. Repeat to compare models "
            "side by side."
        ),
    ],
    scale: Annotated[
        str, typer.Option(help="smoke, quick or paper (the debate paper's design size).")
    ] = "smoke",
    prompt_format: Annotated[
        str, typer.Option(help="auto, transcript (the paper's Figure 2) or chat.")
    ] = "auto",
    out: Annotated[Path, typer.Option(help="Folder holding the run folders.")] = Path("runs"),
    claims: Annotated[
        str | None, typer.Option(help="Only these claim ids (comma list); default: all.")
    ] = None,
    setups: Annotated[
        str | None,
        typer.Option(help="Only these setups of the debate design (comma list); default: all."),
    ] = None,
    participants: Annotated[
        int, typer.Option(help="Simulated participants per model (jiang2025).")
    ] = 6,
    min_probe_coverage: Annotated[
        float | None,
        typer.Option(help="The study's probe coverage gate (jiang2025); default: 0.5."),
    ] = None,
    tuning: Annotated[
        bool,
        typer.Option(
            help="Also run the self-fine-tuning intervention (taubenfeld2024: Figs. 6, 11, "
            "12, Table 1) on each model; needs local weights (an embedded name or a GGUF)."
        ),
    ] = False,
    benchmarks: Annotated[
        Path | None,
        typer.Option(
            help="With --tuning: a folder of mmlu/ and hellaswag/ files in the original "
            "formats (examples/finetune-bench), for Table 1's cost rows."
        ),
    ] = None,
    allow_network: Annotated[
        bool,
        typer.Option(help="With --tuning and no --benchmarks: read the benchmarks from the hub."),
    ] = False,
    report: Annotated[bool, typer.Option(help="Write the HTML report at the end.")] = True,
    dry_run: DryRunOption = False,
    measure: MeasureOption = True,
    max_cost: MaxCostOption = None,
    yes: YesOption = False,
) -> None:
    """Run a paper's design on one or more models and give each claim a verdict.

    Given again, the same command resumes: finished debates (and participants) are kept.
    The estimate of what the whole design needs is printed before the first run starts.
    """

    if paper not in papers():  # before the model entries are read
        raise ConfigError(f"unknown paper {paper!r}; choose one of: {', '.join(papers())}")
    replication = replicate(
        paper,
        models=[model_option(m) for m in model],
        scale=scale,
        prompt_format=prompt_format,
        out=out,
        claims=_comma_list(claims),
        setups=_comma_list(setups),
        participants=participants,
        min_probe_coverage=min_probe_coverage,
        tuning=tuning,
        benchmarks=benchmarks,
        allow_network=allow_network,
        log=_log,
        dry_run=dry_run,
        measure=measure,
        max_cost=max_cost,
        yes=yes,
        ask=terminal_confirm(),
    )
    if dry_run:
        return
    verdicts = replication.verdicts()
    table = Table(title=f"{paper}: claims by model")
    for column in verdicts.columns:
        table.add_column(str(column), overflow="fold")  # a log keeps whole names
    for row in verdicts.itertuples(index=False):
        cells = [str(v) for v in row]
        styled = [
            f"[{VERDICT_STYLE[c]}]{c}[/]" if c in VERDICT_STYLE else c
            for c in cells[4:]  # the model columns
        ]
        table.add_row(*cells[:4], *styled)
    console.print(table)
    table1 = replication.table1()
    if not table1.empty:
        cost = Table(title=f"{paper}: Table 1 (paper: Mistral 7B tuned toward Republican)")
        for column in table1.columns:
            cost.add_column(str(column), overflow="fold")
        for row in table1.itertuples(index=False):
            cost.add_row(*("–" if isinstance(v, float) and math.isnan(v) else str(v) for v in row))
        console.print(cost)
    if report:
        console.print(f"report: {replication.report()}")
