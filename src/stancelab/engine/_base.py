"""The one language-model interface every part of stancelab uses.

Two operations, both batched so an engine can keep all its parallel slots busy:
``generate`` (sample text for many prompts) and ``score_choices`` (probability of
each candidate answer, computed from the log-probabilities of the whole candidate);
``generate_stream`` is one reply whose text is handed over while it grows (a chat a
person reads), falling back to the whole reply at once on backends that cannot stream.

A backend implements ``generate`` and, to offer log-probabilities, ``next_tokens``; it
says what it can do through the capability methods (``has_chat_template``,
``logprobs_cap``, ...), whose defaults here are the conservative answers. Sharing
identical requests in flight is a wrapper on this interface (``wrappers.py``), applied
when a model is opened, so a backend needs no ``super().__init__()``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property
from types import TracebackType
from typing import Any, Self

from stancelab.engine._scoring import score_by_token_paths, score_by_token_tree
from stancelab.engine._types import (
    ChoiceRequest,
    ChoiceScores,
    EngineStats,
    Generation,
    GenerationRequest,
    Message,
    PathRequest,
    Prompt,
    TokenPath,
    TopTokens,
    extend_prompt,
)

__all__ = [
    "ChoiceRequest",
    "ChoiceScores",
    "EngineStats",
    "Generation",
    "GenerationRequest",
    "LanguageModel",
    "Message",
    "PathRequest",
    "Prompt",
    "TokenPath",
    "TopTokens",
    "extend_prompt",
]


class LanguageModel(ABC):
    """Abstract engine: batched generation and whole-candidate scoring."""

    name: str = "model"

    @cached_property
    def stats(self) -> EngineStats:
        """Running totals of what the engine sent and computed, kept by the backends that
        see the wire (tokens served from a prefix cache, retries, cost); zeros for one
        that counts nothing. Made on first use, so a backend needs no ``__init__`` call."""
        return EngineStats()

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generate one completion per request, in order."""

    def generate_stream(
        self, request: GenerationRequest, on_text: Callable[[str], None]
    ) -> Generation:
        """One reply, with ``on_text(text_so_far)`` called as its text grows.

        Returns the Generation ``generate([request])[0]`` returns (same text, token counts,
        finish reason and stop handling). ``on_text`` is called each time the text grows:
        every text it gets is a prefix of the final text, longer than the one before, the
        last one the whole text (an empty reply calls it never). It may run on an engine
        thread rather than the caller's; an exception it raises stops the reply and is
        raised here. A streamed reply is a sampled reply: it is always sent, never shared
        with an identical request in flight.

        This default generates the whole reply and calls ``on_text`` once with it, so
        every backend (a user's with only ``generate``) answers; backends that stream
        override it and say so in ``supports_streaming``.

        Args:
            request: the reply to generate.
            on_text: receives the whole text so far (not the newest piece).
        """
        [generation] = self.generate([request])
        if generation.text:
            on_text(generation.text)
        return generation

    def score_choices(
        self, requests: Sequence[ChoiceRequest], top_k: int = 40
    ) -> list[ChoiceScores]:
        """Probability of each candidate, from whole-candidate token log-probabilities.

        Engines that answer path requests (a prefix cache makes a short greedy path as cheap
        as one token) resolve the tree in about one request per candidate list; the others
        ask one tree level per batched call.
        """
        if self.has_token_paths():
            return score_by_token_paths(self.next_token_paths, requests, top_k=top_k)
        return score_by_token_tree(self.next_tokens, requests, top_k=top_k)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Top-k next tokens after each prompt; engines with log-probabilities implement it."""
        raise NotImplementedError(f"{type(self).__name__} offers no token log-probabilities")

    def next_token_paths(self, requests: Sequence[PathRequest]) -> list[TokenPath]:
        """Greedy continuations with the top-k tokens at every position (PathRequest).

        This default resolves only the first position, through ``next_tokens``; engines
        that generate with log-probabilities override it (and answer ``has_token_paths``).
        """
        tops = self.next_tokens([r.prompt for r in requests], max(r.top_k for r in requests))
        return [
            TokenPath([t], [], prompt_tokens=t.prompt_tokens, latency_s=t.latency_s) for t in tops
        ]

    # ------------------------------------------------------------------ capabilities
    # Asked by callers instead of looking at a backend's name, class or attributes; each
    # default is the answer that promises least.

    def has_completion_route(self) -> bool:
        """Whether ``generate`` takes a plain-text transcript (a ``str`` prompt).

        Default True: a transcript is the interface's basic prompt; a chat-only backend
        (a hosted chat model) answers False.
        """
        return True

    def has_chat_template(self) -> bool:
        """Whether ``generate`` takes chat messages (the model has a chat template).

        Default False: a backend that renders messages says so.
        """
        return False

    def logprobs_cap(self) -> int | None:
        """None when the model returns no token log-probabilities; otherwise the most
        top tokens per position it returns (its vocabulary where nothing else limits it).

        Default None: a backend that implements ``next_tokens`` says how many it gives.
        """
        return None

    def has_token_paths(self) -> bool:
        """Whether ``next_token_paths`` resolves several positions per request (a short
        greedy path), so scoring asks about one request per candidate list.

        Default False: scoring then walks the tree one level per ``next_tokens`` call.
        """
        return False

    def supports_adapters(self) -> bool:
        """Whether the model runs with LoRA adapters applied on its base weights."""
        return False

    def supports_streaming(self) -> bool:
        """Whether ``generate_stream`` hands over text while the reply is generated.

        Default False: the interface's ``generate_stream`` gives the whole reply at once.
        """
        return False

    # ------------------------------------------------------------------ lifecycle

    def describe(self) -> dict[str, Any]:
        """What a run records about this engine (name, file hash, settings)."""
        return {"name": self.name, "engine": type(self).__name__}

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release the engine's resources."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
