"""Open a language model from one config entry, so a study switches models in one line.

``load_model`` is the friendly front door: an embedded model name, a GGUF path, the URL of
a server speaking the OpenAI protocol, a mapping or a ``ModelConfig``. Every route ends
in the backend registry (``registry.py``), which checks the entry the same way for all,
and every opened model is wrapped in ``SharedInFlight`` (``wrappers.py``).
"""

from __future__ import annotations

from typing import Any

from stancelab.engine._adapters import check_adapter_gguf
from stancelab.engine._base import LanguageModel
from stancelab.engine._errors import ConfigError
from stancelab.engine._models import model_fingerprint, resolve_model
from stancelab.engine._registry import (
    AdapterConfig,
    ModelConfig,
    ModelEntry,
    Price,
    backend_names,
    get_backend,
    model_entry,
    parse_options,
)
from stancelab.engine._wrappers import SharedInFlight

__all__ = [
    "AdapterConfig",
    "ModelConfig",
    "ModelEntry",
    "Price",
    "backend_names",
    "check_model",
    "check_reachable",
    "load_model",
    "model_config",
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
    return open_model(model_config(model, **fields))


def model_config(model: ModelConfig | str | dict[str, Any], **fields: Any) -> ModelConfig:
    """The model entry ``load_model`` opens, validated but not opened.

    Args:
        model: An embedded model name, a ``.gguf`` path, a server URL (the ``openai``
            backend on that server, model ``default``), a mapping of ``ModelConfig``
            fields, or a ``ModelConfig``.
        **fields: ``ModelConfig`` fields that override the entry's own.

    Raises:
        pydantic.ValidationError: fields that do not validate.
    """
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        entry: dict[str, Any] = {"name": "default", "backend": "openai", "base_urls": [model]}
    elif isinstance(model, ModelConfig):
        entry = model.model_dump()
    else:
        entry = dict(model_entry(model))
    return ModelConfig.model_validate({**entry, **fields})


def check_reachable(config: ModelConfig, timeout_s: float = 5.0) -> None:
    """Refuse a model on a remote backend none of whose servers answers, before a run.

    Any HTTP answer counts as reachable (a server without a model listing, or one that
    wants a key, is there); only a connection that fails or times out does not. Engines
    on this machine are not checked.

    Args:
        config: the model entry; its backend's ``remote`` flag says whether it has servers.
        timeout_s: seconds to wait for each server.

    Raises:
        ConfigError: every server of the entry is unreachable (one line naming them).
    """
    if not get_backend(config).remote or not config.base_urls:
        return
    import httpx  # noqa: PLC0415 - lazy: only remote entries need an HTTP client

    from stancelab.engine.openai._transport import public_url  # noqa: PLC0415 - same reason

    trust_env = bool(config.options.get("trust_env", True))  # the proxies requests will use
    failures = []
    for url in config.base_urls:
        try:
            httpx.get(url.rstrip("/") + "/models", timeout=timeout_s, trust_env=trust_env)
        except httpx.HTTPError as exc:
            failures.append(f"{public_url(url)} ({type(exc).__name__})")
        else:
            return
    raise ConfigError(f"model {config.name!r}: cannot reach {', '.join(failures)}")
