"""Token, cost, error and retry totals of a remote backend, kept in EngineStats."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from stancelab.engine._registry import Price
from stancelab.engine._types import EngineStats
from stancelab.engine.openai import _codec as codec


class Accounting:
    """Adds every answer's usage and every failure to ``stats``; thread-safe."""

    def __init__(
        self,
        stats: EngineStats,
        endpoints: Sequence[str],
        price: Price | None = None,
    ) -> None:
        self.stats = stats
        self._lock = threading.Lock()
        self._price = price
        stats.extra.update(
            retries=0, errors={}, cost_usd=0.0, endpoints=dict.fromkeys(endpoints, 0)
        )

    def answer(self, endpoint: str, data: dict[str, Any]) -> None:
        """Count one successful answer from ``endpoint`` (a public URL)."""
        counts = codec.usage(data)
        price = self._price
        cost = price.cost(counts.prompt_tokens, counts.completion_tokens) if price else 0.0
        with self._lock:
            self.stats.requests += 1
            self.stats.prompt_tokens += counts.prompt_tokens
            self.stats.completion_tokens += counts.completion_tokens
            self.stats.cached_tokens += counts.cached_tokens
            self.stats.extra["cost_usd"] += cost
            self.stats.extra["endpoints"][endpoint] += 1

    def error(self, kind: str) -> None:
        """Count one failed attempt by kind (timeout, connection, http_503, ...)."""
        with self._lock:
            errors: dict[str, int] = self.stats.extra["errors"]
            errors[kind] = errors.get(kind, 0) + 1

    def retry(self) -> None:
        """Count one further attempt."""
        with self._lock:
            self.stats.extra["retries"] += 1
