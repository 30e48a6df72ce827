"""Identical deterministic requests in flight at once are sent once (engine/_inflight.py)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from stancelab.engine._inflight import InFlight, request_key


def wait_for_waiters(in_flight: InFlight[object], n: int, limit_s: float = 5.0) -> None:
    """Until n callers wait on another's request (or the limit: the test then fails)."""
    deadline = time.monotonic() + limit_s
    while in_flight.shared < n and time.monotonic() < deadline:
        time.sleep(0.001)


def test_callers_of_one_key_share_one_send_and_later_ones_send_again() -> None:
    in_flight: InFlight[object] = InFlight()
    release = threading.Event()
    sent: list[str] = []

    def send(key: str) -> object:
        sent.append(key)
        release.wait(5)
        return object()  # an answer no other send can equal

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(in_flight.run, k, partial(send, k)) for k in "aaabba"]
        wait_for_waiters(in_flight, 4)  # every copy is waiting on the first of its key
        release.set()
        results = [f.result() for f in futures]
    assert sorted(sent) == ["a", "b"]
    answers = [answer for answer, _ in results]
    # Each key's sender is told it sent; the four others that they got its answer.
    assert sum(shared for _, shared in results) == 4 == in_flight.shared
    # Every caller of a key got that key's one answer.
    by_key = {k: {a for a, key in zip(answers, "aaabba", strict=True) if key == k} for k in "ab"}
    assert len(by_key["a"]) == len(by_key["b"]) == 1 and by_key["a"] != by_key["b"]
    # Nothing is kept once the request ended: the same key is sent again.
    assert in_flight.run("a", lambda: 99) == (99, False)


def test_a_request_without_a_key_is_always_sent() -> None:
    """A sampled request (key None) is sent even while an identical one is in flight."""
    in_flight: InFlight[int] = InFlight()
    release = threading.Event()
    sent: list[int] = []

    def send() -> int:
        sent.append(1)
        release.wait(5)
        return len(sent)

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(in_flight.run, None, send) for _ in range(3)]
        deadline = time.monotonic() + 5
        while len(sent) < 3 and time.monotonic() < deadline:
            time.sleep(0.001)
        release.set()
        results = [f.result() for f in futures]
    assert len(sent) == 3 and not any(shared for _, shared in results)
    assert in_flight.shared == 0


def test_the_senders_error_reaches_every_waiter() -> None:
    in_flight: InFlight[object] = InFlight()
    release = threading.Event()

    def fail() -> object:
        release.wait(5)
        raise RuntimeError("engine refused")

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(in_flight.run, "k", fail) for _ in range(3)]
        wait_for_waiters(in_flight, 2)
        release.set()
        for future in futures:
            with pytest.raises(RuntimeError, match="engine refused"):
                future.result()
    assert in_flight.run("k", lambda: 1) == (1, False)


def test_keys_differ_exactly_when_the_requests_do() -> None:
    a = {"prompt": "x", "temperature": 0, "logprobs": 5}
    assert request_key(a, False) == request_key(dict(reversed(a.items())), False)
    assert request_key(a, False) != request_key(a, True)
    assert request_key(a, False) != request_key({**a, "logprobs": 6}, False)
