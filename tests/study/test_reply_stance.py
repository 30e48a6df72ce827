"""The judge's rating of the stance each chatbot reply expresses: stored per reply beside
the hidden probe, on the participant's own item, resumable, refused below coverage."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from stancelab.engine._base import Generation, GenerationRequest, LanguageModel
from stancelab.engine._errors import ConfigError, StoreError
from stancelab.engine._fake import ScriptedModel
from stancelab.engine._llamacpp import LlamaCppEngine, load_engine
from stancelab.study import _cli as study_cli
from stancelab.study._config import StudyConfig
from stancelab.study._reply_stance import (
    judge_name,
    rate_replies,
    reply_stance_frame,
)
from stancelab.study._store import ReplyStanceRow, StudyStore
from stancelab.study._strategies import JudgeCoverageError

from .conftest import make_config

AGREEING = "Yes, climate change is an urgent crisis and we must act now."
DISAGREEING = "Honestly, climate change is exaggerated; it is not a real problem."
NEUTRAL = "People see this differently; there are arguments on both sides."
POSITION = "Climate change is a serious threat."
RATINGS = {AGREEING: "6", DISAGREEING: "2", NEUTRAL: "4"}


def _by_reply(prompt: str) -> dict[str, float]:
    """A judge that reads each reply's stance from its text (the old-session reply: 9)."""
    for reply, point in RATINGS.items():
        if reply in prompt:
            return {f" {point}\n": 1.0}
    return {" 9\n": 1.0}


def _participant(
    store: StudyStore,
    pid: str,
    config: StudyConfig | None,
    replies: list[str],
    study: str = "pilot",
) -> str:
    """A participant whose chat holds these replies, one per turn; ``config`` None: a
    session made before 0.4 (no stance item stored)."""
    row = store.create_participant(
        study,
        pid,
        ["standard"],
        ["climate change"],
        random.Random(0),
        stance_item=config.item().as_dict() if config is not None else None,
    )
    for turn, reply in enumerate(replies, start=1):
        store.add_exchange(row.id, turn, f"message {turn}", 4, reply)
    return row.id


def _rows(store: StudyStore) -> list[ReplyStanceRow]:
    with store.session() as s:
        return list(s.scalars(select(ReplyStanceRow).order_by(ReplyStanceRow.id)))


@pytest.fixture
def agreement() -> StudyConfig:
    return make_config(
        stance_item="agreement",
        chatbot={"prompt_version": "v2"},
        topics=[{"name": "climate change", "position": POSITION}],
    )


def test_each_reply_is_rated_on_its_participants_item(
    store: StudyStore, agreement: StudyConfig
) -> None:
    new = _participant(store, "NEW", agreement, [AGREEING, DISAGREEING])
    old = _participant(store, "OLD", None, ["Some old reply."])
    judge = ScriptedModel(continuations=_by_reply)
    assert rate_replies(store, judge, config=agreement) == 3
    rows = {(r.participant_id, r.turn): r for r in _rows(store)}
    assert {k: r.score for k, r in rows.items()} == {(new, 1): 6.0, (new, 2): 2.0, (old, 1): 9.0}
    # the 7-point agreement item is scored on 1..7; the session made before 0.4 on 0..10
    assert rows[(new, 1)].distribution == [0, 0, 0, 0, 0, 1.0, 0]
    old_distribution = rows[(old, 1)].distribution
    assert old_distribution is not None and len(old_distribution) == 11
    assert rows[(old, 1)].most_likely == 9
    assert {r.judge for r in rows.values()} == {"scripted/reply_stance.v1"}
    assert all(r.mode == "distribution" and r.coverage == 1.0 for r in rows.values())
    prompts = judge.scored_prompts
    agreeing_prompt = next(p for p in prompts if AGREEING in p)
    assert f'"""\n{AGREEING}\n"""' in agreeing_prompt  # verbatim between the delimiters
    assert f'"{POSITION}"' in agreeing_prompt  # the study file's statement
    assert "Answer with a single number from 1 to 7 (1 = Strongly disagree" in agreeing_prompt
    old_prompt = next(p for p in prompts if "Some old reply." in p)
    assert "from 0 to 10" in old_prompt and "climate change is a big problem" in old_prompt


def test_without_a_config_the_statement_is_the_default_one(
    store: StudyStore, agreement: StudyConfig
) -> None:
    _participant(store, "NEW", agreement, [NEUTRAL])
    judge = ScriptedModel(continuations=_by_reply)
    assert rate_replies(store, judge) == 1
    assert '"Climate change is a big problem."' in judge.scored_prompts[0]
    assert POSITION not in judge.scored_prompts[0]


def test_rating_resumes_and_skips_failed_turns(store: StudyStore, agreement: StudyConfig) -> None:
    pid = _participant(store, "P", agreement, [AGREEING, DISAGREEING])
    store.set_status(pid, 2, "failed")  # turn 2's message failed: its reply is not in the chat
    store.add_user_message(pid, 3, "a message whose reply never came", 4, "key-3")
    store.set_status(pid, 3, "failed")
    judge = ScriptedModel(continuations=_by_reply)
    assert rate_replies(store, judge, config=agreement) == 1
    assert [(r.turn, r.score) for r in _rows(store)] == [(1, 6.0)]
    assert rate_replies(store, judge, config=agreement) == 0  # nothing left: resumable
    store.add_exchange(pid, 4, "one more", 4, NEUTRAL)
    assert rate_replies(store, judge, config=agreement) == 1
    assert [(r.turn, r.score) for r in _rows(store)] == [(1, 6.0), (4, 4.0)]
    # another judge rates the same replies on its own
    assert rate_replies(store, judge, config=agreement, judge="second") == 2


def test_a_batch_below_coverage_stops_and_stores_nothing_of_it(
    store: StudyStore, agreement: StudyConfig
) -> None:
    _participant(store, "P", agreement, [AGREEING, DISAGREEING, NEUTRAL])

    def blind_on_the_second(prompt: str) -> dict[str, float]:
        return {"banana": 1.0} if DISAGREEING in prompt else _by_reply(prompt)

    judge = ScriptedModel(continuations=blind_on_the_second)
    with pytest.raises(JudgeCoverageError) as caught:
        rate_replies(store, judge, config=agreement, batch=1)
    message = str(caught.value)
    assert "\n" not in message and "0.0%" in message and "(1 reply(ies) rated)" in message
    assert [r.score for r in _rows(store)] == [6.0]  # the first batch only
    # the two left, in one batch: one on the points, one not; their mean (50%) is checked
    with pytest.raises(JudgeCoverageError, match=r"50\.0%"):
        rate_replies(store, judge, config=agreement, batch=2, min_coverage=0.6)
    assert len(_rows(store)) == 1  # nothing of the failed batch
    assert rate_replies(store, judge, config=agreement, batch=2, min_coverage=0.5) == 2
    assert [(r.ok, r.score) for r in _rows(store)] == [(True, 6.0), (False, None), (True, 4.0)]


class _NoLogprobs(LanguageModel):
    """A judge behind an API with no log-probabilities: it only generates."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "api-judge"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        texts = [str(r.prompt) for r in requests]
        return [
            Generation(text="5" if AGREEING in t else "I cannot say.", prompt_tokens=1)
            for t in texts
        ]


def test_a_model_without_logprobs_is_asked_in_generate_mode(
    store: StudyStore, agreement: StudyConfig
) -> None:
    _participant(store, "P", agreement, [AGREEING, NEUTRAL])
    assert rate_replies(store, _NoLogprobs(), config=agreement, min_coverage=0.5) == 2
    rows = _rows(store)
    assert [(r.mode, r.ok, r.score, r.raw_text) for r in rows] == [
        ("generate", True, 5.0, "5"),
        ("generate", False, None, "I cannot say."),
    ]
    frame = reply_stance_frame(store, mode="generate")
    assert list(frame["score"].fillna(-1)) == [5.0, -1]


def test_frame_per_judge_and_unknown_judge(store: StudyStore, agreement: StudyConfig) -> None:
    assert reply_stance_frame(store).empty  # nothing rated yet: an empty frame, no error
    pid = _participant(store, "P", agreement, [AGREEING, DISAGREEING])
    _participant(store, "Q", agreement, [NEUTRAL], study="other")
    rate_replies(store, ScriptedModel(continuations=_by_reply), judge="first")
    rate_replies(store, ScriptedModel(continuations=lambda _p: {"7": 1.0}), judge="latest")
    frame = reply_stance_frame(store, study="pilot")
    assert frame.attrs["judge"] == "latest"
    assert list(frame.columns) == [
        "participant_id",
        "turn",
        "message_id",
        "judge",
        "ok",
        "score",
        "most_likely",
        "entropy_bits",
        "coverage",
    ]
    assert list(zip(frame["participant_id"], frame["turn"], frame["score"], strict=True)) == [
        (pid, 1, 7.0),
        (pid, 2, 7.0),
    ]
    first = reply_stance_frame(store, judge="first")
    assert sorted(first["score"]) == [2.0, 4.0, 6.0] and set(first["entropy_bits"]) == {0.0}
    with pytest.raises(StoreError, match=r"no reply ratings by judge 'third'.*first, latest"):
        reply_stance_frame(store, judge="third")


def test_a_topic_missing_from_the_config_is_one_line(
    store: StudyStore, agreement: StudyConfig
) -> None:
    _participant(store, "P", agreement, [AGREEING])
    other = make_config(
        stance_item="agreement", chatbot={"prompt_version": "v2"}, topics=[{"name": "AI"}]
    )
    with pytest.raises(ConfigError, match="has no topic 'climate change'"):
        rate_replies(store, ScriptedModel(continuations=_by_reply), config=other)
    assert _rows(store) == []


# --- the command ----------------------------------------------------------------------

app = typer.Typer()
app.add_typer(study_cli.study_app, name="study")
runner = CliRunner()


def test_rate_replies_command(
    store: StudyStore, agreement: StudyConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _participant(store, "P", agreement, [AGREEING, "Something the judge cannot place."])
    config_file = tmp_path / "study.yaml"
    config_file.write_text(
        "study: pilot\nmodel: smollm2-135m\nstance_item: agreement\n"
        "chatbot: {prompt_version: v2}\nconditions: [standard]\n"
        f"topics: [{{name: climate change, position: '{POSITION}'}}]\n"
    )
    # the second reply: half the judge's probability on a point, half elsewhere
    half = ScriptedModel(
        continuations=lambda p: _by_reply(p) if AGREEING in p else {"6": 0.5, "banana": 0.5}
    )
    opened: list[str] = []

    def open_judge(name: str) -> ScriptedModel:
        opened.append(name)
        return half

    monkeypatch.setattr(study_cli, "open_model", open_judge)
    db = store.url.removeprefix("sqlite:///")
    args = ["study", "rate-replies", db, "--judge", "my-judge", "--config", str(config_file)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert opened == ["my-judge"]
    assert "rated 2 reply(ies) with scripted/reply_stance.v1" in result.output
    assert "mean coverage 75.0% over its 2 rating(s)" in result.output
    assert any(POSITION in p for p in half.scored_prompts)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "rated 0 reply(ies)" in again.output

    blind = ScriptedModel(continuations=lambda _p: {"banana": 1.0})
    monkeypatch.setattr(study_cli, "open_model", lambda _name: blind)
    _participant(store, "Q", agreement, [NEUTRAL])
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "error:" in result.output
    assert "puts 0.0% on the stance item's points" in result.output
    missing = runner.invoke(app, ["study", "rate-replies", str(tmp_path / "no.db"), "--judge", "j"])
    assert missing.exit_code == 2 and "no database at" in missing.output


# --- a real judge -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_judge() -> Iterator[LlamaCppEngine]:
    """Qwen2.5-Coder-0.5B (embedded, from PyPI) as the reply judge."""
    engine = load_engine("qwen2.5-coder-0.5b", n_parallel=3, ctx_per_slot=1024, threads=2)
    yield engine
    engine.close()


@pytest.mark.engine
def test_a_real_judge_rates_replies_on_the_agreement_item(
    qwen_judge: LlamaCppEngine, store: StudyStore, agreement: StudyConfig
) -> None:
    pid = _participant(store, "REAL", agreement, [AGREEING, DISAGREEING, NEUTRAL])
    assert rate_replies(store, qwen_judge, config=agreement) == 3  # passes the 50% gate
    frame = reply_stance_frame(store)
    assert frame.attrs["judge"] == judge_name(qwen_judge) and len(frame) == 3
    assert list(frame["participant_id"]) == [pid] * 3
    for row in _rows(store):
        assert row.coverage is not None and 0 < row.coverage <= 1
        assert row.distribution is not None and len(row.distribution) == 7
        assert sum(row.distribution) == pytest.approx(1.0, abs=1e-6)
        assert row.score is not None and 1 <= row.score <= 7
    scores = dict(zip(frame["turn"], frame["score"], strict=True))
    print("qwen2.5-coder-0.5b reply stance (agree, disagree, neutral):", scores)
    print("coverage:", list(frame["coverage"]))
