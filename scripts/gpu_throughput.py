"""The throughput workload of benchmarks/throughput.py against a vLLM or SGLang server.

CI machines have no GPU; run this by hand where a server is up (docs/remote-models.md,
"Throughput on a GPU server"):

    python scripts/gpu_throughput.py --base-url http://127.0.0.1:8000/v1 \\
        --model Qwen/Qwen2.5-0.5B-Instruct [--topics 4 --repetitions 8 --iterations 9] [--naive]

It drives the server through the ``openai`` backend and prints the same table: the
stancelab run, the honest ceiling (every genuinely new prompt token once, every needed
token decoded once, at the server's batched rates measured in the same run) and, with
``--naive``, a one-request-at-a-time loop with surveys generated and parsed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from throughput import (
    Call,
    ceiling,
    count_survey_nodes,
    new_prompt_tokens,
    personas,
    run_speedup,
    workload_file,
)

from stancelab.conversation import BUILTIN_PERSONAS, PAPER_TOPICS, load_prompts, parse_rating
from stancelab.debates import (
    Debate,
    DebateSpec,
    ModelPool,
    Turn,
    TurnStep,
    load_experiment,
    plan_debates,
    run_experiment,
)
from stancelab.engine import OpenAICompatModel


def record(lm: OpenAICompatModel) -> list[Call]:
    """Every request the backend sends, with its prompt, output and usage."""
    calls: list[Call] = []
    inner = lm._post

    def post(path: str, payload: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        start = time.perf_counter()
        data = inner(path, payload, key)
        choice = data["choices"][0]
        output = (choice.get("message") or {}).get("content") or choice.get("text") or ""
        prompt = payload.get("prompt") or "".join(
            f"<{m['role']}>{m['content']}" for m in payload.get("messages", [])
        )
        usage = data.get("usage") or {}
        calls.append(
            Call(
                "score" if "logprobs" in payload else "generate",
                start,
                time.perf_counter() - start,
                {"predicted_n": float(usage.get("completion_tokens") or 0)},
                str(prompt),
                str(output),
                int(usage.get("prompt_tokens") or 0),
                key,
            )
        )
        return data

    lm._post = post  # type: ignore[method-assign]
    return calls


def batched_rates(lm: OpenAICompatModel, parallel: int) -> tuple[float, float]:
    """Prompt and decode tokens/s with every slot busy (unique prompts; ignore_eos)."""

    def text(k: int, words: int) -> str:
        return f"Note {k} {time.time_ns()}: " + " ".join(f"item{k}-{i}" for i in range(words))

    def run(payloads: list[dict[str, Any]]) -> tuple[int, int, float]:
        start = time.perf_counter()
        answers = lm._run_all(lambda p: lm._post("/completions", p), payloads)
        elapsed = time.perf_counter() - start
        usage = [a.get("usage") or {} for a in answers]
        return (
            sum(int(u.get("prompt_tokens") or 0) for u in usage),
            sum(int(u.get("completion_tokens") or 0) for u in usage),
            elapsed,
        )

    base = {"model": lm.name}
    run([{**base, "prompt": text(-1, 50), "max_tokens": 4}])  # warm-up
    prompt_n, _, prompt_s = run(
        [{**base, "prompt": text(k, 400), "max_tokens": 1} for k in range(2 * parallel)]
    )
    _, gen_n, gen_s = run(
        [
            {**base, "prompt": text(1000 + k, 8), "max_tokens": 256, "ignore_eos": True}
            for k in range(parallel)
        ]
    )
    return prompt_n / prompt_s, gen_n / gen_s


def naive(lm: OpenAICompatModel, debates: list[Debate]) -> tuple[float, int]:
    """One debate after another, one request at a time, surveys generated and parsed."""
    generated = 0
    start = time.perf_counter()
    for debate in debates:
        for iteration in range(debate.spec.iterations + 1):
            if iteration % debate.n_agents == 0:
                for agent in range(debate.n_agents):
                    data = lm._post(
                        "/completions",
                        {
                            "model": lm.name,
                            "prompt": debate.survey_prompt(agent),
                            "temperature": 0,
                            "max_tokens": 8,
                            "stop": ["\n"],
                        },
                    )
                    parse_rating(data["choices"][0]["text"])
                    generated += int((data.get("usage") or {}).get("completion_tokens") or 0)
            if iteration == debate.spec.iterations:
                break
            step = TurnStep(iteration + 1, debate.speaker_at(iteration + 1))
            [gen] = lm.generate([debate.turn_request(step, 1)])
            text, _ = debate.clean_reply(gen.text, step.speaker)
            debate.turns.append(Turn(step.iteration, step.speaker, text or "...", text))
            generated += gen.completion_tokens
    return time.perf_counter() - start, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", action="append", required=True, help="repeat for replicas")
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--topics", type=int, default=4)
    parser.add_argument("--repetitions", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=9)
    parser.add_argument("--parallel", type=int, default=64)
    parser.add_argument("--max-logprobs", type=int, default=20)
    parser.add_argument("--naive", action="store_true", help="also run the naive loop")
    args = parser.parse_args()
    options = {"max_logprobs": args.max_logprobs, "timeout_s": 600.0}
    lm = OpenAICompatModel(args.model, args.base_url, parallel=args.parallel, options=options)
    calls = record(lm)
    survey_nodes = count_survey_nodes(lm)  # type: ignore[arg-type]
    topics = list(PAPER_TOPICS)[: args.topics]
    path = workload_file(
        "gpu-bench", args.model, args.parallel, topics, args.repetitions, args.iterations
    )
    work = path.parent
    config = load_experiment(path)
    result = run_experiment(
        config, path.read_text(), work / "runs", log=lambda m: None, models=ModelPool(lambda c: lm)
    )
    stancelab_s = result.elapsed_s
    calls = list(calls)  # the run's requests only, not the rate measurements below
    sent, cached, shared = lm.stats.prompt_tokens, lm.stats.cached_tokens, lm.in_flight.shared
    generated = lm.stats.completion_tokens
    prompt_rate, decode_rate = batched_rates(lm, args.parallel)
    needed_prompt = new_prompt_tokens(calls)
    replies = sum(int(c.timings["predicted_n"]) for c in calls if c.kind == "generate")
    recomputed = sent - cached
    faster = run_speedup(prompt_rate, decode_rate, recomputed, generated, stancelab_s)
    honest = ceiling(
        prompt_rate * faster, decode_rate * faster, needed_prompt, replies + survey_nodes[0]
    )
    naive_s = None
    if args.naive:
        planned = plan_debates(
            config,
            {k: personas(args.repetitions).of_kind(k) for k in ("republican", "democrat")},
            BUILTIN_PERSONAS["default"][0],
        )
        debates = [
            Debate(DebateSpec(p.topic, p.personas, args.iterations, seed=p.seed), load_prompts())
            for p in planned
        ]
        naive_s, _ = naive(lm, debates)
    lm.close()
    print(f"server {args.base_url}, model {args.model}, {args.parallel} in flight")
    print(f"{'way':<28}{'seconds':>10}{'vs naive':>10}{'of ceiling':>12}")
    rows = [("(b) stancelab", stancelab_s), ("(c) honest ceiling", honest)]
    if naive_s is not None:
        rows.insert(0, ("(a) naive", naive_s))
    for label, seconds in rows:
        vs = f"{naive_s / seconds:.2f}x" if naive_s else "-"
        print(f"{label:<28}{seconds:>10.1f}{vs:>10}{honest / seconds:>12.0%}")
    print(
        f"batched rates: prompt {prompt_rate:.0f} tok/s, generation {decode_rate:.0f} tok/s "
        f"(the ceiling's scaled by {faster:.2f}: the run went that much faster)"
    )
    print(
        f"prompt tokens {sent}, cached {cached}, needed "
        f"{needed_prompt}; generated {generated}; survey points {survey_nodes[1]}, scoring "
        f"requests {sum(c.kind == 'score' for c in calls)}; {shared} identical requests in "
        f"flight answered once"
    )


if __name__ == "__main__":
    main()
