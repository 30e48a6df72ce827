"""The one language-model interface every part of stancelab uses.

Two operations, both batched so an engine can keep all its parallel slots busy:
``generate`` (sample text for many prompts) and ``score_choices`` (probability of
each candidate answer, computed from the log-probabilities of the whole candidate).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

from stancelab.engine.inflight import InFlight, request_key
from stancelab.engine.scoring import score_by_token_paths, score_by_token_tree
from stancelab.engine.types import (
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

    def __init__(self) -> None:
        self.stats = EngineStats()
        self.in_flight: InFlight[dict[str, Any]] = InFlight()
        """Engines that answer concurrent requests send identical deterministic ones once
        (engine/inflight.py); ``in_flight.shared`` counts the answers that were shared."""

    def _send_once(
        self, send: Callable[[], dict[str, Any]], *request: Any, deterministic: bool
    ) -> tuple[dict[str, Any], bool]:
        """The answer to ``send()`` and whether it was shared: a deterministic request
        (a greedy token path, a temperature-0 reply) identical to one in flight (same
        ``request`` parts, the wire payload) gets that one's answer; any other is sent."""
        return self.in_flight.run(request_key(*request) if deterministic else None, send)

    @abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generate one completion per request, in order."""

    def score_choices(
        self, requests: Sequence[ChoiceRequest], top_k: int = 40
    ) -> list[ChoiceScores]:
        """Probability of each candidate, from whole-candidate token log-probabilities.

        Engines that answer path requests (a prefix cache makes a short greedy path as cheap
        as one token) resolve the tree in about one request per candidate list; the others
        ask one tree level per batched call.
        """
        if type(self).next_token_paths is not LanguageModel.next_token_paths:
            return score_by_token_paths(self.next_token_paths, requests, top_k=top_k)
        return score_by_token_tree(self.next_tokens, requests, top_k=top_k)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Top-k next tokens after each prompt; engines with log-probabilities implement it."""
        raise NotImplementedError(f"{type(self).__name__} offers no token log-probabilities")

    def next_token_paths(self, requests: Sequence[PathRequest]) -> list[TokenPath]:
        """Greedy continuations with the top-k tokens at every position (PathRequest).

        This default resolves only the first position, through ``next_tokens``; engines
        that generate with log-probabilities override it.
        """
        tops = self.next_tokens([r.prompt for r in requests], max(r.top_k for r in requests))
        return [
            TokenPath([t], [], prompt_tokens=t.prompt_tokens, latency_s=t.latency_s) for t in tops
        ]

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
