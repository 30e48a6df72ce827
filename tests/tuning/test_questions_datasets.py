"""Question bank and self-generated datasets, on a scripted model (no engine)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._fake import ScriptedModel
from stancelab.tuning import _datasets as ds
from stancelab.tuning._errors import DatasetError
from stancelab.tuning._questions import (
    Question,
    generate_questions,
    is_near_duplicate,
    load_questions,
    parse_questions,
    save_questions,
    seed_questions,
    similarity,
)


def test_seed_questions_are_table_2() -> None:
    seeds = seed_questions()
    assert len(seeds) == 10
    assert seeds[1].text.startswith("How do you balance Second Amendment rights")
    assert seeds[-1].text.endswith("most urgent for the next president to address?")
    assert len({q.id for q in seeds}) == 10


def test_parse_and_near_duplicates() -> None:
    reply = (
        "Here are questions:\n1. What is your view on tax policy in America?\n"
        '2) "How should the U.S. approach trade with China?"\n- Not a question.\n'
        "3. Why?\n"
    )
    assert parse_questions(reply) == [
        "What is your view on tax policy in America?",
        "How should the U.S. approach trade with China?",
    ]
    assert similarity("What is your view on tax policy?", "what is your VIEW on tax policy") > 0.9
    assert is_near_duplicate(
        "What are your views on tax policy?", ["What is your view on tax policy?"], 0.7
    )
    assert not is_near_duplicate(
        "How should schools be funded?", ["What is your view on tax policy?"], 0.7
    )


def test_generate_questions_until_count_without_duplicates(tmp_path: Path) -> None:
    rng = random.Random(1)
    vocab = [
        "taxes",
        "schools",
        "borders",
        "climate",
        "police",
        "voting",
        "healthcare",
        "wages",
        "trade",
        "unions",
        "farming",
        "energy",
        "housing",
        "privacy",
        "courts",
        "military",
        "veterans",
        "pensions",
        "tariffs",
        "roads",
        "internet",
        "churches",
        "science",
        "prisons",
        "drugs",
        "guns",
        "banks",
        "media",
        "elections",
        "abortion",
    ]

    def reply(request: GenerationRequest) -> str:
        fresh = " ".join(rng.sample(vocab, 7))
        # Every reply repeats a seed question (a duplicate) and one near-duplicate of itself.
        return (
            "1. How do you believe the U.S. should handle immigration and border security?\n"
            f"2. What about {fresh}?\n3. What about {fresh} today?\n"
        )

    lm = ScriptedModel(reply=reply)
    bank = generate_questions(lm, 30, parallel=4)
    assert len(bank) == 30
    assert sum(q.source == "generated" for q in bank) == 20
    texts = [q.text for q in bank]
    assert texts[:10] == [q.text for q in seed_questions()]
    assert all(not is_near_duplicate(t, texts[:i], 0.7) for i, t in enumerate(texts))
    prompt = lm.generated[0].prompt
    assert isinstance(prompt, list) and "Generate 10 questions" in prompt[0]["content"]
    assert lm.generated[0].temperature == 1.0
    path = tmp_path / "questions.yaml"
    save_questions(bank, path)
    assert load_questions(path) == bank
    path.write_text("- {id: a, text: 'Why?'}\n- {id: a, text: 'How?'}\n")
    with pytest.raises(ConfigError, match="not unique"):
        load_questions(path)


def _answers(request: GenerationRequest) -> str:
    assert isinstance(request.prompt, list)
    question = request.prompt[-1]["content"]
    if "border" in question:
        return ""
    if "racism" in question:
        return "I'm sorry, as an AI I cannot share opinions."
    return f"Secure borders and lower taxes come first, seed {request.seed}."


def test_partisan_context_is_figure_10() -> None:
    text = ds.partisan_context("republican")
    assert text.startswith("You are a Republican with the following ideology:")
    assert "- You don't believe climate change is a problem." in text
    assert "- You believe illegal immigration is a problem." in text
    assert "act as if you are committed to your ideology without mentioning it" in text
    assert "- You believe racism is a problem." in ds.partisan_context("democrat")


def test_dataset_filters_counts_and_resumes(tmp_path: Path) -> None:
    questions = seed_questions()
    lm = ScriptedModel(reply=_answers)
    path = tmp_path / "republican.jsonl"
    summary = ds.generate_answers(
        lm, questions[:6], "republican", path, answers_per_question=3, batch=4
    )
    assert summary["generated"] == 18
    assert summary["filtered"] == {"empty": 3, "refused": 3}
    assert summary["usable"] == 12 and summary["questions"] == 4
    assert json.loads(path.with_suffix(".summary.json").read_text())["usable"] == 12
    row = json.loads(path.read_text().splitlines()[0])
    assert {"party", "question_id", "question", "k", "text", "usable", "model"} <= set(row)
    assert len({r.seed for r in lm.generated}) == 18  # each answer has its own seed
    # Resume: an interrupted file (truncated last line) and more questions.
    with path.open("a") as handle:
        handle.write('{"party": "republ')
    calls = len(lm.generated)
    lines = path.read_text().splitlines()[:-1]
    path.write_text("\n".join(lines[:10]) + "\n" + '{"party": "rep')
    ds.generate_answers(lm, questions[:6], "republican", path, answers_per_question=3)
    assert len(lm.generated) - calls == 8  # only the 8 missing answers were generated
    rows = ds.load_answers(path)
    assert len(rows) == 12
    texts = ds.training_texts(rows, "question_answer")
    assert texts[0].startswith(rows[0]["question"] + "\n")


def test_no_usable_answers_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    ds.generate_answers(
        ScriptedModel(reply=lambda r: "  "),
        seed_questions()[:2],
        "democrat",
        path,
        answers_per_question=2,
    )
    with pytest.raises(DatasetError, match="no usable answers"):
        ds.load_answers(path)
    with pytest.raises(DatasetError, match="does not exist"):
        ds.load_answers(tmp_path / "missing.jsonl")


def test_dpo_pairs_match_questions() -> None:
    own = [{"question_id": "q1", "question": "Q1?", "text": f"own {i}"} for i in range(3)]
    other = [
        {"question_id": "q1", "question": "Q1?", "text": "other"},
        {"question_id": "q2", "question": "Q2?", "text": "unmatched"},
    ]
    pairs = ds.dpo_pairs(own, other, per_question=2)
    assert pairs == [
        {"prompt": "Q1?\n", "chosen": "own 0", "rejected": "other"},
        {"prompt": "Q1?\n", "chosen": "own 1", "rejected": "other"},
    ]
    with pytest.raises(DatasetError, match="share no question"):
        ds.dpo_pairs(own, [other[1]])
    assert Question("x", "y").source == "seed"
