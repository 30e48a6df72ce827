"""One HTTP exchange with an OpenAI-compatible server, under a total deadline: a whole
answer (``exchange``) or a streamed one (``exchange_stream``, server-sent events).

Failures another attempt may fix raise ``Retryable`` (429, 5xx, time-outs, refused or
dropped connections, malformed bodies); the caller's mistakes raise at once (an unknown
model as ModelError, other 4xx as EngineError), with the server's own message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from stancelab.engine._errors import ChatOnlyError, ConfigError, EngineError, ModelError

# Statuses worth another try: rate limits, time-outs at a gateway, overloaded or
# restarting servers. Every other 4xx is the caller's mistake and is reported at once.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def is_chat_only_answer(path: str, status: int, message: str) -> bool:
    """Whether a refused ``/completions`` request means "this endpoint serves chat only".

    OpenAI answers 404 "This is a chat model and not supported in the v1/completions
    endpoint"; servers without the route answer 404 or 405 without naming a model.
    """
    if path != "/completions" or status not in (404, 405):
        return False
    text = message.lower()
    return "chat" in text or "model" not in text


class Retryable(Exception):
    """An attempt failed in a way another attempt may fix."""

    def __init__(
        self, message: str, retry_after: float | None = None, endpoint_down: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.endpoint_down = endpoint_down


def normalise_base_url(url: str) -> str:
    """``http://host:8000`` -> ``http://host:8000/v1``; a URL with a path is kept as given."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"base URL {url!r} must look like http://host:port/v1")
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def public_url(url: str) -> str:
    """A URL without user info or query, safe to record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (number or HTTP date); None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def error_message(body: bytes) -> str:
    """The server's own error text, from OpenAI-style JSON or the raw body."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data))
        if isinstance(error, dict):
            return str(error.get("message", error))[:300]
        return str(error)[:300]
    return str(data)[:300]


@contextmanager
def _attempt(timeout_s: float, count: Callable[[str], None]) -> Iterator[None]:
    """httpx's failures during one attempt, raised as Retryable and counted by kind."""
    try:
        yield
    except httpx.TimeoutException:
        count("timeout")
        raise Retryable(f"timed out after {timeout_s}s") from None
    except (
        httpx.ConnectError,
        httpx.RemoteProtocolError,
        httpx.ReadError,
        httpx.WriteError,
        httpx.CloseError,
    ) as exc:
        # Refused, reset or dropped: the server is down or restarting; use another one.
        count("connection")
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Retryable(f"connection failed ({detail})", endpoint_down=True) from None
    except httpx.TransportError as exc:
        count("transport")
        raise Retryable(f"transport error ({type(exc).__name__})") from None


def _check_deadline(deadline: float, timeout_s: float, count: Callable[[str], None]) -> None:
    # httpx's timeout bounds each read; this bounds the whole answer, so a server that
    # trickles bytes cannot hold an attempt forever.
    if time.monotonic() > deadline:
        count("timeout")
        raise Retryable(f"no complete answer within {timeout_s}s")


def _read_body(
    resp: httpx.Response, deadline: float, timeout_s: float, count: Callable[[str], None]
) -> bytes:
    chunks = []
    for chunk in resp.iter_bytes():
        chunks.append(chunk)
        _check_deadline(deadline, timeout_s, count)
    return b"".join(chunks)


def _refuse(
    resp: httpx.Response,
    body: bytes,
    base: str,
    path: str,
    count: Callable[[str], None],
    redact: Callable[[str], str],
    model: str,
    key_hint: str,
) -> Exception:
    """The error a non-200 answer raises: Retryable, or the caller's mistake named."""
    status = resp.status_code
    where = public_url(base)
    message = redact(error_message(body))
    count(f"http_{status}")
    if status in RETRY_STATUSES or status >= 500:
        retry_after = retry_after_seconds(resp.headers.get("retry-after"))
        return Retryable(f"HTTP {status}: {message}", retry_after=retry_after)
    if is_chat_only_answer(path, status, message):
        return ChatOnlyError(
            f"server {where} serves {model!r} as a chat model only (HTTP {status} on "
            f"/completions: {message}); switch to prompt_format: chat (--prompt-format chat)"
        )
    if status == 404 and "model" in message.lower():
        return ModelError(f"server {where} has no model {model!r} (HTTP 404: {message})")
    if status in (401, 403):
        return EngineError(
            f"server {where} refused the request (HTTP {status}: {message}); {key_hint}"
        )
    return EngineError(f"server {where} rejected a request to {path} (HTTP {status}: {message})")


def _decoded(body: bytes, count: Callable[[str], None], redact: Callable[[str], str]) -> Any:
    """A JSON object from the server (a whole answer or one streamed chunk)."""
    try:
        data = json.loads(body)
    except ValueError:
        count("malformed")
        raise Retryable(f"malformed JSON body ({len(body)} bytes)") from None
    if not isinstance(data, dict):
        count("malformed")
        raise Retryable("answer is not a JSON object")
    if "error" in data:  # some servers put errors in a 200 body
        count("error_body")
        raise Retryable(f"server error: {redact(error_message(body))}")
    return data


def exchange(
    client: httpx.Client,
    base: str,
    path: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
    count: Callable[[str], None],
    redact: Callable[[str], str],
    model: str,
    key_hint: str,
) -> dict[str, Any]:
    """POST one payload and return the decoded answer; raises Retryable or a final error."""
    deadline = time.monotonic() + timeout_s
    with (
        _attempt(timeout_s, count),
        client.stream("POST", base + path, json=payload, headers=dict(headers)) as resp,
    ):
        body = _read_body(resp, deadline, timeout_s, count)
    if resp.status_code != 200:
        raise _refuse(resp, body, base, path, count, redact, model, key_hint)
    data: dict[str, Any] = _decoded(body, count, redact)
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        count("malformed")
        raise Retryable("answer has no choices")
    return data


def exchange_stream(
    client: httpx.Client,
    base: str,
    path: str,
    payload: dict[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
    count: Callable[[str], None],
    redact: Callable[[str], str],
    model: str,
    key_hint: str,
    on_chunk: Callable[[dict[str, Any]], None],
) -> None:
    """POST a ``stream: true`` payload and hand each server-sent chunk (one JSON object
    per ``data:`` line) to ``on_chunk`` as it arrives, until ``data: [DONE]``.

    Fails as ``exchange`` does, under the same total deadline; a stream that ends before
    ``[DONE]`` is Retryable (the caller decides whether a retry may start the reply anew).
    """
    deadline = time.monotonic() + timeout_s
    with (
        _attempt(timeout_s, count),
        client.stream("POST", base + path, json=payload, headers=dict(headers)) as resp,
    ):
        if resp.status_code != 200:
            body = _read_body(resp, deadline, timeout_s, count)
            raise _refuse(resp, body, base, path, count, redact, model, key_hint)
        for line in resp.iter_lines():
            _check_deadline(deadline, timeout_s, count)
            # Blank lines end events; ": ..." keep-alive comments and event:/id: fields
            # carry no answer.
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                return
            on_chunk(_decoded(data.encode(), count, redact))
    count("truncated")
    raise Retryable("the stream ended before [DONE]", endpoint_down=True)
