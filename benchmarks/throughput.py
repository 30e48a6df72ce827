"""Debate throughput three ways on one fixed workload, in one process.

(a) naive: one request at a time, no prefix reuse, surveys generated and parsed — the
    way most research scripts drive a model;
(b) stancelab: the experiment runner (all debates at once, prefix cache, surveys scored);
(c) honest ceiling: the least work the workload needs, at the engine's best batched
    rates measured in the same process (every slot busy, no waiting between steps):
    every genuinely new prompt token processed once (tokens no earlier prompt or reply
    of the run began with; counted from the requests stancelab sent, by character
    share of each prompt's token count) and every token the workload must decode once
    (each reply token, and per survey point the token-tree nodes beyond the first that
    the exact scorer evaluates). Stancelab's own waste cannot hide in this bound. The
    rates come from prompt-only and decode-only batches; where the run itself went
    faster than they predict for its own token counts (prompt and decode tokens share
    batches in a real workload), they are scaled up by that much, so the ceiling never
    assumes a slower engine than the run showed.

Run: python benchmarks/throughput.py [--topics 4 --repetitions 8 --iterations 9]
The issue's full workload is --topics 4 --repetitions 8 --iterations 9 (about an hour
here, mostly the naive baseline); the default is a smaller one with the same shape.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stancelab.conversation import (
    BUILTIN_PERSONAS,
    PAPER_TOPICS,
    Persona,
    PersonaSet,
    load_prompts,
    parse_rating,
)
from stancelab.debates import (
    Debate,
    DebateSpec,
    ModelPool,
    Turn,
    TurnStep,
    load_experiment,
    plan_debates,
    run_debates,
    run_experiment,
)
from stancelab.engine import SharedInFlight
from stancelab.engine._base import ChoiceRequest, ChoiceScores
from stancelab.engine._llamacpp import LlamaCppEngine, idle_cores, load_engine


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


def workload_file(
    name: str,
    model: str,
    parallel: int,
    topics: list[str],
    repetitions: int,
    iterations: int,
    survey_mode: str = "distribution",
) -> Path:
    """The benchmark's experiment file (three-way debates, fixed personas, no fidelity
    check) in a fresh temporary folder, so every way and every script runs one workload."""
    work = Path(tempfile.mkdtemp(prefix=f"stancelab-{name}-"))
    personas(repetitions).save(work / "personas.yaml")
    experiment = {
        "name": name,
        "model": {"name": model, "parallel": parallel},
        "topics": topics,
        "setups": ["three-way"],
        "repetitions": repetitions,
        "iterations": iterations,
        "personas": {"file": "personas.yaml", "check_fidelity": False},
        "survey": {"modes": [survey_mode]},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return path


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


@dataclass
class Call:
    """One request stancelab sent, with llama.cpp's own timings for it."""

    kind: str
    started: float
    latency_s: float
    timings: dict[str, float]
    prompt: str
    output: str
    prompt_tokens: int
    conversation: str | None = None
    """The request's conversation id (a debate agent's context), where it has one."""


def _text(payload: dict[str, object]) -> str:
    prompt = payload.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = payload.get("messages")
    return "".join(f"<{m['role']}>{m['content']}" for m in messages or [])  # type: ignore[attr-defined]


def record_calls(engine: LlamaCppEngine) -> list[Call]:
    """Record every request stancelab sends: kind, latency, timings, prompt, output and
    conversation id."""
    calls: list[Call] = []
    inner = engine._call
    # The payload carries no conversation id: each worker thread notes the one of the
    # request it is serving before that request reaches _call.
    serving = threading.local()

    def noting(method: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(request: Any) -> Any:
            serving.conversation = request.conversation_id
            return method(request)

        return run

    engine._generate_one = noting(engine._generate_one)  # type: ignore[method-assign,assignment]
    engine._path_one = noting(engine._path_one)  # type: ignore[method-assign,assignment]

    def call(payload: dict[str, object], chat: bool) -> dict[str, object]:
        start = time.perf_counter()
        answer = inner(payload, chat)
        kind = "score" if "logprobs" in payload or "n_probs" in payload else "generate"
        timings = answer.get("timings", {})
        choice = answer["choices"][0]  # type: ignore[index]
        output = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        calls.append(
            Call(
                kind,
                start,
                time.perf_counter() - start,
                dict(timings) if isinstance(timings, dict) else {},
                _text(payload),
                str(output or ""),
                int(answer.get("usage", {}).get("prompt_tokens", 0)),  # type: ignore[union-attr]
                getattr(serving, "conversation", None),
            )
        )
        return answer

    engine._call = call  # type: ignore[method-assign]
    return calls


def new_prompt_tokens(calls: Sequence[Call], per_conversation: bool = False) -> int:
    """Prompt tokens no earlier prompt or prompt+reply of the run began with.

    ``per_conversation``: only earlier requests of the same conversation count, which
    is what a cache that keeps each conversation in a slot of its own (llama.cpp's) can
    serve; prefixes that conversations share (a persona's story in every topic, the
    Default agent's opening in every repetition) are then new to each of them.

    The longest common prefix of a string with any of a sorted set of strings is found
    next to its place in the order, so each request costs a bisection. A request's new
    characters become tokens at that prompt's own characters-per-token rate.
    """
    seen_by: dict[str | None, list[str]] = {}
    total = 0.0
    for call in sorted(calls, key=lambda c: c.started):  # in the order they were sent
        seen = seen_by.setdefault(call.conversation if per_conversation else None, [])
        prompt = call.prompt
        at = bisect.bisect_left(seen, prompt)
        shared = 0
        for neighbour in seen[max(0, at - 1) : at + 1]:
            n = 0
            for a, b in zip(prompt, neighbour, strict=False):
                if a != b:
                    break
                n += 1
            shared = max(shared, n)
        if prompt:
            total += call.prompt_tokens * (len(prompt) - shared) / len(prompt)
        for text in (prompt, prompt + call.output):
            bisect.insort(seen, text)
    return round(total)


def print_breakdown(calls: list[Call], wall: float) -> None:
    """Requests by kind: how many, summed latency, llama.cpp's prompt and decode time."""
    for kind in ("generate", "score"):
        rows = [(c.latency_s, c.timings) for c in calls if c.kind == kind]
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


def count_survey_nodes(engine: LlamaCppEngine) -> list[int]:
    """Count, per survey point, the token-tree nodes beyond the first that its exact
    score needed (each is one token the engine must evaluate after the prompt)."""
    counter = [0, 0]  # nodes beyond the root, survey points
    inner = engine.score_choices

    def score(requests: Sequence[ChoiceRequest], top_k: int = 40) -> list[ChoiceScores]:
        scores = inner(requests, top_k)
        counter[0] += sum(max(0, s.nodes - 1) for s in scores)
        counter[1] += len(scores)
        return scores

    engine.score_choices = score  # type: ignore[method-assign]
    return counter


def ceiling(
    prompt_rate: float, decode_rate: float, prompt_tokens: int, completion_tokens: int
) -> float:
    """Seconds the engine needs at its batched rates for this many recomputed prompt tokens
    and generated tokens (no waiting, no scheduling, every slot always busy)."""
    return prompt_tokens / prompt_rate + completion_tokens / decode_rate


def run_speedup(
    prompt_rate: float, decode_rate: float, prompt_tokens: int, completion_tokens: int, wall: float
) -> float:
    """How much faster than the measured batched rates the engine ran in a run that
    computed these tokens in ``wall`` seconds (at least 1): the factor the ceiling's rates
    are scaled by."""
    return max(1.0, ceiling(prompt_rate, decode_rate, prompt_tokens, completion_tokens) / wall)


def _spin(until: float) -> None:
    """A competing CPU-bound process: spins until ``until`` (monotonic), then exits."""
    x = 0
    while time.monotonic() < until:
        x = (x * 31 + 7) % 1_000_003


def _one_debate_seconds(model: str, poll: int, threads: int | None, iterations: int) -> float:
    """Seconds for one three-way debate (surveys included) on a fresh engine."""
    engine = load_engine(model, n_parallel=4, poll=poll, threads=threads)
    print(f"  (engine on {engine.describe()['threads']} threads)", flush=True)
    try:
        people = personas(1)
        debate = Debate(
            DebateSpec(
                next(iter(PAPER_TOPICS)),
                (
                    *people.of_kind("republican"),
                    *people.of_kind("democrat"),
                    BUILTIN_PERSONAS["default"][0],
                ),
                iterations,
                seed=11,
                max_tokens=64,
            ),
            load_prompts(),
        )
        start = time.perf_counter()
        run_debates(engine, [debate])
        return time.perf_counter() - start
    finally:
        engine.close()


def busy_check(model: str, spinners: int, iterations: int, max_s: float) -> None:
    """One debate alone and beside ``spinners`` spinning processes, on every core with
    llama.cpp's polling threads (poll 50, its default) and sleeping ones (poll 0), and
    with stancelab's default (threads for the cores idle at start). Each slowdown is
    against the fastest run alone, the fair share against the machine's cores."""
    cores = os.cpu_count() or 1
    fair = max(1.0, (spinners + cores) / cores)
    print(
        f"one three-way debate, {iterations} replies, {model}; {spinners} spinning processes "
        f"on {cores} cores: a fair share of the CPU makes it {fair:.1f}x slower"
    )
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for label, poll, threads in (
        ("all cores, poll 50", 50, cores),
        ("all cores, poll 0", 0, cores),
        ("idle cores, poll 0", 0, None),  # stancelab's default
    ):
        alone = _one_debate_seconds(model, poll, threads, iterations)
        until = time.monotonic() + max_s  # the load stops by itself even if we crash
        load = [ctx.Process(target=_spin, args=(until,), daemon=True) for _ in range(spinners)]
        for proc in load:
            proc.start()
        try:
            time.sleep(0.5)  # the spinners are running when the engine picks its threads
            busy = _one_debate_seconds(model, poll, threads, iterations)
        finally:
            for proc in load:
                proc.terminate()
                proc.join(5)
        rows.append((label, alone, busy))
    best = min(alone for _, alone, _ in rows)
    print(f"{'threads, poll':<22}{'alone s':>9}{'busy s':>9}{'slowdown':>10}{'vs fair':>9}")
    for label, alone, busy in rows:
        print(
            f"{label:<22}{alone:>9.1f}{busy:>9.1f}{busy / best:>9.2f}x{busy / best / fair:>8.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--topics", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="llama.cpp threads for every way (all cores)"
    )
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
    parser.add_argument(
        "--busy",
        type=int,
        default=0,
        metavar="N",
        help="instead: time one debate alone and beside N spinning processes (poll 50 vs 0)",
    )
    parser.add_argument("--busy-max-s", type=float, default=300.0, help="spinners stop by then")
    args = parser.parse_args()
    if args.busy:
        busy_check(args.model, args.busy, 3, args.busy_max_s)
        return
    topics = list(PAPER_TOPICS)[: args.topics]
    path = workload_file(
        "bench",
        args.model,
        args.parallel,
        topics,
        args.repetitions,
        args.iterations,
        args.survey_mode,
    )
    work = path.parent
    config = load_experiment(path)
    # Every way gets the same thread count, fixed here: the engine's default takes only the
    # cores idle when it starts, and the naive engine starts right after stancelab's, whose
    # threads may not have gone quiet yet; a naive loop on fewer threads would flatter the
    # ratio.
    threads = args.threads or os.cpu_count() or 1
    engine = load_engine(
        args.model,
        n_parallel=args.parallel,
        cache_ram_mib=args.cache_ram_mib,
        backend_sampling=args.backend_sampling,
        threads=threads,
    )
    calls = record_calls(engine)
    survey_nodes = count_survey_nodes(engine)
    shared_engine = SharedInFlight(engine)  # as open_model wraps every model it opens
    pool = ModelPool(opener=lambda cfg: shared_engine)

    # (b) stancelab
    result = run_experiment(
        config, path.read_text(), work / "runs", log=lambda m: None, models=pool
    )
    stats = result.stats
    b_time = result.elapsed_s
    generated = stats["completion_tokens"]
    recomputed = stats["prompt_tokens"] - stats["cached_tokens"]
    turns = len(config.topics) * args.repetitions * args.iterations

    calls = list(calls)  # the run's requests only, not the rate measurements below
    shared = shared_engine.in_flight.shared
    if args.breakdown:
        print_breakdown(calls, b_time)

    # (c) ceiling on the same token counts, from the engine's batched rates
    prompt_rate, decode_rate = batched_rates(engine, args.parallel)
    c_time = ceiling(prompt_rate, decode_rate, recomputed, generated)
    needed_prompt = new_prompt_tokens(calls)
    own_history = new_prompt_tokens(calls, per_conversation=True)
    reply_tokens = sum(int(c.timings.get("predicted_n", 0)) for c in calls if c.kind == "generate")
    needed_decode = reply_tokens + survey_nodes[0]
    faster = run_speedup(prompt_rate, decode_rate, recomputed, generated, b_time)
    honest = ceiling(prompt_rate * faster, decode_rate * faster, needed_prompt, needed_decode)
    score_calls = sum(c.kind == "score" for c in calls)

    # (a) naive, on a fresh engine with no prompt cache, one slot
    a_time = a_generated = None
    if not args.skip_naive:
        engine.close()
        naive_engine = LlamaCppEngine(
            engine.model_path,
            n_parallel=1,
            cache_ram_mib=0,
            backend_sampling=args.backend_sampling,
            threads=threads,
        )
        print(
            f"threads: stancelab {engine.describe()['threads']}, naive "
            f"{naive_engine.describe()['threads']}; cores idle when the naive loop starts: "
            f"{idle_cores(1.0)} of {os.cpu_count()}"
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
    print(f"{'way':<28}{'seconds':>10}{'gen tok/s':>12}{'vs naive':>10}{'of ceiling':>12}")
    rows = [("(b) stancelab", b_time, generated), ("(c) honest ceiling", honest, generated)]
    if a_time is not None and a_generated is not None:
        rows.insert(0, ("(a) naive", a_time, a_generated))
    for label, seconds, tokens in rows:
        vs_naive = f"{a_time / seconds:.2f}x" if a_time is not None else "-"
        print(
            f"{label:<28}{seconds:>10.1f}{tokens / seconds:>12.1f}{vs_naive:>10}"
            f"{honest / seconds:>12.0%}"
        )
    print(
        f"engine batched rates ({args.parallel} slots): prompt {prompt_rate:.0f} tok/s, "
        f"generation {decode_rate:.1f} tok/s"
    )
    print(
        f"honest ceiling: {needed_prompt} genuinely new prompt tokens, {reply_tokens} reply "
        f"tokens + {survey_nodes[0]} survey tree tokens to decode"
    )
    print(
        f"prompt tokens sent {stats['prompt_tokens']}, served from cache "
        f"{stats['cached_tokens']}, recomputed {recomputed} (the workload needs "
        f"{needed_prompt}); generated {generated}; recomputed prompt tokens per generated "
        f"token: {recomputed / max(1, generated):.2f}"
    )
    print(
        f"new prompt tokens the workload needs: {needed_prompt} if conversations share "
        f"their common prefixes (a persona's story in every topic, the Default agent's "
        f"opening), {own_history} if each reuses only its own history (a cache that keeps "
        f"conversations in slots of their own, as llama.cpp's does); stancelab recomputed "
        f"{recomputed / max(1, own_history):.2f}x the latter"
    )
    print(
        f"survey: {survey_nodes[1]} survey points, {score_calls} scoring requests "
        f"({score_calls / max(1, survey_nodes[1]):.2f} per survey point); {shared} more "
        f"requests were answered by an identical one in flight and not sent"
    )
    print(
        f"stancelab / honest ceiling: {honest / b_time:.0%}; engine time for stancelab's own "
        f"token counts at the measured rates {c_time:.1f} s ({c_time / b_time:.0%} of its "
        f"wall time), so the ceiling's rates are scaled by {faster:.2f}"
    )


if __name__ == "__main__":
    main()
