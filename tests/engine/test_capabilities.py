"""What a model can do is asked of the model (capability methods), never read from its
backend's name, class or attributes; a backend of one's own needs only ``generate``.

The real engines answer the same questions in test_llamacpp.py and test_openai_compat.py;
here the fake backend and a user backend exercise the interface's defaults, the
registry and the in-flight wrapper the factory applies.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import stancelab as sl
from stancelab.conversation._survey import SurveyMode, survey_modes_for
from stancelab.conversation._templates import PromptFormat
from stancelab.debates._formats import probe_format, resolve_format
from stancelab.debates._runner import ModelPool
from stancelab.engine import _registry as registry
from stancelab.engine._base import Generation, GenerationRequest, LanguageModel, PathRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import ModelConfig, open_model
from stancelab.engine._fake import FAKE_VOCABULARY, ScriptedModel
from stancelab.engine._inflight import InFlight
from stancelab.engine._wrappers import SharedInFlight

MINIMAL = "test-minimal"


class MinimalModel(LanguageModel):
    """A user backend: ``generate`` only, and an ``__init__`` that skips the base's."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.name = "minimal"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        return [Generation(f"{self.reply} 7", prompt_tokens=3) for _ in requests]


@pytest.fixture
def minimal_backend() -> Iterator[str]:
    """``test-minimal`` registered the way a user registers a backend, then removed."""

    @sl.backend(MINIMAL)
    def open_minimal(config: ModelConfig, options: object) -> LanguageModel:
        return MinimalModel(reply=f"I am {config.name}.")

    yield MINIMAL
    del registry._BACKENDS[MINIMAL]


def test_the_defaults_promise_least_and_a_generate_only_backend_runs_a_debate(
    minimal_backend: str, tmp_path: Path
) -> None:
    entry = {"name": "mine", "backend": minimal_backend}
    assert minimal_backend in sl.backend_names()
    lm = open_model(entry)
    assert isinstance(lm, SharedInFlight) and isinstance(lm.inner, MinimalModel)
    assert lm.has_completion_route() and not lm.has_chat_template()
    assert lm.logprobs_cap() is None and not lm.has_token_paths()
    assert not lm.supports_adapters() and not lm.supports_streaming()
    assert lm.stats.requests == 0  # made on first use: no super().__init__() needed
    pool = ModelPool(opener=open_model)
    pool.get(ModelConfig.parse(entry))
    assert pool.stats()["requests"] == 0
    # Formats: auto is a transcript (the model runs here); chat is refused by the model.
    assert resolve_format(ModelConfig.parse(entry), None) == PromptFormat.TRANSCRIPT
    probe_format(lm, PromptFormat.TRANSCRIPT)
    with pytest.raises(ConfigError, match="'minimal' has no chat template"):
        probe_format(lm, PromptFormat.CHAT)
    # No log-probabilities: the survey falls back to generate mode, and says so.
    modes, note = survey_modes_for(lm, (SurveyMode.DISTRIBUTION,))
    assert modes == (SurveyMode.GENERATE,) and note and "minimal" in note
    # The whole public path: the registry opens it, the debate runs, surveys are read.
    run = sl.debate(
        "racism",
        ["republican", "democrat"],
        iterations=2,
        model=entry,
        survey_modes=["generate"],
        out=tmp_path,
    )
    turns, surveys = run.turns(), run.surveys()
    assert set(turns["text"]) == {"I am mine. 7"}
    assert len(surveys) > 0 and set(surveys["mode"]) == {"generate"}
    assert set(surveys["score"]) == {7.0}


def test_the_fake_backend_answers_through_the_wrapper() -> None:
    lm = open_model({"name": "echo", "backend": "fake"})
    assert lm.has_chat_template() and lm.has_completion_route()
    assert lm.logprobs_cap() == FAKE_VOCABULARY and not lm.has_token_paths()
    assert lm.describe()["engine"] == "FakeChatModel"
    [top] = lm.next_tokens(["Me:"], 3)
    assert top.tokens and top.tokens[0][0] == "3"  # the drifting stance starts at 3


def wait_until(done: Callable[[], bool], limit_s: float = 5.0) -> None:
    """Until ``done()`` (or the limit: the test's assertions then fail)."""
    deadline = time.monotonic() + limit_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.001)


class Gate(ScriptedModel):
    """Holds every ``generate`` call until released, recording what reached it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.release = threading.Event()
        self.calls: list[list[str]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.calls.append([str(r.prompt) for r in requests])
        self.release.wait(5)
        return [Generation(f"re {r.prompt}", prompt_tokens=10, cached_tokens=2) for r in requests]


def test_identical_deterministic_requests_in_flight_are_sent_once() -> None:
    inner = Gate()
    lm = SharedInFlight(inner)
    greedy = GenerationRequest("same", temperature=0.0, conversation_id="a")
    other = GenerationRequest("other", temperature=0.0)
    sampled = GenerationRequest("same", temperature=1.0)
    results: dict[str, list[Generation]] = {}
    first = threading.Thread(target=lambda: results.update(a=lm.generate([greedy, other])))
    first.start()
    wait_until(lambda: bool(inner.calls))
    # Another caller's copy (another conversation, same answer) waits for the first one;
    # a copy inside one batch is sent once; sampled requests are always sent.
    copy = GenerationRequest("same", temperature=0.0, conversation_id="b")
    second = threading.Thread(target=lambda: results.update(b=lm.generate([copy, copy, sampled])))
    second.start()
    wait_until(lambda: lm.in_flight.shared == 2)
    inner.release.set()
    first.join(5)
    second.join(5)
    assert inner.calls == [["same", "other"], ["same"]]  # the second sent only the sample
    assert lm.in_flight.shared == 2
    mine, copies = results["a"], results["b"]
    assert [g.text for g in copies] == ["re same"] * 3
    # A copy computed nothing: its whole prompt counts as served.
    assert [(g.prompt_tokens, g.cached_tokens) for g in copies[:2]] == [(10, 10)] * 2
    assert (copies[2].prompt_tokens, copies[2].cached_tokens) == (10, 2)
    assert [g.cached_tokens for g in mine] == [2, 2]
    # Nothing is kept once a request ends: a later identical request is sent again.
    lm.generate([greedy])
    assert inner.calls[-1] == ["same"]


def test_a_failed_request_fails_its_copies_and_is_forgotten() -> None:
    in_flight: InFlight[int] = InFlight()

    def fail(indices: list[int]) -> list[int]:
        raise RuntimeError("engine down")

    with pytest.raises(RuntimeError, match="engine down"):
        in_flight.run_batch(["k", "k", None], fail)  # the in-batch copy shares the failure
    assert in_flight.run_batch(["k"], lambda indices: [7]) == [(7, False)]


def test_paths_of_copies_record_nothing_recomputed() -> None:
    lm = SharedInFlight(ScriptedModel(continuations=lambda prompt: {" 7\n": 1.0}))
    request = PathRequest("Me:", top_k=3)
    paths = lm.next_token_paths([request, request])
    assert paths[0].tops == paths[1].tops and lm.in_flight.shared == 1
    assert paths[1].prompt_tokens == 0
    [scores] = lm.score_choices([sl.ChoiceRequest("Me:", ("7", "8"))])
    assert scores.most_likely == "7"
