"""Scripted, deterministic models with no engine: the ``fake`` backend.

Tests of orchestration logic, the docs and dry runs of a pipeline select them like any
other backend (``{name: echo, backend: fake}``), so they take the same path as users.
Their next-token log-probabilities come from a distribution over whole continuations, so
the real scoring code runs on them.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from stancelab.engine._base import (
    Generation,
    GenerationRequest,
    LanguageModel,
    Prompt,
    TopTokens,
)
from stancelab.engine._errors import ConfigError


def _as_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def _split(prompt: Prompt) -> tuple[str, str]:
    """The prompt proper and the continuation scoring has emitted so far: the text after
    the last ``Me:`` of a transcript, or a trailing assistant message of a chat."""
    if isinstance(prompt, str):
        marker = prompt.rfind("Me:")
        if marker < 0:
            return prompt, ""
        return prompt[: marker + 3], prompt[marker + 3 :]
    if prompt and prompt[-1]["role"] == "assistant":
        return _as_text(prompt[:-1]), prompt[-1]["content"]
    return _as_text(prompt), ""


FAKE_VOCABULARY = 256
"""The fake models' tokens are single characters; their continuations are short ASCII."""


@dataclass
class ScriptedModel(LanguageModel):
    """Replies come from a function of the request; next-token probabilities come from a
    distribution over whole continuations, split into one-character tokens.

    ``continuations(prompt)`` returns e.g. ``{" 7\\n": 0.6, " 10\\n": 0.4}``; the model then
    offers " " first, then "7" or "1", and so on, so the real scoring code is exercised.
    """

    reply: Callable[[GenerationRequest], str] = lambda request: "I have an opinion."
    continuations: Callable[[str], dict[str, float]] = lambda prompt: {" 5\n": 1.0}
    generated: list[GenerationRequest] = field(default_factory=list)
    scored_prompts: list[str] = field(default_factory=list)
    delay_s: float = 0.0
    """Seconds each ``generate`` call (or streamed reply) takes, to imitate an engine's
    latency."""
    _count_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.name = "scripted"

    def _count(self, prompt: Prompt, completion_tokens: int) -> int:
        """Count one request into ``stats`` like an engine that sees the wire; a token is
        a word (returns the prompt's)."""
        tokens = len(_as_text(prompt).split())
        with self._count_lock:  # debates call from many worker threads
            self.stats.requests += 1
            self.stats.prompt_tokens += tokens
            self.stats.completion_tokens += completion_tokens
        return tokens

    def _answer(self, request: GenerationRequest) -> Generation:
        """The scripted reply, cut at the first stop string, counted into ``stats``."""
        self.generated.append(request)
        text = self.reply(request)
        for stop in request.stop:
            if stop in text:
                text = text[: text.index(stop)]
        tokens = self._count(request.prompt, len(text.split()))
        return Generation(text=text, prompt_tokens=tokens, completion_tokens=len(text.split()))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answer each request with the scripted reply, cut at the first stop string."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return [self._answer(request) for request in requests]

    def generate_stream(
        self, request: GenerationRequest, on_text: Callable[[str], None]
    ) -> Generation:
        """The reply ``generate`` gives, handed over word by word (each word with the
        space after it), ``delay_s`` spread evenly over the words."""
        generation = self._answer(request)
        words = re.findall(r"\s*\S+\s*", generation.text) or [generation.text]
        # Empty (or blank) text arrives in one piece; an empty reply calls nothing.
        text = ""
        for word in words:
            if self.delay_s:
                time.sleep(self.delay_s / len(words))
            text += word
            if text:
                on_text(text)
        return generation

    def supports_streaming(self) -> bool:
        """Word by word."""
        return True

    def has_chat_template(self) -> bool:
        """Chat messages are read as ``role: content`` lines."""
        return True

    def logprobs_cap(self) -> int:
        """Every one-character token the continuations allow (up to a byte's worth)."""
        return FAKE_VOCABULARY

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """One-character tokens with probabilities implied by the continuations."""
        out = []
        for prompt in prompts:
            base, emitted = _split(prompt)
            self._count(prompt, 1)  # one next token, as an engine decodes for it
            self.scored_prompts.append(base)
            dist = self.continuations(base)
            mass: dict[str, float] = {}
            for continuation, p in dist.items():
                if continuation.startswith(emitted) and len(continuation) > len(emitted):
                    nxt = continuation[len(emitted)]
                    mass[nxt] = mass.get(nxt, 0.0) + p
            total = sum(mass.values())
            ranked = sorted(mass.items(), key=lambda kv: -kv[1])[:top_k]
            out.append(TopTokens([(t, math.log(p / total)) for t, p in ranked if p > 0]))
        return out


def last_user_message(prompt: Prompt) -> str:
    """The content of the last user message of a chat prompt (or the whole transcript)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    return ""


def _echo(request: GenerationRequest) -> str:
    return f"You said: {last_user_message(request.prompt)[:80]}"


def _drifting_stance(base: str) -> dict[str, float]:
    """Stance 3 before the chat, one point higher per exchange, at most 10."""
    exchanges = base.count("\nassistant: ")
    value = min(10, 3 + exchanges)
    return {str(value): 1.0}


@dataclass
class FakeChatModel(ScriptedModel):
    """ScriptedModel for chat prompts: echoes the last user message (so a reply names the
    message it answers) and scores a stance that rises one point per exchange."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = "fake-chat"
        defaults = ScriptedModel.__dataclass_fields__
        if self.reply is defaults["reply"].default:
            self.reply = _echo
        if self.continuations is defaults["continuations"].default:
            self.continuations = _drifting_stance


class FakeOptions(BaseModel):
    """Settings of the ``fake`` backend."""

    model_config = ConfigDict(extra="forbid")

    reply: str | None = None
    """A fixed reply; default: ``scripted`` says one sentence, ``echo`` echoes the user."""
    delay_s: float = Field(default=0.0, ge=0)
    """Seconds each ``generate`` call waits, to imitate an engine's latency."""


FAKE_MODELS = ("scripted", "echo")


def open_fake(name: str, options: FakeOptions) -> ScriptedModel:
    """``scripted``: a fixed reply, every survey answer 5; ``echo``: a chat model that echoes
    the last user message and whose stance rises one point per exchange."""
    if name not in FAKE_MODELS:
        raise ConfigError(
            f"fake model {name!r} does not exist; use one of {', '.join(FAKE_MODELS)}"
        )
    model = FakeChatModel() if name == "echo" else ScriptedModel()
    model.delay_s = options.delay_s
    if options.reply is not None:
        fixed = options.reply
        model.reply = lambda request: fixed
    return model
