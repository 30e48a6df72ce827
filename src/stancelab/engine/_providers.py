"""The built-in backends, registered by name: llamacpp, openai, transformers, fake.

Each registration says which options the backend takes (a pydantic model, so a misspelt
or mistyped option is refused by name before any engine starts) and how to open it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from stancelab.engine._base import LanguageModel
from stancelab.engine._errors import ModelError
from stancelab.engine._fake import FakeOptions, open_fake
from stancelab.engine._llamacpp import load_engine, sampling_settings
from stancelab.engine._models import gguf_chat_template, resolve_model
from stancelab.engine._openai_compat import OpenAICompatModel, OpenAIOptions
from stancelab.engine._registry import ModelConfig, backend
from stancelab.engine._transformers_backend import load_transformers


class LlamaCppOptions(BaseModel):
    """Settings of the in-process llama.cpp engine (``options:`` of a model entry)."""

    model_config = ConfigDict(extra="forbid")

    threads: int | None = Field(default=None, ge=1)
    """CPU threads (default: ``STANCELAB_THREADS``, else the cores idle when the engine
    starts, so a shared machine's other work keeps its share)."""
    cache_ram_mib: int = Field(default=8192, ge=0)
    """RAM prompt cache; 0 keeps only what the slots hold."""
    backend_sampling: bool = False
    """Sample on the GPU (CUDA builds of xllamacpp)."""
    poll: int = Field(default=0, ge=0, le=100)
    """How long llama.cpp's threads spin before they sleep (0: sleep at once, fair on a
    shared machine; 50: llama.cpp's own default)."""
    sampling: dict[str, float] | None = None
    """Sampler cut, e.g. ``{top_k: 40, top_p: 0.95}``; default: the whole distribution."""

    @field_validator("sampling")
    @classmethod
    def _known_sampling(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        sampling_settings(value)  # names the unknown key in its ConfigError
        return value


class TransformersOptions(BaseModel):
    """Settings of the transformers backend (``options:`` of a model entry)."""

    model_config = ConfigDict(extra="forbid")

    allow_download: bool = False
    """Fetch a hub id (needs a network); off by default so runs stay offline."""
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    load_in_8bit: bool = False
    trust_remote_code: bool = False
    batch_size: int | None = Field(default=None, ge=1)


def gguf_has_chat_template(config: ModelConfig) -> bool | None:
    """Whether the entry's GGUF carries a chat template (metadata only, no engine); None
    when the name resolves to no file here (opening the engine then reports that)."""
    try:
        _, path = resolve_model(config.name)
    except ModelError:
        return None
    return gguf_chat_template(path) is not None


@backend("llamacpp", options=LlamaCppOptions, adapters=True, chat_template=gguf_has_chat_template)
def open_llamacpp(config: ModelConfig, options: LlamaCppOptions) -> LanguageModel:
    """An embedded model name or a GGUF path on the in-process engine, adapters checked."""
    return load_engine(
        config.name,
        adapters=[(a.path.expanduser(), a.scale) for a in config.adapters],
        n_parallel=config.parallel,
        ctx_per_slot=config.ctx_per_slot,
        **options.model_dump(),
    )


@backend("openai", options=OpenAIOptions, remote=True)
def open_openai(config: ModelConfig, options: OpenAIOptions) -> LanguageModel:
    """A model behind one or more servers speaking the OpenAI wire protocol."""
    return OpenAICompatModel(
        config.name,
        config.base_urls,
        api_key_env=config.api_key_env,
        parallel=config.parallel,
        options=options,
        price=config.price_per_million,
    )


@backend("transformers", options=TransformersOptions)
def open_transformers(config: ModelConfig, options: TransformersOptions) -> LanguageModel:
    """A local Hugging Face checkpoint (or a hub id with ``allow_download``)."""
    return load_transformers(config.name, parallel=config.parallel, **options.model_dump())


@backend("fake", options=FakeOptions)
def open_fake_backend(config: ModelConfig, options: FakeOptions) -> LanguageModel:
    """A scripted model with no engine: for tests, docs and dry runs of a pipeline."""
    return open_fake(config.name, options)
