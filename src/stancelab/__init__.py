"""stancelab: measure how opinions move in multi-turn conversations with and between LLMs.

The public API (docs/python-api.md is a tutorial)::

    import stancelab as sl

    lm = sl.load_model("smollm2-135m")              # embedded name, GGUF path, URL, config
    result = sl.debate("climate change", iterations=3, model=lm)
    result.turns(); result.surveys(); result.means()  # pandas DataFrames

    run = sl.run("examples/quick.yaml")             # a whole experiment, resumable
    run.means(); run.changes(); run.report()
    run = sl.open_run("runs/quick")                  # read a run folder later

    study = sl.load_study("examples/study.yaml")     # human-LLM study: web app, pilots
    sl.simulate(study, 5, lm=lm)

    rep = sl.replicate("taubenfeld2024", models=["smollm2-135m", "qwen2.5-coder-0.5b"])
    rep.findings(); rep.report()                     # a verdict per claim and model

Models are opened through one registry of backends (``@sl.backend`` adds your own);
the ``fake`` backend (``{name: echo, backend: fake}``) needs no engine.

Every name is imported on first use (PEP 562 ``__getattr__``), so ``import stancelab``
and reading a finished run load neither the study's web app nor an engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from stancelab._version import __version__

if TYPE_CHECKING:
    from stancelab._api import debate, experiment, run
    from stancelab.conversation.personas import Persona
    from stancelab.conversation.survey import SurveyMode
    from stancelab.debates.debate import DebateEvents, DebateSpec
    from stancelab.debates.experiment import ExperimentConfig as Experiment
    from stancelab.debates.experiment import load_experiment
    from stancelab.debates.results import Run, open_run
    from stancelab.engine.base import (
        ChoiceRequest,
        ChoiceScores,
        Generation,
        GenerationRequest,
        LanguageModel,
        Message,
    )
    from stancelab.engine.errors import (
        ConfigError,
        EngineError,
        ModelError,
        StancelabError,
        StoreError,
    )
    from stancelab.engine.factory import ModelConfig, backend_names, load_model, open_model
    from stancelab.engine.registry import backend
    from stancelab.replicate._replication import Replication, replicate
    from stancelab.study.app import create_app as study_app
    from stancelab.study.config import StudyConfig as Study
    from stancelab.study.config import load_study
    from stancelab.study.simulate import simulate

_SOURCES: dict[str, tuple[str, str]] = {
    "debate": ("stancelab._api", "debate"),
    "experiment": ("stancelab._api", "experiment"),
    "run": ("stancelab._api", "run"),
    "Persona": ("stancelab.conversation.personas", "Persona"),
    "SurveyMode": ("stancelab.conversation.survey", "SurveyMode"),
    "DebateEvents": ("stancelab.debates.debate", "DebateEvents"),
    "DebateSpec": ("stancelab.debates.debate", "DebateSpec"),
    "Experiment": ("stancelab.debates.experiment", "ExperimentConfig"),
    "load_experiment": ("stancelab.debates.experiment", "load_experiment"),
    "Run": ("stancelab.debates.results", "Run"),
    "open_run": ("stancelab.debates.results", "open_run"),
    "ChoiceRequest": ("stancelab.engine.base", "ChoiceRequest"),
    "ChoiceScores": ("stancelab.engine.base", "ChoiceScores"),
    "Generation": ("stancelab.engine.base", "Generation"),
    "GenerationRequest": ("stancelab.engine.base", "GenerationRequest"),
    "LanguageModel": ("stancelab.engine.base", "LanguageModel"),
    "Message": ("stancelab.engine.base", "Message"),
    "ConfigError": ("stancelab.engine.errors", "ConfigError"),
    "EngineError": ("stancelab.engine.errors", "EngineError"),
    "ModelError": ("stancelab.engine.errors", "ModelError"),
    "StancelabError": ("stancelab.engine.errors", "StancelabError"),
    "StoreError": ("stancelab.engine.errors", "StoreError"),
    "ModelConfig": ("stancelab.engine.factory", "ModelConfig"),
    "backend_names": ("stancelab.engine.factory", "backend_names"),
    "load_model": ("stancelab.engine.factory", "load_model"),
    "open_model": ("stancelab.engine.factory", "open_model"),
    "backend": ("stancelab.engine.registry", "backend"),
    # The package stancelab.replicate is callable too: importing it puts it on stancelab.
    "replicate": ("stancelab.replicate._replication", "replicate"),
    "Replication": ("stancelab.replicate._replication", "Replication"),
    "study_app": ("stancelab.study.app", "create_app"),
    "Study": ("stancelab.study.config", "StudyConfig"),
    "load_study": ("stancelab.study.config", "load_study"),
    "simulate": ("stancelab.study.simulate", "simulate"),
}
"""Public name -> (module, attribute): what ``__getattr__`` imports on first use."""

__all__ = [
    "ChoiceRequest",
    "ChoiceScores",
    "ConfigError",
    "DebateEvents",
    "DebateSpec",
    "EngineError",
    "Experiment",
    "Generation",
    "GenerationRequest",
    "LanguageModel",
    "Message",
    "ModelConfig",
    "ModelError",
    "Persona",
    "Replication",
    "Run",
    "StancelabError",
    "StoreError",
    "Study",
    "SurveyMode",
    "__version__",
    "backend",
    "backend_names",
    "debate",
    "experiment",
    "load_experiment",
    "load_model",
    "load_study",
    "open_model",
    "open_run",
    "replicate",
    "run",
    "simulate",
    "study_app",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the value here."""
    try:
        module, attribute = _SOURCES[name]
    except KeyError:
        raise AttributeError(f"module 'stancelab' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
