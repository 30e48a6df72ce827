"""Which prompt format each model gets, and refusing a format a model cannot take.

``transcript`` is the paper's Figure 2 on a completion endpoint; ``chat`` renders the same
content as messages. ``auto`` (the default) picks transcript for models stancelab runs
itself (llama.cpp, transformers, a backend of your own): measured on the embedded
instruct GGUFs with LLM-written personas, the transcript held the parties apart better
than chat (see the fidelity table in docs/experiments.md); and chat for served models
(OpenAI-compatible servers), since most hosted models are chat-only. Persona stories
are the exception: ``auto`` writes them in chat wherever the model has a chat template
(see :func:`resolve_format`). What a model can take is asked of its backend, never
read from its name or class. Every refusal is one line, raised before a run writes anything.
"""

from __future__ import annotations

from stancelab.conversation import PromptFormat, parse_format
from stancelab.engine import ChatOnlyError, ConfigError, LanguageModel, get_backend
from stancelab.engine._factory import ModelConfig

AUTO = "auto"
FORMAT_CHOICES = (AUTO, *(str(f) for f in PromptFormat))


def resolve_format(
    config: ModelConfig, requested: str | None, writing: bool = False
) -> PromptFormat:
    """The format a model entry runs in; refuses chat on a model known to have no chat
    template.

    ``auto`` is chat on a served model (a backend registered ``remote``) and transcript on
    one stancelab runs itself. ``writing``: the format for writing persona stories, where
    ``auto`` means chat wherever the model is known to have a chat template. The
    meta-prompt is an instruction, and an instruct model given it as raw text writes code,
    JSON or a reply to the user: measured on qwen2.5-coder-1.5b, chat-written stories
    separated the parties by 1.3 to 2.0 points on three topics in transcript debates
    (docs/experiments.md). An explicit format is used for stories and debates alike.

    Cheap (the backend's registration reads a GGUF's metadata; nothing starts), so an
    experiment is checked before any file is written. What only the opened model knows
    (a server that serves chat only) is found by :func:`probe_format`.
    """
    chosen_backend = get_backend(config)
    has_template = chosen_backend.chat_template(config)
    wanted = AUTO if requested is None else str(requested).strip().lower()
    if wanted != AUTO:
        chosen = parse_format(wanted)
        if chosen == PromptFormat.CHAT and has_template is False:
            raise ConfigError(
                f"model {config.name!r} has no chat template in its GGUF metadata: "
                "use prompt_format: transcript"
            )
        return chosen
    if chosen_backend.remote or (writing and has_template):
        return PromptFormat.CHAT
    return PromptFormat.TRANSCRIPT


def probe_format(lm: LanguageModel, chosen: PromptFormat) -> None:
    """Refuse a format the opened model cannot take, asking the model (a server finds
    out whether it takes transcripts with one short request)."""
    if chosen == PromptFormat.CHAT and not lm.has_chat_template():
        raise ConfigError(f"model {lm.name!r} has no chat template: use prompt_format: transcript")
    if chosen == PromptFormat.TRANSCRIPT and not lm.has_completion_route():
        raise ChatOnlyError(
            f"model {lm.name!r} takes chat messages only (no text-completion route); "
            "switch to prompt_format: chat (--prompt-format chat)"
        )


def check_format_option(value: str | None) -> str | None:
    """Validate a ``--prompt-format`` / ``prompt_format:`` value (None: auto)."""
    if value is None:
        return None
    wanted = value.strip().lower()
    if wanted not in FORMAT_CHOICES:
        raise ConfigError(f"unknown prompt format {value!r}; use {', '.join(FORMAT_CHOICES)}")
    return wanted
