"""Identical deterministic requests in flight at the same moment are sent once.

Why: debates run concurrently, and at the same moment several of them can ask the very
same deterministic question (every repetition's Default agent answers the hidden survey
on the same prompt before the first reply). An engine with a prefix cache serves a
repeated prompt from its cache only once the first copy has finished; copies sent
together each take a slot and compute the whole prompt. The later copies wait for the
first one's answer instead. Only requests whose answer does not depend on chance qualify
(greedy token paths, temperature-0 generation); a sampled request is always sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def request_key(*parts: Any) -> str:
    """A key that is equal exactly when the wire requests are: the JSON of the parts."""
    return json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)


class InFlight(Generic[T]):
    """Runs each key's request once among the callers that ask for it at the same time.

    Callers that find the same key running wait for that answer (or its error) instead of
    sending their own; a key is forgotten as soon as its request ends, so nothing is
    cached beyond the moment: a later identical request is sent again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Future[T]] = {}
        self.shared = 0
        """How many callers received another caller's answer instead of sending."""

    def run(self, key: str | None, send: Callable[[], T]) -> tuple[T, bool]:
        """The answer to ``send()`` and whether it was another caller's: the one whose
        identical request (same ``key``) is in flight. ``key`` None: a request that must
        be sent whatever else is in flight (a sampled one)."""
        if key is None:
            return send(), False
        with self._lock:
            running = self._running.get(key)
            if running is None:
                mine: Future[T] = Future()
                self._running[key] = mine
            else:
                self.shared += 1
        if running is not None:
            return running.result(), True  # re-raises the sender's error
        try:
            answer = send()
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(answer)
            return answer, False
        finally:
            with self._lock:
                del self._running[key]
