"""Same debates with surveys through llama.cpp in-process and through its HTTP server.

Run: python benchmarks/http_vs_inprocess.py [--model smollm2-135m] [--debates 4]
The HTTP side starts ``python -m stancelab.engine.llamacpp_server`` on a loopback port
with the same slots, context and threads, and talks to it with the ``openai`` backend.
Both sides run the same seeded debates; rounds alternate (in-process, HTTP, ...) so a
change in background load hits both, and the medians are compared.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import statistics
import subprocess
import sys
import time
from typing import Any

from stancelab.conversation import SurveyMode, load_prompts, personas_for
from stancelab.debates import Debate, DebateSpec, run_debates
from stancelab.engine import OpenAICompatModel
from stancelab.engine._base import GenerationRequest, LanguageModel
from stancelab.engine._llamacpp import load_engine


def make_debates(
    n: int, iterations: int, kinds: list[str], tag: str, temperature: float
) -> list[Debate]:
    """Seeded debates; the tag makes each round's prompts new to the engine's cache."""
    personas = tuple(personas_for(kinds))
    return [
        Debate(
            DebateSpec(
                f"climate change ({tag})",
                personas,
                iterations,
                seed=s,
                survey_modes=(SurveyMode.DISTRIBUTION,),
                max_tokens=48,
                temperature=temperature,
            ),
            load_prompts(),
        )
        for s in range(n)
    ]


def transcript(debates: list[Debate]) -> list[list[str]]:
    """The replies of every debate, to check both sides did the same work."""
    return [[t.text for t in d.turns] for d in debates]


def timed_run(lm: LanguageModel, debates: list[Debate]) -> dict[str, Any]:
    """Wall time and work done for one set of debates."""
    before = (lm.stats.requests, lm.stats.prompt_tokens, lm.stats.completion_tokens)
    start = time.perf_counter()
    run_debates(lm, debates)
    wall = time.perf_counter() - start
    failed = sum(d.failed is not None for d in debates)
    return {
        "wall_s": wall,
        "requests": lm.stats.requests - before[0],
        "prompt_tokens": lm.stats.prompt_tokens - before[1],
        "completion_tokens": lm.stats.completion_tokens - before[2],
        "turns": sum(len(d.turns) for d in debates),
        "surveys": sum(len(d.surveys) for d in debates),
        "failed": failed,
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    """The llama.cpp HTTP server in a subprocess; returns it and its base URL."""
    cmd = [
        sys.executable,
        "-m",
        "stancelab.engine.llamacpp_server",
        "--model",
        args.model,
        "--port",
        "0",
        "--parallel",
        str(args.parallel),
        "--ctx-per-slot",
        str(args.ctx_per_slot),
        "--threads",
        str(args.threads),
        "--alias",
        args.model,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline()
            if line.startswith("listening "):
                return proc, line.split()[1] + "/v1"
            if not line:
                break
    proc.kill()
    raise SystemExit("the llama.cpp server did not start")


def warm_up(lm: LanguageModel) -> None:
    """One short request, so model pages and threads are ready before timing."""
    lm.generate([GenerationRequest("Hello", max_tokens=4, temperature=0.0)])


def per_request_ms(lm: LanguageModel, n: int) -> float:
    """Median wall time of a one-token request on a cached prompt: the fixed cost per call."""
    request = GenerationRequest("You are an American. Say one word:", max_tokens=1, temperature=0.0)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        lm.generate([request])
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--debates", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--agents", default="republican,democrat,default")
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--calls",
        type=int,
        default=100,
        help="one-token requests per side for the fixed per-call cost",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="reply temperature; 0 (greedy) gives both sides the same replies, "
        "hence the same requests",
    )
    args = parser.parse_args()
    kinds = args.agents.split(",")

    local = load_engine(
        args.model, n_parallel=args.parallel, ctx_per_slot=args.ctx_per_slot, threads=args.threads
    )
    warm_up(local)
    proc, url = start_server(args)
    remote = OpenAICompatModel(args.model, [url], parallel=args.parallel)
    warm_up(remote)
    results: dict[str, list[dict[str, Any]]] = {"in-process": [], "http": []}
    fixed: dict[str, list[float]] = {"in-process": [], "http": []}
    same = 0
    try:
        for r in range(args.rounds):
            # The two engines are separate processes with separate caches, so both get the
            # very same seeded debates; a new tag per round keeps every round cold, and the
            # order alternates against drifting background load.
            order = [("in-process", local), ("http", remote)]
            if r % 2:
                order.reverse()
            texts = []
            for label, lm in order:
                debates = make_debates(
                    args.debates, args.iterations, kinds, f"round {r}", args.temperature
                )
                gc.collect()
                results[label].append(timed_run(lm, debates))
                texts.append(transcript(debates))
                res = results[label][-1]
                print(
                    f"round {r} {label:<11} {res['wall_s']:7.2f} s  {res['requests']:5d} req "
                    f"{res['prompt_tokens']:7d} prompt tok {res['completion_tokens']:6d} gen tok"
                    f"  failed {res['failed']}",
                    flush=True,
                )
            same += texts[0] == texts[1]
        for _ in range(3):  # interleaved, against drifting background load
            for label, lm in (("in-process", local), ("http", remote)):
                fixed[label].append(per_request_ms(lm, max(1, args.calls // 3)))
    finally:
        remote.close()
        proc.terminate()
        proc.wait(timeout=30)
        local.close()

    print(
        f"\nmodel {args.model}, {args.debates} debates x {args.iterations} iterations, "
        f"{len(kinds)} agents, distribution surveys, {args.parallel} slots, "
        f"{args.threads} threads, temperature {args.temperature}, {args.rounds} rounds "
        f"(medians); identical replies on both sides in {same} of {args.rounds} rounds"
    )
    steps_rate, token_rate = {}, {}
    for label, runs in results.items():
        wall = statistics.median(x["wall_s"] for x in runs)
        # Rates per round, then the median: rounds differ in length.
        steps_rate[label] = statistics.median(
            (x["turns"] + x["surveys"]) / x["wall_s"] for x in runs
        )
        token_rate[label] = statistics.median(
            (x["prompt_tokens"] + x["completion_tokens"]) / x["wall_s"] for x in runs
        )
        print(
            f"{label:<11} {wall:7.2f} s   {steps_rate[label]:6.3f} turns+surveys/s   "
            f"{token_rate[label]:8.1f} tokens/s"
        )
    # Greedy replies can still differ between the two (batch composition changes float
    # sums at near-ties), so the work per survey differs a little: show both ratios.
    local_ms, http_ms = (statistics.median(fixed[k]) for k in ("in-process", "http"))
    print(
        f"one-token request on a cached prompt: in-process {local_ms:.2f} ms, "
        f"HTTP {http_ms:.2f} ms (HTTP costs {http_ms - local_ms:+.2f} ms per request)"
    )
    for what, rate in (("turns+surveys/s", steps_rate), ("tokens/s", token_rate)):
        ratio = rate["http"] / rate["in-process"]
        print(f"HTTP / in-process, {what}: {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
