"""Protocol tests of the debate engine with a scripted model (PROTOCOL.md part A)."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from stancelab.conversation._personas import personas_for
from stancelab.conversation._survey import SurveyMode
from stancelab.conversation._templates import load_prompts
from stancelab.debates._debate import Debate, DebateEvents, DebateSpec, clean_reply, run_debates
from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._fake import ScriptedModel

PROMPTS = load_prompts()


def make_debate(
    iterations: int = 9, seed: int = 3, kinds: str = "republican,democrat,default", **kw: Any
) -> Debate:
    spec = DebateSpec(
        "climate change", tuple(personas_for(kinds.split(","))), iterations, seed=seed, **kw
    )
    return Debate(spec, PROMPTS)


def numbered_reply(request: GenerationRequest) -> str:
    assert isinstance(request.prompt, str)
    n = request.prompt.count("\n") + 1
    return f" This is reply number {n} with a clear argument."


def test_surveys_at_zero_and_after_every_cycle_and_never_in_history() -> None:
    model = ScriptedModel(reply=numbered_reply, continuations=lambda p: {" 7\n": 1.0})
    debate = make_debate()
    run_debates(model, [debate])
    assert len(debate.turns) == 9
    iterations = sorted({it for it, _, _, _ in debate.surveys})
    assert iterations == [0, 3, 6, 9]
    assert len(debate.surveys) == 4 * 3
    assert all(a.score == pytest.approx(7.0) for a in debate.surveys.values())
    for request in model.generated:
        assert isinstance(request.prompt, str)
        assert "On a scale of 0 to 10" not in request.prompt
        assert "System:" not in request.prompt
        assert " 7\n" not in request.prompt
    # Surveys were asked on the current context: the iteration-3 survey saw 3 replies.
    survey_prompts = [p for p in model.scored_prompts if "On a scale of 0 to 10" in p]
    assert any(p.count("reply number") == 3 for p in survey_prompts)
    assert all(p.endswith("big problem?\nMe:") for p in survey_prompts)


def test_round_robin_from_seeded_first_speaker() -> None:
    firsts = set()
    for seed in range(12):
        debate = make_debate(seed=seed)
        run_debates(ScriptedModel(reply=numbered_reply), [debate])
        first = debate.first_speaker
        firsts.add(first)
        assert [t.speaker for t in debate.turns] == [(first + i) % 3 for i in range(9)]
        again = make_debate(seed=seed)
        assert again.first_speaker == first
    assert firsts == {0, 1, 2}


def test_me_substitution_in_each_agents_view() -> None:
    debate = make_debate(iterations=3)
    texts = iter(["First point.", "Second point.", "Third point."])
    run_debates(ScriptedModel(reply=lambda r: next(texts)), [debate])
    assert [t.text for t in debate.turns] == ["First point.", "Second point.", "Third point."]
    names = [p.name for p in debate.spec.personas]
    for agent in range(3):
        prompt = debate.turn_prompt(agent)
        assert isinstance(prompt, str)  # the paper's transcript format
        assert prompt.startswith(debate.spec.personas[agent].background)
        assert (
            "This is a debate about climate change. Complete your next reply. Keep your "
            "reply shorter than 50 words." in prompt
        )
        assert prompt.endswith("Me:")
        for turn in debate.turns:
            who = "Me" if turn.speaker == agent else names[turn.speaker]
            assert f"\n{who}: {turn.text}\n" in prompt
        assert f"\n{names[agent]}:" not in prompt


def test_reply_cleanup() -> None:
    debate = make_debate()
    speaker = 0
    own = debate.spec.personas[speaker].name
    other = debate.spec.personas[1].name
    text, truncated = debate.clean_reply(f" {own}: I disagree.\n{other}: You are wrong.", speaker)
    assert (text, truncated) == ("I disagree.", False)
    text, _ = debate.clean_reply("Me: Fine.\nMe: again", speaker)
    assert text == "Fine."
    text, _ = debate.clean_reply(' "Quoted answer here."\nModerator: next', speaker)
    assert text == "Quoted answer here."
    # A debater's label inside the reply, after a sentence, starts someone else's line.
    text, _ = debate.clean_reply(f" Yes, it does. {other}: No. Me: Yes.", speaker)
    assert text == "Yes, it does."
    text, _ = debate.clean_reply(f" I told {other}: listen to the facts.", speaker)
    assert text == f"I told {other}: listen to the facts."
    long = " ".join(f"word{i}" for i in range(80))
    text, truncated = debate.clean_reply(long, speaker)
    assert truncated and len(text.split()) == 49
    sentences = "One two three. " * 20
    text, truncated = debate.clean_reply(sentences, speaker)
    assert truncated and text.endswith(".") and len(text.split()) < 50


def test_word_limit_is_the_papers_wording() -> None:
    pattern = re.compile(r"\n")
    text, truncated = clean_reply(" ".join(["w"] * 49), "A", pattern, 50)
    assert not truncated
    text, truncated = clean_reply(" ".join(["w"] * 50), "A", pattern, 50)
    assert truncated and len(text.split()) == 49


def test_unusable_replies_are_retried_and_counted() -> None:
    attempts: dict[int, int] = {}

    def flaky(request: GenerationRequest) -> str:
        key = hash(request.prompt)
        attempts[key] = attempts.get(key, 0) + 1
        return "  \n" if attempts[key] == 1 else "A usable reply."

    retries = []
    events = DebateEvents(on_retry=lambda d, step, attempt, raw: retries.append(attempt))
    debate = make_debate(iterations=3)
    model = ScriptedModel(reply=flaky)
    run_debates(model, [debate], events)
    assert [t.attempts for t in debate.turns] == [2, 2, 2]
    assert len(retries) == 3
    assert len(model.generated) == 6
    # each attempt used a different seed
    seeds = [r.seed for r in model.generated]
    assert len(set(seeds)) == len(seeds)


def test_retries_are_bounded_and_failure_is_recorded() -> None:
    model = ScriptedModel(reply=lambda r: "1234 !!")
    debate = make_debate(iterations=3, max_retries=2)
    failures = []
    run_debates(model, [debate], DebateEvents(on_failure=lambda d, msg: failures.append(msg)))
    assert debate.failed is not None and "after 3 attempts" in debate.failed
    assert len(model.generated) == 3
    assert debate.done and failures


def test_each_debate_has_a_worker_of_its_own() -> None:
    # Five debates whose first requests wait for each other: only a worker per debate
    # (not one debate after another, not one batch per engine call) gets past the barrier.
    barrier = threading.Barrier(5, timeout=10)
    batch_sizes: list[int] = []

    class Meeting(ScriptedModel):
        def generate(self, requests):  # type: ignore[no-untyped-def]
            batch_sizes.append(len(requests))
            if len(batch_sizes) <= 5:
                barrier.wait()
            return super().generate(requests)

    debates = [make_debate(seed=s) for s in range(5)]
    run_debates(Meeting(reply=numbered_reply), debates)
    assert all(len(d.turns) == 9 and d.done for d in debates)
    assert batch_sizes == [1] * 45  # one request per call: the engine batches across workers


def test_one_debate_failing_stops_the_others_and_is_raised() -> None:
    class Boom(Exception):
        pass

    def reply(request: GenerationRequest) -> str:
        if request.conversation_id == "debate-1-agent-0":
            raise Boom("engine died")
        return " A usable reply."

    ended: list[Debate] = []
    debates = [make_debate(seed=s, kinds="republican,democrat") for s in range(3)]
    with pytest.raises(Boom):
        run_debates(ScriptedModel(reply=reply), debates, DebateEvents(on_end=ended.append))
    assert not debates[1].done and debates[1] not in ended  # a stopped debate is not "ended"


def test_generate_mode_failure_is_stored_not_guessed() -> None:
    model = ScriptedModel(reply=lambda r: " I cannot say." if r.temperature == 0 else "Point.")
    debate = make_debate(iterations=3, survey_modes=(SurveyMode.GENERATE,))
    run_debates(model, [debate])
    answers = list(debate.surveys.values())
    assert len(answers) == 6
    assert all(not a.ok and a.score is None and a.raw_text == " I cannot say." for a in answers)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "  "}, "topic is empty"),
        ({"iterations": -1}, "iterations must be 0 or more"),
        ({"personas": ()}, "at least one agent"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "topic": "racism",
        "personas": tuple(personas_for(["default"])),
        "iterations": 3,
    }
    base.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        DebateSpec(**base)  # type: ignore[arg-type]
