"""Chat-format debates on the real engine: the embedded model, and a chat-only HTTP server.

The chat-only server is llama.cpp's real HTTP server behind a loopback proxy that answers
``/completions`` the way OpenAI answers it for a chat model (404 "This is a chat model
and not supported in the v1/completions endpoint"); ``/chat/completions`` passes through.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import yaml

from stancelab.conversation._personas import Persona, PersonaSet, personas_for
from stancelab.conversation._survey import SurveyMode
from stancelab.conversation._templates import load_prompts
from stancelab.debates._debate import Debate, DebateSpec, run_debates
from stancelab.debates._experiment import load_experiment
from stancelab.debates._runner import run_experiment
from stancelab.engine._base import (
    Generation,
    GenerationRequest,
    LanguageModel,
    Prompt,
    TopTokens,
)
from stancelab.engine._llamacpp import LlamaCppEngine
from stancelab.engine._openai_compat import ChatOnlyError, OpenAICompatModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from http_servers import FaultProxy, ServerProcess

pytestmark = pytest.mark.engine

MODEL = "smollm2-135m"
FAST = {"timeout_s": 60.0, "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_retries": 2}
CHAT_ONLY = (
    "This is a chat model and not supported in the v1/completions endpoint. "
    "Did you mean to use v1/chat/completions?"
)
SURVEY_WORDS = ("On a scale of 0 to 10", "Answer with one number", "System:")


class Recorder(LanguageModel):
    """The real engine, with every prompt it was sent kept for the assertions."""

    def __init__(self, inner: LanguageModel) -> None:
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.turns: list[Prompt] = []
        self.surveys: list[Prompt] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        for r in requests:
            (self.surveys if r.temperature == 0 else self.turns).append(r.prompt)
        return self.inner.generate(requests)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        self.surveys.extend(prompts)
        return self.inner.next_tokens(prompts, top_k)


def run_one(lm: LanguageModel, fmt: str, iterations: int = 3) -> Debate:
    spec = DebateSpec(
        "climate change",
        tuple(personas_for(["republican", "democrat", "default"])),
        iterations,
        seed=1,
        max_tokens=40,
        survey_modes=(SurveyMode.DISTRIBUTION, SurveyMode.GENERATE),
    )
    debate = Debate(spec, load_prompts(format=fmt))
    run_debates(lm, [debate])
    return debate


def text_of(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


@pytest.mark.parametrize("fmt", ["chat", "transcript"])
def test_debate_and_both_survey_modes_on_the_embedded_model(
    small_engine: LlamaCppEngine, fmt: str
) -> None:
    lm = Recorder(small_engine)
    debate = run_one(lm, fmt)
    assert debate.failed is None and len(debate.turns) == 3
    answered = {(a.iteration, a.agent_index, a.mode) for a in debate.surveys.values()}
    assert answered == {
        (it, agent, mode)
        for it in (0, 3)
        for agent in range(3)
        for mode in (SurveyMode.DISTRIBUTION, SurveyMode.GENERATE)
    }
    distribution = [a for a in debate.surveys.values() if a.mode == SurveyMode.DISTRIBUTION]
    assert all(a.ok and a.coverage and 0 <= (a.score or 0) <= 10 for a in distribution)
    generated = [a for a in debate.surveys.values() if a.mode == SurveyMode.GENERATE]
    assert all(a.raw_text is not None for a in generated)
    chat = fmt == "chat"
    assert all(isinstance(p, list) == chat for p in lm.turns + lm.surveys)
    # The survey never enters any history: no turn prompt carries a question or an answer.
    for prompt in lm.turns:
        assert not any(word in text_of(prompt) for word in SURVEY_WORDS)
    # Surveys at iteration 3 were asked on the context after three replies.
    last_reply = debate.turns[-1].text
    assert any(last_reply in text_of(p) for p in lm.surveys)
    if chat:
        first = lm.turns[0]
        assert isinstance(first, list) and first[0]["role"] == "system"
        # After a full round every agent's own reply is an assistant message.
        roles = [[m["role"] for m in p] for p in lm.surveys if isinstance(p, list)]
        assert any(r[0] == "system" and r[-1] == "user" and "assistant" in r for r in roles)


class ChatOnlyProxy(FaultProxy):
    """Forwards chat requests; answers /completions as OpenAI does for a chat model."""

    def _apply(self, h: BaseHTTPRequestHandler, body: bytes, fault: str) -> None:
        if h.path.endswith("/completions") and not h.path.endswith("/chat/completions"):
            error = {"error": {"message": CHAT_ONLY, "type": "invalid_request_error"}}
            self._send(h, 404, json.dumps(error).encode())
            return
        super()._apply(h, body, fault)


@pytest.fixture(scope="module")
def chat_only() -> Iterator[ChatOnlyProxy]:
    server = ServerProcess(MODEL, parallel=4, ctx_per_slot=2048)
    server.start()
    proxy = ChatOnlyProxy(server.url)
    yield proxy
    proxy.close()
    server.stop()


def test_a_chat_only_endpoint_debates_in_chat_format(chat_only: ChatOnlyProxy) -> None:
    with OpenAICompatModel(MODEL, [chat_only.url], parallel=4, options=FAST) as lm:
        debate = run_one(lm, "chat", iterations=2)
    assert debate.failed is None and len(debate.turns) == 2
    distribution = [a for a in debate.surveys.values() if a.mode == SurveyMode.DISTRIBUTION]
    assert distribution and all(a.ok and a.coverage for a in distribution)
    assert chat_only.count(path="/chat/completions") > 0
    assert chat_only.count(path="v1/completions") == 0


def test_a_transcript_on_a_chat_only_endpoint_says_to_switch_format(
    chat_only: ChatOnlyProxy, tmp_path: Path
) -> None:
    with (
        OpenAICompatModel(MODEL, [chat_only.url], parallel=2, options=FAST) as lm,
        pytest.raises(ChatOnlyError, match=r"chat model only .* prompt_format: chat") as info,
    ):
        run_one(lm, "transcript", iterations=1)
    assert "\n" not in str(info.value)
    # An experiment is refused before anything is written.
    PersonaSet(
        [Persona("Ann", "republican", "You are Ann."), Persona("Bob", "democrat", "You are Bob.")],
        {},
    ).save(tmp_path / "personas.yaml")
    data = {
        "name": "chatonly",
        "model": {
            "name": MODEL,
            "backend": "openai",
            "base_urls": [chat_only.url],
            "options": FAST,
        },
        "prompt_format": "transcript",
        "topics": ["racism"],
        "setups": ["two-way"],
        "repetitions": 1,
        "iterations": 1,
        "personas": {"file": "personas.yaml"},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ChatOnlyError, match="switch to prompt_format: chat"):
        run_experiment(load_experiment(path), path.read_text(), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()
