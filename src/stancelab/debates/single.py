"""One debate, stored as a run of its own: what ``stancelab debate``, ``stancelab sauce``
and ``stancelab.debate()`` share.

An experiment run (``runner.py``) and a single debate record the same provenance
(``run_versions``), so one reader (``results.py``) serves both.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stancelab._version import __version__
from stancelab.conversation.personas import personas_for
from stancelab.conversation.survey import SurveyMode, survey_modes_for
from stancelab.conversation.templates import PromptSet
from stancelab.debates.debate import Debate, DebateEvents, DebateSpec, run_debates
from stancelab.debates.formats import probe_format
from stancelab.debates.store import Store
from stancelab.engine.base import LanguageModel
from stancelab.engine.errors import ConfigError


def run_versions(
    models: list[dict[str, Any]],
    prompts: PromptSet,
    seed: int,
    modes: tuple[SurveyMode, ...],
    notes: list[str],
) -> dict[str, Any]:
    """Everything needed to say which code, model and wording produced a run."""
    return {
        "stancelab": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "models": models,
        "prompts": prompts.describe(),
        "seed": seed,
        "survey_modes_used": [str(m) for m in modes],
        "notes": notes,
    }


def builtin_debate(
    topic: str,
    kinds: Sequence[str],
    iterations: int,
    seed: int,
    word_limit: int,
    modes: tuple[SurveyMode, ...],
) -> DebateSpec:
    """A debate between the built-in personas of the given kinds (one per kind listed)."""
    chosen = [k.strip().lower() for k in kinds if k.strip()]
    if not chosen:
        raise ConfigError("no agents given; use e.g. republican,democrat,default")
    return DebateSpec(
        topic=topic.strip(),
        personas=tuple(personas_for(chosen)),
        iterations=iterations,
        seed=seed,
        word_limit=word_limit,
        survey_modes=modes,
    )


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


@dataclass
class SingleDebate:
    """A finished (or stopped) single debate: where it is stored and what it did."""

    run_id: str
    folder: Path
    store: Store
    debate: Debate
    elapsed_s: float
    notes: list[str]


def run_single_debate(
    spec: DebateSpec,
    prompts: PromptSet,
    engine: LanguageModel,
    config: dict[str, Any],
    out: Path,
    db: str | None = None,
    events: DebateEvents | None = None,
    on_start: Any = None,
) -> SingleDebate:
    """Run one debate in a new run folder ``OUT/COMMAND-YYYYmmdd-HHMMSS`` and store it.

    The run stays 'running' until the debate ends; a crash or Ctrl-C marks it 'failed' or
    'interrupted' with every finished turn and survey answer kept. ``on_start(run_id,
    debate)`` is called once the run exists (the CLI prints the line-up there).
    """
    probe_format(engine, prompts.format)  # a chat-only server refuses transcripts: say so now
    ensure_writable_dir(out)
    modes, note = survey_modes_for(engine, spec.survey_modes)
    notes = [note] if note else []
    if note:
        spec = dataclasses.replace(spec, survey_modes=modes)
    the_debate = Debate(spec, prompts)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = ensure_writable_dir(out / f"{config.get('command', 'debate')}-{stamp}")
    store = Store(db or folder / "stancelab.db")
    config = {**config, "question": the_debate.question, "survey_modes": [str(m) for m in modes]}
    versions = run_versions([engine.describe()], prompts, spec.seed, modes, notes)
    run_id = store.start_run(config, versions)
    debate_id = store.add_debate(run_id, the_debate, key="0")
    if on_start is not None:
        on_start(run_id, the_debate)
    caller = events or DebateEvents()

    def on_turn(d: Debate, turn: Any) -> None:
        store.add_turn(debate_id, d, turn)
        if caller.on_turn:
            caller.on_turn(d, turn)

    def on_survey(d: Debate, answers: Any) -> None:
        store.add_surveys(debate_id, answers)
        if caller.on_survey:
            caller.on_survey(d, answers)

    storing = dataclasses.replace(caller, on_turn=on_turn, on_survey=on_survey)
    start = time.perf_counter()
    try:
        run_debates(engine, [the_debate], storing)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        store.finish_debate(debate_id, error=f"{status}: {exc}")
        store.finish_run(run_id, status=status, error=str(exc) or type(exc).__name__)
        raise
    store.finish_debate(debate_id, error=the_debate.failed)
    if the_debate.failed:
        store.finish_run(run_id, status="failed", error=the_debate.failed)
    else:
        store.finish_run(run_id)
    return SingleDebate(run_id, folder, store, the_debate, time.perf_counter() - start, notes)


__all__ = [
    "SingleDebate",
    "builtin_debate",
    "ensure_writable_dir",
    "run_single_debate",
    "run_versions",
]
