"""The values that cross the model interface: prompts, requests, answers and engine totals."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, TypedDict


class Message(TypedDict):
    """One chat message in the OpenAI wire format."""

    role: str
    content: str


Prompt = str | list[Message]


@dataclass(frozen=True)
class GenerationRequest:
    """One text-generation request: a raw transcript or chat messages."""

    prompt: Prompt
    temperature: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = ()
    conversation_id: str | None = None
    """Stable key of the conversation this prompt extends (a debate agent's context, a
    study participant's chat): engines with several replicas keep it on one replica, and
    cache-aware routers receive it as the session key. None: routed by prompt prefix."""


@dataclass
class Generation:
    """The engine's answer to one GenerationRequest."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = "stop"


@dataclass(frozen=True)
class ChoiceRequest:
    """Score a fixed list of candidate answers as continuations of a prompt."""

    prompt: Prompt
    choices: tuple[str, ...]
    conversation_id: str | None = None
    """As GenerationRequest.conversation_id: the conversation the scored prompt copies."""


@dataclass
class ChoiceScores:
    """Normalised probability per candidate, plus how much raw mass the candidates got."""

    choices: tuple[str, ...]
    probabilities: tuple[float, ...]
    coverage: float
    """Raw probability mass on all candidates before normalisation (0..1)."""
    requests: int = 0
    prompt_tokens: int = 0
    latency_s: float = 0.0
    nodes: int = 0
    """Token-tree nodes whose next-token distribution the score needed (requests may
    resolve several nodes at once)."""

    @property
    def most_likely(self) -> str:
        """The candidate with the highest probability."""
        best = max(range(len(self.choices)), key=lambda i: self.probabilities[i])
        return self.choices[best]

    def expected_value(self) -> float:
        """Probability-weighted mean of numeric candidates."""
        return sum(float(c) * p for c, p in zip(self.choices, self.probabilities, strict=True))

    def entropy_bits(self) -> float:
        """Shannon entropy of the normalised distribution, in bits."""
        return -sum(p * math.log2(p) for p in self.probabilities if p > 0)


@dataclass
class TopTokens:
    """The most likely next tokens after a prompt, as (text, logprob) pairs."""

    tokens: list[tuple[str, float]]
    prompt_tokens: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True)
class PathRequest:
    """Ask for a short greedy continuation with the top-k tokens at every position.

    One request then resolves a path of token-tree nodes instead of one node. ``prefer``
    are texts whose tokens get a large logit bias, so the greedy path runs through the
    nodes the scorer needs next (" " then "1" for a 0-10 scale); engines report the
    log-probabilities before any bias, so the distributions stay the model's own.
    """

    prompt: Prompt
    top_k: int
    max_tokens: int = 1
    prefer: tuple[str, ...] = ()
    conversation_id: str | None = None


@dataclass
class TokenPath:
    """The answer to a PathRequest: ``tops[i]`` is the next-token distribution after the
    prompt plus ``tokens[:i]``; ``tokens[i]`` is the token the engine then emitted."""

    tops: list[TopTokens]
    tokens: list[str]
    prompt_tokens: int = 0
    latency_s: float = 0.0


@dataclass
class EngineStats:
    """Running totals an engine keeps so runs can report tokens and cache use."""

    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def recomputed_tokens(self) -> int:
        """Prompt tokens the engine had to evaluate (not served from its prefix cache)."""
        return self.prompt_tokens - self.cached_tokens


def extend_prompt(prompt: Prompt, suffix: str) -> Prompt:
    """Append text the model is to continue from: to a transcript, or to a trailing
    assistant message (engines continue a final assistant message)."""
    if not suffix:
        return prompt
    if isinstance(prompt, str):
        return prompt + suffix
    messages = list(prompt)
    if messages and messages[-1]["role"] == "assistant":
        last = messages[-1]
        messages[-1] = {"role": "assistant", "content": last["content"] + suffix}
    else:
        messages.append({"role": "assistant", "content": suffix})
    return messages


def conversation_key(prompt: Prompt) -> str | None:
    """A stable key for a chat that carries no conversation id: its opening (system
    prompt and first user message) stays the same for the whole chat. Transcripts have
    no such mark and get None."""
    if isinstance(prompt, str):
        return None
    opening = []
    for message in prompt:
        opening.append(f"{message['role']}:{message['content']}")
        if message["role"] == "user":
            break
    digest = hashlib.blake2b("\x1e".join(opening).encode(), digest_size=8).hexdigest()
    return f"chat-{digest}"
