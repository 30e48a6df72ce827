"""Signed cookies bound to one participant, CSRF tokens, and per-key rate limiters
(counted in the database, shared by every server process)."""

from __future__ import annotations

import hashlib
import hmac

from stancelab.study._store import StudyStore


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
    """At most ``limit`` events per ``window_s`` seconds and key; answers a wait time.

    Counted in the study database (``StudyStore.count_event``), so every server process
    sharing it sees the same counts: a limit holds for the study, not per process. A
    window of 0 seconds limits nothing."""

    def __init__(self, store: StudyStore, scope: str, limit: int, window_s: float) -> None:
        self.store = store
        self.scope = scope
        self.limit = limit
        self.window_s = window_s

    def hit(self, key: str) -> float:
        """Record an event; return 0 if allowed, else the seconds to wait (not recorded)."""
        if self.window_s <= 0:
            return 0.0
        return self.store.count_event(self.scope, key, self.limit, self.window_s)

    def peek(self, key: str) -> float:
        """The seconds to wait before the key's next event is allowed (0: allowed); records
        nothing."""
        if self.window_s <= 0:
            return 0.0
        return self.store.count_event(self.scope, key, self.limit, self.window_s, record=False)


def min_interval(store: StudyStore, scope: str, interval_s: float) -> RateLimiter:
    """At least ``interval_s`` between two accepted events of one key: one event per
    window of that length."""
    return RateLimiter(store, scope, 1, interval_s)
