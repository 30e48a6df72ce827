"""A backend for servers speaking the OpenAI wire protocol: vLLM, SGLang, llama.cpp, OpenAI.

Transcript prompts (str) go to ``/completions``, message lists to ``/chat/completions``;
payloads are built and read by ``engine/openai/codec.py``, the same code the in-process
llama.cpp engine uses. Survey scoring sends short greedy paths with the top-k tokens at
every position, so one request usually resolves a whole 0-10 answer.

Robustness, one module each under ``engine/openai/``: ``routing`` (several base URLs:
every conversation sticks to one replica by consistent hashing, moves only while that
replica is down and comes back; requests without a conversation go to the least busy
replica), ``retry`` (tenacity: backoff with full jitter, Retry-After honoured, immediate
failover when another replica is up), ``transport`` (one exchange under a total deadline
so a server that trickles bytes cannot hang a run) and ``accounting`` (tokens, cost,
errors). After the last retry one EngineError names the endpoint, the path and the cause.

The API key is read from the environment variable ``api_key_env`` at every request; it is
never kept on the object, written to a run record or put into an error message.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError
from tenacity import RetryCallState

from stancelab.engine._base import (
    Generation,
    GenerationRequest,
    LanguageModel,
    PathRequest,
    Prompt,
    TokenPath,
    TopTokens,
)
from stancelab.engine._errors import (
    ChatOnlyError,
    ConfigError,
    EngineError,
    ModelError,
    format_validation_error,
)
from stancelab.engine._registry import Price
from stancelab.engine._types import conversation_key
from stancelab.engine.openai import OpenAIOptions
from stancelab.engine.openai import _codec as codec
from stancelab.engine.openai._accounting import Accounting
from stancelab.engine.openai._codec import parse_top_logprobs
from stancelab.engine.openai._retry import FailoverWait, retrying
from stancelab.engine.openai._routing import Endpoint, Router
from stancelab.engine.openai._transport import (
    Retryable,
    exchange,
    exchange_stream,
    normalise_base_url,
    public_url,
)

__all__ = [
    "ChatOnlyError",
    "NoLogprobsError",
    "OpenAICompatModel",
    "OpenAIOptions",
    "normalise_base_url",
    "parse_options",
    "parse_top_logprobs",
]

T = TypeVar("T")

OPENAI_TOP_LOGPROBS = 20
"""Top log-probabilities per position OpenAI's API allows and vLLM serves by default."""


class NoLogprobsError(EngineError):
    """The server answered without token log-probabilities (the survey needs ``generate``)."""


def parse_options(model: str, options: OpenAIOptions | dict[str, Any] | None) -> OpenAIOptions:
    """Validate a model entry's ``options:``; the first problem as one ConfigError line."""
    if isinstance(options, OpenAIOptions):
        return options
    try:
        return OpenAIOptions.model_validate(options or {})
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, f"model {model!r}", prefix="option ")
        ) from None


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
        price: Price | None = None,
    ) -> None:
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
        opts = self.options
        self.router = Router(
            [normalise_base_url(u) for u in base_urls], opts.routing, opts.cooldown_s
        )
        self._sleep = sleep
        self._logprobs: bool | None = opts.logprobs
        self._completion_route: bool | None = None
        self._path_bias: bool = bool(opts.path_bias)
        self._lock = threading.Lock()
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
        self.accounting = Accounting(
            self.stats,
            [public_url(e.base) for e in self.router.endpoints],
            price,
        )
        self.price = price
        if opts.check_model:
            self._check_model()

    # ----------------------------------------------------------------- records

    def describe(self) -> dict[str, Any]:
        """Model name, endpoints and settings; never the API key."""
        opts = self.options
        return {
            "name": self.name,
            "engine": "openai-compatible HTTP",
            "base_urls": [public_url(e.base) for e in self.router.endpoints],
            "api_key_env": self.api_key_env,
            "parallel": self.parallel,
            "routing": opts.routing,
            "logprobs": self._logprobs,
            "timeout_s": opts.timeout_s,
            "max_retries": opts.max_retries,
            "max_logprobs": opts.max_logprobs,
            "max_stop": opts.max_stop,
            "price_per_million": self.price.model_dump() if self.price else None,
            "httpx": httpx.__version__,
        }

    # ----------------------------------------------------------------- capabilities

    def logprobs_cap(self) -> int | None:
        """None when the server returns no token log-probabilities (asked once with a
        two-token request if unknown); else ``max_logprobs``, or 20 where unset, the
        limit of OpenAI's API and vLLM's default (llama.cpp's server gives more)."""
        if self._logprobs is None:
            try:
                self._next_one("Hello", 2)  # records the answer in self._logprobs
            except NoLogprobsError:
                pass
            except EngineError:
                pass  # unreachable now: unknown, and next_tokens will find out
        if self._logprobs is False:
            return None
        return self.options.max_logprobs or OPENAI_TOP_LOGPROBS

    def has_completion_route(self) -> bool:
        """Whether the server takes text completions for this model: asked once, with a
        one-token request; a chat-only answer (OpenAI's 404 "This is a chat model") is
        False. Other failures (the server is down) are raised."""
        if self._completion_route is None:
            try:
                self.generate([GenerationRequest("Hello", temperature=0.0, max_tokens=1)])
            except ChatOnlyError:
                self._completion_route = False
            else:
                self._completion_route = True
        return self._completion_route

    def has_chat_template(self) -> bool:
        """Servers render chat messages with the model's template."""
        return True

    def has_token_paths(self) -> bool:
        """Greedy paths with log-probabilities at every position, one request each."""
        return True

    def supports_streaming(self) -> bool:
        """``stream: true`` unless ``options.stream`` is false."""
        return self.options.stream

    # ----------------------------------------------------------------- transport

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        return text.replace(key, "***") if key else text

    def _headers(self, conversation_id: str | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        if conversation_id is not None:
            for name in self.options.session_headers:
                headers[name] = conversation_id
        return headers

    def _key_hint(self) -> str:
        if self.api_key_env:
            return f"check the key in ${self.api_key_env}"
        return "set api_key_env to the variable holding the key"

    def _post(
        self,
        path: str,
        payload: dict[str, Any],
        conversation_id: str | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """POST with retries (tenacity), failover and backoff; returns the decoded answer.
        With ``on_text`` the answer is streamed (``_stream_once``)."""
        opts = self.options
        if conversation_id is not None and opts.session_field:
            payload = {**payload, opts.session_field: conversation_id}
        headers = self._headers(conversation_id)
        last: list[Endpoint] = []
        wait_policy = FailoverWait(
            opts.backoff_base_s,
            opts.backoff_max_s,
            opts.max_retry_after_s,
            can_fail_over=lambda: bool(last) and self.router.others_up(last[-1]),
        )

        def count_retry(state: RetryCallState) -> None:
            self.accounting.retry()

        try:
            for attempt in retrying(opts.max_retries, wait_policy, self._sleep, count_retry):
                with attempt:
                    endpoint = self.router.acquire(
                        conversation_id, avoid=last[-1] if last else None
                    )
                    last.append(endpoint)
                    try:
                        if on_text is None:
                            settings = self._exchange_settings()
                            data = exchange(
                                self._client, endpoint.base, path, payload, headers, *settings
                            )
                        else:
                            data = self._stream_once(endpoint.base, path, payload, headers, on_text)
                    except Retryable as exc:
                        self.router.release(endpoint, failed=True, down=exc.endpoint_down)
                        raise
                    except BaseException:
                        self.router.release(endpoint, failed=True)
                        raise
                    self.router.release(endpoint, conversation_id)
                    self.accounting.answer(public_url(endpoint.base), data)
                    return data
        except Retryable as exc:
            where = public_url(last[-1].base) if last else "?"
            raise EngineError(
                f"{path} on {where} failed after {opts.max_retries + 1} attempts; last error: {exc}"
            ) from None
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _exchange_settings(
        self,
    ) -> tuple[float, Callable[[str], None], Callable[[str], str], str, str]:
        """What every exchange takes after the request itself: deadline, error counter,
        redaction, model name and the API-key hint."""
        return (
            self.options.timeout_s,
            self.accounting.error,
            self._redact,
            self.name,
            self._key_hint(),
        )

    def _stream_once(
        self,
        base: str,
        path: str,
        payload: dict[str, Any],
        headers: dict[str, str],
        on_text: Callable[[str], None],
    ) -> dict[str, Any]:
        """One streamed attempt; returns the chunks folded into the whole answer.

        A failure before any text arrived is Retryable as ever (the reader has seen
        nothing, so the retry's reply is the only one). After text arrived it is one
        EngineError: a retry would sample a different reply over the one being read.
        """
        streamed = codec.StreamedAnswer(chat=path == codec.CHAT)

        def on_chunk(chunk: dict[str, Any]) -> None:
            if streamed.add(chunk):
                on_text(streamed.text)

        try:
            exchange_stream(
                self._client, base, path, payload, headers, *self._exchange_settings(), on_chunk
            )
        except Retryable as exc:
            if not streamed.text:
                raise
            raise EngineError(
                f"the streamed reply from {public_url(base)}{path} broke off after "
                f"{len(streamed.text)} characters ({exc}); not retried, as a new attempt "
                "would write a different reply"
            ) from None
        return streamed.answer()

    # ----------------------------------------------------------------- requests

    def _generate_one(
        self, request: GenerationRequest, on_text: Callable[[str], None] | None = None
    ) -> Generation:
        opts = self.options
        path, fields, chat = codec.generation_payload(
            request, opts.max_stop, opts.continue_final_message
        )
        payload: dict[str, Any] = {"model": self.name, **opts.extra_body, **fields}
        # The protocol samples the whole distribution; some servers (vLLM) would otherwise
        # apply the model's own generation config. extra_body may still set top_p, or
        # drop it with null for a server that refuses the field.
        payload.setdefault("top_p", 1.0)
        if payload["top_p"] is None:
            del payload["top_p"]
        if on_text is not None:
            payload.update(codec.STREAM_FIELDS)
        started = time.perf_counter()
        key = request.conversation_id or conversation_key(request.prompt)
        return codec.parse_generation(self._post(path, payload, key, on_text), chat, started)

    def _path_one(self, request: PathRequest) -> TokenPath:
        if self._logprobs is False:
            raise self._no_logprobs()
        opts = self.options
        path, fields, _ = codec.path_payload(
            request, opts.max_logprobs, self._path_bias, opts.continue_final_message
        )
        payload = {"model": self.name, **opts.extra_body, **fields}
        started = time.perf_counter()
        key = request.conversation_id or conversation_key(request.prompt)
        data = self._post(path, payload, key)
        try:
            answer = codec.parse_token_path(data, started)
        except ValueError:
            answer = None
        if answer is None:
            self._logprobs = False
            raise self._no_logprobs()
        self._logprobs = True
        return answer

    def _next_one(self, prompt: Prompt, top_k: int) -> TopTokens:
        answer = self._path_one(PathRequest(prompt, top_k))
        top = answer.tops[0]
        return TopTokens(top.tokens, prompt_tokens=answer.prompt_tokens, latency_s=answer.latency_s)

    def _no_logprobs(self) -> NoLogprobsError:
        return NoLogprobsError(
            f"{', '.join(public_url(e.base) for e in self.router.endpoints)} returned no token "
            f"log-probabilities for {self.name!r}; use survey mode 'generate' "
            "(stancelab.conversation._survey.survey_modes_for picks it automatically)"
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

    def generate_stream(
        self, request: GenerationRequest, on_text: Callable[[str], None]
    ) -> Generation:
        """One reply sent with ``stream: true`` (on the request pool, so at most
        ``parallel`` in flight; ``on_text`` runs on a pool thread) and its text handed over
        chunk by chunk; the whole reply at once when ``options.stream`` is false.

        Retries as ``generate`` until text has arrived; a stream that breaks after that
        raises one EngineError instead of silently restarting the reply."""
        if not self.options.stream:
            return super().generate_stream(request, on_text)
        return self._pool.submit(self._generate_one, request, on_text).result()

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Top-k next tokens for every prompt; NoLogprobsError if the server has none."""
        return self._run_all(lambda p: self._next_one(p, top_k), prompts)

    def next_token_paths(self, requests: Sequence[PathRequest]) -> list[TokenPath]:
        """Greedy paths with top-k tokens at every position, concurrently (see codec)."""
        return self._run_all(self._path_one, requests)

    # ----------------------------------------------------------------- lifecycle

    def _check_model(self) -> None:
        """Fail early when a reachable server lists models and ours is not among them;
        note whether the servers are llama.cpp (whose text logit bias steers paths)."""
        listed: list[str] = []
        reached = False
        owners: set[str] = set()
        for endpoint in self.router.endpoints:
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
                    f"server {public_url(endpoint.base)} refused the API key "
                    f"(HTTP {resp.status_code}); check {hint}"
                )
            if resp.status_code != 200:
                continue  # no model listing on this server: nothing to check
            try:
                data = resp.json().get("data", [])
                ids = [m["id"] for m in data] + [a for m in data for a in m.get("aliases", [])]
                owners.update(str(m.get("owned_by", "")) for m in data)
            except (ValueError, AttributeError, KeyError, TypeError):
                continue
            reached = True
            listed.extend(ids)
        if self.options.path_bias is None:
            self._path_bias = owners == {"llamacpp"}
        if reached and not any(_same_model(self.name, i) for i in listed):
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
