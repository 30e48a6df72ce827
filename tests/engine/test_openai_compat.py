"""The OpenAI-compatible HTTP backend against llama.cpp's real HTTP server (SmolLM2-135M).

Faults come from a loopback proxy in front of the real server (http_servers.FaultProxy)
and from killing the server process itself. Each fault must end in a successful retry
or one clear error, within a bounded time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from http_servers import FaultProxy, ServerProcess, free_port

from stancelab.conversation._personas import personas_for
from stancelab.conversation._survey import SCALE, SurveyMode, survey_modes_for
from stancelab.conversation._templates import PromptFormat, load_prompts
from stancelab.debates._debate import Debate, DebateEvents, DebateSpec, Turn, run_debates
from stancelab.debates._formats import probe_format
from stancelab.engine._base import ChoiceRequest, GenerationRequest
from stancelab.engine._errors import ChatOnlyError, ConfigError, EngineError, ModelError
from stancelab.engine._factory import ModelConfig, Price, open_model
from stancelab.engine._llamacpp import LlamaCppEngine, load_engine
from stancelab.engine._openai_compat import (
    NoLogprobsError,
    OpenAICompatModel,
    normalise_base_url,
    parse_top_logprobs,
)
from stancelab.engine._wrappers import SharedInFlight

pytestmark = pytest.mark.engine

MODEL = "smollm2-135m"
# Generous time-outs: the machine is shared, and only the fault tests need short ones.
FAST = {"timeout_s": 20.0, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_retries": 4}
PROMPT = (
    "Scores run from 0 to 10. A perfect film gets 10.\n"
    "Film: flawless masterpiece. Score: 10\nFilm: flawless, perfect. Score:"
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """One real llama.cpp HTTP server for the module."""
    proc = ServerProcess(MODEL, parallel=4, ctx_per_slot=2048)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def local_engine() -> Iterator[LlamaCppEngine]:
    """The same model in the in-process engine, one thread like the server."""
    engine = load_engine(MODEL, n_parallel=2, ctx_per_slot=1024, threads=1)
    yield engine
    engine.close()


@pytest.fixture
def proxy(server: ServerProcess) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the real server."""
    p = FaultProxy(server.url)
    yield p
    p.close()


def connect(url: str | list[str], **options: object) -> OpenAICompatModel:
    urls = [url] if isinstance(url, str) else url
    return OpenAICompatModel(MODEL, urls, parallel=4, options={**FAST, **options})


def make_debates(
    n: int, iterations: int = 2, modes: tuple[SurveyMode, ...] = (SurveyMode.DISTRIBUTION,)
) -> list[Debate]:
    # Two agents keep the real-model debates short on a shared 2-core machine.
    personas = tuple(personas_for(["republican", "default"]))
    return [
        Debate(
            DebateSpec(
                "climate change", personas, iterations, seed=s, max_tokens=32, survey_modes=modes
            ),
            load_prompts(),
        )
        for s in range(n)
    ]


def assert_complete(debate: Debate) -> None:
    assert debate.failed is None
    assert [t.iteration for t in debate.turns] == list(range(1, debate.spec.iterations + 1))
    expected = {
        (it, a, m)
        for it in debate.survey_iterations
        for a in range(debate.n_agents)
        for m in debate.spec.survey_modes
    }
    answered = {(a.iteration, a.agent_index, a.mode) for a in debate.surveys.values()}
    assert answered == expected
    # A 135M model may answer the survey in words (generate mode); the text is still kept.
    assert all(a.ok for a in debate.surveys.values() if a.mode == SurveyMode.DISTRIBUTION)
    assert all(
        a.raw_text is not None for a in debate.surveys.values() if a.mode == SurveyMode.GENERATE
    )


# ------------------------------------------------------------------ the real server


def test_http_matches_the_in_process_engine(
    server: ServerProcess, local_engine: LlamaCppEngine
) -> None:
    with connect(server.url) as lm:
        request = GenerationRequest("The capital of France is", temperature=0.0, max_tokens=8)
        [remote] = lm.generate([request])
        [local] = local_engine.generate([request])
        assert remote.text == local.text and "Paris" in remote.text
        assert remote.completion_tokens == 8
        [r] = lm.score_choices([ChoiceRequest(PROMPT, SCALE)])
        [loc] = local_engine.score_choices([ChoiceRequest(PROMPT, SCALE)])
        assert r.most_likely == "10"
        assert r.probabilities == pytest.approx(loc.probabilities, abs=1e-3)
        chat = [{"role": "user", "content": "Say hello."}]
        [g] = lm.generate([GenerationRequest(chat, temperature=0.0, max_tokens=6)])  # type: ignore[arg-type]
        assert g.text.strip()
        [top] = lm.next_tokens([chat], 5)  # type: ignore[list-item]
        assert len(top.tokens) == 5
        assert [lp for _, lp in top.tokens] == sorted((lp for _, lp in top.tokens), reverse=True)
        assert lm.logprobs_cap() == 20  # the OpenAI default cap: max_logprobs unset
        assert lm.stats.requests >= 4 and lm.stats.prompt_tokens > 0
        assert lm.stats.extra["retries"] == 0


def test_the_server_answers_what_it_can_do(proxy: FaultProxy) -> None:
    with connect(proxy.url) as lm:
        assert lm.has_chat_template() and lm.has_token_paths()
        assert not lm.supports_adapters() and lm.supports_streaming()
        assert lm.logprobs_cap() == 20  # asked once; unset max_logprobs is OpenAI's 20
        before = proxy.count(path="/completions")
        assert lm.has_completion_route() and lm.has_completion_route()
        assert proxy.count(path="/completions") == before + 1  # asked once
    with connect(proxy.url, max_logprobs=5) as capped:
        assert capped.logprobs_cap() == 5
    proxy.default = "chat-only"
    with connect(proxy.url) as chat_only:
        assert not chat_only.has_completion_route() and chat_only.has_chat_template()
        with pytest.raises(ChatOnlyError, match="'smollm2-135m' takes chat messages only"):
            probe_format(chat_only, PromptFormat.TRANSCRIPT)
        probe_format(chat_only, PromptFormat.CHAT)


def test_a_real_debate_runs_through_http(server: ServerProcess) -> None:
    debates = make_debates(2)
    price = Price(input=500, output=1500)  # USD per million tokens
    with OpenAICompatModel(MODEL, [server.url], parallel=4, options=FAST, price=price) as lm:
        run_debates(lm, debates)
        for debate in debates:
            assert_complete(debate)
            dist = [a for a in debate.surveys.values() if a.mode == SurveyMode.DISTRIBUTION]
            assert all(a.coverage and a.coverage > 0 for a in dist)
        stats = lm.stats
        assert stats.completion_tokens > 0 and stats.cached_tokens > 0
        expected_cost = (stats.prompt_tokens * 500 + stats.completion_tokens * 1500) / 1e6
        assert stats.extra["cost_usd"] == pytest.approx(expected_cost)


def test_identical_deterministic_requests_at_once_are_sent_once(server: ServerProcess) -> None:
    """A hosted API bills every copy: four identical temperature-0 requests at once are
    sent fewer than four times and all get the one answer; sampled ones are all sent."""
    config = ModelConfig(
        name=MODEL, backend="openai", base_urls=[server.url], parallel=4, options=FAST
    )
    with open_model(config) as lm:  # the factory wraps every model it opens
        assert isinstance(lm, SharedInFlight)
        greedy = GenerationRequest(PROMPT, temperature=0.0, max_tokens=4)
        replies = lm.generate([greedy] * 4)
        assert lm.stats.requests < 4
        assert lm.stats.requests + lm.in_flight.shared == 4
        assert len({g.text for g in replies}) == 1
        # A copy's whole prompt counts as served: per-reply counts add up to the server's.
        assert sum(g.cached_tokens == g.prompt_tokens > 0 for g in replies) == lm.in_flight.shared
        assert sum(g.prompt_tokens - g.cached_tokens for g in replies) == (
            lm.stats.recomputed_tokens
        )
        before = lm.stats.requests
        lm.generate([GenerationRequest(PROMPT, temperature=1.0, max_tokens=4)] * 4)
        assert lm.stats.requests - before == 4


def test_the_model_name_is_checked_against_the_server(server: ServerProcess) -> None:
    with pytest.raises(ModelError, match=r"no server lists model 'mistral-7b'.*smollm2-135m"):
        OpenAICompatModel("mistral-7b", [server.url])
    # The check can be switched off for servers whose listing is incomplete.
    OpenAICompatModel("mistral-7b", [server.url], options={"check_model": False}).close()


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("fault", "counted"),
    [
        ("429", "http_429"),
        ("500", "http_500"),
        ("malformed", "malformed"),
        ("truncated", "connection"),
        ("reset", "connection"),
        ("slow", "timeout"),
    ],
)
def test_each_fault_is_retried_to_success(proxy: FaultProxy, fault: str, counted: str) -> None:
    with connect(proxy.url, timeout_s=2.0) as lm:
        proxy.slow_s = 4.0
        proxy.script(fault, fault)
        start = time.monotonic()
        [g] = lm.generate(
            [GenerationRequest("The capital of France is", temperature=0.0, max_tokens=4)]
        )
        elapsed = time.monotonic() - start
        assert "Paris" in g.text
        assert proxy.count(fault, "/completions") == 2 and proxy.count("pass", "/completions") == 1
        assert lm.stats.extra["errors"][counted] == 2
        assert lm.stats.extra["retries"] == 2
        if fault == "429":  # Retry-After: 1 was honoured twice
            assert elapsed >= 2.0
        assert elapsed < 10.0


def test_a_fault_that_persists_ends_in_one_clear_error(proxy: FaultProxy) -> None:
    proxy.default = "500"
    with connect(proxy.url, max_retries=2) as lm:
        start = time.monotonic()
        with pytest.raises(EngineError, match=r"failed after 3 attempts; last error: HTTP 500"):
            lm.generate([GenerationRequest("Hello", max_tokens=2)] * 3)
        assert time.monotonic() - start < 5.0
    assert proxy.count("500", "/completions") <= 9


def test_slow_trickle_is_cut_by_the_deadline(proxy: FaultProxy) -> None:
    proxy.default = "slow"
    proxy.slow_s = 30.0
    with connect(proxy.url, timeout_s=0.5, max_retries=1) as lm:
        start = time.monotonic()
        with pytest.raises(EngineError, match=r"timed out after 0\.5s"):
            lm.generate([GenerationRequest("Hello", max_tokens=2)])
        assert time.monotonic() - start < 3.0


def test_an_unknown_model_at_request_time_is_not_retried(proxy: FaultProxy) -> None:
    with connect(proxy.url) as lm:
        proxy.script("wrong-model")
        with pytest.raises(ModelError, match=r"has no model 'smollm2-135m' .*does not exist"):
            lm.generate([GenerationRequest("Hello", max_tokens=2)])
        assert proxy.count("wrong-model") == 1 and lm.stats.extra["retries"] == 0


def test_a_server_without_logprobs_falls_back_to_generate(proxy: FaultProxy) -> None:
    proxy.default = "nologprobs"
    with connect(proxy.url) as lm:
        with pytest.raises(NoLogprobsError, match="use survey mode 'generate'"):
            lm.score_choices([ChoiceRequest(PROMPT, SCALE)])
        assert lm.logprobs_cap() is None and lm.describe()["logprobs"] is False
        modes, note = survey_modes_for(lm, (SurveyMode.DISTRIBUTION,))
        assert modes == (SurveyMode.GENERATE,)
        assert note is not None and "replaced by 'generate'" in note
        [debate] = make_debates(1, modes=modes)
        run_debates(lm, [debate])
        assert_complete(debate)
        assert all(a.mode == SurveyMode.GENERATE for a in debate.surveys.values())
    # A fresh connection finds out with one probe instead of failing a survey.
    with connect(proxy.url) as fresh:
        before = proxy.count(path="/completions")
        assert fresh.logprobs_cap() is None
        assert proxy.count(path="/completions") == before + 1


def test_the_api_key_is_sent_but_never_recorded(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("STANCELAB_TEST_KEY", secret)
    config = ModelConfig(
        name=MODEL,
        backend="openai",
        base_urls=[proxy.url],
        api_key_env="STANCELAB_TEST_KEY",
        options=FAST,
    )
    with open_model(config) as lm:
        lm.generate([GenerationRequest("Hello", max_tokens=2)])
        assert proxy.headers[-1]["Authorization"] == f"Bearer {secret}"
        assert secret not in json.dumps(lm.describe()) + repr(lm.__dict__)
        assert lm.describe()["api_key_env"] == "STANCELAB_TEST_KEY"
        proxy.script("echo-key-401")
        with pytest.raises(EngineError) as info:
            lm.generate([GenerationRequest("Hello", max_tokens=2)])
        assert "HTTP 401" in str(info.value) and "$STANCELAB_TEST_KEY" in str(info.value)
        assert secret not in str(info.value)
    monkeypatch.delenv("STANCELAB_TEST_KEY")
    with pytest.raises(ConfigError, match="STANCELAB_TEST_KEY is not set"):
        open_model(config)


def test_replies_ask_for_the_whole_distribution(proxy: FaultProxy) -> None:
    """top_p 1.0 overrides a server's own cut (vLLM applies the model's generation config)."""
    sent = []
    for extra in ({}, {"top_p": 0.9}, {"top_p": None}):
        config = ModelConfig(
            name=MODEL,
            backend="openai",
            base_urls=[proxy.url],
            options={**FAST, "extra_body": extra},
        )
        with open_model(config) as lm:
            lm.generate([GenerationRequest("Hello", max_tokens=2)])
        sent.append(json.loads(proxy.bodies[-1]))
    assert sent[0]["top_p"] == 1.0 and sent[1]["top_p"] == 0.9
    assert "top_p" not in sent[2]  # null leaves the field out for servers that refuse it


# ------------------------------------------------------------------ several endpoints


def test_load_is_spread_over_endpoints_and_a_dead_one_is_skipped(server: ServerProcess) -> None:
    first, second = FaultProxy(server.url), FaultProxy(server.url)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    try:
        with connect([first.url, second.url]) as lm:
            lm.generate([GenerationRequest(f"Count to {i}:", max_tokens=2) for i in range(12)])
            a, b = first.count(path="/completions"), second.count(path="/completions")
            assert a + b == 12 and min(a, b) >= 4
        with connect([dead, first.url], cooldown_s=30.0) as lm:
            gens = lm.generate(
                [GenerationRequest(f"Count to {i}:", max_tokens=2) for i in range(8)]
            )
            assert len(gens) == 8
            errors = lm.stats.extra["errors"]
            # The dead one is tried at most once per request before the cooldown kicks in.
            assert 1 <= errors["connection"] <= 4
            assert lm.stats.extra["endpoints"][dead] == 0
    finally:
        first.close()
        second.close()


def test_the_server_killed_mid_run_and_restarted_loses_nothing() -> None:
    proc = ServerProcess(MODEL, port=free_port(), parallel=4, ctx_per_slot=2048)
    proc.start()
    restarted = threading.Event()

    def crash_once(debate: Debate, turn: Turn) -> None:
        if turn.iteration == 1 and not restarted.is_set():
            restarted.set()
            proc.kill()
            threading.Timer(0.5, proc.start).start()

    debates = make_debates(2, iterations=3)
    turns: list[tuple[int, int]] = []

    def on_turn(debate: Debate, turn: Turn) -> None:
        turns.append((id(debate), turn.iteration))
        crash_once(debate, turn)

    try:
        # About 20 s of retries: enough for a restart on a busy machine.
        with connect(proc.url, max_retries=40, backoff_max_s=0.5, timeout_s=20.0) as lm:
            run_debates(lm, debates, DebateEvents(on_turn=on_turn))
            assert restarted.is_set()
            assert lm.stats.extra["errors"].get("connection", 0) >= 1
            assert lm.stats.extra["retries"] >= 1
        for debate in debates:
            assert_complete(debate)
        assert len(turns) == len(set(turns)) == 2 * 3  # nothing lost, nothing twice
    finally:
        time.sleep(0.6)  # let a pending restart finish before stopping it
        proc.stop()


def test_conversations_keep_their_replica_move_when_it_dies_and_come_back() -> None:
    first = ServerProcess(MODEL, port=free_port(), parallel=2, ctx_per_slot=2048)
    second = ServerProcess(MODEL, port=free_port(), parallel=2, ctx_per_slot=2048)
    first.start()
    second.start()
    debates = make_debates(3, iterations=3)
    turns: list[tuple[int, int]] = []
    killed = threading.Event()

    def on_turn(debate: Debate, turn: Turn) -> None:
        turns.append((id(debate), turn.iteration))
        if turn.iteration == 1 and not killed.is_set():
            killed.set()
            first.kill()

    try:
        with connect([first.url, second.url], cooldown_s=2.0, max_retries=10) as lm:
            key = next(
                f"probe-{i}" for i in range(100) if lm.router.owner(f"probe-{i}").base == first.url
            )
            probe = [GenerationRequest("Say hi:", max_tokens=2, conversation_id=key)]
            lm.generate(probe)
            run_debates(lm, debates, DebateEvents(on_turn=on_turn))
            assert killed.is_set()
            lm.generate(probe)  # its replica is dead: the conversation moves
            served = lm.router.placements
            for conversation, replicas in served.items():
                assert replicas[0] in (first.url, second.url)
                if replicas[0] == second.url and conversation != key:
                    assert replicas == [second.url]  # the others never moved
            first.start()
            time.sleep(2.1)  # the cooldown ends; the replica answers again
            lm.generate(probe)
            assert served[key] == [first.url, second.url, first.url]
            assert lm.stats.extra["errors"].get("connection", 0) >= 1
        for debate in debates:
            assert_complete(debate)
        assert len(turns) == len(set(turns)) == 3 * 3  # nothing lost, nothing twice
    finally:
        first.stop()
        second.stop()


# ------------------------------------------------------------------ configuration


def test_factory_and_options_are_validated(server: ServerProcess) -> None:
    lm = open_model(
        {
            "name": MODEL,
            "backend": "openai",
            "base_urls": [server.url.removesuffix("/v1")],
            "parallel": 2,
        }
    )
    assert isinstance(lm, SharedInFlight) and isinstance(lm.inner, OpenAICompatModel)
    assert lm.describe()["base_urls"] == [server.url]
    lm.close()
    with pytest.raises(ConfigError, match="needs base_urls"):
        open_model({"name": MODEL, "backend": "openai"})
    with pytest.raises(ConfigError, match="unknown openai option 'timeout_sec'; known: timeout_s"):
        open_model(
            {
                "name": MODEL,
                "backend": "openai",
                "base_urls": [server.url],
                "options": {"timeout_sec": 3},
            }
        )
    with pytest.raises(ConfigError, match="need backend: openai"):
        open_model({"name": MODEL, "base_urls": [server.url]})
    with pytest.raises(ConfigError, match="must look like"):
        normalise_base_url("localhost:8000")
    assert normalise_base_url("https://api.openai.com/v1/") == "https://api.openai.com/v1"


def test_both_logprob_answer_shapes_are_read() -> None:
    openai_legacy = {"logprobs": {"tokens": [" 7"], "top_logprobs": [{" 7": -0.1, " 8": -2.5}]}}
    llama = {
        "logprobs": {
            "content": [
                {
                    "token": " 7",
                    "logprob": -0.1,
                    "top_logprobs": [
                        {"token": " 7", "logprob": -0.1},
                        {"token": " 8", "logprob": -2.5},
                    ],
                }
            ]
        }
    }
    assert parse_top_logprobs(openai_legacy) == [(" 7", -0.1), (" 8", -2.5)]
    assert parse_top_logprobs(llama) == [(" 7", -0.1), (" 8", -2.5)]
    assert parse_top_logprobs({"logprobs": None}) is None
    assert parse_top_logprobs({"logprobs": {"content": []}}) is None
