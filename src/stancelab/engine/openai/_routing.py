"""Which replica serves a request: least-in-flight, or consistent hashing by conversation.

With affinity every conversation (a debate agent's context, a study participant's chat)
hashes to a point on a ring of virtual nodes; the first replica clockwise that is up
serves it, so its prefix cache stays warm on one replica. A replica that refuses or
drops connections is marked down for a cooldown: its conversations move to the next
replica on the ring (and only they move), and come back once the cooldown is over and
it answers again.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

VIRTUAL_NODES = 64


@dataclass
class Endpoint:
    """One replica's base URL and what the router knows about it."""

    base: str
    in_flight: int = 0
    down_until: float = 0.0
    requests: int = 0
    failures: int = 0


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Router:
    """Picks replicas and tracks in-flight counts and downtime; thread-safe."""

    def __init__(
        self,
        bases: Sequence[str],
        policy: str = "affinity",
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not bases:
            raise ValueError("a router needs at least one base URL")
        self.endpoints = [Endpoint(b) for b in bases]
        self.policy = policy
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._rr = 0
        self.placements: dict[str, list[str]] = {}
        """Per conversation, the replicas that served it in turn (a new entry only when
        it moves), so a run can show where conversations went."""
        ring = sorted(
            (_point(f"{e.base}#{v}"), i)
            for i, e in enumerate(self.endpoints)
            for v in range(VIRTUAL_NODES)
        )
        self._ring_points = [p for p, _ in ring]
        self._ring_owners = [i for _, i in ring]

    def _up(self, endpoint: Endpoint, now: float) -> bool:
        return endpoint.down_until <= now

    def owner(self, key: str, avoid: Endpoint | None = None) -> Endpoint:
        """The replica a conversation belongs to now: the first one clockwise from its
        point that is up (and not ``avoid``); all down: the one back soonest."""
        now = self._clock()
        start = bisect.bisect(self._ring_points, _point(key))
        n = len(self._ring_points)
        fallback: Endpoint | None = None
        for step in range(n):
            endpoint = self.endpoints[self._ring_owners[(start + step) % n]]
            if endpoint is avoid:
                continue
            if self._up(endpoint, now):
                return endpoint
            if fallback is None:
                fallback = endpoint
        candidates = [e for e in self.endpoints if e is not avoid] or self.endpoints
        return min(candidates, key=lambda e: e.down_until)

    def _least_in_flight(self, avoid: Endpoint | None) -> Endpoint:
        now = self._clock()
        up = [e for e in self.endpoints if self._up(e, now) and e is not avoid]
        if not up:
            up = [e for e in self.endpoints if self._up(e, now)] or [
                min(self.endpoints, key=lambda e: e.down_until)
            ]
        self._rr += 1
        n = len(up)
        return up[min(range(n), key=lambda i: (up[i].in_flight, (i - self._rr) % n))]

    def acquire(self, key: str | None, avoid: Endpoint | None = None) -> Endpoint:
        """Choose a replica for one attempt and count it in flight."""
        with self._lock:
            if self.policy == "affinity" and key is not None:
                endpoint = self.owner(key, avoid)
            else:
                endpoint = self._least_in_flight(avoid)
            endpoint.in_flight += 1
            endpoint.requests += 1
            return endpoint

    def release(
        self, endpoint: Endpoint, key: str | None = None, failed: bool = False, down: bool = False
    ) -> None:
        """An attempt ended; a replica that refused or dropped it is skipped a while."""
        with self._lock:
            endpoint.in_flight -= 1
            if key is not None and not failed:
                served = self.placements.setdefault(key, [])
                if not served or served[-1] != endpoint.base:
                    served.append(endpoint.base)
            if failed:
                endpoint.failures += 1
            if down:
                endpoint.down_until = self._clock() + self.cooldown_s

    def others_up(self, endpoint: Endpoint) -> bool:
        """Whether another replica could take a retry now."""
        now = self._clock()
        return any(e is not endpoint and self._up(e, now) for e in self.endpoints)
