"""A report you can trust: a judge that does not put its probability on the labels
stops labelling, labels stay per judge and the report names its judge, and replies cut
at the token limit end at their last full sentence (the cut recorded)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stancelab.engine._base import Generation, GenerationRequest, LanguageModel
from stancelab.engine._errors import StoreError
from stancelab.engine._fake import FakeChatModel
from stancelab.study._analysis import load_frames
from stancelab.study._app import create_app
from stancelab.study._chat import Chatbot, trim_to_sentence
from stancelab.study._report import write_report
from stancelab.study._store import StudyStore
from stancelab.study._strategies import JudgeCoverageError, label_study

from .conftest import SECRET, AppFactory, Participant, make_config


def _chat(app_client: AppFactory, pid: str = "J1") -> None:
    p = Participant(app_client()).through_before(pid)
    p.say("I feel scared for my kids.")
    p.say("What do you think?")
    p.finish()


def test_judge_below_coverage_stops_with_one_line_and_stores_nothing(
    app_client: AppFactory, store: StudyStore
) -> None:
    _chat(app_client)
    blind = FakeChatModel(continuations=lambda _base: {"banana": 1.0})
    with pytest.raises(JudgeCoverageError) as caught:
        label_study(store, blind, judge="blind-judge")
    message = str(caught.value)
    assert "\n" not in message and "'blind-judge'" in message and "0.0%" in message
    assert store.labelled_message_ids("blind-judge") == set()


def _judge_a(base: str) -> dict[str, float]:
    return {"emotional appeal": 1.0}


def _judge_b(base: str) -> dict[str, float]:
    return {"question": 1.0}


def test_labels_are_kept_per_judge_and_the_report_names_its_judge(
    app_client: AppFactory, store: StudyStore, tmp_path: Path
) -> None:
    _chat(app_client)
    assert label_study(store, FakeChatModel(continuations=_judge_a), judge="judge-a") == 4
    assert label_study(store, FakeChatModel(continuations=_judge_b), judge="judge-b") == 4
    latest = load_frames(store)["labels"]
    assert set(latest["judge"]) == {"judge-b"} and set(latest["label"]) == {"question"}
    assert latest.attrs["judge"] == "judge-b"
    first = load_frames(store, judge="judge-a")["labels"]
    assert set(first["label"]) == {"emotional appeal"} and len(first) == 4
    write_report(store, tmp_path / "r", judge="judge-a")
    index = (tmp_path / "r" / "index.html").read_text()
    assert "Strategy labels by judge: <strong>judge-a</strong>" in index
    counts = (tmp_path / "r" / "strategy_counts.csv").read_text()
    assert "emotional appeal" in counts and "question" not in counts
    with pytest.raises(StoreError, match="no labels by judge 'judge-c'"):
        load_frames(store, judge="judge-c")


def _by_fear(base: str) -> dict[str, float]:
    message = base.split('"""')[1]
    return {"emotional appeal": 1.0} if "scared" in message else {"question": 1.0}


def test_an_old_database_with_only_single_label_results_still_reports(
    app_client: AppFactory, store: StudyStore, tmp_path: Path
) -> None:
    # before 0.5 `report --judge` stored one top label per message (judge.v1) and no codes
    _chat(app_client)
    label_study(store, FakeChatModel(continuations=_by_fear), judge="old-judge")
    write_report(store, tmp_path / "r")
    counts = pd.read_csv(tmp_path / "r" / "strategy_counts.csv")
    condition = store.participants()[0].condition
    assert counts.to_dict("records") == [
        {
            "speaker": speaker,
            "condition": condition,
            "strategy": strategy,
            "messages_with_label": used,
            "messages_judged": 2,
            "share": used / 2,
        }
        # the person's two messages: one scared, one a question; the fake chatbot echoes
        for speaker, strategy, used in (
            ("human", "emotional appeal", 1),
            ("human", "question", 1),
            ("llm", "emotional appeal", 1),
            ("llm", "question", 1),
        )
    ]
    index = (tmp_path / "r" / "index.html").read_text()
    assert "<strong>old-judge</strong> (top label)" in index


def test_trim_to_sentence() -> None:
    assert trim_to_sentence("One. Two is cut mid") == ("One.", True)
    assert trim_to_sentence('He said "stop!" and then') == ('He said "stop!"', True)
    assert trim_to_sentence("Complete answer.") == ("Complete answer.", False)
    assert trim_to_sentence("no sentence end at all") == ("no sentence end at all…", True)
    assert trim_to_sentence("Version 2.5 is out and") == ("Version 2.5 is out and…", True)


class _LengthLimited(FakeChatModel):
    """Every reply stops at the token limit in the middle of a word."""

    def _answer(self, request: GenerationRequest) -> Generation:
        # the one answer both generate and generate_stream give
        generation = super()._answer(request)
        generation.text = "Droughts matter. Farmers lose crops and incom"
        generation.finish_reason = "length"
        return generation


def test_reply_cut_at_the_token_limit_ends_at_a_sentence_and_is_recorded(
    store: StudyStore,
) -> None:
    from fastapi.testclient import TestClient

    app = create_app(make_config(), store, _LengthLimited(), secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True)).through_before("CUT")
    p.say("Tell me about droughts.")
    reply = next(m for m in store.messages(store.participants()[0].id) if m.role == "assistant")
    assert (reply.text, reply.cut) == ("Droughts matter.", True)
    assert "Farmers lose crops and incom" not in p.html


@pytest.mark.engine
def test_real_judge_and_cut_on_the_embedded_model(
    small_engine: LanguageModel, app_client: AppFactory, store: StudyStore
) -> None:
    # SmolLM2-135M puts almost no probability on the label names: it must be refused
    _chat(app_client, "REAL")
    with pytest.raises(JudgeCoverageError, match="use a larger judge model"):
        label_study(store, small_engine)
    bot = Chatbot.build("climate change", "How big a problem is climate change?", max_tokens=6)
    generation = small_engine.generate(bot.reply_requests([([], "Tell me everything.")]))[0]
    assert generation.finish_reason == "length"  # 6 tokens cannot hold an answer
    text, cut = bot.reply_checked(small_engine, [], "Tell me everything about climate change.")
    assert cut and text.endswith((".", "!", "?", "…", '"', "'", ")")), text
