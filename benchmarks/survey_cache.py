"""Cost of one attitude survey: cached vs cold agent context, distribution vs generate.

Run: python benchmarks/survey_cache.py [--model qwen2.5-coder-0.5b] [--agents 6]
Each measurement uses its own agent context (a unique background), so "cold" really is
the first time the engine sees that prefix; "warm" contexts were used for a turn first,
as in a debate where the survey follows the agent's own reply.
"""

from __future__ import annotations

import argparse
import statistics
import time

from stancelab.conversation.personas import Persona
from stancelab.conversation.survey import SurveyItem, SurveyMode, ask
from stancelab.conversation.templates import load_prompts
from stancelab.debates.debate import Debate, DebateSpec, Turn
from stancelab.engine.base import GenerationRequest
from stancelab.engine.llamacpp import load_engine

HISTORY = [
    "Climate change is exaggerated; the economy matters more than distant projections.",
    "Wildfires and floods are already costing families their homes. We must act now.",
    "Both of you raise points, but we need practical steps everyone can support.",
    "Regulations kill jobs in my town. Innovation, not mandates, will solve this.",
    "Innovation needs investment, and that investment comes from smart public policy.",
    "Maybe we can agree on cleaner energy that also creates local jobs.",
]


def agent_context(index: int, tag: str) -> Debate:
    background = (
        f"You are Agent{tag}{index}, a lifelong Republican from Ohio. "
        "You believe illegal immigration is a big problem. You don't believe climate change, "
        "racism or gun violence are big problems. You run a family hardware store, coach "
        "youth baseball, and distrust federal mandates that raise costs for small businesses."
    )
    persona = Persona(f"Agent{tag}{index}", "republican", background)
    others = (
        Persona("Abigail", "democrat", "You are Abigail."),
        Persona("Sam", "default", "You are an American."),
    )
    debate = Debate(DebateSpec("climate change", (persona, *others), 9), load_prompts())
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--agents", type=int, default=6)
    args = parser.parse_args()
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
