"""Whole-candidate scoring from next-token log-probabilities, for any engine.

The probability of a candidate such as "10" is the product of its tokens'
probabilities, summed over the ways the engine may tokenise it, with optional
leading whitespace (" 10", " " + "10", " " + "1" + "0"). A candidate that is a
prefix of another ("1" of "10") also needs the answer to end there, so its mass is
multiplied by the probability that the next token does not continue the word.

Two walks compute the same distribution. ``score_by_token_tree`` asks for one node per
request, a whole tree level per batched call: right for engines whose batch items are
independent (transformers). ``score_by_token_paths`` serves engines with a prefix cache
(llama.cpp, OpenAI-compatible servers): each request is a short greedy continuation with
the top-k tokens at every position, biased towards the nodes the tree needs (" ", then
"1" to tell "1" from "10"), so one request usually resolves the whole tree; nodes still
missing are asked one at a time per prompt, after the previous answer, so they land on
the context the engine already holds instead of recomputing it in a second slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stancelab.engine._types import (
    ChoiceRequest,
    ChoiceScores,
    PathRequest,
    Prompt,
    TokenPath,
    TopTokens,
    extend_prompt,
)

NextTokensFn = Callable[[Sequence[Prompt], int], list[TopTokens]]
TokenPathsFn = Callable[[Sequence[PathRequest]], list[TokenPath]]

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
    nodes: int = 0
    known: dict[str, TopTokens] = field(default_factory=dict)  # resolved node -> its tops


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


def _needs_end(request: ChoiceRequest) -> frozenset[str]:
    if not request.choices:
        raise ValueError("a choice request needs at least one candidate")
    return frozenset(
        c for c in request.choices if any(o != c and o.startswith(c) for o in request.choices)
    )


def _result(s: _State) -> ChoiceScores:
    raw = [s.mass.get(c, 0.0) for c in s.request.choices]
    total = sum(raw)
    probs = tuple(r / total for r in raw) if total > 0 else tuple(0.0 for _ in raw)
    return ChoiceScores(
        choices=s.request.choices,
        probabilities=probs,
        coverage=min(1.0, total),
        requests=s.requests,
        prompt_tokens=s.prompt_tokens,
        latency_s=s.latency_s,
        nodes=s.nodes,
    )


def path_plan(request: ChoiceRequest) -> tuple[int, tuple[str, ...]]:
    """How long a first greedy path must be and which texts it should prefer, so that one
    request reaches every node the tree usually needs: leading whitespace, then each
    candidate that is a prefix of another ("1" of "10"), then the token after it."""
    needs_end = _needs_end(request)
    longest = max((len(c) for c in needs_end), default=0)
    prefer = (" ", *sorted(needs_end))
    return 2 + longest, prefer


def score_by_token_paths(
    token_paths: TokenPathsFn, requests: Sequence[ChoiceRequest], top_k: int = 40
) -> list[ChoiceScores]:
    """Score candidates for many prompts at once from greedy paths (see the module doc).

    Each round sends at most one request per prompt (the most probable node still
    unknown, with the path it should follow), all prompts in one batch; between rounds
    every node whose distribution is known is expanded without asking the engine.
    """
    states = [_State(r, _needs_end(r), frontier={"": 0.0}) for r in requests]
    plans = {id(s): path_plan(s.request) for s in states}
    guard = max(len(c) for r in requests for c in r.choices) + MAX_LEADING_WHITESPACE + 2
    for _ in range(64 * guard):
        asks: list[tuple[_State, str]] = []
        for state in states:
            _expand_known(state)
            if state.frontier:
                asks.append((state, max(state.frontier, key=lambda p: state.frontier[p])))
        if not asks:
            break
        batch = []
        for state, prefix in asks:
            length, prefer = plans[id(state)]
            batch.append(
                PathRequest(
                    extend_prompt(state.request.prompt, prefix),
                    top_k,
                    max_tokens=max(1, length - len(prefix.strip()) - (1 if prefix else 0)),
                    prefer=prefer,
                    conversation_id=state.request.conversation_id,
                )
            )
        for (state, prefix), path in zip(asks, token_paths(batch), strict=True):
            state.requests += 1
            state.prompt_tokens += path.prompt_tokens
            state.latency_s += path.latency_s
            node = prefix
            for i, top in enumerate(path.tops):
                state.known.setdefault(node, top)
                if i >= len(path.tokens) or not path.tokens[i]:
                    break
                node += path.tokens[i]
            if prefix not in state.known:
                raise RuntimeError("the engine answered a path request without any tokens")
    else:
        raise RuntimeError("token-path scoring did not finish")
    return [_result(s) for s in states]


def _expand_known(state: _State) -> None:
    """Expand every frontier node whose next-token distribution is known, repeatedly;
    what remains in the frontier are nodes the engine must still be asked about."""
    while True:
        known = [p for p in state.frontier if p in state.known]
        if not known:
            return
        for prefix in known:
            logp = state.frontier.pop(prefix)
            state.nodes += 1
            children = _expand(state, prefix, logp, state.known[prefix])
            for child, child_lp in children.items():
                state.frontier[child] = _logaddexp(state.frontier.get(child), child_lp)


def score_by_token_tree(
    next_tokens: NextTokensFn, requests: Sequence[ChoiceRequest], top_k: int = 40
) -> list[ChoiceScores]:
    """Score candidates for many prompts at once by walking their token trees."""
    states = [_State(r, _needs_end(r), frontier={"": 0.0}) for r in requests]
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
            state.nodes += 1
            state.prompt_tokens += top.prompt_tokens
            state.latency_s += top.latency_s
            for child, child_lp in _expand(state, prefix, logp, top).items():
                state.frontier[child] = _logaddexp(state.frontier.get(child), child_lp)
    return [_result(s) for s in states]
