"""Question screen, answer partisanship, the on-side filter, DPO direction and the gate.

The screens run on the real embedded engine (SmolLM2-135M); the filter, pair and gate
logic on the hand-labelled fixtures with a keyword judge whose verdicts are known.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from stancelab.engine._base import (
    ChoiceRequest,
    ChoiceScores,
    Generation,
    GenerationRequest,
    LanguageModel,
)
from stancelab.engine._fake import ScriptedModel
from stancelab.tuning import _datasets as ds
from stancelab.tuning._errors import DatasetError
from stancelab.tuning._labelled import (
    GOOD_QUESTIONS,
    LEADING_QUESTIONS,
    OFF_TOPIC_QUESTIONS,
    judge_accuracy,
    labelled_rows,
)
from stancelab.tuning._questions import BankLog, generate_questions, seed_questions
from stancelab.tuning._report import table
from stancelab.tuning._screening import (
    PARTY_CHOICES,
    calibrate,
    check_questions,
    distinguishability,
    on_side,
    partisanship_gate,
    partisanship_summary,
    score_partisanship,
)

RIGHT_WORDS = ("finish the wall", "Second Amendment", "alarmism", "not a racist", "border first")
LEFT_WORDS = ("Dreamers", "background checks", "existential", "Systemic racism")


class KeywordJudge(LanguageModel):
    """A judge with known verdicts: party by keywords, questions by the labelled lists."""

    name = "keyword-judge"

    def __init__(self, yes_good: float = 0.9, yes_bad: float = 0.2) -> None:
        super().__init__()
        self.yes_good, self.yes_bad = yes_good, yes_bad

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        raise AssertionError("a judge only scores")

    def score_choices(
        self, requests: Sequence[ChoiceRequest], top_k: int = 40
    ) -> list[ChoiceScores]:
        out = []
        for request in requests:
            text = str(request.prompt[0]["content"])  # type: ignore[index]
            probs: tuple[float, ...]
            if request.choices == PARTY_CHOICES:
                answer = text.split("Answer:", 1)[1]
                right = any(w in answer for w in RIGHT_WORDS)
                left = any(w in answer for w in LEFT_WORDS)
                probs = (0.8, 0.1, 0.1) if right else (0.1, 0.8, 0.1) if left else (0.2, 0.2, 0.6)
            else:
                question = text.split('"')[1]
                topic = "opinion about US politics" in text
                good = question not in OFF_TOPIC_QUESTIONS and (
                    topic or question not in LEADING_QUESTIONS
                )
                yes = self.yes_good if good else self.yes_bad
                probs = (yes, 1 - yes)
            out.append(ChoiceScores(request.choices, probs, coverage=0.9))
        return out


def _scored(judge: LanguageModel) -> list[dict[str, Any]]:
    rows = labelled_rows()
    for row, score in zip(rows, score_partisanship(judge, rows), strict=True):
        row["partisanship"] = score
    return rows


def test_screens_on_the_real_engine(small_engine: LanguageModel, tmp_path: Path) -> None:
    questions = GOOD_QUESTIONS[:2] + OFF_TOPIC_QUESTIONS[:2] + LEADING_QUESTIONS[:1]
    checks = check_questions(small_engine, questions)
    assert [c.text for c in checks] == questions
    for c in checks:
        # The reply prefix ("Answer:") leaves the Yes/No candidates real probability mass.
        assert c.reason != "unscored"
        assert 0 < c.p_politics < 1 and 0 < c.p_neutral < 1
        assert c.kept == (c.reason is None)
    rows = labelled_rows()[:2] + labelled_rows()[4:6]
    scores = score_partisanship(small_engine, rows)
    for s in scores:
        assert s["coverage"] > 0.01
        assert s["p_republican"] + s["p_democrat"] + s["p_neither"] == pytest.approx(1, abs=1e-3)
        assert s["lean"] == pytest.approx(s["p_republican"] - s["p_democrat"], abs=1e-3)
    # Scoring a dataset file adds a score per usable answer and resumes without rescoring.
    path = tmp_path / "republican.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labelled_rows()[:3]))
    summary = ds.score_dataset(small_engine, path)
    assert summary["partisanship"]["scored"] == 3
    assert all("partisanship" in r for r in ds.read_jsonl(path))
    before = small_engine.stats.requests
    assert ds.score_dataset(small_engine, path)["partisanship"] == summary["partisanship"]
    assert small_engine.stats.requests == before


def test_question_screen_refills_the_bank_on_the_real_engine(small_engine: LanguageModel) -> None:
    log = BankLog()

    def screen(texts: list[str]) -> list[tuple[bool, str | None, dict[str, Any]]]:
        return [(c.kept, c.reason, c.as_dict()) for c in check_questions(small_engine, texts)]

    bank = generate_questions(
        small_engine, 13, parallel=2, max_rounds=2, max_tokens=160, screen=screen, log=log
    )
    generated = [q for q in bank if q.source == "generated"]
    kept = [c for c in log.checks if c["kept"]]
    assert len(generated) == len(kept) <= 3
    assert sum(log.dropped.values()) == len(log.checks) - len(kept)
    assert log.rounds >= 1 and log.candidates >= len(log.checks)


def test_judge_accuracy_on_labelled_set() -> None:
    accuracy = judge_accuracy(KeywordJudge())
    assert accuracy == {"questions": 1.0, "answers": 1.0, "answer_coverage": 0.9}


def test_thresholds_calibrated_on_the_seed_questions() -> None:
    seeds = [q.text for q in seed_questions()]
    assert calibrate(KeywordJudge(), seeds) == (0.5, 0.5)
    # A judge that says "No" to everything, but less to good questions: a fixed 0.5 drops
    # every question, the calibrated thresholds keep the good ones only.
    shy = KeywordJudge(yes_good=0.3, yes_bad=0.1)
    assert not any(c.kept for c in check_questions(shy, GOOD_QUESTIONS))
    thresholds = calibrate(shy, seeds)
    assert thresholds == (0.3, 0.3)
    assert judge_accuracy(shy, thresholds)["questions"] == 1.0


def test_scores_filter_pairs_and_gate_on_labelled_answers() -> None:
    rows = _scored(KeywordJudge())
    rep = [r for r in rows if r["party"] == "republican"]
    dem = [r for r in rows if r["party"] == "democrat"]
    assert all(on_side(r) for r in rows)
    assert partisanship_summary(rep, "republican") == {
        "scored": 4,
        "on_side_share": 1.0,
        "mean_lean": 0.7,
        "mean_toward": 0.7,
    }
    # Swap two Democrat answers into the Republican set: they are off side.
    mixed = rep[:2] + [{**r, "party": "republican"} for r in dem[:2]]
    assert [on_side(r) for r in mixed] == [True, True, False, False]
    assert ds.keep_on_side(mixed) == rep[:2]
    assert partisanship_summary(mixed, "republican")["on_side_share"] == 0.5
    unscored = {**rep[0], "partisanship": None}
    assert on_side(unscored) is None and ds.keep_on_side([unscored]) == []

    # DPO pairs: in order, own answer 0 meets other answer 0; with direction, a pair whose
    # chosen answer leans the wrong way is replaced or dropped.
    own = [{**r, "question_id": "q1"} for r in mixed]
    other = [{**r, "question_id": "q1"} for r in dem[2:]]
    assert len(ds.dpo_pairs(own, other, per_question=4)) == 4
    pairs = ds.dpo_pairs(own, other, per_question=4, direction="republican")
    assert [p["chosen"] for p in pairs] == [r["text"] for r in rep[:2]]
    with pytest.raises(DatasetError, match="leans further republican"):
        ds.dpo_pairs(own[2:], other, direction="republican")

    passed = partisanship_gate(rep, dem, "republican", 0.6, 0.1)
    assert passed["passed"] is True and passed["separation"] == 1.4
    failed = partisanship_gate(mixed, dem, "republican", 0.6, 0.1)
    assert failed["passed"] is False
    assert "only 50% of the republican answers lean republican" in failed["problems"][0]
    none = partisanship_gate([], dem, "republican", 0.6, 0.1)
    assert none["passed"] is None


RIGHT_CLAUSES = ("secure the border", "cut taxes", "protect gun rights", "less regulation")
LEFT_CLAUSES = ("welcome immigrants", "fund public schools", "pass gun control", "act on climate")
FILLER = ("I think", "Honestly,", "For my family,", "In my town,")


def _answers(party: str, clauses: Sequence[str], questions: int = 6) -> list[dict[str, Any]]:
    return [
        {
            "party": party,
            "question_id": f"q{q}",
            "text": f"{FILLER[k]} we should {clauses[(q + k) % 4]} and {clauses[(q + k + 1) % 4]}.",
        }
        for q in range(questions)
        for k in range(4)
    ]


def test_distinguishability_tells_partisan_from_party_blind_answers() -> None:
    rep, dem = _answers("republican", RIGHT_CLAUSES), _answers("democrat", LEFT_CLAUSES)
    told = distinguishability(rep, dem)
    assert told["questions"] == 6 and told["answers"] == 48
    assert told["accuracy"] is not None and told["accuracy"] >= 0.9
    assert 0.1 < told["band"] < 0.2  # 1.96 * sqrt(0.25 / 48)
    # Party-blind data: both parties wrote the very same answers, so no classifier can do
    # better than chance on unseen questions.
    mixed = _answers("republican", RIGHT_CLAUSES[:2] + LEFT_CLAUSES[:2])
    blind = distinguishability(mixed, [{**r, "party": "democrat"} for r in mixed])
    assert blind["accuracy"] is not None and blind["accuracy"] <= 0.5
    # Answers that share no word: not measured, and the reason is kept.
    terse = distinguishability(
        [{"party": "republican", "question_id": f"q{i}", "text": f"r{i}"} for i in range(3)],
        [{"party": "democrat", "question_id": f"q{i}", "text": f"d{i}"} for i in range(3)],
    )
    assert terse["accuracy"] is None and "no terms remain" in terse["unmeasured"]
    # One shared question is too few to hold any out.
    assert distinguishability(rep[:4], dem[:4])["accuracy"] is None

    # The gate fails on party-blind data even with no judge scores, and names why.
    gate = partisanship_gate(
        mixed,
        [{**r, "party": "democrat"} for r in mixed],
        "republican",
        0.6,
        0.1,
        min_distinguishable=0.6,
    )
    assert gate["passed"] is False
    assert "tells the two parties' answers apart on unseen questions" in gate["problems"][0]
    assert partisanship_gate(rep, dem, "republican", 0.6, 0.1, 0.6)["problems"] == [
        "no answer was scored for partisanship"
    ]


def test_report_carries_the_gate_and_learning_banners() -> None:
    rows = [
        {"label": "base", "kind": "base", "rank": 0, "attitude": 5.2},
        {"label": "dpo-r4-s0", "kind": "dpo", "rank": 4, "attitude": 5.2},
    ]
    gate = {
        "party": "republican",
        "passed": False,
        "problems": ["only 40% of the republican answers lean republican (needs 60%)"],
        "on_side_share": 0.4,
        "min_on_side": 0.6,
        "separation": 0.02,
        "min_separation": 0.1,
        "min_distinguishable": 0.6,
        "distinguishability": {"accuracy": 0.51, "answers": 200, "band": 0.069},
    }
    training = {
        "dpo-r4-s0": {
            "steps": 8,
            "curve": [{"step": 1, "loss": 0.6931}, {"step": 8, "loss": 0.6925}],
            "heldout": {
                "pairs": 6,
                "before": {"reward_accuracy": 0.5, "reward_margin": 0.0},
                "after": {"reward_accuracy": 0.5, "reward_margin": 0.001},
            },
            "learned": False,
            "verdict": "training loss ended at 0.6925, within 0.02 of ln 2",
        }
    }
    record = {
        "rows": rows,
        "gate": gate,
        "training": training,
        "datasets": {
            "republican": {
                "usable": 10,
                "generated": 10,
                "partisanship": {"on_side_share": 0.4, "mean_lean": -0.1},
            }
        },
        "screening": {"keep_on_side_only": True, "dpo_direction": False},
    }
    text = table(record)
    lines = text.splitlines()
    assert lines[0].startswith("!!!")
    assert "not partisan enough" in lines[1]
    assert "only 40% of the republican answers" in text
    assert "dpo-r4-s0: training loss ended at 0.6925" in text
    assert "on-side answers only ON" in text and "direction only off" in text
    assert "40% lean republican, mean lean -0.10" in text
    assert "acc 0.50->0.50" in text and "NO" in text
    assert "told apart on unseen questions 51% of 200 answers (chance 50% +- 7%)" in text
    clean = table({**record, "gate": {**gate, "passed": True}, "training": {}})
    assert "!!!" not in clean
    # The old call with bare rows still gives the plain table.
    assert table(rows).splitlines()[0].startswith("model")


def test_screening_off_leaves_the_paper_loop() -> None:
    from stancelab.tuning._config import FinetuneConfig

    config = FinetuneConfig.model_validate({"screening": None})
    assert config.screening is None
    defaults = FinetuneConfig().screening
    assert defaults is not None
    assert defaults.questions and defaults.partisanship
    assert not defaults.keep_on_side_only and not defaults.dpo_direction


def test_scripted_answers_are_unchanged_without_a_judge(tmp_path: Path) -> None:
    path = tmp_path / "democrat.jsonl"
    summary = ds.generate_answers(
        ScriptedModel(reply=lambda r: "Invest in clean energy now please."),
        [],
        "democrat",
        path,
    )
    assert summary["partisanship"] is None
