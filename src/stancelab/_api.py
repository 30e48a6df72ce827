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

    Args:
        source: A path to an experiment YAML file, a mapping with the same keys, or an
            ``Experiment`` (returned as it is).

    Returns:
        The validated experiment; nothing is run or written.

    Raises:
        ConfigError: The file is missing or not YAML, or a field is invalid (the message
            names the field).
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

    Args:
        source: Anything ``experiment`` takes: a YAML path, a mapping or an
            ``Experiment``. The run folder keeps it as ``experiment.yaml``.
        out: The folder that holds run folders; the run goes to ``OUT/NAME``, NAME being
            the experiment's ``name``.
        log: Called with each progress line; ``None`` for silence.

    Returns:
        The finished run, as ``open_run`` would return it.

    Raises:
        ConfigError: The experiment is invalid, ``OUT/NAME`` holds a different version
            of it, a model has no chat template for the chat format, or the run folder
            cannot be written.
        ModelError: A model named by the experiment cannot be found or verified.
        EngineError: An engine failed to answer, e.g. a chat-only server asked for a
            transcript prompt.
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

    Args:
        topic: What the agents debate, e.g. ``"climate change"``.
        agents: Built-in agent kinds, one agent each: ``republican``, ``democrat``,
            ``default``.
        iterations: Full rounds of replies; each agent is surveyed before the first and
            after every round.
        model: A loaded ``LanguageModel``, or anything ``load_model`` takes.
        prompt_format: ``transcript``, ``chat`` or ``auto``.
        survey_modes: How the hidden 0-10 survey is read: ``distribution``
            (probabilities of every answer) and/or ``generate`` (a greedy, parsed answer).
        seed: Seeds the choice of the first speaker and each reply's sampling.
        word_limit: The reply length the prompt asks for, in words.
        out: The folder under which ``debate-YYYYmmdd-HHMMSS/`` is made.
        db: A database URL (e.g. ``postgresql+psycopg://…``) instead of the run
            folder's SQLite file.
        prompts: A folder of your own versioned prompt templates.
        question: The survey question instead of the templates' own; ``{topic}`` is
            filled in.
        events: Callbacks to watch the debate turn by turn, or stop it early.

    Returns:
        The stored run: ``turns()``, ``surveys()``, ``means()`` as DataFrames.

    Raises:
        ConfigError: An unknown agent kind, prompt format or survey mode, or a prompts
            folder that lacks a template; checked before any model is loaded.
        ModelError: The model cannot be found or verified.
        EngineError: The engine failed to answer.
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
