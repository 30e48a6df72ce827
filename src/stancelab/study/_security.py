"""Signed cookies bound to one participant, CSRF tokens, and per-key rate limiters."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque


class Signer:
    """HMAC-SHA256 signatures with one server secret (set it for restarts to keep sessions)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret

    def sign(self, *parts: str) -> str:
        """A hex signature over the parts."""
        message = "\x1f".join(parts).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, signature: str, *parts: str) -> bool:
        """Whether the signature matches the parts (constant time)."""
        return hmac.compare_digest(signature.encode(), self.sign(*parts).encode())

    def session_cookie(self, participant_id: str, nonce: str) -> str:
        """The cookie value naming a participant, valid only with their current nonce."""
        return f"{participant_id}.{self.sign('session', participant_id, nonce)}"

    def csrf_token(self, participant_id: str, nonce: str) -> str:
        """The form token of one participant's session."""
        return self.sign("csrf", participant_id, nonce)[:32]

    def admin_csrf(self, session_token: str) -> str:
        """The form token of one admin session (for logging out)."""
        return self.sign("admin-csrf", hashlib.sha256(session_token.encode()).hexdigest())[:32]


def token_digest(token: str) -> str:
    """What the server stores of a session token: its sha256 (a database leak gives no
    usable cookie)."""
    return hashlib.sha256(token.encode()).hexdigest()


def split_session_cookie(value: str | None) -> tuple[str, str] | None:
    """(participant id, signature) from a cookie value, or None if malformed."""
    if not value or value.count(".") != 1:
        return None
    pid, sig = value.split(".")
    if not (0 < len(pid) <= 64 and pid.isalnum() and len(sig) == 64):
        return None
    return pid, sig


class RateLimiter:
    """At most ``limit`` events per ``window_s`` seconds and key; answers a wait time."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float:
        """Record an event; return 0 if allowed, else the seconds to wait (not recorded)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.limit:
                return max(0.05, events[0] + self.window_s - now)
            events.append(now)
            if len(self._events) > 100_000:  # forget idle keys
                for k in [k for k, v in self._events.items() if not v]:
                    del self._events[k]
            return 0.0

    def peek(self, key: str, now: float | None = None) -> float:
        """The seconds to wait before the key's next event is allowed (0: allowed); records
        nothing."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.get(key)
            if not events:
                return 0.0
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.limit:
                return max(0.05, events[0] + self.window_s - now)
            return 0.0


class MinInterval:
    """At least ``interval_s`` between two accepted events of the same key."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> float:
        """Record an event; return 0 if allowed, else the seconds to wait (not recorded)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                return max(0.05, self.interval_s - (now - last))
            self._last[key] = now
            return 0.0
