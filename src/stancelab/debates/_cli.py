"""The debate commands: ``debate``, ``sauce``, ``run``, ``status``, ``report``, ``personas``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

from stancelab.conversation._config import format_validation_error
from stancelab.conversation._console import (
    DryRunOption,
    MaxCostOption,
    MeasureOption,
    ProgressEveryOption,
    YesOption,
    console,
    friendly_errors,
    terminal_confirm,
)
from stancelab.conversation._personas import generate_personas, paper_topic
from stancelab.conversation._survey import SurveyAnswer, parse_modes
from stancelab.conversation._tally import check_cost, default_max_cost
from stancelab.conversation._templates import load_prompts
from stancelab.debates._analysis import attitude_frame, plot_attitudes, turn_frame
from stancelab.debates._debate import Debate, DebateEvents, DebateSpec, DecideStep, Turn, TurnStep
from stancelab.debates._estimate import Estimate, ProgressLines, estimate_run
from stancelab.debates._experiment import load_experiment
from stancelab.debates._formats import check_format_option, probe_format, resolve_format
from stancelab.debates._report import write_report
from stancelab.debates._runner import (
    ModelPool,
    Plan,
    Progress,
    RunFolder,
    RunResult,
    ensure_writable_dir,
    execute,
    experiment_status,
    plan_experiment,
)
from stancelab.debates._sauce import load_sauce
from stancelab.debates._single import debate_spec, plan_debate
from stancelab.engine import ConfigError, StancelabError
from stancelab.engine._factory import ModelConfig, open_model

app = typer.Typer()
"""Mounted without a name by ``stancelab.cli``: these are top-level commands."""
personas_app = typer.Typer(help="Write and check persona sets.", no_args_is_help=True)
app.add_typer(personas_app, name="personas")

KIND_STYLE = {"republican": "red", "democrat": "blue", "default": "white"}


# Options the one-debate commands (debate, sauce) share, said once.
ModelOption = Annotated[str, typer.Option(help="Embedded model name or path to a GGUF file.")]
SurveyModeOption = Annotated[
    str, typer.Option(help="distribution, generate, or both (comma list).")
]
OutOption = Annotated[Path, typer.Option(help="Folder under which the run folder is made.")]
DbOption = Annotated[
    str | None,
    typer.Option(help="Database URL instead of RUN/stancelab.db (e.g. postgresql+psycopg://...)."),
]
ParallelOption = Annotated[int, typer.Option(help="Engine slots (requests in flight).")]
BackendOption = Annotated[
    str, typer.Option(help="llamacpp (in-process), openai (a server), transformers or fake.")
]
BaseUrlOption = Annotated[
    list[str] | None, typer.Option(help="OpenAI-compatible server URL (repeat for several).")
]
ApiKeyEnvOption = Annotated[
    str | None, typer.Option(help="Environment variable holding the API key.")
]
PromptFormatOption = Annotated[
    str,
    typer.Option(
        help="transcript (the paper's Figure 2), chat (messages) or auto (transcript "
        "on local models, chat on servers)."
    ),
]


@app.command()
@friendly_errors
def debate(
    topic: Annotated[str, typer.Option(help="What the agents debate, e.g. 'climate change'.")],
    agents: Annotated[
        str, typer.Option(help="Comma list of kinds: republican, democrat, default.")
    ] = "republican,democrat,default",
    iterations: Annotated[int, typer.Option(help="Number of replies (one per iteration).")] = 9,
    model: ModelOption = "qwen2.5-coder-0.5b",
    survey_mode: SurveyModeOption = "distribution",
    seed: Annotated[int, typer.Option(help="Seed for the first speaker and sampling.")] = 0,
    word_limit: Annotated[int, typer.Option(help="Replies must be shorter than this.")] = 50,
    out: OutOption = Path("runs"),
    db: DbOption = None,
    parallel: ParallelOption = 4,
    prompts: Annotated[
        Path | None, typer.Option(help="Folder with your own prompt templates.")
    ] = None,
    question: Annotated[
        str | None, typer.Option(help="Survey question; {topic} is filled in.")
    ] = None,
    backend: BackendOption = "llamacpp",
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    prompt_format: PromptFormatOption = "auto",
) -> None:
    """Run one debate, streaming the transcript, and store and plot the attitudes.

    Given again, the same command resumes the debate where it stopped."""

    spec = debate_spec(
        topic, agents.split(","), iterations, seed, word_limit, parse_modes(survey_mode)
    )
    model_config = _model_config(model, backend, base_url, api_key_env, parallel)
    chosen = resolve_format(model_config, check_format_option(prompt_format))
    prompt_set = load_prompts(prompts, format=chosen).with_question(question)
    _run_streamed(plan_debate(spec, model_config, prompt_set, "debate", db=db), out)


def _model_config(
    model: str, backend: str, base_urls: list[str] | None, api_key_env: str | None, parallel: int
) -> ModelConfig:
    """A validated ModelConfig from command-line options, with one-line errors."""

    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}")
    try:
        return ModelConfig.model_validate(
            {
                "name": model,
                "backend": backend,
                "base_urls": base_urls or [],
                "api_key_env": api_key_env,
                "parallel": parallel,
            }
        )
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="--")) from None


def _run_streamed(plan: Plan, out: Path) -> None:
    """Run (or resume) one debate with the transcript streaming to the terminal; store
    and plot it."""

    ensure_writable_dir(out)
    [(_, spec)] = plan.debates
    pool = ModelPool()
    try:
        with console.status(f"loading {plan.config['model'].get('name')}…"):
            plan.engines(pool, "")
        for line in _estimate(plan, out, pool, dry_run=False).lines():
            _line(line)  # what the debate still needs, before its first reply
        lineup = Debate(spec, plan.prompts)
        names = [p.name for p in spec.personas]
        console.print(
            f"[bold]{plan.name}[/] · {spec.topic} · "
            + ", ".join(f"{p.name} ({p.kind})" for p in spec.personas)
            + f" · first speaker {names[lineup.first_speaker]}"
        )
        result = execute(plan, out, log=_warn, models=pool, events=_streaming_events())
    finally:
        pool.close()
    _finish_debate_run(result, spec)


def _warn(message: str) -> None:
    console.print(message, style="yellow" if message.startswith("WARNING") else None)


def _streaming_events() -> DebateEvents:
    """Print each reply, survey, retry and decision as it happens."""

    def on_turn(d: Debate, turn: Turn) -> None:
        persona = d.spec.personas[turn.speaker]
        style = KIND_STYLE.get(persona.kind, "white")
        note = f" [dim](attempt {turn.attempts})[/]" if turn.attempts > 1 else ""
        console.print(
            f"[dim]{turn.iteration:>3}/{d.spec.iterations}[/] [{style}]{persona.name}"
            f"[/]: {turn.text}{note}",
            highlight=False,
        )

    def on_survey(d: Debate, answers: list[SurveyAnswer]) -> None:
        cells = []
        for a in answers:
            value = (
                f"{a.score:.2f}"
                if a.score is not None
                else (a.raw_text or "").strip()[:40]
                if a.ok
                else "failed"
            )
            label = "" if a.question_id == "attitude" else f"{a.question_id} "
            cells.append(f"{d.spec.personas[a.agent_index].name} {label}{value}")
        console.print(
            f"[dim]    survey @ {answers[0].iteration}: " + " · ".join(cells) + "[/]",
            highlight=False,
        )

    def on_retry(d: Debate, step: TurnStep, attempt: int, raw: str) -> None:
        console.print(
            f"[yellow]    unusable reply from {d.spec.personas[step.speaker].name} "
            f"(attempt {attempt}): {raw[:40]!r}; retrying[/]",
            highlight=False,
        )

    def on_decision(d: Debate, step: DecideStep, speaks: bool, raw: str) -> None:
        verdict = "speaks" if speaks else "waits"
        console.print(
            f"[dim]    {d.spec.personas[step.speaker].name} {verdict} ({raw.strip()[:30]!r})[/]",
            highlight=False,
        )

    return DebateEvents(
        on_turn=on_turn, on_survey=on_survey, on_retry=on_retry, on_decision=on_decision
    )


@app.command()
@friendly_errors
def sauce(
    file: Annotated[Path, typer.Argument(help="A SAUCE experiment file (JSON).")],
    model: ModelOption = "qwen2.5-coder-0.5b",
    topic: Annotated[
        str | None,
        typer.Option(help="Topic for the built-in attitude question when the file asks none."),
    ] = None,
    survey_mode: SurveyModeOption = "distribution",
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    out: OutOption = Path("runs"),
    db: DbOption = None,
    parallel: ParallelOption = 4,
    backend: BackendOption = "llamacpp",
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    prompt_format: PromptFormatOption = "auto",
) -> None:
    """Run a SAUCE JSON experiment (persons, round-robin host, survey questions) here.

    Given again, the same command resumes the debate where it stopped."""

    model_config = _model_config(model, backend, base_url, api_key_env, parallel)
    chosen = resolve_format(model_config, check_format_option(prompt_format))
    spec = load_sauce(file, seed=seed, survey_modes=parse_modes(survey_mode), topic=topic)
    plan = plan_debate(
        spec,
        model_config,
        load_prompts(format=chosen),
        "sauce",
        label=file.stem,
        db=db,
        source=("sauce.json", file.read_text(encoding="utf-8")),
        extra={"file": str(file)},
    )
    _run_streamed(plan, out)


def _finish_debate_run(result: RunResult, spec: DebateSpec) -> None:
    store, run_id, run_dir = result.store, result.run_id, result.folder.path

    frame = attitude_frame(store, run_id)
    scale = frame[frame["score"].notna() | ~frame["ok"].astype(bool)]
    table = Table(title=f"survey answers (0-10) · {spec.topic!r}")
    for column in ("agent", "question", "mode"):
        table.add_column(column)
    iterations = sorted(set(scale["iteration"]))
    for it in iterations:
        table.add_column(f"it {it}", justify="right")
    for (agent, qid, mode), rows in scale.groupby(["agent_index", "question_id", "mode"]):
        persona = spec.personas[int(str(agent))]
        by_it = dict(zip(rows["iteration"], rows["score"], strict=True))
        cells = [
            f"{by_it[i]:.2f}" if by_it.get(i) is not None and by_it[i] == by_it[i] else "–"
            for i in iterations
        ]
        table.add_row(f"{persona.name} ({persona.kind})", str(qid), str(mode), *cells)
    console.print(table)
    plot_path = None
    if (frame["question_id"] == "attitude").any() and frame["score"].notna().any():
        plot_path = plot_attitudes(
            frame, run_dir / "attitudes.png", title=f"{spec.topic} · run {run_id}"
        )
    [row] = store.debates(run_id)
    if row.error:
        raise StancelabError(f"debate stopped early: {row.error}")
    stats = result.stats
    console.print(
        f"{'resumed: ' if result.resumed else ''}{len(turn_frame(store, run_id))} replies in "
        f"{result.elapsed_s:.1f} s · prompt tokens {stats['prompt_tokens']} "
        f"({stats['cached_tokens']} from cache) · run {run_id} · results: {store.url}"
        + (f" · plot: {plot_path}" if plot_path else "")
    )


@app.command("run")
@friendly_errors
def run_command(
    file: Annotated[Path, typer.Argument(help="Experiment file (YAML).")],
    out: Annotated[Path, typer.Option(help="Folder holding run folders.")] = Path("runs"),
    report: Annotated[bool, typer.Option(help="Write the HTML report at the end.")] = True,
    dry_run: DryRunOption = False,
    measure: MeasureOption = True,
    max_cost: MaxCostOption = None,
    yes: YesOption = False,
    progress_every: ProgressEveryOption = 60.0,
) -> None:
    """Run an experiment file; run it again after an interruption to resume.

    The estimate of what it needs is printed before the first reply is asked."""

    config = load_experiment(file)
    plan = plan_experiment(config, file.read_text(encoding="utf-8"))
    limit = max_cost if max_cost is not None else default_max_cost()
    pool = ModelPool()
    try:
        found = _estimate(plan, out, pool if measure else None, dry_run)
        for line in found.lines():
            _line(line)
        if dry_run:
            opened = (
                "models were opened to measure them"
                if found.seconds is not None
                else ("no model was opened")
            )
            console.print(f"dry run: no debate was run ({opened})")
            return
        ask = terminal_confirm()
        check_cost(found, limit, yes, ask)
        result = _run_with_progress(plan, out, pool, found, progress_every)
    finally:
        pool.close()
    stats = result.stats
    console.print(
        f"{'resumed' if result.resumed else 'ran'} {config.name}: {result.debates} debates "
        f"({result.failed} failed) in {result.elapsed_s:.0f} s · prompt tokens "
        f"{stats['prompt_tokens']} ({stats['cached_tokens']} from cache), "
        f"{stats['completion_tokens']} generated · {result.folder.path}"
    )
    if report:
        path = write_report(result.folder)
        console.print(f"report: {path}")


def _line(text: str) -> None:
    """One line of a log, never wrapped (it may go to a file)."""
    console.print(text, highlight=False, soft_wrap=True)


def _estimate(plan: Plan, out: Path, pool: ModelPool | None, dry_run: bool) -> Estimate:
    """The run's estimate, measured on its models; a dry run whose models cannot be
    opened is counted without them."""

    def log(message: str) -> None:
        console.print(message, style="dim")

    try:
        return estimate_run(plan, out, pool, log)
    except StancelabError as exc:
        if not dry_run or pool is None:
            raise
        console.print(f"could not open the models ({exc}); counting without them")
        return estimate_run(plan, out, None, log)


def _run_with_progress(
    plan: Plan, out: Path, pool: ModelPool, found: Estimate, every_s: float
) -> RunResult:
    """Run with live bars on a terminal, or a progress line every ``every_s`` seconds
    when the output goes to a file or a batch job's log."""
    log = _warn
    if not console.is_terminal:
        with ProgressLines(found, pool.stats, _line, every_s) as lines:
            return execute(plan, out, None, log, models=pool, events=lines.events())
    bars = RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def on_cell(cell: str, total: int, done: int) -> None:
        tasks[cell] = bars.add_task(cell, total=total, completed=done)

    progress = Progress(on_cell=on_cell, on_change=lambda cell, n: bars.advance(tasks[cell], n))
    with bars:
        return execute(plan, out, progress, log, models=pool)


@app.command()
@friendly_errors
def status(run: Annotated[Path, typer.Argument(help="A run folder (runs/NAME).")]) -> None:
    """Show how far a run has got."""

    info = experiment_status(RunFolder(run))
    console.print(
        f"run {info['run_id']} · {info['experiment']} · [bold]{info['status']}[/]"
        + (f" · {info['error']}" if info["error"] else "")
    )
    table = Table()
    for column in ("topic · setup", "debates", "complete", "failed", "turns"):
        table.add_column(column)
    expected = info["expected_turns_per_cell"]
    for cell, counts in sorted(info["cells"].items()):
        table.add_row(
            cell,
            str(counts["debates"]),
            str(counts.get("complete", 0)),
            str(counts.get("failed", 0)),
            f"{counts.get('turns', 0)}/{expected}",
        )
    console.print(table)
    console.print(f"survey answers stored: {info['survey_answers']}")


@app.command("report")
@friendly_errors
def report_command(
    run: Annotated[Path, typer.Argument(help="A run folder (runs/NAME).")],
) -> None:
    """Write the HTML report (figures, statistics, sample transcripts) of a run."""

    console.print(str(write_report(RunFolder(run))))


@personas_app.command("generate")
@friendly_errors
def personas_generate(
    out: Annotated[Path, typer.Option(help="Persona file to write (YAML).")],
    per_party: Annotated[int, typer.Option(help="Stories per party.")] = 40,
    model: Annotated[str, typer.Option(help="Model that writes the stories.")] = (
        "qwen2.5-coder-0.5b"
    ),
    topics: Annotated[
        str,
        typer.Option(
            help="Comma list of extra topics for the ideology; the four Pew topics are "
            "always covered."
        ),
    ] = "climate change,racism,gun violence,illegal immigration",
    seed: Annotated[int, typer.Option(help="Seed for names and sampling.")] = 0,
    prompt_format: Annotated[
        str,
        typer.Option(help="transcript, chat or auto (chat where the model has a chat template)."),
    ] = "auto",
) -> None:
    """Write background stories with the paper's meta-prompt (Figure 1)."""

    if per_party < 1:
        raise ConfigError(f"--per-party must be at least 1, got {per_party}")
    chosen = [paper_topic(t) for t in topics.split(",") if t.strip()]
    model_config = ModelConfig(name=model)
    fmt = resolve_format(model_config, check_format_option(prompt_format), writing=True)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    with console.status(f"writing {2 * per_party} stories with {model} ({fmt} format)…"):
        engine = open_model(model_config)
        try:
            probe_format(engine, fmt)
            personas = generate_personas(engine, per_party, chosen, seed=seed, prompt_format=fmt)
        finally:
            engine.close()
    personas.save(out)
    console.print(f"{len(personas.personas)} personas → {out}")
