"""Streamed replies (``generate_stream``): the text grows through ``on_text`` and the final
Generation is the one ``generate`` returns for the same request.

Real engines where the feature touches them: SmolLM2-135M in the in-process llama.cpp
engine, and llama.cpp's HTTP server behind the OpenAI backend (with the fault proxy of
http_servers.py for a connection dropped mid-stream). A user backend with only
``generate`` and the fake backend cover the fallback and the orchestration double.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence

import pytest
from http_servers import FaultProxy, ServerProcess

from stancelab.engine._base import Generation, GenerationRequest, LanguageModel, Message
from stancelab.engine._errors import EngineError
from stancelab.engine._factory import open_model
from stancelab.engine._llamacpp import LlamaCppEngine
from stancelab.engine._openai_compat import OpenAICompatModel
from stancelab.engine._wrappers import SharedInFlight

MODEL = "smollm2-135m"
CHAT: list[Message] = [
    {"role": "system", "content": "You are a friendly assistant."},
    {"role": "user", "content": "Tell me about the weather in spring in three sentences."},
]
FAST = {"timeout_s": 20.0, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_retries": 4}


class Recorder:
    """An ``on_text`` that keeps every text it was given and when."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.times: list[float] = []

    def __call__(self, text: str) -> None:
        self.texts.append(text)
        self.times.append(time.perf_counter())

    def assert_grows_into(self, final: str, at_least: int) -> None:
        """Several texts, each a strict prefix of the next, the last the final text."""
        assert len(self.texts) >= at_least, self.texts
        for shorter, longer in zip(self.texts, self.texts[1:], strict=False):
            assert longer.startswith(shorter) and len(longer) > len(shorter)
        assert self.texts[-1] == final


def assert_same_reply(streamed: Generation, whole: Generation) -> None:
    assert streamed.text == whole.text
    assert streamed.prompt_tokens == whole.prompt_tokens
    assert streamed.completion_tokens == whole.completion_tokens
    assert streamed.finish_reason == whole.finish_reason


# ------------------------------------------------------------------ the interface


class GenerateOnly(LanguageModel):
    """A user's backend: ``generate`` and nothing else."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls += 1
        return [
            Generation(f"Reply to {r.prompt!s}.", prompt_tokens=2, completion_tokens=3)
            for r in requests
        ]


def test_a_generate_only_backend_hands_over_its_whole_reply_once() -> None:
    lm = SharedInFlight(GenerateOnly())  # as open_model wraps every model
    assert not lm.supports_streaming()
    seen = Recorder()
    request = GenerationRequest("hi", temperature=0.0)
    streamed = lm.generate_stream(request, seen)
    assert seen.texts == ["Reply to hi."]
    assert_same_reply(streamed, lm.generate([request])[0])
    assert isinstance(lm.inner, GenerateOnly) and lm.inner.calls == 2


def test_the_fake_backend_streams_word_by_word_over_its_delay() -> None:
    reply = "Spring is mild. Rain comes often, and the days grow longer.\nEnd of story."
    lm = open_model(
        {"name": "scripted", "backend": "fake", "options": {"reply": reply, "delay_s": 0.3}}
    )
    assert lm.supports_streaming()
    seen = Recorder()
    started = time.perf_counter()
    request = GenerationRequest("Tell me about spring.", temperature=0.7, stop=("\n",))
    streamed = lm.generate_stream(request, seen)
    elapsed = time.perf_counter() - started
    # The stop string cuts the reply as generate cuts it; one word per call.
    assert streamed.text == "Spring is mild. Rain comes often, and the days grow longer."
    seen.assert_grows_into(streamed.text, at_least=len(streamed.text.split()))
    assert seen.texts[0] == "Spring "
    # The delay is spread over the words: the first arrives long before the last.
    assert 0.25 < elapsed < 1.0
    assert seen.times[0] - started < elapsed / 4
    assert_same_reply(streamed, lm.generate([request])[0])
    assert lm.stats.requests == 2 and lm.stats.completion_tokens == 2 * len(streamed.text.split())


def test_an_error_in_on_text_stops_the_fake_reply() -> None:
    lm = open_model({"name": "scripted", "backend": "fake", "options": {"reply": "one two three"}})
    seen: list[str] = []

    def fail_on_second(text: str) -> None:
        seen.append(text)
        if len(seen) == 2:
            raise RuntimeError("the reader left")

    with pytest.raises(RuntimeError, match="the reader left"):
        lm.generate_stream(GenerationRequest("x"), fail_on_second)
    assert seen == ["one ", "one two "]


# ------------------------------------------------------------------ in-process llama.cpp


@pytest.mark.parametrize(
    "request_",
    [
        GenerationRequest(CHAT, temperature=0.0, max_tokens=40, seed=11),
        GenerationRequest(
            "The capital of France is",
            temperature=0.0,
            max_tokens=24,
            seed=11,
            stop=(" population",),
        ),
        # A seed makes a sampled reply repeatable, streamed or not.
        GenerationRequest(CHAT, temperature=1.0, max_tokens=40, seed=5),
    ],
    ids=["chat", "transcript-with-stop", "sampled-with-a-seed"],
)
def test_llamacpp_streams_token_by_token_the_reply_generate_gives(
    small_engine: LlamaCppEngine, request_: GenerationRequest
) -> None:
    lm = SharedInFlight(small_engine)  # the factory's wrapper passes the stream through
    assert lm.supports_streaming()
    before = small_engine.stats.requests, small_engine.stats.completion_tokens
    seen = Recorder()
    started = time.perf_counter()
    streamed = lm.generate_stream(request_, seen)
    elapsed = time.perf_counter() - started
    [whole] = lm.generate([request_])
    assert_same_reply(streamed, whole)
    seen.assert_grows_into(streamed.text, at_least=8)
    # llama.cpp holds back text that may begin a stop string, so no reader ever saw one
    # (a shown " pop" would not be a prefix of the final text either).
    assert not any(stop in text for stop in request_.stop for text in seen.texts)
    # The text grew while the engine generated, not all at the end.
    assert seen.times[-1] - seen.times[0] > 0.3 * elapsed
    assert lm.in_flight.shared == 0
    assert small_engine.stats.requests == before[0] + 2
    assert small_engine.stats.completion_tokens == before[1] + 2 * whole.completion_tokens


def test_an_error_in_on_text_cancels_the_llamacpp_request(small_engine: LlamaCppEngine) -> None:
    request = GenerationRequest(CHAT, temperature=0.0, max_tokens=60)
    seen: list[str] = []

    def leave_after_three(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            raise ConnectionAbortedError("the reader left")

    with pytest.raises(ConnectionAbortedError, match="the reader left"):
        small_engine.generate_stream(request, leave_after_three)
    assert len(seen) == 3
    # The slot was given back: the engine answers the next request in full.
    seen_again = Recorder()
    streamed = small_engine.generate_stream(request, seen_again)
    assert streamed.text.startswith(seen[-1]) and len(seen_again.texts) > 3


# ------------------------------------------------------------------ the OpenAI protocol


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One real llama.cpp HTTP server for the module."""
    proc = ServerProcess(MODEL, parallel=2, ctx_per_slot=1024)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    p = FaultProxy(server.url)
    yield p
    p.close()


def connect(url: str, **options: object) -> OpenAICompatModel:
    return OpenAICompatModel(MODEL, [url], parallel=2, options={**FAST, **options})


@pytest.mark.engine
@pytest.mark.parametrize(
    "request_",
    [
        GenerationRequest(CHAT, temperature=0.0, max_tokens=40),
        GenerationRequest("Spring is the season when", temperature=0.0, max_tokens=32, stop=(".",)),
    ],
    ids=["chat", "completions-with-stop"],
)
def test_the_openai_backend_streams_the_reply_generate_gives(
    server: ServerProcess, request_: GenerationRequest
) -> None:
    with connect(server.url) as lm:
        assert lm.supports_streaming()
        seen = Recorder()
        started = time.perf_counter()
        streamed = lm.generate_stream(request_, seen)
        elapsed = time.perf_counter() - started
        requests, completion = lm.stats.requests, lm.stats.completion_tokens
        [whole] = lm.generate([request_])
        assert_same_reply(streamed, whole)
        assert streamed.completion_tokens > 0 and streamed.prompt_tokens > 0  # include_usage
        seen.assert_grows_into(streamed.text, at_least=5)
        assert seen.times[-1] - seen.times[0] > 0.3 * elapsed
        assert requests == 1 and completion == streamed.completion_tokens
        assert lm.stats.extra["retries"] == 0 and lm.stats.extra["errors"] == {}


@pytest.mark.engine
def test_a_stream_that_fails_before_any_text_is_retried(proxy: FaultProxy) -> None:
    request = GenerationRequest(CHAT, temperature=0.0, max_tokens=16)
    with connect(proxy.url) as lm:
        proxy.script("reset", "500")
        seen = Recorder()
        streamed = lm.generate_stream(request, seen)
        [whole] = lm.generate([request])
        assert_same_reply(streamed, whole)
        seen.assert_grows_into(whole.text, at_least=3)
        assert lm.stats.extra["retries"] == 2
        assert lm.stats.extra["errors"] == {"connection": 1, "http_500": 1}
    sent = [json.loads(body) for body in proxy.bodies if body]  # GET /models has none
    assert [body.get("stream") for body in sent] == [True, True, True, None]
    assert all(body["stream_options"] == {"include_usage": True} for body in sent[:3])


@pytest.mark.engine
def test_a_stream_dropped_after_text_arrived_is_one_error_not_a_silent_restart(
    proxy: FaultProxy,
) -> None:
    request = GenerationRequest(CHAT, temperature=0.0, max_tokens=32)
    with connect(proxy.url) as lm:
        proxy.script("drop-stream")
        seen = Recorder()
        start = time.monotonic()
        with pytest.raises(EngineError) as caught:
            lm.generate_stream(request, seen)
        message = str(caught.value)
        assert seen.texts and "\n" not in message
        assert (
            f"{proxy.url}/chat/completions broke off after {len(seen.texts[-1])} characters"
            in message
        )
        assert "not retried" in message
        assert time.monotonic() - start < 10.0
        assert proxy.count(path="/chat/completions") == 1  # no second attempt was sent
        # The text the reader saw is the start of the reply the server would have given.
        [whole] = lm.generate([request])
        assert whole.text.startswith(seen.texts[-1])
        assert lm.stats.extra["errors"] == {"connection": 1}


@pytest.mark.engine
def test_streaming_switched_off_sends_whole_replies(proxy: FaultProxy) -> None:
    with connect(proxy.url, stream=False) as lm:
        assert not lm.supports_streaming()
        seen = Recorder()
        streamed = lm.generate_stream(
            GenerationRequest("Hello", temperature=0.0, max_tokens=8), seen
        )
        assert seen.texts == [streamed.text]
    assert proxy.count(path="/completions") == 1 and b"stream" not in proxy.bodies[-1]
