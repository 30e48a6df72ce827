"""Whole-candidate scoring from next-token log-probabilities, for any engine.

The probability of a candidate such as "10" is the product of its tokens'
probabilities, summed over the ways the engine may tokenise it, with optional
leading whitespace (" 10", " " + "10", " " + "1" + "0"). A candidate that is a
prefix of another ("1" of "10") also needs the answer to end there, so its mass is
multiplied by the probability that the next token does not continue the word.
Every tree level is one batched call, so many surveys share the engine's slots.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stancelab.engine.types import ChoiceRequest, ChoiceScores, Prompt, TopTokens, extend_prompt

NextTokensFn = Callable[[Sequence[Prompt], int], list[TopTokens]]

# Paths whose probability falls below this are not expanded: they cannot change
# a reported distribution by more than this amount.
MIN_PATH_PROB = 1e-4
# Leading whitespace the model may emit before its answer (" ", "\n", " \n").
MAX_LEADING_WHITESPACE = 2


@dataclass
class _State:
    request: ChoiceRequest
    needs_end: frozenset[str]
    mass: dict[str, float] = field(default_factory=dict)
    frontier: dict[str, float] = field(default_factory=dict)  # emitted text -> log-prob
    requests: int = 0
    prompt_tokens: int = 0
    latency_s: float = 0.0


def _continues_word(token: str) -> bool:
    return bool(token) and token[0].isalnum()


def _expand(state: _State, prefix: str, logp: float, top: TopTokens) -> dict[str, float]:
    choices = state.request.choices
    stripped_prefix = prefix.lstrip()
    # A candidate completed at this node still needs the answer to stop here.
    if stripped_prefix in state.needs_end:
        p_continue = sum(math.exp(lp) for tok, lp in top.tokens if _continues_word(tok))
        p_end = max(0.0, 1.0 - p_continue)
        state.mass[stripped_prefix] = state.mass.get(stripped_prefix, 0.0) + math.exp(logp) * p_end
    children: dict[str, float] = {}
    for token, token_lp in top.tokens:
        if not token:
            continue  # an empty piece (a special token) cannot spell any candidate
        text = prefix + token
        path_lp = logp + token_lp
        if math.exp(path_lp) < MIN_PATH_PROB:
            continue
        stripped = text.lstrip()
        if not stripped:
            if len(text) <= MAX_LEADING_WHITESPACE:
                children[text] = _logaddexp(children.get(text), path_lp)
            continue
        expand = False
        for choice in choices:
            if stripped == choice:
                if choice in state.needs_end:
                    expand = True
                else:
                    state.mass[choice] = state.mass.get(choice, 0.0) + math.exp(path_lp)
            elif choice.startswith(stripped):
                expand = True
        if expand:
            children[text] = _logaddexp(children.get(text), path_lp)
    return children


def _logaddexp(a: float | None, b: float) -> float:
    if a is None:
        return b
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def score_by_token_tree(
    next_tokens: NextTokensFn, requests: Sequence[ChoiceRequest], top_k: int = 40
) -> list[ChoiceScores]:
    """Score candidates for many prompts at once by walking their token trees."""
    states = []
    for request in requests:
        if not request.choices:
            raise ValueError("a choice request needs at least one candidate")
        needs_end = frozenset(
            c for c in request.choices if any(o != c and o.startswith(c) for o in request.choices)
        )
        states.append(_State(request, needs_end, frontier={"": 0.0}))
    max_depth = max(len(c) for r in requests for c in r.choices) + MAX_LEADING_WHITESPACE + 1
    for _ in range(max_depth + 1):
        work = [(s, prefix, lp) for s in states for prefix, lp in s.frontier.items()]
        if not work:
            break
        for s in states:
            s.frontier = {}
        answers = next_tokens([extend_prompt(s.request.prompt, p) for s, p, _ in work], top_k)
        for (state, prefix, logp), top in zip(work, answers, strict=True):
            state.requests += 1
            state.prompt_tokens += top.prompt_tokens
            state.latency_s += top.latency_s
            for child, child_lp in _expand(state, prefix, logp, top).items():
                state.frontier[child] = _logaddexp(state.frontier.get(child), child_lp)
    results = []
    for s in states:
        raw = [s.mass.get(c, 0.0) for c in s.request.choices]
        total = sum(raw)
        probs = tuple(r / total for r in raw) if total > 0 else tuple(0.0 for _ in raw)
        results.append(
            ChoiceScores(
                choices=s.request.choices,
                probabilities=probs,
                coverage=min(1.0, total),
                requests=s.requests,
                prompt_tokens=s.prompt_tokens,
                latency_s=s.latency_s,
            )
        )
    return results
