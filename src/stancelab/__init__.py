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

Models are opened through one registry of backends (``@sl.backend`` adds your own);
the ``fake`` backend (``{name: echo, backend: fake}``) needs no engine.
"""

from stancelab._api import debate, experiment, run
from stancelab._version import __version__
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
from stancelab.engine.errors import ConfigError, EngineError, ModelError, StancelabError, StoreError
from stancelab.engine.factory import ModelConfig, backend_names, load_model, open_model
from stancelab.engine.registry import backend
from stancelab.study.app import create_app as study_app
from stancelab.study.config import StudyConfig as Study
from stancelab.study.config import load_study
from stancelab.study.simulate import simulate

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
    "run",
    "simulate",
    "study_app",
]
