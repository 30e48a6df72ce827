"""Debate throughput three ways on one fixed workload, in one process.

(a) naive: one request at a time, no prefix reuse, surveys generated and parsed — the
    way most research scripts drive a model;
(b) stancelab: the experiment runner (all debates at once, prefix cache, surveys scored);
(c) ceiling: the time the engine needs for stancelab's recomputed prompt tokens and
    generated tokens at its best batched rates, measured in the same process (every slot
    busy, no waiting between steps): a bound no scheduler can beat.

Run: python benchmarks/throughput.py [--topics 4 --repetitions 8 --iterations 9]
The issue's full workload is --topics 4 --repetitions 8 --iterations 9 (about an hour
here, mostly the naive baseline); the default is a smaller one with the same shape.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from stancelab.conversation.personas import BUILTIN_PERSONAS, PAPER_TOPICS, Persona, PersonaSet
from stancelab.conversation.survey import parse_rating
from stancelab.conversation.templates import load_prompts
from stancelab.debates.debate import Debate, DebateSpec, Turn, TurnStep
from stancelab.debates.experiment import load_experiment, plan_debates
from stancelab.debates.runner import ModelPool, run_experiment
from stancelab.engine.llamacpp import LlamaCppEngine, load_engine


def personas(n: int) -> PersonaSet:
    """Fixed hand-written personas so all three ways debate the same people."""
    out = []
    for i in range(n):
        out.append(
            Persona(
                f"Rep{i}",
                "republican",
                (
                    f"Your name is Rep{i}. You are a passionate Republican from district {i}. You "
                    "believe illegal immigration is a big problem. You don't believe that climate "
                    "change, racism or gun violence are big problems. You run a small business and "
                    "distrust federal mandates."
                ),
            )
        )
        out.append(
            Persona(
                f"Dem{i}",
                "democrat",
                (
                    f"Your name is Dem{i}. You are a passionate Democrat from district {i}. "
                    "You believe climate change, racism and gun violence are big problems. "
                    "You don't believe that illegal immigration is a big problem. "
                    "You work as a nurse in a public hospital."
                ),
            )
        )
    return PersonaSet(out, {"source": "benchmark"})


def naive(engine: LlamaCppEngine, debates: list[Debate]) -> tuple[float, int]:
    """One debate after another, one request at a time, no prompt cache, parsed surveys."""
    server = engine._server  # the raw llama.cpp server, as a plain script would use it
    generated = 0
    start = time.perf_counter()
    for debate in debates:
        n = debate.n_agents
        for iteration in range(debate.spec.iterations + 1):
            if iteration % n == 0:
                for agent in range(n):
                    r = server.handle_completions(
                        {
                            "prompt": debate.survey_prompt(agent),
                            "temperature": 0,
                            "max_tokens": 8,
                            "stop": ["\n"],
                            "cache_prompt": False,
                        }
                    )
                    parse_rating(r["choices"][0]["text"])
                    generated += r["usage"]["completion_tokens"]
            if iteration == debate.spec.iterations:
                break
            step = TurnStep(iteration + 1, debate.speaker_at(iteration + 1))
            request = debate.turn_request(step, 1)
            r = server.handle_completions(
                {
                    "prompt": request.prompt,
                    "temperature": 1.0,
                    "max_tokens": request.max_tokens,
                    "seed": request.seed,
                    "stop": list(request.stop),
                    "cache_prompt": False,
                }
            )
            text, _ = debate.clean_reply(r["choices"][0]["text"], step.speaker)
            debate.turns.append(Turn(step.iteration, step.speaker, text or "...", text))
            generated += r["usage"]["completion_tokens"]
    return time.perf_counter() - start, generated


def record_calls(engine: LlamaCppEngine) -> list[tuple[str, float, dict[str, float]]]:
    """Record every request stancelab sends: kind, latency, llama.cpp's own timings."""
    calls: list[tuple[str, float, dict[str, float]]] = []
    inner = engine._call

    def call(payload: dict[str, object], chat: bool) -> dict[str, object]:
        start = time.perf_counter()
        answer = inner(payload, chat)
        kind = "score" if payload.get("max_tokens") == 1 else "generate"
        timings = answer.get("timings", {})
        calls.append(
            (kind, time.perf_counter() - start, dict(timings) if isinstance(timings, dict) else {})
        )
        return answer

    engine._call = call  # type: ignore[method-assign]
    return calls


def print_breakdown(calls: list[tuple[str, float, dict[str, float]]], wall: float) -> None:
    """Requests by kind: how many, summed latency, llama.cpp's prompt and decode time."""
    for kind in ("generate", "score"):
        rows = [(lat, t) for k, lat, t in calls if k == kind]
        if not rows:
            continue
        lat = sorted(r[0] for r in rows)
        print(
            f"  {kind:<9} {len(rows):>6} requests, latency median {lat[len(lat) // 2] * 1e3:.1f}"
            f" ms, p90 {lat[9 * len(lat) // 10] * 1e3:.1f} ms; prompt tokens computed "
            f"{sum(t.get('prompt_n', 0) for _, t in rows):.0f} in "
            f"{sum(t.get('prompt_ms', 0) for _, t in rows) / 1e3:.1f} s, decode "
            f"{sum(t.get('predicted_n', 0) for _, t in rows):.0f} tokens in "
            f"{sum(t.get('predicted_ms', 0) for _, t in rows) / 1e3:.1f} s (summed over "
            f"concurrent requests; wall {wall:.1f} s)"
        )


def batched_rates(engine: LlamaCppEngine, parallel: int) -> tuple[float, float]:
    """The engine's best batched rates here: prompt tokens/s and generated tokens/s, with
    every slot busy (unique prompts, no cache; generation with end-of-text ignored)."""

    def run(payloads: list[dict[str, object]]) -> tuple[int, int, float]:
        start = time.perf_counter()
        answers = list(engine._pool.map(lambda p: engine._call(p, chat=False), payloads))
        elapsed = time.perf_counter() - start
        return (
            sum(int(a["timings"]["prompt_n"]) for a in answers),
            sum(int(a["timings"]["predicted_n"]) for a in answers),
            elapsed,
        )

    def text(k: int, words: int) -> str:
        return f"Note {k}: " + " ".join(f"item{k}-{i}" for i in range(words))

    run([{"prompt": text(-1, 50), "max_tokens": 4, "cache_prompt": False}])  # warm-up
    prompt_n, _, prompt_s = run(
        [
            {"prompt": text(k, 120), "max_tokens": 1, "temperature": 0, "cache_prompt": False}
            for k in range(2 * parallel)
        ]
    )
    _, gen_n, gen_s = run(
        [
            {
                "prompt": text(1000 + k, 8),
                "max_tokens": 64,
                "temperature": 1.0,
                "seed": k,
                "ignore_eos": True,
                "cache_prompt": False,
            }
            for k in range(parallel)
        ]
    )
    return prompt_n / prompt_s, gen_n / gen_s


def ceiling(
    prompt_rate: float, decode_rate: float, prompt_tokens: int, completion_tokens: int
) -> float:
    """Seconds the engine needs at its batched rates for this many recomputed prompt tokens
    and generated tokens (no waiting, no scheduling, every slot always busy)."""
    return prompt_tokens / prompt_rate + completion_tokens / decode_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--topics", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--cache-ram-mib",
        type=int,
        default=8192,
        help="llama.cpp's RAM prompt cache for stancelab (0: slots only)",
    )
    parser.add_argument(
        "--survey-mode", choices=["distribution", "generate"], default="distribution"
    )
    parser.add_argument(
        "--backend-sampling",
        action="store_true",
        help="sample on the GPU (llama.cpp backend sampling), both ways",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="print stancelab's requests by kind: count, latency, tokens",
    )
    args = parser.parse_args()
    topics = list(PAPER_TOPICS)[: args.topics]
    work = Path(tempfile.mkdtemp(prefix="stancelab-bench-"))
    personas(args.repetitions).save(work / "personas.yaml")
    experiment = {
        "name": "bench",
        "model": {"name": args.model, "parallel": args.parallel},
        "topics": topics,
        "setups": ["three-way"],
        "repetitions": args.repetitions,
        "iterations": args.iterations,
        "personas": {"file": "personas.yaml", "check_fidelity": False},
        "survey": {"modes": [args.survey_mode]},
    }
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(experiment))
    config = load_experiment(path)
    engine = load_engine(
        args.model,
        n_parallel=args.parallel,
        cache_ram_mib=args.cache_ram_mib,
        backend_sampling=args.backend_sampling,
    )
    calls = record_calls(engine) if args.breakdown else None
    pool = ModelPool(opener=lambda cfg: engine)

    # (b) stancelab
    result = run_experiment(
        config, path.read_text(), work / "runs", log=lambda m: None, models=pool
    )
    stats = result.stats
    b_time = result.elapsed_s
    generated = stats["completion_tokens"]
    recomputed = stats["prompt_tokens"] - stats["cached_tokens"]
    turns = len(config.topics) * args.repetitions * args.iterations

    if calls is not None:
        print_breakdown(calls, b_time)

    # (c) ceiling on the same token counts, from the engine's batched rates
    prompt_rate, decode_rate = batched_rates(engine, args.parallel)
    c_time = ceiling(prompt_rate, decode_rate, recomputed, generated)

    # (a) naive, on a fresh engine with no prompt cache, one slot
    a_time = a_generated = None
    if not args.skip_naive:
        engine.close()
        naive_engine = LlamaCppEngine(
            engine.model_path, n_parallel=1, cache_ram_mib=0, backend_sampling=args.backend_sampling
        )
        prompts = load_prompts()
        planned = plan_debates(
            config,
            {k: personas(args.repetitions).of_kind(k) for k in ("republican", "democrat")},
            BUILTIN_PERSONAS["default"][0],
        )
        debates = [
            Debate(DebateSpec(p.topic, p.personas, args.iterations, seed=p.seed), prompts)
            for p in planned
        ]
        a_time, a_generated = naive(naive_engine, debates)
        naive_engine.close()
    else:
        engine.close()

    print(
        f"workload: {len(topics)} topics x {args.repetitions} repetitions x three-way x "
        f"{args.iterations} iterations = {turns} turns, model {args.model}, "
        f"{args.parallel} slots"
    )
    print(f"{'way':<28}{'seconds':>10}{'gen tok/s':>12}")
    if a_time is not None and a_generated is not None:
        print(f"{'(a) naive':<28}{a_time:>10.1f}{a_generated / a_time:>12.1f}")
    print(f"{'(b) stancelab':<28}{b_time:>10.1f}{generated / b_time:>12.1f}")
    print(f"{'(c) engine ceiling':<28}{c_time:>10.1f}{generated / c_time:>12.1f}")
    print(
        f"engine batched rates ({args.parallel} slots): prompt {prompt_rate:.0f} tok/s, "
        f"generation {decode_rate:.1f} tok/s"
    )
    print(
        f"prompt tokens sent {stats['prompt_tokens']}, served from cache "
        f"{stats['cached_tokens']}, recomputed {recomputed}; generated {generated}; "
        f"recomputed prompt tokens per generated token: {recomputed / max(1, generated):.2f}"
    )
    if a_time is not None:
        print(f"stancelab vs naive: {a_time / b_time:.1f}x faster")
    print(f"stancelab / ceiling: {c_time / b_time:.0%} of the engine's batched throughput")


if __name__ == "__main__":
    main()
