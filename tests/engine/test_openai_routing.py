"""Replica choice, retry waits and the payload codec of the OpenAI backend (no engine)."""

from __future__ import annotations

from collections import Counter

import pytest
from tenacity import RetryCallState, Retrying

from stancelab.engine._base import GenerationRequest, PathRequest
from stancelab.engine._types import conversation_key
from stancelab.engine.openai import _codec as codec
from stancelab.engine.openai._retry import FailoverWait, retrying
from stancelab.engine.openai._routing import Router
from stancelab.engine.openai._transport import Retryable

BASES = ["http://a:1/v1", "http://b:1/v1", "http://c:1/v1"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def owners(router: Router, keys: list[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        endpoint = router.acquire(key)
        router.release(endpoint, key)
        out[key] = endpoint.base
    return out


def test_each_conversation_sticks_to_one_replica_and_all_replicas_get_some() -> None:
    router = Router(BASES, "affinity", cooldown_s=5.0)
    keys = [f"debate-{d}-agent-{a}" for d in range(40) for a in range(3)]
    first = owners(router, keys)
    for _ in range(3):
        assert owners(router, keys) == first
    share = Counter(first.values())
    assert set(share) == set(BASES)
    assert min(share.values()) >= len(keys) / 6  # no replica starves


def test_a_down_replica_moves_only_its_conversations_and_they_come_back() -> None:
    clock = Clock()
    router = Router(BASES, "affinity", cooldown_s=5.0, clock=clock)
    keys = [f"conv-{i}" for i in range(60)]
    before = owners(router, keys)
    dead = router.endpoints[0]
    dead.in_flight += 1  # an attempt on it is refused: marked down for the cooldown
    router.release(dead, failed=True, down=True)
    during = owners(router, keys)
    for key in keys:
        if before[key] == dead.base:
            assert during[key] != dead.base  # moved
        else:
            assert during[key] == before[key]  # the others stay put
    clock.now += 5.1  # cooldown over: the replica is tried again
    assert owners(router, keys) == before
    moved = next(k for k in keys if before[k] == dead.base)
    assert router.placements[moved] == [dead.base, during[moved], dead.base]


def test_a_retry_avoids_the_replica_that_just_failed() -> None:
    router = Router(BASES, "affinity")
    home = router.acquire("conv-1")
    router.release(home, failed=True)
    other = router.acquire("conv-1", avoid=home)
    assert other is not home
    router.release(other, "conv-1")
    again = router.acquire("conv-1")  # not marked down: the conversation stays home
    assert again is home


def test_requests_without_a_conversation_go_to_the_least_busy_replica() -> None:
    router = Router(BASES, "affinity")
    held = [router.acquire(None) for _ in range(6)]
    assert Counter(e.base for e in held) == Counter({b: 2 for b in BASES})
    lif = Router(BASES, "least_in_flight")
    busy = [lif.acquire("same-key") for _ in range(3)]
    assert len({e.base for e in busy}) == 3  # the key is ignored by this policy


def test_all_replicas_down_picks_the_one_back_soonest() -> None:
    clock = Clock()
    router = Router(BASES[:2], "affinity", cooldown_s=5.0, clock=clock)
    a, b = router.endpoints
    router.acquire("k")
    a.in_flight = b.in_flight = 1
    router.release(a, down=True)
    clock.now += 1
    router.release(b, down=True)
    assert router.owner("k") is a


def test_chats_are_keyed_by_their_opening_and_transcripts_are_not() -> None:
    opening = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    later = [*opening, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "?"}]
    other = [opening[0], {"role": "user", "content": "Hello there"}]
    assert conversation_key(opening) == conversation_key(later)  # type: ignore[arg-type]
    assert conversation_key(opening) != conversation_key(other)  # type: ignore[arg-type]
    assert conversation_key("Me:") is None


def _state(error: BaseException, attempt: int = 1) -> RetryCallState:
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_wait_fails_over_at_once_and_otherwise_backs_off_or_honours_retry_after() -> None:
    failover = FailoverWait(0.5, 30.0, 60.0, can_fail_over=lambda: True)
    assert failover(_state(Retryable("x"))) == 0.0
    assert failover(_state(Retryable("x", retry_after=7.0))) >= 7.0  # server asked to wait
    alone = FailoverWait(0.5, 2.0, 3.0)
    assert 0.0 <= alone(_state(Retryable("x"), attempt=9)) <= 2.0
    assert alone(_state(Retryable("x", retry_after=900.0))) == 3.0  # capped


def test_tenacity_policy_retries_only_retryable_errors_and_reraises_the_last() -> None:
    slept: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Retryable("HTTP 503")
        return "ok"

    policy = retrying(4, FailoverWait(0.01, 0.02, 1.0), slept.append)
    assert policy(flaky) == "ok" and len(slept) == 2
    with pytest.raises(Retryable, match="always"):
        retrying(2, FailoverWait(0.0, 0.0, 1.0), slept.append)(
            lambda: (_ for _ in ()).throw(Retryable("always"))
        )
    with pytest.raises(ValueError):
        retrying(5, FailoverWait(0.0, 0.0, 1.0), slept.append)(
            lambda: (_ for _ in ()).throw(ValueError("a bug is not retried"))
        )


def test_codec_reads_every_position_of_both_logprob_shapes() -> None:
    chat = {
        "logprobs": {
            "content": [
                {
                    "token": " ",
                    "top_logprobs": [
                        {"token": "A", "logprob": -2.0},
                        {"token": " ", "logprob": -0.1},
                    ],
                },
                {"token": "1", "top_logprobs": [{"token": "1", "logprob": -0.5}]},
            ]
        }
    }
    legacy = {
        "logprobs": {
            "tokens": [" ", "1"],
            "top_logprobs": [{" ": -0.1, "A": -2.0}, {"1": -0.5}],
        }
    }
    for choice in (chat, legacy):
        positions = codec.parse_positions(choice)
        assert positions == [(" ", [(" ", -0.1), ("A", -2.0)]), ("1", [("1", -0.5)])]
        assert codec.parse_top_logprobs(choice) == [(" ", -0.1), ("A", -2.0)]
    assert codec.parse_positions({"logprobs": None}) is None
    assert codec.parse_positions({"text": "7"}) is None


def test_codec_payloads_and_usage() -> None:
    path, payload, chat = codec.path_payload(
        PathRequest("Q:", 40, max_tokens=3, prefer=(" ", "1")), max_logprobs=20, bias_by_text=True
    )
    assert (path, chat) == ("/completions", False)
    assert payload["logprobs"] == 20 and payload["max_tokens"] == 3
    assert payload["logit_bias"] == [[" ", codec.PREFER_BIAS], ["1", codec.PREFER_BIAS]]
    _, plain, _ = codec.path_payload(PathRequest("Q:", 5, max_tokens=3, prefer=(" ",)))
    assert "logit_bias" not in plain  # servers that want token ids get a plain greedy path
    path, gen, chat = codec.generation_payload(
        GenerationRequest([{"role": "user", "content": "hi"}], stop=("a", "b", "c"), seed=3),
        max_stop=2,
    )
    assert (path, chat) == ("/chat/completions", True)
    assert gen["stop"] == ["a", "b"] and gen["seed"] == 3
    vllm = codec.usage(
        {
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 8},
            }
        }
    )
    assert (vllm.cached_tokens, vllm.recomputed_tokens) == (8, 2)
    llama = codec.usage({"usage": {"prompt_tokens": 10}, "timings": {"cache_n": 9, "prompt_n": 1}})
    assert (llama.cached_tokens, llama.recomputed_tokens) == (9, 1)
