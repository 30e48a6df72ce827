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
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def request_key(*parts: Any) -> str:
    """A key that is equal exactly when the requests are: the JSON of the parts."""
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
        [answer] = self.run_batch([key], lambda _: [send()])
        return answer

    def run_batch(
        self, keys: Sequence[str | None], send: Callable[[list[int]], list[T]]
    ) -> list[tuple[T, bool]]:
        """Answers for a batch of requests, each with whether it was another's answer.

        A request whose key is in flight (elsewhere, or earlier in this batch) waits for
        that answer; ``send(indices)`` sends all the others together, in one engine call,
        and answers them in the order given. The batch's own keys are answered before it
        waits on anyone else's, so two batches waiting on each other cannot block.
        """
        mine: dict[int, Future[T]] = {}
        theirs: dict[int, Future[T]] = {}
        with self._lock:
            for i, key in enumerate(keys):
                if key is None:
                    continue
                running = self._running.get(key)
                if running is None:
                    mine[i] = self._running[key] = Future()
                else:
                    theirs[i] = running
                    self.shared += 1
        sent = [i for i in range(len(keys)) if i not in theirs]
        try:
            by_index = dict(zip(sent, send(sent) if sent else [], strict=True))
        except BaseException as exc:
            for future in mine.values():
                future.set_exception(exc)
            raise
        else:
            for i, future in mine.items():
                future.set_result(by_index[i])
        finally:
            with self._lock:
                for i in mine:
                    del self._running[str(keys[i])]
        return [
            (theirs[i].result(), True) if i in theirs else (by_index[i], False)  # re-raises
            for i in range(len(keys))
        ]
