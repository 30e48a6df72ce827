"""Language-model engines behind one small interface (``LanguageModel``): the interface, its
values and errors, the backend registry (``load_model``, ``@backend``), the built-in backends
and the wrappers on the same interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stancelab._lazy import lazy_package

if TYPE_CHECKING:
    from stancelab.engine._base import LanguageModel
    from stancelab.engine._errors import (
        AdapterError,
        ChatOnlyError,
        ConfigError,
        EngineError,
        ModelError,
        StancelabError,
        StoreError,
    )
    from stancelab.engine._factory import (
        check_model,
        load_model,
        open_model,
    )
    from stancelab.engine._fake import (
        FakeChatModel,
        ScriptedModel,
    )
    from stancelab.engine._llamacpp import LlamaCppEngine
    from stancelab.engine._models import (
        EMBEDDED_MODELS,
        EmbeddedModel,
        resolve_model,
    )
    from stancelab.engine._openai_compat import (
        NoLogprobsError,
        OpenAICompatModel,
    )
    from stancelab.engine._registry import (
        AdapterConfig,
        ModelConfig,
        ModelEntry,
        backend,
        backend_names,
        get_backend,
    )
    from stancelab.engine._scoring import score_by_token_tree
    from stancelab.engine._transformers_backend import TransformersModel
    from stancelab.engine._types import (
        ChoiceRequest,
        ChoiceScores,
        EngineStats,
        Generation,
        GenerationRequest,
        Message,
        PathRequest,
        Prompt,
        TokenPath,
        TopTokens,
    )
    from stancelab.engine._wrappers import (
        ModelWrapper,
        SharedInFlight,
    )

_SOURCES = {
    "ChoiceRequest": ("stancelab.engine._types", "ChoiceRequest"),
    "ChoiceScores": ("stancelab.engine._types", "ChoiceScores"),
    "EngineStats": ("stancelab.engine._types", "EngineStats"),
    "Generation": ("stancelab.engine._types", "Generation"),
    "GenerationRequest": ("stancelab.engine._types", "GenerationRequest"),
    "Message": ("stancelab.engine._types", "Message"),
    "PathRequest": ("stancelab.engine._types", "PathRequest"),
    "Prompt": ("stancelab.engine._types", "Prompt"),
    "TokenPath": ("stancelab.engine._types", "TokenPath"),
    "TopTokens": ("stancelab.engine._types", "TopTokens"),
    "LanguageModel": ("stancelab.engine._base", "LanguageModel"),
    "AdapterError": ("stancelab.engine._errors", "AdapterError"),
    "ChatOnlyError": ("stancelab.engine._errors", "ChatOnlyError"),
    "ConfigError": ("stancelab.engine._errors", "ConfigError"),
    "EngineError": ("stancelab.engine._errors", "EngineError"),
    "ModelError": ("stancelab.engine._errors", "ModelError"),
    "StancelabError": ("stancelab.engine._errors", "StancelabError"),
    "StoreError": ("stancelab.engine._errors", "StoreError"),
    "AdapterConfig": ("stancelab.engine._registry", "AdapterConfig"),
    "ModelConfig": ("stancelab.engine._registry", "ModelConfig"),
    "ModelEntry": ("stancelab.engine._registry", "ModelEntry"),
    "backend": ("stancelab.engine._registry", "backend"),
    "backend_names": ("stancelab.engine._registry", "backend_names"),
    "get_backend": ("stancelab.engine._registry", "get_backend"),
    "check_model": ("stancelab.engine._factory", "check_model"),
    "load_model": ("stancelab.engine._factory", "load_model"),
    "open_model": ("stancelab.engine._factory", "open_model"),
    "EMBEDDED_MODELS": ("stancelab.engine._models", "EMBEDDED_MODELS"),
    "EmbeddedModel": ("stancelab.engine._models", "EmbeddedModel"),
    "resolve_model": ("stancelab.engine._models", "resolve_model"),
    "ModelWrapper": ("stancelab.engine._wrappers", "ModelWrapper"),
    "SharedInFlight": ("stancelab.engine._wrappers", "SharedInFlight"),
    "score_by_token_tree": ("stancelab.engine._scoring", "score_by_token_tree"),
    "NoLogprobsError": ("stancelab.engine._openai_compat", "NoLogprobsError"),
    "OpenAICompatModel": ("stancelab.engine._openai_compat", "OpenAICompatModel"),
    "LlamaCppEngine": ("stancelab.engine._llamacpp", "LlamaCppEngine"),
    "TransformersModel": ("stancelab.engine._transformers_backend", "TransformersModel"),
    "FakeChatModel": ("stancelab.engine._fake", "FakeChatModel"),
    "ScriptedModel": ("stancelab.engine._fake", "ScriptedModel"),
}
"""Public name -> (private module, attribute), imported on first use."""

__all__ = [
    "EMBEDDED_MODELS",
    "AdapterConfig",
    "AdapterError",
    "ChatOnlyError",
    "ChoiceRequest",
    "ChoiceScores",
    "ConfigError",
    "EmbeddedModel",
    "EngineError",
    "EngineStats",
    "FakeChatModel",
    "Generation",
    "GenerationRequest",
    "LanguageModel",
    "LlamaCppEngine",
    "Message",
    "ModelConfig",
    "ModelEntry",
    "ModelError",
    "ModelWrapper",
    "NoLogprobsError",
    "OpenAICompatModel",
    "PathRequest",
    "Prompt",
    "ScriptedModel",
    "SharedInFlight",
    "StancelabError",
    "StoreError",
    "TokenPath",
    "TopTokens",
    "TransformersModel",
    "backend",
    "backend_names",
    "check_model",
    "get_backend",
    "load_model",
    "open_model",
    "resolve_model",
    "score_by_token_tree",
]

lazy_package(__name__)
