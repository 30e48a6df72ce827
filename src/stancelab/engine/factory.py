"""Open a language model from one config entry, so a study switches models in one line.

``load_model`` is the friendly front door: an embedded model name, a GGUF path, the URL of
a server speaking the OpenAI protocol, a mapping or a ``ModelConfig``. Every route ends
in the backend registry (``registry.py``), which checks the entry the same way for all,
and every opened model is wrapped in ``SharedInFlight`` (``wrappers.py``).
"""

from __future__ import annotations

from typing import Any

from stancelab.engine.adapters import check_adapter_gguf
from stancelab.engine.base import LanguageModel
from stancelab.engine.models import model_fingerprint, resolve_model
from stancelab.engine.registry import (
    AdapterConfig,
    ModelConfig,
    ModelEntry,
    Price,
    backend_names,
    model_entry,
    parse_options,
)
from stancelab.engine.wrappers import SharedInFlight

__all__ = [
    "AdapterConfig",
    "ModelConfig",
    "ModelEntry",
    "Price",
    "backend_names",
    "check_model",
    "load_model",
    "model_entry",
    "open_model",
]


def check_model(config: ModelConfig) -> None:
    """Refuse a config that cannot work, before anything is started (cheap checks only).

    Args:
        config: The model entry to check: its backend and options, and that each adapter
            fits the base model's GGUF file.

    Raises:
        ConfigError: An unknown backend or option, or fields the backend does not take.
        ModelError: The base model of an entry with adapters cannot be found.
        AdapterError: An adapter file is missing or does not fit the base model.
    """
    parse_options(config)
    if config.adapters:
        _, path = resolve_model(config.name)
        sha = model_fingerprint(path)
        for adapter in config.adapters:
            check_adapter_gguf(adapter.path.expanduser(), path, sha)


def open_model(config: ModelConfig | str | dict[str, Any]) -> LanguageModel:
    """Start the engine a model config names, sharing identical requests in flight.

    The backend's model comes back wrapped (``SharedInFlight``): the wrapper answers the
    whole interface, capabilities included, by asking the backend's model.

    Args:
        config: A ``ModelConfig``, a mapping of its fields, or a bare model name or GGUF
            path (``{name: STRING}``).

    Returns:
        The open model; call ``close()`` when done (or use it in a ``with`` block).

    Raises:
        ConfigError: An unknown backend or option, or fields the backend does not take.
        ModelError: The model cannot be found, assembled or verified.
        pydantic.ValidationError: A mapping whose fields do not validate (an empty name,
            ``parallel: 0``, an unknown key).
    """
    config = ModelConfig.parse(config)
    chosen, options = parse_options(config)
    return SharedInFlight(chosen.open(config, options))


def load_model(model: ModelConfig | str | dict[str, Any], **fields: Any) -> LanguageModel:
    """Open a model by embedded name, GGUF path, server URL, mapping or ModelConfig.

    A URL (``http://host:8000/v1``) opens the ``openai`` backend on that server; name the
    served model with ``name=`` (default ``default``, which llama.cpp's server accepts).
    Other keyword arguments are ModelConfig fields (``parallel=8``, ``options={...}``).

    Args:
        model: An embedded model name (``smollm2-135m``), a ``.gguf`` path, a server URL,
            a mapping of ``ModelConfig`` fields, or a ``ModelConfig``.
        **fields: ``ModelConfig`` fields that override the entry's own.

    Returns:
        The open model. Loading is the slow part: keep it open across calls and
        ``close()`` it when done.

    Raises:
        ConfigError: An unknown backend or option, or fields the backend does not take.
        ModelError: The model cannot be found, assembled or verified.
        pydantic.ValidationError: A mapping whose fields do not validate (an empty name,
            ``parallel=0``, an unknown key).
    """
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        entry: dict[str, Any] = {"name": "default", "backend": "openai", "base_urls": [model]}
    elif isinstance(model, ModelConfig):
        entry = model.model_dump()
    else:
        entry = dict(model_entry(model))
    return open_model({**entry, **fields})
