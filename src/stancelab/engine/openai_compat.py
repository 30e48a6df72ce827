"""A backend for servers speaking the OpenAI wire protocol: vLLM, llama.cpp, Ollama, OpenAI.

Transcript prompts (str) go to ``/completions``, message lists to ``/chat/completions``.
``next_tokens`` asks for one token with its top log-probabilities and reads both answer
shapes in use: OpenAI's legacy ``logprobs.top_logprobs[0]`` mapping (OpenAI, vLLM text
completions) and the ``logprobs.content[0].top_logprobs`` list (chat completions, and
llama.cpp's server for both endpoints).

Robustness: a bounded pool of requests in flight, spread over several base URLs by
least-in-flight with failover; retries with exponential backoff and full jitter on 429,
5xx, time-outs, dropped connections and malformed or truncated bodies, honouring
Retry-After; a total deadline per attempt so a server that trickles bytes cannot hang a
run. After the last retry one EngineError names the endpoint, the path and the last cause.

The API key is read from the environment variable ``api_key_env`` at every request; it is
never kept on the object, written to a run record or put into an error message.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stancelab.engine.base import (
    Generation,
    GenerationRequest,
    LanguageModel,
    Prompt,
    TopTokens,
)
from stancelab.engine.errors import ConfigError, EngineError, ModelError

T = TypeVar("T")

# Statuses worth another try: rate limits, time-outs at a gateway, overloaded or
# restarting servers. Every other 4xx is the caller's mistake and is reported at once.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class NoLogprobsError(EngineError):
    """The server answered without token log-probabilities (the survey needs ``generate``)."""


class ChatOnlyError(EngineError):
    """The server has no text-completion route for this model: prompts must be chat."""


def is_chat_only_answer(path: str, status: int, message: str) -> bool:
    """Whether a refused ``/completions`` request means "this endpoint serves chat only".

    OpenAI answers 404 "This is a chat model and not supported in the v1/completions
    endpoint"; servers without the route answer 404 or 405 without naming a model.
    """
    if path != "/completions" or status not in (404, 405):
        return False
    text = message.lower()
    return "chat" in text or "model" not in text


class OpenAIOptions(BaseModel):
    """Settings of the ``openai`` backend (``options:`` in a model config)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=120.0, gt=0)
    """Longest one attempt may take, connection to last byte."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    """Further attempts after the first one fails with a retryable error."""
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_retry_after_s: float = Field(default=120.0, ge=0)
    """Cap on a server's Retry-After, so a bad header cannot stall a run for hours."""
    cooldown_s: float = Field(default=5.0, ge=0)
    """How long an endpoint that refused a connection is skipped when others are up."""
    logprobs: bool | None = None
    """False: the server has none (survey must use generate mode); None: find out."""
    max_logprobs: int | None = Field(default=None, ge=1)
    """Cap on top log-probabilities per request (OpenAI completions: 5, vLLM default: 20)."""
    max_stop: int | None = Field(default=None, ge=0)
    """Cap on stop strings per request (OpenAI: 4); the debate also cuts replies itself."""
    check_model: bool = True
    """Check at start that the servers list the model name (catches typos early)."""
    price_per_1k_prompt: float = Field(default=0.0, ge=0)
    price_per_1k_completion: float = Field(default=0.0, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra JSON fields for every request (e.g. vLLM's ``top_k``)."""
    continue_final_message: bool = False
    """vLLM: continue a trailing assistant message instead of starting a new one."""
    trust_env: bool = True
    """Use HTTP(S)_PROXY / NO_PROXY from the environment (false for loopback servers)."""


def parse_options(model: str, options: OpenAIOptions | dict[str, Any] | None) -> OpenAIOptions:
    """Validate a model entry's ``options:``; the first problem as one ConfigError line."""
    if isinstance(options, OpenAIOptions):
        return options
    try:
        return OpenAIOptions.model_validate(options or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"model {model!r}: option {where}: {first['msg']}") from None


@dataclass
class _Endpoint:
    base: str
    in_flight: int = 0
    down_until: float = 0.0
    requests: int = 0
    failures: int = 0


class _Retryable(Exception):
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


def _public_url(url: str) -> str:
    """A URL without user info or query, safe to record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _retry_after_seconds(value: str | None) -> float | None:
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


def _error_message(body: bytes) -> str:
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


def parse_top_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """Top tokens of the first generated position, from either answer shape; None if absent."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if isinstance(content, list):  # chat completions; llama.cpp for both endpoints
        if not content or not isinstance(content[0], dict):
            return None
        entries = content[0].get("top_logprobs")
        if not isinstance(entries, list) or not entries:
            return None
        return [(str(e["token"]), float(e["logprob"])) for e in entries]
    top = logprobs.get("top_logprobs")
    if isinstance(top, list):  # OpenAI legacy completions: [{token: logprob}, ...]
        if not top or not isinstance(top[0], dict) or not top[0]:
            return None
        return [(str(tok), float(lp)) for tok, lp in top[0].items()]
    return None


class OpenAICompatModel(LanguageModel):
    """A model behind one or more OpenAI-compatible HTTP endpoints."""

    def __init__(
        self,
        model: str,
        base_urls: Sequence[str],
        api_key_env: str | None = None,
        parallel: int = 8,
        options: OpenAIOptions | dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        if not base_urls:
            raise ConfigError(
                f"model {model!r}: backend 'openai' needs base_urls, e.g. "
                "[http://127.0.0.1:8080/v1] or [https://api.openai.com/v1]"
            )
        self.options = parse_options(model, options)
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise ConfigError(
                f"model {model!r}: environment variable {api_key_env} is not set; "
                f"export {api_key_env}=... (the key is never read from a file)"
            )
        self.name = model
        self.api_key_env = api_key_env
        self.parallel = parallel
        self._endpoints = [_Endpoint(normalise_base_url(u)) for u in base_urls]
        self._lock = threading.Lock()
        self._rr = 0
        self._sleep = sleep
        self._logprobs: bool | None = self.options.logprobs
        opts = self.options
        self._client = httpx.Client(
            timeout=httpx.Timeout(
                opts.timeout_s, connect=min(opts.connect_timeout_s, opts.timeout_s)
            ),
            limits=httpx.Limits(
                max_connections=parallel * 2, max_keepalive_connections=parallel * 2
            ),
            follow_redirects=False,
            trust_env=opts.trust_env,
        )
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="openai")
        self.stats.extra.update(
            retries=0,
            errors={},
            cost_usd=0.0,
            endpoints={_public_url(e.base): 0 for e in self._endpoints},
        )
        if opts.check_model:
            self._check_model()

    # ----------------------------------------------------------------- records

    def describe(self) -> dict[str, Any]:
        """Model name, endpoints and settings; never the API key."""
        opts = self.options
        return {
            "name": self.name,
            "engine": "openai-compatible HTTP",
            "base_urls": [_public_url(e.base) for e in self._endpoints],
            "api_key_env": self.api_key_env,
            "parallel": self.parallel,
            "logprobs": self._logprobs,
            "timeout_s": opts.timeout_s,
            "max_retries": opts.max_retries,
            "max_logprobs": opts.max_logprobs,
            "max_stop": opts.max_stop,
            "price_per_1k_prompt": opts.price_per_1k_prompt,
            "price_per_1k_completion": opts.price_per_1k_completion,
            "httpx": httpx.__version__,
        }

    @property
    def supports_logprobs(self) -> bool:
        """Whether the server returns token log-probabilities (asks it once if unknown)."""
        if self._logprobs is None:
            try:
                self._next_one("Hello", 2)  # records the answer in self._logprobs
            except NoLogprobsError:
                pass
            except EngineError:
                return True  # unreachable now: unknown, and next_tokens will find out
        return self._logprobs is not False

    # ----------------------------------------------------------------- transport

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def _pick(self, avoid: _Endpoint | None) -> _Endpoint:
        """Least-in-flight endpoint among those up, round robin on ties."""
        now = time.monotonic()
        with self._lock:
            up = [e for e in self._endpoints if e.down_until <= now and e is not avoid]
            if not up:
                up = [e for e in self._endpoints if e.down_until <= now] or [
                    min(self._endpoints, key=lambda e: e.down_until)
                ]
            self._rr += 1
            n = len(up)
            chosen = min(range(n), key=lambda i: (up[i].in_flight, (i - self._rr) % n))
            endpoint = up[chosen]
            endpoint.in_flight += 1
            endpoint.requests += 1
            return endpoint

    @contextmanager
    def _using(self, endpoint: _Endpoint) -> Iterator[None]:
        try:
            yield
        finally:
            with self._lock:
                endpoint.in_flight -= 1

    def _count(self, key: str) -> None:
        with self._lock:
            errors: dict[str, int] = self.stats.extra["errors"]
            errors[key] = errors.get(key, 0) + 1

    def _attempt(self, endpoint: _Endpoint, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One HTTP exchange under a total deadline; raises _Retryable or a final error."""
        url = endpoint.base + path
        deadline = time.monotonic() + self.options.timeout_s
        try:
            with self._client.stream("POST", url, json=payload, headers=self._headers()) as resp:
                chunks = []
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        self._count("timeout")
                        raise _Retryable(f"no complete answer within {self.options.timeout_s}s")
                body = b"".join(chunks)
                status = resp.status_code
                retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
        except httpx.TimeoutException:
            self._count("timeout")
            raise _Retryable(f"timed out after {self.options.timeout_s}s") from None
        except (
            httpx.ConnectError,
            httpx.RemoteProtocolError,
            httpx.ReadError,
            httpx.WriteError,
            httpx.CloseError,
        ) as exc:
            # Refused or reset: the server is down or restarting; prefer another one.
            self._count("connection")
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise _Retryable(
                f"connection failed ({detail})", endpoint_down=isinstance(exc, httpx.ConnectError)
            ) from None
        except httpx.TransportError as exc:
            self._count("transport")
            raise _Retryable(f"transport error ({type(exc).__name__})") from None
        if status != 200:
            message = self._redact(_error_message(body))
            self._count(f"http_{status}")
            if status in RETRY_STATUSES or status >= 500:
                raise _Retryable(f"HTTP {status}: {message}", retry_after=retry_after)
            if is_chat_only_answer(path, status, message):
                raise ChatOnlyError(
                    f"server {_public_url(endpoint.base)} serves {self.name!r} as a chat "
                    f"model only (HTTP {status} on /completions: {message}); switch to "
                    "prompt_format: chat (--prompt-format chat)"
                )
            if status == 404 and "model" in message.lower():
                raise ModelError(
                    f"server {_public_url(endpoint.base)} has no model {self.name!r} "
                    f"(HTTP 404: {message})"
                )
            if status in (401, 403):
                hint = (
                    f"check the key in ${self.api_key_env}"
                    if self.api_key_env
                    else "set api_key_env to the variable holding the key"
                )
                raise EngineError(
                    f"server {_public_url(endpoint.base)} refused the request "
                    f"(HTTP {status}: {message}); {hint}"
                )
            raise EngineError(
                f"server {_public_url(endpoint.base)} rejected a request to {path} "
                f"(HTTP {status}: {message})"
            )
        try:
            data = json.loads(body)
        except ValueError:
            self._count("malformed")
            raise _Retryable(f"malformed JSON body ({len(body)} bytes)") from None
        if not isinstance(data, dict):
            self._count("malformed")
            raise _Retryable("answer is not a JSON object")
        if "error" in data:  # some servers put errors in a 200 body
            self._count("error_body")
            raise _Retryable(f"server error: {self._redact(_error_message(body))}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            self._count("malformed")
            raise _Retryable("answer has no choices")
        return data

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        opts = self.options
        # Full jitter: spreads many clients' retries so they do not hit the server together.
        delay = random.uniform(0, min(opts.backoff_max_s, opts.backoff_base_s * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, opts.max_retry_after_s))
        return delay

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries, failover and backoff; returns the decoded answer."""
        opts = self.options
        last: _Retryable | None = None
        previous: _Endpoint | None = None
        for attempt in range(opts.max_retries + 1):
            endpoint = self._pick(avoid=previous)
            with self._using(endpoint):
                try:
                    data = self._attempt(endpoint, path, payload)
                except _Retryable as exc:
                    last = exc
                else:
                    self._account(endpoint, data)
                    return data
            with self._lock:
                endpoint.failures += 1
                if last.endpoint_down:
                    endpoint.down_until = time.monotonic() + opts.cooldown_s
                self.stats.extra["retries"] += 1 if attempt < opts.max_retries else 0
            previous = endpoint
            if attempt == opts.max_retries:
                break
            # With another endpoint up, fail over at once unless the server asked to wait.
            others_up = any(
                e is not endpoint and e.down_until <= time.monotonic() for e in self._endpoints
            )
            if others_up and last.retry_after is None:
                continue
            self._sleep(self._backoff(attempt, last.retry_after))
        assert last is not None
        raise EngineError(
            f"{path} on {_public_url(previous.base if previous else '')} failed after "
            f"{opts.max_retries + 1} attempts; last error: {last}"
        )

    def _account(self, endpoint: _Endpoint, data: dict[str, Any]) -> None:
        usage = data.get("usage") or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        opts = self.options
        with self._lock:
            self.stats.requests += 1
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion
            self.stats.cached_tokens += _cached_tokens(data)
            self.stats.extra["cost_usd"] += (
                prompt * opts.price_per_1k_prompt + completion * opts.price_per_1k_completion
            ) / 1000
            self.stats.extra["endpoints"][_public_url(endpoint.base)] += 1

    # ----------------------------------------------------------------- requests

    def _payload(self, prompt: Prompt) -> tuple[str, dict[str, Any], bool]:
        payload: dict[str, Any] = {"model": self.name, **self.options.extra_body}
        if isinstance(prompt, str):
            payload["prompt"] = prompt
            return "/completions", payload, False
        payload["messages"] = list(prompt)
        if self.options.continue_final_message and prompt and prompt[-1]["role"] == "assistant":
            payload.update(continue_final_message=True, add_generation_prompt=False)
        return "/chat/completions", payload, True

    def _generate_one(self, request: GenerationRequest) -> Generation:
        path, payload, chat = self._payload(request.prompt)
        payload.update(temperature=request.temperature, max_tokens=request.max_tokens)
        # The protocol samples the whole distribution; some servers (vLLM) would otherwise
        # apply the model's own generation config. extra_body may still set top_p, or
        # drop it with null for a server that refuses the field.
        payload.setdefault("top_p", 1.0)
        if payload["top_p"] is None:
            del payload["top_p"]
        stop = list(request.stop)
        if self.options.max_stop is not None:
            stop = stop[: self.options.max_stop]
        if stop:
            payload["stop"] = stop
        if request.seed is not None:
            payload["seed"] = request.seed
        start = time.perf_counter()
        data = self._post(path, payload)
        latency = time.perf_counter() - start
        choice = data["choices"][0]
        if chat:
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        usage = data.get("usage") or {}
        return Generation(
            text=str(text or ""),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=_cached_tokens(data),
            latency_s=latency,
            finish_reason=str(choice.get("finish_reason") or "stop"),
        )

    def _next_one(self, prompt: Prompt, top_k: int) -> TopTokens:
        if self._logprobs is False:
            raise self._no_logprobs()
        if self.options.max_logprobs is not None:
            top_k = min(top_k, self.options.max_logprobs)
        path, payload, chat = self._payload(prompt)
        payload.update(max_tokens=1, temperature=0.0)
        if chat:
            payload.update(logprobs=True, top_logprobs=top_k)
        else:
            payload["logprobs"] = top_k
        start = time.perf_counter()
        data = self._post(path, payload)
        latency = time.perf_counter() - start
        try:
            tokens = parse_top_logprobs(data["choices"][0])
        except (KeyError, TypeError, ValueError):
            tokens = None
        if tokens is None:
            self._logprobs = False
            raise self._no_logprobs()
        self._logprobs = True
        tokens.sort(key=lambda t: -t[1])
        timings = data.get("timings") or {}
        usage = data.get("usage") or {}
        # Recomputed prompt tokens where the server says (llama.cpp), else all of them.
        prompt_n = int(timings.get("prompt_n", usage.get("prompt_tokens") or 0))
        return TopTokens(tokens=tokens, prompt_tokens=prompt_n, latency_s=latency)

    def _no_logprobs(self) -> NoLogprobsError:
        return NoLogprobsError(
            f"{', '.join(_public_url(e.base) for e in self._endpoints)} returned no token "
            f"log-probabilities for {self.name!r}; use survey mode 'generate' "
            "(stancelab.conversation.survey.survey_modes_for picks it automatically)"
        )

    def _run_all(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """Run fn over items on the bounded pool; the first failure cancels the rest."""
        futures: list[Future[T]] = [self._pool.submit(fn, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            error = future.exception()
            if error is not None:
                for other in pending:
                    other.cancel()
                wait(pending)  # in-flight ones end within their own deadlines
                raise error
        return [f.result() for f in futures]

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generate all requests concurrently, at most ``parallel`` in flight."""
        return self._run_all(self._generate_one, requests)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Top-k next tokens for every prompt; NoLogprobsError if the server has none."""
        return self._run_all(lambda p: self._next_one(p, top_k), prompts)

    # ----------------------------------------------------------------- lifecycle

    def _check_model(self) -> None:
        """Fail early when a reachable server lists models and ours is not among them."""
        listed: list[str] = []
        reached = False
        for endpoint in self._endpoints:
            try:
                resp = self._client.get(
                    endpoint.base + "/models",
                    headers=self._headers(),
                    timeout=min(10.0, self.options.timeout_s),
                )
            except httpx.HTTPError:
                continue  # down now; requests will retry and fail over
            if resp.status_code in (401, 403):
                hint = f"${self.api_key_env}" if self.api_key_env else "api_key_env"
                raise EngineError(
                    f"server {_public_url(endpoint.base)} refused the API key "
                    f"(HTTP {resp.status_code}); check {hint}"
                )
            if resp.status_code != 200:
                continue  # no model listing on this server: nothing to check
            try:
                data = resp.json().get("data", [])
                ids = [m["id"] for m in data] + [a for m in data for a in m.get("aliases", [])]
            except (ValueError, AttributeError, KeyError, TypeError):
                continue
            reached = True
            if any(_same_model(self.name, i) for i in ids):
                return
            listed.extend(ids)
        if reached:
            shown = ", ".join(sorted(set(listed))[:8]) or "none"
            raise ModelError(
                f"no server lists model {self.name!r} (they serve: {shown}); fix the model "
                "name or set options.check_model: false"
            )

    def close(self) -> None:
        """Stop the worker threads and close the HTTP connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def _same_model(name: str, listed: str) -> bool:
    if name == listed:
        return True
    # llama.cpp lists the GGUF path; accept its file name with or without ".gguf".
    base = listed.replace("\\", "/").rsplit("/", 1)[-1]
    return name in (base, base.removesuffix(".gguf"))


def _cached_tokens(data: dict[str, Any]) -> int:
    usage = data.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    if cached is None:
        cached = (data.get("timings") or {}).get("cache_n", 0)
    try:
        return int(cached or 0)
    except (TypeError, ValueError):
        return 0
