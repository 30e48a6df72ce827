"""Models that wrap a model on the same interface, as lm-eval's and Concordia's caching
wrappers do: each adds one behaviour and delegates the rest, so a backend implements
only what it computes.

``SharedInFlight`` sends identical deterministic requests in flight at the same moment
once (``inflight.py`` says why); ``open_model`` applies it to every model it opens.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stancelab.engine._base import LanguageModel
from stancelab.engine._inflight import InFlight, request_key
from stancelab.engine._types import (
    EngineStats,
    Generation,
    GenerationRequest,
    PathRequest,
    Prompt,
    TokenPath,
    TopTokens,
)

R = TypeVar("R")
A = TypeVar("A", Generation, TokenPath, TopTokens)


class ModelWrapper(LanguageModel):
    """A model that passes every part of the interface to ``inner``; a wrapper overrides
    the parts it changes. ``score_choices`` stays the interface's own, so scoring goes
    through the wrapper's token methods."""

    def __init__(self, inner: LanguageModel) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def stats(self) -> EngineStats:
        """The wrapped engine's totals."""
        return self.inner.stats

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """The wrapped model's replies."""
        return self.inner.generate(requests)

    def generate_stream(
        self, request: GenerationRequest, on_text: Callable[[str], None]
    ) -> Generation:
        """The wrapped model's reply, streamed as it streams it."""
        return self.inner.generate_stream(request, on_text)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """The wrapped model's next-token tables."""
        return self.inner.next_tokens(prompts, top_k)

    def next_token_paths(self, requests: Sequence[PathRequest]) -> list[TokenPath]:
        """The wrapped model's token paths."""
        return self.inner.next_token_paths(requests)

    def has_completion_route(self) -> bool:
        """As the wrapped model."""
        return self.inner.has_completion_route()

    def has_chat_template(self) -> bool:
        """As the wrapped model."""
        return self.inner.has_chat_template()

    def logprobs_cap(self) -> int | None:
        """As the wrapped model."""
        return self.inner.logprobs_cap()

    def has_token_paths(self) -> bool:
        """As the wrapped model."""
        return self.inner.has_token_paths()

    def supports_adapters(self) -> bool:
        """As the wrapped model."""
        return self.inner.supports_adapters()

    def supports_streaming(self) -> bool:
        """As the wrapped model."""
        return self.inner.supports_streaming()

    def describe(self) -> dict[str, Any]:
        """What the wrapped model records about itself."""
        return self.inner.describe()

    def close(self) -> None:
        """Close the wrapped model."""
        self.inner.close()


def _without_conversation(request: Any) -> dict[str, Any]:
    """The fields that decide an answer: the conversation id only picks a replica."""
    return dataclasses.asdict(dataclasses.replace(request, conversation_id=None))


class SharedInFlight(ModelWrapper):
    """Identical deterministic requests in flight at the same moment are sent once.

    Temperature-0 replies and token paths qualify (their answer does not depend on
    chance); a sampled reply is always sent. A copy gets the first request's answer with
    its whole prompt counted as served (``cached_tokens``; a token path records 0
    recomputed tokens), so the answers' own counts add up to the engine's totals, which
    count only what was sent. ``in_flight.shared`` counts the copies. A streamed reply
    (``generate_stream``) is always sent: its reader watches this reply being written.
    """

    def __init__(self, inner: LanguageModel) -> None:
        super().__init__(inner)
        self.in_flight: InFlight[Any] = InFlight()

    def _once(
        self,
        items: Sequence[R],
        keys: Sequence[str | None],
        send: Callable[[list[R]], list[A]],
        served: Callable[[A, float], A],
    ) -> list[A]:
        started = time.perf_counter()
        answers = self.in_flight.run_batch(keys, lambda sent: send([items[i] for i in sent]))
        waited = time.perf_counter() - started
        return [served(answer, waited) if shared else answer for answer, shared in answers]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Replies; a temperature-0 request identical to one in flight waits for it."""
        keys = [
            request_key("generate", _without_conversation(r)) if r.temperature == 0 else None
            for r in requests
        ]

        def served(g: Generation, waited: float) -> Generation:
            return dataclasses.replace(g, cached_tokens=g.prompt_tokens, latency_s=waited)

        return self._once(requests, keys, self.inner.generate, served)

    def next_token_paths(self, requests: Sequence[PathRequest]) -> list[TokenPath]:
        """Greedy paths; a path identical to one in flight waits for it."""
        keys = [request_key("path", _without_conversation(r)) for r in requests]

        def served(path: TokenPath, waited: float) -> TokenPath:
            return dataclasses.replace(path, prompt_tokens=0, latency_s=waited)

        return self._once(requests, keys, self.inner.next_token_paths, served)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Next-token tables; a prompt identical to one in flight waits for it."""
        keys = [request_key("next", p, top_k) for p in prompts]

        def served(top: TopTokens, waited: float) -> TopTokens:
            return dataclasses.replace(top, prompt_tokens=0, latency_s=waited)

        return self._once(prompts, keys, lambda sent: self.inner.next_tokens(sent, top_k), served)
