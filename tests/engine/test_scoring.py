"""Whole-candidate scoring over a scripted token tree (no engine)."""

from __future__ import annotations

import math

import pytest

from stancelab.conversation.survey import SCALE
from stancelab.engine.base import ChoiceRequest, TopTokens
from stancelab.engine.fake import ScriptedModel
from stancelab.engine.scoring import score_by_token_tree


def scores_for(dist: dict[str, float]) -> list[float]:
    model = ScriptedModel(continuations=lambda prompt: dist)
    [s] = model.score_choices([ChoiceRequest("Q? Me:", SCALE)])
    return list(s.probabilities)


def test_ten_gets_its_own_mass_and_one_is_not_inflated() -> None:
    probs = scores_for({" 1\n": 0.2, " 10\n": 0.5, " 7\n": 0.3})
    assert probs[10] == pytest.approx(0.5)
    assert probs[1] == pytest.approx(0.2)
    assert probs[7] == pytest.approx(0.3)
    assert sum(probs) == pytest.approx(1.0)


def test_one_followed_by_other_digit_is_not_one() -> None:
    # "15" is not a candidate: its mass must not be counted as "1".
    model = ScriptedModel(continuations=lambda p: {" 15\n": 0.5, " 1\n": 0.25, " 3\n": 0.25})
    [s] = model.score_choices([ChoiceRequest("Me:", SCALE)])
    assert s.probabilities[1] == pytest.approx(0.5)
    assert s.probabilities[3] == pytest.approx(0.5)
    assert s.coverage == pytest.approx(0.5)


def test_answers_without_leading_space_and_off_scale_mass() -> None:
    model = ScriptedModel(continuations=lambda p: {"8": 0.6, " I think": 0.4})
    [s] = model.score_choices([ChoiceRequest("Me:", SCALE)])
    assert s.probabilities[8] == pytest.approx(1.0)
    assert s.coverage == pytest.approx(0.6)
    assert s.most_likely == "8"


def test_multi_character_tokens_and_several_tokenisations_are_summed() -> None:
    calls: list[str] = []

    def next_tokens(prompts, top_k):  # type: ignore[no-untyped-def]
        out = []
        for p in prompts:
            calls.append(p)
            suffix = p[len("Q:") :]
            table = {
                "": [(" 10", 0.3), (" ", 0.5), (" 2", 0.2)],
                " ": [("10", 0.4), ("1", 0.6)],
                " 1": [("0", 0.5), ("\n", 0.5)],
                " 10": [("\n", 1.0)],
            }[suffix]
            out.append(TopTokens([(t, math.log(q)) for t, q in table]))
        return out

    [s] = score_by_token_tree(next_tokens, [ChoiceRequest("Q:", SCALE)])
    p10 = 0.3 + 0.5 * 0.4 + 0.5 * 0.6 * 0.5
    p1 = 0.5 * 0.6 * 0.5
    p2 = 0.2
    total = p10 + p1 + p2
    assert s.probabilities[10] == pytest.approx(p10 / total)
    assert s.probabilities[1] == pytest.approx(p1 / total)
    assert s.probabilities[2] == pytest.approx(p2 / total)


def test_no_candidate_mass_gives_zero_coverage() -> None:
    model = ScriptedModel(continuations=lambda p: {" never": 1.0})
    [s] = model.score_choices([ChoiceRequest("Me:", SCALE)])
    assert s.coverage == 0.0
    assert sum(s.probabilities) == 0.0


def test_expected_value_and_entropy() -> None:
    model = ScriptedModel(continuations=lambda p: {" 4\n": 0.5, " 6\n": 0.5})
    [s] = model.score_choices([ChoiceRequest("Me:", SCALE)])
    assert s.expected_value() == pytest.approx(5.0)
    assert s.entropy_bits() == pytest.approx(1.0)


def test_empty_tokens_do_not_loop() -> None:
    calls: list[str] = []

    def next_tokens(prompts, top_k):  # type: ignore[no-untyped-def]
        out = []
        for p in prompts:
            calls.append(p)
            suffix = p[len("Q:") :]
            table = {"": [("", 0.3), (" 4", 0.7)]}.get(suffix, [("\n", 1.0)])
            out.append(TopTokens([(t, math.log(q)) for t, q in table]))
        return out

    [s] = score_by_token_tree(next_tokens, [ChoiceRequest("Q:", SCALE)])
    assert s.probabilities[4] == pytest.approx(1.0)
    assert calls == ["Q:"]
