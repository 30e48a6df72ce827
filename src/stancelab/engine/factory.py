"""Open a language model from one config entry, so an experiment switches models in one line."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stancelab.engine.base import LanguageModel
from stancelab.errors import ConfigError


class ModelConfig(BaseModel):
    """Which model to use and through which backend.

    A bare string in an experiment file is the same as ``{name: STRING}``: an embedded
    model name (``qwen2.5-coder-0.5b``) or a ``.gguf`` path on the in-process engine.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    backend: Literal["llamacpp"] = "llamacpp"
    parallel: int = Field(default=4, ge=1)
    """Requests in flight (engine slots for llama.cpp)."""
    ctx_per_slot: int = Field(default=4096, ge=256)
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific settings."""

    @classmethod
    def parse(cls, value: ModelConfig | str | dict[str, Any]) -> ModelConfig:
        """Accept a config, a bare model name/path, or a mapping."""
        if isinstance(value, ModelConfig):
            return value
        if isinstance(value, str):
            return cls(name=value)
        return cls.model_validate(value)


def open_model(config: ModelConfig | str) -> LanguageModel:
    """Start the engine a model config names."""
    config = ModelConfig.parse(config)
    if config.backend == "llamacpp":
        from stancelab.engine.llamacpp import load_engine

        return load_engine(config.name, n_parallel=config.parallel,
                           ctx_per_slot=config.ctx_per_slot, **config.options)
    raise ConfigError(f"model backend {config.backend!r} is not available in this version")
