"""The Python API's verbs: run an experiment, run one debate, open a study.

They take what a notebook has at hand (a file path, a dict, a built config, an already
loaded model) and end in the same code paths as the CLI, so a run made in Python and one
made from the shell are the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from stancelab.conversation.survey import SurveyMode, parse_modes
from stancelab.conversation.templates import PromptFormat, load_prompts, parse_format
from stancelab.debates.debate import DebateEvents
from stancelab.debates.experiment import ExperimentConfig, load_experiment
from stancelab.debates.formats import AUTO, check_format_option, resolve_format
from stancelab.debates.results import Run, open_run
from stancelab.debates.runner import run_experiment
from stancelab.debates.single import builtin_debate, run_single_debate
from stancelab.engine.base import LanguageModel
from stancelab.engine.factory import ModelConfig, load_model

ExperimentLike = ExperimentConfig | str | Path | dict[str, Any]
ModelLike = LanguageModel | ModelConfig | str | dict[str, Any]


def experiment(source: ExperimentLike) -> ExperimentConfig:
    """An experiment from a YAML file, a mapping, or a config already built.

    Relative paths in a file are taken relative to the file, in a mapping relative to the
    working folder; both are checked the same way (one line naming the field).
    """
    if isinstance(source, ExperimentConfig):
        return source
    return load_experiment(source)


def run(
    source: ExperimentLike,
    out: str | Path = "runs",
    *,
    log: Callable[[str], None] | None = print,
) -> Run:
    """Run (or resume) every debate of an experiment and return its results.

    Runs in ``OUT/NAME``; calling it again after an interruption resumes where it stopped,
    and a finished run returns at once. ``log=None`` keeps it quiet.
    """
    config = experiment(source)
    if isinstance(source, str | Path):
        text = Path(source).read_text(encoding="utf-8")
    else:  # the run folder keeps the experiment as a file, whatever it was built from
        text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    result = run_experiment(config, text, Path(out), log=log or (lambda _: None))
    return open_run(result.folder.path, result.run_id)


def debate(
    topic: str,
    agents: Sequence[str] = ("republican", "democrat", "default"),
    *,
    iterations: int = 9,
    model: ModelLike = "qwen2.5-coder-0.5b",
    prompt_format: str = "auto",
    survey_modes: Sequence[str | SurveyMode] = ("distribution",),
    seed: int = 0,
    word_limit: int = 50,
    out: str | Path = "runs",
    db: str | None = None,
    prompts: str | Path | None = None,
    question: str | None = None,
    events: DebateEvents | None = None,
) -> Run:
    """One debate between built-in personas, stored in ``OUT/debate-…``; returns its run.

    ``model`` may be a loaded model (kept open for the next call) or anything
    ``load_model`` takes (opened and closed here). ``prompt_format`` is transcript (the
    paper's Figure 2), chat, or auto: transcript on local models, chat on servers (see
    docs/experiments.md); for an already loaded model auto means transcript.
    """
    modes = parse_modes([str(m) for m in survey_modes])
    spec = builtin_debate(topic, agents, iterations, seed, word_limit, modes)
    requested = check_format_option(prompt_format)
    entry = None if isinstance(model, LanguageModel) else ModelConfig.parse(model)
    if entry is None:
        chosen = PromptFormat.TRANSCRIPT if requested in (None, AUTO) else parse_format(requested)
    else:
        chosen = resolve_format(entry, requested)
    # Everything that can be refused is checked before a model is loaded.
    prompt_set = load_prompts(Path(prompts) if prompts else None, format=chosen)
    prompt_set = prompt_set.with_question(question)
    engine = model if isinstance(model, LanguageModel) else load_model(ModelConfig.parse(model))
    config = {
        "command": "debate",
        "topic": spec.topic,
        "agents": [p.kind for p in spec.personas],
        "iterations": iterations,
        "model": engine.describe(),
        "seed": seed,
        "word_limit": word_limit,
        "prompt_format": str(chosen),
    }
    try:
        done = run_single_debate(spec, prompt_set, engine, config, Path(out), db, events)
    finally:
        if engine is not model:  # opened here, so closed here
            engine.close()
    return Run(done.store, done.run_id, done.folder)
