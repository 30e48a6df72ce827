"""Cost of one attitude survey: cached vs cold agent context, distribution vs generate.

Run: python benchmarks/survey_cache.py [--model qwen2.5-coder-0.5b] [--agents 6]
Each measurement uses its own agent context (a unique background), so "cold" really is
the first time the engine sees that prefix; "warm" contexts were used for a turn first,
as in a debate where the survey follows the agent's own reply.

``--compare 200`` instead scores that many survey points twice, each way on its own
engine: the level-by-level token tree (one node per request) and the greedy-path walk
``score_choices`` uses now, and prints requests and recomputed prompt tokens per survey
point and the total variation distance between the two distributions.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence

from stancelab.conversation import SCALE, Persona, SurveyItem, SurveyMode, ask, load_prompts
from stancelab.debates import Debate, DebateSpec, Turn
from stancelab.engine import score_by_token_tree
from stancelab.engine._base import ChoiceRequest, GenerationRequest
from stancelab.engine._llamacpp import load_engine

HISTORY = [
    "Climate change is exaggerated; the economy matters more than distant projections.",
    "Wildfires and floods are already costing families their homes. We must act now.",
    "Both of you raise points, but we need practical steps everyone can support.",
    "Regulations kill jobs in my town. Innovation, not mandates, will solve this.",
    "Innovation needs investment, and that investment comes from smart public policy.",
    "Maybe we can agree on cleaner energy that also creates local jobs.",
]


BACKGROUNDS = (
    "You are {name}, a lifelong Republican from Ohio. You believe illegal immigration is a "
    "big problem. You don't believe climate change, racism or gun violence are big problems. "
    "You run a family hardware store, coach youth baseball, and distrust federal mandates "
    "that raise costs for small businesses.",
    "You are {name}, a passionate Democrat from Oregon. You believe climate change, racism "
    "and gun violence are big problems. You don't believe that illegal immigration is a big "
    "problem. You work as a nurse in a public hospital.",
    "You are {name}. You are an American.",
)
TOPICS = ("climate change", "racism", "gun violence", "illegal immigration")


def agent_context(index: int, tag: str, topic: str = "climate change", kind: int = 0) -> Debate:
    background = BACKGROUNDS[kind].format(name=f"Agent{tag}{index}")
    persona = Persona(f"Agent{tag}{index}", "republican", background)
    others = (
        Persona("Abigail", "democrat", "You are Abigail."),
        Persona("Sam", "default", "You are an American."),
    )
    debate = Debate(DebateSpec(topic, (persona, *others), 9), load_prompts())
    for i, text in enumerate(HISTORY, start=1):
        debate.turns.append(Turn(i, (i - 1) % 3, text, text))
    return debate


def timed_surveys(engine, debates, mode, warm_first):  # type: ignore[no-untyped-def]
    times = []
    for d in debates:
        if warm_first:  # the agent's turn request caches its context, as in a debate
            engine.generate([GenerationRequest(d.turn_prompt(0), max_tokens=1, temperature=0)])
        item = SurveyItem(6, 0, d.survey_prompt(0))
        start = time.perf_counter()
        ask(engine, [item], (mode,))
        times.append(time.perf_counter() - start)
    return times


def total_variation(p: Sequence[float], q: Sequence[float]) -> float:
    """Half the L1 distance between two distributions over the same candidates."""
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q, strict=True))


def systematic(pairs: Sequence[tuple[list[float], list[float], list[float]]]) -> None:
    """Is new - old a bias or noise? Per candidate, the mean difference over all points
    and its standard error (a bias shows as a mean many standard errors from 0); and the
    difference in the 0-10 expected value, the figure a study reports."""
    n = len(pairs)
    print("candidate      mean(new-old)  s.e.   |  mean(again-old)  s.e.")
    for c in range(len(pairs[0][0])):
        cols = []
        for k in (1, 2):
            diffs = [p[k][c] - p[0][c] for p in pairs]
            cols.append((statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(n)))
        (new_mean, new_se), (again_mean, again_se) = cols
        print(f"{c:>9}{new_mean:>+15.5f}{new_se:>8.5f}   |{again_mean:>+15.5f}{again_se:>9.5f}")

    def expected(probs: Sequence[float]) -> float:
        return sum(i * q for i, q in enumerate(probs))

    for label, k in (("new - old", 1), ("again - old", 2)):
        deltas = [expected(p[k]) - expected(p[0]) for p in pairs]
        print(
            f"expected 0-10 value, {label}: mean {statistics.mean(deltas):+.4f} "
            f"(s.e. {statistics.stdev(deltas) / math.sqrt(n):.4f}), "
            f"max |diff| {max(abs(d) for d in deltas):.4f}"
        )


def compare(model: str, points: int, parallel: int) -> None:
    """Old (tree level per call) and new (greedy paths) scoring on the same survey points."""
    per_context = len(HISTORY) + 1
    contexts = -(-points // per_context)
    debates = [
        agent_context(i, "cmp", TOPICS[i % len(TOPICS)], i % len(BACKGROUNDS))
        for i in range(contexts)
    ]
    old_engine = load_engine(model, n_parallel=parallel)
    new_engine = load_engine(model, n_parallel=parallel)
    tvs: list[float] = []
    noise: list[float] = []
    pairs: list[tuple[list[float], list[float], list[float]]] = []  # old, new, old again
    old_recomputed = 0
    old_requests = new_requests = 0
    old_seconds = new_seconds = 0.0
    worst: tuple[float, list[float], list[float]] = (0.0, [], [])
    for turns in range(per_context):  # histories grow as in a debate: prefixes are reused
        batch = debates[: max(0, min(contexts, points - len(tvs)))]
        requests = []
        for d in batch:
            d.turns[:] = [Turn(i, (i - 1) % 3, t, t) for i, t in enumerate(HISTORY[:turns], 1)]
            requests.append(ChoiceRequest(d.survey_prompt(0), SCALE))
        start = time.perf_counter()
        before = old_engine.stats.recomputed_tokens
        old = score_by_token_tree(old_engine.next_tokens, requests)
        old_seconds += time.perf_counter() - start
        old_recomputed += old_engine.stats.recomputed_tokens - before
        start = time.perf_counter()
        new = new_engine.score_choices(requests)
        new_seconds += time.perf_counter() - start
        # The same tree walk again on the same engine, now with the contexts cached: how
        # far llama.cpp's own answers move when only the batching and cache state change.
        again = score_by_token_tree(old_engine.next_tokens, requests)
        for o, a in zip(old, again, strict=True):
            noise.append(total_variation(o.probabilities, a.probabilities))
        for o, n, a in zip(old, new, again, strict=True):
            pairs.append((list(o.probabilities), list(n.probabilities), list(a.probabilities)))
            tv = total_variation(o.probabilities, n.probabilities)
            tvs.append(tv)
            if tv >= worst[0]:
                worst = (tv, list(o.probabilities), list(n.probabilities))
            old_requests += o.requests
            new_requests += n.requests
    n = len(tvs)
    print(f"model {model}, {n} survey points ({contexts} agent contexts x {per_context} turns)")
    print(f"{'walk':<26}{'requests/point':>15}{'recomputed tok/point':>22}{'seconds':>9}")
    for label, recomputed, reqs, secs in (
        ("tree (one node/request)", old_recomputed, old_requests, old_seconds),
        ("greedy paths (new)", new_engine.stats.recomputed_tokens, new_requests, new_seconds),
    ):
        print(f"{label:<26}{reqs / n:>15.2f}{recomputed / n:>22.1f}{secs:>9.1f}")
    print(
        f"total variation old vs new: max {max(tvs):.4f}, mean {statistics.mean(tvs):.5f}, "
        f"points above 0.01: {sum(tv > 0.01 for tv in tvs)}"
    )
    print(
        f"noise floor, the tree walk repeated on the same engine: max {max(noise):.4f}, "
        f"mean {statistics.mean(noise):.5f}, points above 0.01: {sum(x > 0.01 for x in noise)}"
    )
    systematic(pairs)
    print(f"worst point old: {[round(x, 3) for x in worst[1]]}")
    print(f"worst point new: {[round(x, 3) for x in worst[2]]}")
    old_engine.close()
    new_engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--agents", type=int, default=6)
    parser.add_argument("--compare", type=int, default=0, help="survey points to compare")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    if args.compare:
        compare(args.model, args.compare, args.parallel)
        return
    engine = load_engine(args.model, n_parallel=4)
    n = args.agents
    tokens = engine.generate(
        [GenerationRequest(agent_context(0, "probe").survey_prompt(0), max_tokens=1)]
    )[0].prompt_tokens
    results = {
        ("distribution", "cold"): timed_surveys(
            engine, [agent_context(i, "dc") for i in range(n)], SurveyMode.DISTRIBUTION, False
        ),
        ("distribution", "warm"): timed_surveys(
            engine, [agent_context(i, "dw") for i in range(n)], SurveyMode.DISTRIBUTION, True
        ),
        ("generate", "cold"): timed_surveys(
            engine, [agent_context(i, "gc") for i in range(n)], SurveyMode.GENERATE, False
        ),
        ("generate", "warm"): timed_surveys(
            engine, [agent_context(i, "gw") for i in range(n)], SurveyMode.GENERATE, True
        ),
    }
    print(f"model {args.model}, survey prompt {tokens} tokens, {n} agents per cell")
    print(f"{'mode':<14}{'context':<9}{'mean s':>9}{'median s':>10}")
    means = {}
    for (mode, ctx), times in results.items():
        means[(mode, ctx)] = statistics.mean(times)
        print(f"{mode:<14}{ctx:<9}{statistics.mean(times):>9.3f}{statistics.median(times):>10.3f}")
    for mode in ("distribution", "generate"):
        ratio = means[(mode, "cold")] / means[(mode, "warm")]
        print(f"cold / warm ({mode}): {ratio:.1f}x")
    for ctx in ("warm", "cold"):
        ratio = means[("distribution", ctx)] / means[("generate", ctx)]
        print(f"distribution / generate ({ctx}): {ratio:.2f}x")
    engine.close()


if __name__ == "__main__":
    main()
