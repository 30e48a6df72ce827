"""Which prompt format each model gets, and refusing a format a model cannot take.

``transcript`` is the paper's Figure 2 on a completion endpoint; ``chat`` renders the same
content as messages. ``auto`` (the default) picks transcript for models stancelab runs
itself (llama.cpp, transformers): measured on the embedded instruct GGUFs with
LLM-written personas, the transcript held the parties apart better than chat (see the
fidelity table in docs/experiments.md); and chat for OpenAI-compatible servers, since
most hosted models are chat-only. Persona stories are the exception: ``auto`` writes them
in chat wherever the model has a chat template (see :func:`resolve_format`). Every
refusal is one line, raised before a run writes anything.
"""

from __future__ import annotations

from stancelab.conversation.templates import PromptFormat, parse_format
from stancelab.engine.base import GenerationRequest, LanguageModel
from stancelab.engine.errors import ConfigError, ModelError
from stancelab.engine.factory import ModelConfig
from stancelab.engine.models import gguf_chat_template, resolve_model
from stancelab.engine.openai_compat import OpenAICompatModel

AUTO = "auto"
FORMAT_CHOICES = (AUTO, *(str(f) for f in PromptFormat))


def _gguf_has_template(config: ModelConfig) -> bool | None:
    """Whether the GGUF carries a chat template; None when the name resolves to no file
    here (opening the engine then reports that)."""
    try:
        _, path = resolve_model(config.name)
    except ModelError:
        return None
    return gguf_chat_template(path) is not None


def resolve_format(
    config: ModelConfig, requested: str | None, writing: bool = False
) -> PromptFormat:
    """The format a model entry runs in; refuses chat on a GGUF without a chat template.

    ``writing``: the format for writing persona stories, where ``auto`` means chat
    wherever the GGUF has a chat template. The meta-prompt is an instruction, and an
    instruct model given it as raw text writes code, JSON or a reply to the user: measured
    on qwen2.5-coder-1.5b, chat-written stories separated the parties by 1.3 to 2.0 points
    on three topics in transcript debates (docs/experiments.md). An explicit format is
    used for stories and debates alike.

    Cheap (reads GGUF metadata, starts no engine), so an experiment is checked before any
    file is written. A server's chat-only answer is found later by :func:`probe_format`.
    """
    wanted = AUTO if requested is None else str(requested).strip().lower()
    if wanted != AUTO:
        chosen = parse_format(wanted)
        needs_template = chosen == PromptFormat.CHAT and config.backend == "llamacpp"
        if needs_template and _gguf_has_template(config) is False:
            raise ConfigError(
                f"model {config.name!r} has no chat template in its GGUF metadata: "
                "use prompt_format: transcript"
            )
        return chosen
    if config.backend == "openai":
        return PromptFormat.CHAT
    if writing and config.backend == "llamacpp" and _gguf_has_template(config):
        return PromptFormat.CHAT
    return PromptFormat.TRANSCRIPT


def probe_format(lm: LanguageModel, chosen: PromptFormat) -> None:
    """Refuse a format the opened model cannot take (one short request at most).

    A transcript on a chat-only endpoint is found from the server's own answer (OpenAI's
    404 "This is a chat model ..."): the backend raises a ChatOnlyError that says to switch
    format. A transformers model without a chat template cannot take chat messages.
    """
    tokenizer = getattr(lm, "tokenizer", None)
    no_template = tokenizer is not None and not getattr(tokenizer, "chat_template", None)
    if chosen == PromptFormat.CHAT and no_template:
        raise ConfigError(f"model {lm.name!r} has no chat template: use prompt_format: transcript")
    if chosen == PromptFormat.TRANSCRIPT and isinstance(lm, OpenAICompatModel):
        lm.generate([GenerationRequest("Hello", temperature=0.0, max_tokens=1)])


def check_format_option(value: str | None) -> str | None:
    """Validate a ``--prompt-format`` / ``prompt_format:`` value (None: auto)."""
    if value is None:
        return None
    wanted = value.strip().lower()
    if wanted not in FORMAT_CHOICES:
        raise ConfigError(f"unknown prompt format {value!r}; use {', '.join(FORMAT_CHOICES)}")
    return wanted
