"""stancelab: measure how opinions move in multi-turn conversations with and between LLMs."""

from stancelab._version import __version__
from stancelab.engine.base import (
    ChoiceRequest,
    ChoiceScores,
    Generation,
    GenerationRequest,
    LanguageModel,
    Message,
)
from stancelab.engine.errors import ConfigError, EngineError, ModelError, StancelabError, StoreError

__all__ = [
    "ChoiceRequest",
    "ChoiceScores",
    "ConfigError",
    "EngineError",
    "Generation",
    "GenerationRequest",
    "LanguageModel",
    "Message",
    "ModelError",
    "StancelabError",
    "StoreError",
    "__version__",
]
