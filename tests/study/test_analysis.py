"""Analysis frames, strategy labelling with score_choices, and the report files."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from stancelab.engine._fake import FakeChatModel
from stancelab.study._analysis import (
    condition_summary,
    label_counts,
    load_frames,
    message_strategies,
    participant_frame,
    per_turn,
    strategy_frame,
    turn_frame,
)
from stancelab.study._report import write_report
from stancelab.study._store import StudyStore
from stancelab.study._strategies import LABELS, judge_prompt, label_study

from .conftest import AppFactory, Participant


def _run_study(app_client: AppFactory) -> None:
    """Two chat participants with known answers and one static participant."""
    conditions = {
        "conditions": ["standard", "personalised", "static"],
        "turns": {"min": 2, "max": 3},
    }
    a = Participant(app_client(**conditions))
    a.through_before("A", stance=8)  # 1st: one of the conditions
    b = Participant(app_client(**conditions))
    b.through_before("B", stance=1)
    c = Participant(app_client(**conditions))
    c.through_before("C", stance=5)
    for p, stances in ((a, (8, 7, 7)), (b, (1, 1, 2)), (c, (5, 5, 5))):
        if 'data-role="statement"' in p.html:
            p.finish(after=stances[0])  # no change in the static condition
            continue
        p.say("I feel scared for my kids.", stance=stances[0])
        p.say("What do you think?", stance=stances[1])
        p.say("Fine.", stance=stances[2])
        p.finish(after=6, perceived=(3, 4), last="same")


def test_participant_and_turn_frames(app_client: AppFactory, store: StudyStore) -> None:
    _run_study(app_client)
    frames = load_frames(store, "pilot")
    people = participant_frame(frames).set_index("pid")
    chat = people[people["condition"] != "static"]
    assert len(people) == 3 and len(chat) == 2
    # the fake chatbot: stance 3 before the chat, +1 per exchange, 3 exchanges
    assert list(chat["llm_turn0"]) == [3.0, 3.0] and list(chat["llm_last"]) == [6.0, 6.0]
    assert list(chat["llm_first"]) == [4.0, 4.0]  # after reply 1: what the person first saw
    assert list(chat["llm_change"]) == [3.0, 3.0]
    assert list(chat["llm_change_seen"]) == [2.0, 2.0]
    assert list(chat["perceived_change"]) == [1.0, 1.0]
    # perception is compared with the replies the person read: 1 perceived, 2 measured
    assert list(chat["perception_error"]) == [-1.0, -1.0]
    assert list(chat["perception_error_first"]) == [-1.0, -1.0]  # perceived 3, measured 4
    for pid, row in chat.iterrows():
        before = {"A": 8, "B": 1, "C": 5}[str(pid)]
        assert row["stance_before"] == before and row["human_change"] == 6 - before
        assert row["gap_start"] == abs(before - 3.0) and row["gap_end"] == 0.0
    static = people[people["condition"] == "static"].iloc[0]
    assert math.isnan(static["llm_turn0"]) and static["human_change"] == 0.0

    turns = turn_frame(frames, threshold=0.5)
    assert set(turns["turn"]) == {0, 1, 2, 3}
    first = turns[turns["participant_id"] == chat.loc[chat.index[0], "participant_id"]]
    assert list(first["llm"]) == [3.0, 4.0, 5.0, 6.0]
    assert list(first["llm_changed"].iloc[1:]) == [1.0, 1.0, 1.0]
    # human at turn k is the per-turn stance given after reading reply k: sent with
    # message k+1 (turn 0: with message 1), the last on the finish form ("same" here)
    pid = str(chat.index[0])
    sent = {"A": [8, 7, 7], "B": [1, 1, 2], "C": [5, 5, 5]}[pid]
    assert list(first["human"]) == [float(v) for v in [*sent, sent[-1]]]
    assert list(first["human_source"]) == ["chosen", "chosen", "chosen", "same"]
    # one change rule for both sides: a move of at least the threshold
    moved = [abs(b - a) >= 0.5 for a, b in itertools.pairwise([*sent, sent[-1]])]
    assert list(first["human_changed"].iloc[1:]) == [float(m) for m in moved]
    table = per_turn(turns)
    assert set(table["turn"]) == {0, 1, 2, 3}
    assert table[table["turn"] > 0]["p_llm_change"].eq(1.0).all()
    assert table[table["turn"] == 3]["share_same_as_before"].eq(1.0).all()
    summary = condition_summary(participant_frame(frames)).set_index("condition")
    assert set(summary.index) == {"standard", "personalised", "static"}
    assert summary.loc["standard", "llm_change"] == 3.0
    assert summary.loc["standard", "llm_change_n"] == 1


def _judge(base: str) -> dict[str, float]:
    """A scripted judge: fear is an emotional appeal, a question mark a question."""
    if "scared" in base:
        return {"emotional appeal": 0.7, "personal story": 0.3}
    message = base.split('"""')[1] if base.count('"""') >= 2 else ""
    if "?" in message:
        return {"question": 0.9, "other": 0.1}
    return {"other": 1.0}


def test_strategy_labels_from_score_choices(app_client: AppFactory, store: StudyStore) -> None:
    _run_study(app_client)
    judge = FakeChatModel(continuations=_judge)
    assert label_study(store, judge, judge="scripted") == 12  # 2 chats x 3 turns x 2 sides
    assert label_study(store, judge, judge="scripted") == 0  # idempotent
    frames = load_frames(store)
    labels = frames["labels"].merge(frames["messages"], left_on="message_id", right_on="id")
    scared = labels[labels["text"] == "I feel scared for my kids."]
    assert set(scared["label"]) == {"emotional appeal"}
    import json

    probs = json.loads(scared["probabilities"].iloc[0])
    assert set(probs) == set(LABELS)
    assert probs["emotional appeal"] == pytest.approx(0.7, abs=1e-6)
    assert probs["personal story"] == pytest.approx(0.3, abs=1e-6)
    question = labels[labels["text"] == "What do you think?"]
    assert set(question["label"]) == {"question"}
    effects = strategy_frame(frames, turn_frame(frames))
    assert effects.attrs["source"] == "scripted (top label)"
    human = effects[effects["speaker"] == "human"]
    # the fake chatbot moves after every message, so each human strategy precedes a change
    fear = human[human["uses::emotional appeal"] == 1.0]
    assert len(fear) == 2 and fear["other_changed"].eq(1.0).all()
    assert human["uses::question"].sum() == 2
    assert human["uses::other"].sum() == 2  # "Fine."
    llm = effects[effects["speaker"] == "llm"]
    assert llm["uses::emotional appeal"].sum() == 2  # the echoed fear


def test_judge_prompt_carries_codebook_and_message() -> None:
    prompt = judge_prompt("gun violence", "user", 'He said """stop""".')
    body = prompt[0]["content"]
    for label in LABELS:
        assert f"- {label}:" in body
    assert "Message from the person" in body and "gun violence" in body
    assert "He said '''stop'''." in body


def test_report_writes_figures_tables_and_escaped_html(
    app_client: AppFactory, store: StudyStore, tmp_path: Path
) -> None:
    _run_study(app_client)
    label_study(store, FakeChatModel(continuations=_judge), judge="scripted")
    store.update(store.participants()[0].id, topic="<script>x</script>")
    paths = write_report(store, tmp_path / "report", study="pilot")
    names = {p.name for p in paths}
    assert {
        "participants.csv",
        "flow.csv",
        "statistics.csv",
        "turns.csv",
        "conditions.csv",
        "per_turn.csv",
        "strategy_counts.csv",
        "stance_per_turn.png",
        "opinion_gap.png",
        "change_likelihood.png",
        "conditions.png",
        "index.html",
    } <= names
    for p in paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<script>x" not in page
    assert "stance_per_turn.png" in page and "Claims and tests" in page
    # three people, one per condition: every test has too few to run, and says so
    assert "too few to test" in page


def test_report_on_empty_database_is_a_clear_error(store: StudyStore, tmp_path: Path) -> None:
    from stancelab.engine._errors import StoreError

    with pytest.raises(StoreError, match="no participants"):
        write_report(store, tmp_path / "r")


def _coded_study(store: StudyStore) -> dict[int, tuple[str, str]]:
    """Four finished participants with two exchanges each; (speaker, condition) per message."""
    rng = random.Random(0)
    for i in range(4):
        p = store.create_participant(
            "pilot", f"P{i}", ["standard", "personalised"], ["climate change"], rng
        )
        for turn in (1, 2):
            store.add_exchange(p.id, turn, f"person {i}.{turn}", 5, f"reply {i}.{turn}")
        store.update(p.id, step="done")
    condition = {p.id: p.condition for p in store.participants()}
    return {
        m.id: ("human" if m.role == "user" else "llm", condition[m.participant_id])
        for m in store.all_messages()
    }


def _code(message_id: int, coder: str, label: str, present: bool, source: str = "judge") -> Any:
    from stancelab.study._store import StrategyCodeRow

    return StrategyCodeRow(
        message_id=message_id,
        coder=coder,
        label=label,
        present=present,
        probability=0.9 if present else 0.1,
        coverage=0.8,
        source=source,
    )


def test_strategy_counts_are_what_the_codes_say(store: StudyStore, tmp_path: Path) -> None:
    who = _coded_study(store)
    labels = ("question", "evidence", "story")
    rng = random.Random(7)
    planted = {(m, label): rng.random() < 0.5 for m in who for label in labels}
    planted[min(who), "question"] = planted[min(who), "evidence"] = True  # several labels
    # an older judge's codes, a person's codes and single-label labels must not mix in
    store.replace_codes([_code(m, "old-judge", "question", True) for m in who])
    store.replace_codes([_code(m, "ann", "story", True, "human") for m in who])
    label_study(store, FakeChatModel(continuations=lambda _b: {"other": 1.0}), judge="v1")
    store.replace_codes([_code(m, "judge-b", lab, yes) for (m, lab), yes in planted.items()])
    expected: dict[tuple[str, str, str], list[int]] = {}
    for (m, label), yes in planted.items():
        speaker, condition = who[m]
        counted = expected.setdefault((speaker, condition, label), [0, 0])
        counted[0] += int(yes)
        counted[1] += 1
    frames = load_frames(store)
    assert frames["labels"].empty and frames["codes"].attrs["judge"] == "judge-b"
    counts = label_counts(frames)
    got = {
        (r.speaker, r.condition, r.strategy): [r.messages_with_label, r.messages_judged]
        for r in counts.itertuples()
    }
    assert got == expected
    assert (counts["share"] == counts["messages_with_label"] / counts["messages_judged"]).all()
    # the strategy effects read the same codes: a message carries every label planted on it
    uses = message_strategies(frames).set_index("message_id")
    assert uses.loc[min(who), "uses::question"] == uses.loc[min(who), "uses::evidence"] == 1.0
    for (m, label), yes in planted.items():
        assert uses.loc[m, f"uses::{label}"] == float(yes)
    write_report(store, tmp_path / "r")
    table = pd.read_csv(tmp_path / "r" / "strategy_counts.csv")
    keys = zip(table["speaker"], table["condition"], table["strategy"], strict=True)
    assert len(table) == len(got)
    assert table[["messages_with_label", "messages_judged"]].to_numpy().tolist() == [
        got[key] for key in keys
    ]
    page = (tmp_path / "r" / "index.html").read_text()
    assert "<strong>judge-b</strong> (several labels per message)" in page
    assert "A message may carry several labels" in page
    # --labels-judge picks another judge's codes, or an older database's labels
    assert set(label_counts(load_frames(store, judge="old-judge"))["strategy"]) == {"question"}
    older = label_counts(load_frames(store, judge="v1"))
    assert set(older["strategy"]) == {"other"} and older.attrs["kind"] == "top label"
