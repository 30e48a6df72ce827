"""Open a language model from one config entry, so an experiment switches models in one line."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stancelab.engine.adapters import check_adapter_gguf
from stancelab.engine.base import LanguageModel
from stancelab.engine.errors import ConfigError
from stancelab.engine.llamacpp import load_engine, sampling_settings
from stancelab.engine.models import model_fingerprint, resolve_model
from stancelab.engine.openai_compat import OpenAICompatModel, parse_options
from stancelab.engine.transformers_backend import load_transformers


class AdapterConfig(BaseModel):
    """A GGUF LoRA adapter applied on top of the base model, with its scale."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    scale: float = 1.0


class ModelConfig(BaseModel):
    """Which model to use and through which backend.

    A bare string in an experiment file is the same as ``{name: STRING}``: an embedded
    model name (``qwen2.5-coder-0.5b``) or a ``.gguf`` path on the in-process engine.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    backend: Literal["llamacpp", "openai", "transformers"] = "llamacpp"
    base_urls: list[str] = Field(default_factory=list)
    """Servers speaking the OpenAI wire protocol (backend ``openai``)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself)."""
    parallel: int = Field(default=4, ge=1)
    """Requests in flight (engine slots for llama.cpp)."""
    ctx_per_slot: int = Field(default=4096, ge=256)
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific settings."""
    adapters: list[AdapterConfig] = Field(default_factory=list)
    """GGUF LoRA files on top of ``name`` (backend llamacpp), e.g. from ``stancelab finetune``."""

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapter_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str | Path) else v for v in value]
        return value

    def resolve_paths(self, base: Path) -> ModelConfig:
        """A copy whose relative adapter paths are taken relative to ``base``."""
        adapters = [
            a.model_copy(update={"path": base / a.path.expanduser()})
            if not a.path.expanduser().is_absolute()
            else a
            for a in self.adapters
        ]
        return self.model_copy(update={"adapters": adapters})

    @classmethod
    def parse(cls, value: ModelConfig | str | dict[str, Any]) -> ModelConfig:
        """Accept a config, a bare model name/path, or a mapping."""
        if isinstance(value, ModelConfig):
            return value
        if isinstance(value, str):
            return cls(name=value)
        return cls.model_validate(value)


# Settings of a llama.cpp model entry's ``options:``; the factory sets the others itself.
LLAMACPP_OPTIONS = frozenset({"threads", "cache_ram_mib", "backend_sampling", "sampling"})


def check_options(config: ModelConfig) -> None:
    """Refuse misspelt or mistyped backend options with a message naming them."""
    if config.backend == "llamacpp":
        unknown = sorted(set(config.options) - LLAMACPP_OPTIONS)
        if unknown:
            raise ConfigError(
                f"model {config.name!r}: unknown llama.cpp option(s) {unknown}; "
                f"known: {sorted(LLAMACPP_OPTIONS)}"
            )
        sampling = config.options.get("sampling")
        if sampling is not None and not isinstance(sampling, dict):
            raise ConfigError(
                f"model {config.name!r}: options.sampling must be a mapping "
                "such as {top_k: 40, top_p: 0.95}"
            )
        try:
            sampling_settings(sampling)
        except ConfigError as exc:
            raise ConfigError(f"model {config.name!r}: {exc}") from None
    elif config.backend == "openai":
        parse_options(config.name, config.options)
    elif config.backend == "transformers":
        try:  # a misspelt option must be a ConfigError, not a TypeError deep in the call
            inspect.signature(load_transformers).bind(config.name, **config.options)
        except TypeError as exc:
            raise ConfigError(f"model {config.name!r}: bad transformers option: {exc}") from None


def check_model(config: ModelConfig) -> None:
    """Refuse a config that cannot work, before anything is started (cheap checks only)."""
    check_options(config)
    if config.backend != "openai" and (config.base_urls or config.api_key_env):
        raise ConfigError(f"model {config.name!r}: base_urls and api_key_env need backend: openai")
    if config.adapters and config.backend != "llamacpp":
        raise ConfigError(
            f"model {config.name!r}: adapters need backend: llamacpp (a vLLM "
            "server serves a LoRA under its own model name: use that name)"
        )
    if config.adapters:
        _, path = resolve_model(config.name)
        for adapter in config.adapters:
            check_adapter_gguf(adapter.path.expanduser(), path, model_fingerprint(path))


def open_model(config: ModelConfig | str | dict[str, Any]) -> LanguageModel:
    """Start the engine a model config names."""
    config = ModelConfig.parse(config)
    check_model(config)
    if config.backend == "llamacpp":
        adapters = [(a.path.expanduser(), a.scale) for a in config.adapters]
        return load_engine(
            config.name,
            adapters=adapters,
            n_parallel=config.parallel,
            ctx_per_slot=config.ctx_per_slot,
            **config.options,
        )
    if config.backend == "openai":
        return OpenAICompatModel(
            config.name,
            config.base_urls,
            api_key_env=config.api_key_env,
            parallel=config.parallel,
            options=config.options,
        )
    if config.backend == "transformers":
        return load_transformers(config.name, **{"parallel": config.parallel, **config.options})
    raise ConfigError(f"model backend {config.backend!r} is not available in this version")
