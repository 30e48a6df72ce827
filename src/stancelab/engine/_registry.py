"""What a model entry is, and the one registry of backends that can open it.

A backend registers itself with ``@backend("name", options=OptionsModel)`` on a function
that opens a model from a ``ModelConfig`` and its validated options (see ``providers.py``
for the built-in ones). Every model entry is checked the same way: the backend must be
registered, its ``options:`` must validate against the backend's options model (unknown or
mistyped keys are refused by name), and ``base_urls``/``adapters`` only go to backends that
take them. A user can register a backend of their own the same way.

The built-in backends register on the first lookup, so reading a config (or a finished
run) imports no engine client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from stancelab.engine._base import LanguageModel
from stancelab.engine._errors import ConfigError, format_validation_error


def resolve_path(path: Path | str, base_dir: Path | None) -> Path:
    """The one rule for relative paths in a config: a path inside a config file is
    relative to the folder of that file (``base_dir``); in a config built in Python
    (``base_dir`` None) it is relative to the working folder. ``~`` is expanded."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return (base_dir or Path.cwd()) / path


def _from_base(path: Path, info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    return resolve_path(path, context.get("base"))


RelativePath = Annotated[Path, AfterValidator(_from_base)]
"""A path field of a config, resolved by ``resolve_path`` against the validation
context's ``base`` folder (``model_validate(data, context={"base": folder})``, as
``stancelab.conversation._config.load_config`` does for a file), so a config built in
Python and the same config read from a file mean the same files."""


class AdapterConfig(BaseModel):
    """A GGUF LoRA adapter applied on top of the base model, with its scale."""

    model_config = ConfigDict(extra="forbid")

    path: RelativePath
    scale: float = 1.0


class Price(BaseModel):
    """What a hosted model costs: US dollars per million tokens sent and generated."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0)
    """USD per million prompt tokens."""
    output: float = Field(ge=0)
    """USD per million generated tokens."""

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for this many prompt and generated tokens."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class ModelConfig(BaseModel):
    """Which model to use and through which backend.

    A bare string in an experiment file is the same as ``{name: STRING}``: an embedded
    model name (``qwen2.5-coder-0.5b``) or a ``.gguf`` path on the in-process engine.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    backend: str = "llamacpp"
    """A registered backend: llamacpp, openai, transformers, fake, or one of your own."""
    base_urls: list[str] = Field(default_factory=list)
    """Servers speaking the OpenAI wire protocol (backend ``openai``)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself)."""
    parallel: int = Field(default=4, ge=1)
    """Requests in flight (engine slots for llama.cpp)."""
    ctx_per_slot: int = Field(default=4096, ge=256)
    options: dict[str, Any] = Field(default_factory=dict)
    """Backend-specific settings, checked against the backend's options model."""
    adapters: list[AdapterConfig] = Field(default_factory=list)
    """GGUF LoRA files on top of ``name`` (backend llamacpp), e.g. from ``stancelab finetune``."""
    price_per_million: Price | None = None
    """``{input: USD, output: USD}`` per million tokens (a hosted model): the cost a run
    is estimated at before it starts, and the cost its engine counts (``stats.extra``)."""

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapter_paths(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"path": v} if isinstance(v, str | Path) else v for v in value]
        return value

    @classmethod
    def parse(cls, value: ModelConfig | str | dict[str, Any]) -> ModelConfig:
        """Accept a config, a bare model name/path, or a mapping."""
        if isinstance(value, ModelConfig):
            return value
        return cls.model_validate(model_entry(value))


def model_entry(value: Any) -> Any:
    """The rule for every model field: a plain string is ``{name: STRING}``."""
    return {"name": value} if isinstance(value, str) else value


ModelEntry = Annotated[ModelConfig, BeforeValidator(model_entry)]
"""A model field of a config file: a ModelConfig mapping or just a model name."""


class NoOptions(BaseModel):
    """Options of a backend that takes none."""

    model_config = ConfigDict(extra="forbid")


Opener = Callable[[ModelConfig, Any], LanguageModel]
TemplateCheck = Callable[[ModelConfig], bool | None]


def _unknown_before_opening(config: ModelConfig) -> bool | None:
    return None


@dataclass(frozen=True)
class Backend:
    """A registered backend: how to open a model, and what its entries may carry."""

    name: str
    open: Opener
    options: type[BaseModel]
    remote: bool
    """Takes ``base_urls`` and ``api_key_env`` (a server reached over HTTP)."""
    adapters: bool
    """Takes ``adapters`` (GGUF LoRA files on the base model)."""
    chat_template: TemplateCheck = _unknown_before_opening
    """Whether an entry's model has a chat template, read cheaply before anything starts
    (a GGUF's metadata); None: known only once the model is open
    (``LanguageModel.has_chat_template``)."""


_BACKENDS: dict[str, Backend] = {}


def _registered() -> dict[str, Backend]:
    """Every backend, the built-in ones registered on first use."""
    import stancelab.engine._providers  # noqa: F401, PLC0415 - lazy: imports engine clients

    return _BACKENDS


def backend(
    name: str,
    *,
    options: type[BaseModel] = NoOptions,
    remote: bool = False,
    adapters: bool = False,
    chat_template: TemplateCheck = _unknown_before_opening,
) -> Callable[[Opener], Opener]:
    """Register ``fn(config, options) -> LanguageModel`` as the backend ``name``.

    A later registration under the same name replaces the earlier one.

    Args:
        name: What a model entry's ``backend:`` names.
        options: The pydantic model the entry's ``options:`` must validate against
            (unknown or mistyped keys are refused by name); ``fn`` receives the validated
            instance.
        remote: The backend takes ``base_urls`` and ``api_key_env`` (a server over HTTP).
        adapters: The backend takes ``adapters`` (GGUF LoRA files on the base model).
        chat_template: Reads, before anything starts, whether an entry's model has a chat
            template (None where only the opened model knows).

    Returns:
        A decorator that registers ``fn`` and returns it unchanged.
    """

    def register(fn: Opener) -> Opener:
        _registered()  # the built-in ones first, so a user's backend of the same name wins
        _BACKENDS[name] = Backend(name, fn, options, remote, adapters, chat_template)
        return fn

    return register


def backend_names() -> list[str]:
    """The registered backends, sorted."""
    return sorted(_registered())


def get_backend(config: ModelConfig) -> Backend:
    """The backend a model entry names, or one line saying which exist."""
    try:
        return _registered()[config.backend]
    except KeyError:
        raise ConfigError(
            f"model {config.name!r}: unknown backend {config.backend!r}; "
            f"known: {', '.join(backend_names())}"
        ) from None


def parse_options(config: ModelConfig) -> tuple[Backend, BaseModel]:
    """The entry's backend and its validated options; the first problem as one line."""
    chosen = get_backend(config)
    try:
        options = chosen.options.model_validate(config.options)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "extra_forbidden":
            field = ".".join(str(p) for p in first["loc"])
            known = ", ".join(chosen.options.model_fields) or "none"
            raise ConfigError(
                f"model {config.name!r}: unknown {config.backend} option {field!r}; known: {known}"
            ) from None
        raise ConfigError(
            format_validation_error(
                exc, f"model {config.name!r}", prefix=f"{config.backend} option "
            )
        ) from None
    if not chosen.remote and (config.base_urls or config.api_key_env):
        remote = " or ".join(b.name for b in _registered().values() if b.remote)
        raise ConfigError(
            f"model {config.name!r}: base_urls and api_key_env need backend: {remote}"
        )
    if config.adapters and not chosen.adapters:
        raise ConfigError(
            f"model {config.name!r}: adapters need backend: llamacpp (a vLLM server serves a "
            "LoRA under its own model name: use that name)"
        )
    return chosen, options
