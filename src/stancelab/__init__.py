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

One name per concept: a verb in lower case and the type it gives in CamelCase, under the
class's own name (``experiment`` -> ``ExperimentConfig``, ``run`` -> ``Run``,
``load_study`` -> ``StudyConfig``, ``load_model`` -> ``LanguageModel``). Each package
(``stancelab.engine``, ``.conversation``, ``.debates``, ``.tuning``, ``.study``,
``.replicate``) exports its own public API from its ``__init__``; modules whose name starts
with ``_`` are private. Deprecated since 0.4, working until the next release with a
warning: ``Experiment`` (use ``ExperimentConfig``), ``Study`` (``StudyConfig``),
``load_experiment`` (``experiment``), ``open_model`` (``load_model``), ``DebateSpec``
(``stancelab.debates.DebateSpec``), and the old module paths (``stancelab.study.exports``:
import from ``stancelab.study``).

Every name is imported on first use (PEP 562 ``__getattr__``), so ``import stancelab``
and reading a finished run load neither the study's web app nor an engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stancelab._lazy import install_moved_modules, lazy_package
from stancelab._version import __version__

if TYPE_CHECKING:
    from stancelab._api import debate, experiment, run
    from stancelab.conversation import Persona, SurveyMode
    from stancelab.debates import DebateEvents, ExperimentConfig, Run, open_run
    from stancelab.engine import (
        ChoiceRequest,
        ChoiceScores,
        ConfigError,
        EngineError,
        Generation,
        GenerationRequest,
        LanguageModel,
        Message,
        ModelConfig,
        ModelError,
        StancelabError,
        StoreError,
        backend,
        backend_names,
        load_model,
    )
    from stancelab.replicate import Replication, replicate
    from stancelab.study import StudyConfig, load_study, simulate
    from stancelab.study import create_app as study_app

_SOURCES = {
    "debate": ("stancelab._api", "debate"),
    "experiment": ("stancelab._api", "experiment"),
    "run": ("stancelab._api", "run"),
    "Persona": ("stancelab.conversation", "Persona"),
    "SurveyMode": ("stancelab.conversation", "SurveyMode"),
    "DebateEvents": ("stancelab.debates", "DebateEvents"),
    "ExperimentConfig": ("stancelab.debates", "ExperimentConfig"),
    "Run": ("stancelab.debates", "Run"),
    "open_run": ("stancelab.debates", "open_run"),
    "ChoiceRequest": ("stancelab.engine", "ChoiceRequest"),
    "ChoiceScores": ("stancelab.engine", "ChoiceScores"),
    "Generation": ("stancelab.engine", "Generation"),
    "GenerationRequest": ("stancelab.engine", "GenerationRequest"),
    "LanguageModel": ("stancelab.engine", "LanguageModel"),
    "Message": ("stancelab.engine", "Message"),
    "ConfigError": ("stancelab.engine", "ConfigError"),
    "EngineError": ("stancelab.engine", "EngineError"),
    "ModelError": ("stancelab.engine", "ModelError"),
    "StancelabError": ("stancelab.engine", "StancelabError"),
    "StoreError": ("stancelab.engine", "StoreError"),
    "ModelConfig": ("stancelab.engine", "ModelConfig"),
    "backend_names": ("stancelab.engine", "backend_names"),
    "load_model": ("stancelab.engine", "load_model"),
    "backend": ("stancelab.engine", "backend"),
    # The package stancelab.replicate is callable too: importing it puts it on stancelab.
    "replicate": ("stancelab.replicate", "replicate"),
    "Replication": ("stancelab.replicate", "Replication"),
    "study_app": ("stancelab.study", "create_app"),
    "StudyConfig": ("stancelab.study", "StudyConfig"),
    "load_study": ("stancelab.study", "load_study"),
    "simulate": ("stancelab.study", "simulate"),
}
"""Public name -> (module, attribute): what ``__getattr__`` imports on first use."""

_DEPRECATED = {
    "Experiment": ("stancelab.debates", "ExperimentConfig", "stancelab.ExperimentConfig"),
    "Study": ("stancelab.study", "StudyConfig", "stancelab.StudyConfig"),
    "load_experiment": ("stancelab.debates", "load_experiment", "stancelab.experiment"),
    "open_model": ("stancelab.engine", "open_model", "stancelab.load_model"),
    "DebateSpec": ("stancelab.debates", "DebateSpec", "stancelab.debates.DebateSpec"),
}
"""Names 0.3 exported, kept for one release: name -> (module, attribute, instead)."""

__all__ = [
    "ChoiceRequest",
    "ChoiceScores",
    "ConfigError",
    "DebateEvents",
    "EngineError",
    "ExperimentConfig",
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
    "StudyConfig",
    "SurveyMode",
    "__version__",
    "backend",
    "backend_names",
    "debate",
    "experiment",
    "load_model",
    "load_study",
    "open_run",
    "replicate",
    "run",
    "simulate",
    "study_app",
]

lazy_package(__name__)

install_moved_modules(
    [
        "stancelab.conversation",
        "stancelab.debates",
        "stancelab.engine",
        "stancelab.engine.openai",
        "stancelab.replicate",
        "stancelab.study",
        "stancelab.tuning",
    ]
)
