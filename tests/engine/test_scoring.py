"""Whole-candidate scoring over a scripted token tree (no engine)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from stancelab.conversation._survey import SCALE
from stancelab.engine._base import ChoiceRequest, PathRequest, Prompt, TokenPath, TopTokens
from stancelab.engine._fake import ScriptedModel
from stancelab.engine._scoring import score_by_token_paths, score_by_token_tree


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


# A next-token table over emitted text, and an engine that walks it greedily the way
# llama.cpp does with a logit bias on the preferred texts.
TABLE = {
    "": [(" ", 0.8), ("1", 0.1), (" I", 0.1)],
    " ": [("7", 0.5), ("1", 0.3), ("8", 0.2)],
    " 1": [("0", 0.6), ("\n", 0.4)],
    "1": [("0", 0.5), ("\n", 0.5)],
}


def table_paths(requests: Sequence[PathRequest], log: list[PathRequest]) -> list[TokenPath]:
    out = []
    for r in requests:
        log.append(r)
        node = str(r.prompt)[len("Q:") :]
        tops: list[TopTokens] = []
        tokens: list[str] = []
        for _ in range(r.max_tokens):
            row = TABLE.get(node)
            if row is None:
                break
            tops.append(TopTokens([(t, math.log(q)) for t, q in row]))
            preferred = [t for t, _ in row if t in r.prefer]
            token = preferred[0] if preferred else row[0][0]
            tokens.append(token)
            node += token
        out.append(TokenPath(tops, tokens, prompt_tokens=1))
    return out


def table_next_tokens(prompts: Sequence[Prompt], top_k: int = 40) -> list[TopTokens]:
    return [TopTokens([(t, math.log(q)) for t, q in TABLE[str(p)[len("Q:") :]]]) for p in prompts]


def test_greedy_paths_give_the_tree_walks_distribution_in_fewer_requests() -> None:
    log: list[PathRequest] = []
    request = ChoiceRequest("Q:", SCALE, conversation_id="agent-1")
    [tree] = score_by_token_tree(table_next_tokens, [request])
    [paths] = score_by_token_paths(lambda rs: table_paths(rs, log), [request])
    assert paths.probabilities == pytest.approx(tree.probabilities)
    assert paths.probabilities[10] > 0 and paths.probabilities[1] > 0
    assert tree.requests == 4  # "", " ", " 1", "1"
    # The first path runs "" -> " " -> " 1"; only the unbiased branch "1" needs a second.
    assert paths.requests == 2
    assert paths.nodes == tree.nodes == 4
    assert log[0].prefer == (" ", "1") and log[0].max_tokens == 3
    assert log[1].prompt == "Q:1"
    assert all(r.conversation_id == "agent-1" for r in log)


def test_path_walk_asks_one_node_per_prompt_at_a_time() -> None:
    # An engine without paths answers one node per request: the walk still finishes,
    # and never sends two requests on the same prompt in one batch (they would land in
    # different slots and each recompute the context).
    batches: list[list[str]] = []

    def one_node(requests):  # type: ignore[no-untyped-def]
        batches.append([r.prompt for r in requests])
        tops = table_next_tokens([r.prompt for r in requests], 40)
        return [TokenPath([t], []) for t in tops]

    requests = [ChoiceRequest("Q:", SCALE), ChoiceRequest("Q:", SCALE)]
    first, second = score_by_token_paths(one_node, requests)
    [tree] = score_by_token_tree(table_next_tokens, [requests[0]])
    assert first.probabilities == pytest.approx(tree.probabilities)
    assert second.probabilities == pytest.approx(tree.probabilities)
    assert all(len(batch) == 2 for batch in batches)  # one per request, both prompts
    assert len(batches) == 4
