"""The Python API's verbs: run an experiment, run one debate, open a study.

They take what a notebook has at hand (a file path, a dict, a built config, an already
loaded model) and end in the same code paths as the CLI, so a run made in Python and one
made from the shell are the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stancelab.conversation import PromptFormat, SurveyMode, load_prompts, parse_format, parse_modes
from stancelab.debates import DebateEvents, ExperimentConfig, load_experiment
from stancelab.debates._formats import AUTO, check_format_option, resolve_format
from stancelab.debates._results import Run, open_run, run_config
from stancelab.debates._runner import execute
from stancelab.debates._single import AgentLike, debate_spec, plan_debate
from stancelab.engine import LanguageModel
from stancelab.engine._factory import ModelConfig

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
    # The run folder keeps the experiment as a file, whatever it was built from.
    text = Path(source).read_text(encoding="utf-8") if isinstance(source, str | Path) else None
    return run_config(config, Path(out), text, log=log or (lambda _: None))


def debate(
    topic: str,
    agents: Sequence[AgentLike] = ("republican", "democrat", "default"),
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
    log: Callable[[str], None] | None = None,
) -> Run:
    """One round-robin debate, stored as a run of its own in ``OUT/debate-…``.

    The run folder's name is fixed by what the debate is (topic, agents, model, seed,
    wording): calling it again with the same arguments resumes an interrupted debate, or
    returns a finished one at once. ``report()`` and ``progress()`` work as for any run.

    Args:
        topic: what the agents debate, e.g. "climate change".
        agents: in speaking order: built-in kinds ("republican", "democrat",
            "default"), ``Persona`` objects, or mappings with a persona's fields (name,
            kind, background), mixed as you like.
        iterations: replies in all (one per iteration).
        model: a loaded model (kept open for the next call) or anything ``load_model``
            takes (opened and closed here).
        prompt_format: transcript (the paper's Figure 2), chat, or auto: transcript on
            local models, chat on servers (see docs/experiments.md); for an already
            loaded model auto means transcript.
        survey_modes: distribution, generate, or both.
        seed: seeds the first speaker and sampling.
        word_limit: replies must be shorter than this.
        out: the folder that holds run folders.
        db: a database URL instead of the run folder's stancelab.db.
        prompts: a folder of your own prompt templates.
        question: the survey question; ``{topic}`` is filled in.
        events: callbacks to watch the debate (called once each turn or survey is stored).
        log: where warnings go (e.g. a survey-mode fallback); default: nowhere.

    Returns:
        The stored run: ``turns()``, ``surveys()``, ``means()`` as DataFrames.

    Raises:
        ConfigError: An unknown agent kind, prompt format or survey mode, or a prompts
            folder that lacks a template; checked before any model is loaded.
        ModelError: The model cannot be found or verified.
        EngineError: The engine failed to answer.
    """
    modes = parse_modes([str(m) for m in survey_modes])
    spec = debate_spec(topic, agents, iterations, seed, word_limit, modes)
    requested = check_format_option(prompt_format)
    engine: LanguageModel | ModelConfig
    if isinstance(model, LanguageModel):
        engine = model
        chosen = PromptFormat.TRANSCRIPT if requested in (None, AUTO) else parse_format(requested)
    else:
        engine = ModelConfig.parse(model)
        chosen = resolve_format(engine, requested)
    # Everything that can be refused is checked before a model is loaded.
    prompt_set = load_prompts(Path(prompts) if prompts else None, format=chosen)
    prompt_set = prompt_set.with_question(question)
    plan = plan_debate(spec, engine, prompt_set, "debate", db=db)
    result = execute(plan, Path(out), log=log or (lambda _: None), events=events)
    return open_run(result.folder.path, result.run_id)
