"""Scale-out over three llama.cpp HTTP servers: least-in-flight vs conversation affinity.

Starts three local llama.cpp servers (``python -m stancelab.engine.llamacpp_server``), runs
the same debate workload through the ``openai`` backend once per routing policy (fresh
servers each time, so no policy inherits the other's caches), and prints the prefix-cache
hit share (cached prompt tokens / prompt tokens, as the servers report them) and the
throughput of each.

Run: python benchmarks/replicas.py [--model smollm2-135m --debates 6 --iterations 6]
"""

from __future__ import annotations

import argparse
import select
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from throughput import Call, new_prompt_tokens, personas

from stancelab.conversation import BUILTIN_PERSONAS, PAPER_TOPICS, load_prompts
from stancelab.debates import Debate, DebateSpec, run_debates
from stancelab.engine import OpenAICompatModel


class Server:
    """One llama.cpp HTTP server in a subprocess on a free loopback port."""

    def __init__(self, model: str, parallel: int, threads: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "stancelab.engine.llamacpp_server",
            "--model",
            model,
            "--parallel",
            str(parallel),
            "--threads",
            str(threads),
            "--alias",
            model,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.url = ""

    def wait(self, timeout: float = 300.0) -> str:
        """Block until the server prints its address."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("listening "):
                    self.url = line.split()[1].rstrip("/") + "/v1"
                    return self.url
                if not line and self.proc.poll() is not None:
                    break
        self.stop()
        raise RuntimeError("llama.cpp server did not start")

    def stop(self) -> None:
        """Terminate it (and kill it if it does not go)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def workload(n: int, iterations: int) -> list[Debate]:
    """``n`` three-way debates over the paper's topics, fixed personas and seeds."""
    people = personas(n)
    topics = list(PAPER_TOPICS)
    debates = []
    for k in range(n):
        rep = people.of_kind("republican")[k]
        dem = people.of_kind("democrat")[k]
        spec = DebateSpec(
            topics[k % len(topics)],
            (rep, dem, BUILTIN_PERSONAS["default"][0]),
            iterations,
            seed=1000 + k,
            max_tokens=48,
        )
        debates.append(Debate(spec, load_prompts()))
    return debates


def run_policy(policy: str, args: argparse.Namespace) -> dict[str, float]:
    """Fresh servers, one workload, the figures of this policy."""
    servers = [Server(args.model, args.parallel, args.threads) for _ in range(args.replicas)]
    try:
        urls = [s.wait() for s in servers]
        lm = OpenAICompatModel(
            args.model,
            urls,
            parallel=args.parallel * args.replicas,
            options={"routing": policy, "trust_env": False, "timeout_s": 600.0},
        )
        calls: list[Call] = []
        inner = lm._post

        def post(path: str, payload: dict[str, Any], key: str | None = None) -> dict[str, Any]:
            started = time.perf_counter()
            data = inner(path, payload, key)
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            calls.append(
                Call(
                    "request",
                    started,
                    0.0,
                    {},
                    str(payload.get("prompt", "")),
                    str(choice.get("text") or ""),
                    int(usage.get("prompt_tokens") or 0),
                    key,
                )
            )
            return data

        lm._post = post  # type: ignore[method-assign]
        debates = workload(args.debates, args.iterations)
        start = time.perf_counter()
        # All debates at once, a batch per step, as the runner keeps the servers busy.
        run_debates(lm, debates)
        elapsed = time.perf_counter() - start
        stats = lm.stats
        spread = Counter(stats.extra["endpoints"].values())
        moved = sum(len(v) > 1 for v in lm.router.placements.values())
        lm.close()
        failed = [d.failed for d in debates if d.failed]
        if failed:
            raise RuntimeError(f"debates failed: {failed[:2]}")
        return {
            "seconds": elapsed,
            "prompt": stats.prompt_tokens,
            "cached": stats.cached_tokens,
            "generated": stats.completion_tokens,
            "requests": stats.requests,
            "replicas_used": len(spread),
            "moved": moved,
            "needed": new_prompt_tokens(calls),
            "needed_own": new_prompt_tokens(calls, per_conversation=True),
        }
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--debates", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--parallel", type=int, default=4, help="slots per server")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per server")
    args = parser.parse_args()
    results = {policy: run_policy(policy, args) for policy in ("least_in_flight", "affinity")}
    print(
        f"workload: {args.debates} three-way debates x {args.iterations} replies with surveys, "
        f"{args.model}, {args.replicas} llama.cpp servers x {args.parallel} slots"
    )
    print(
        f"{'policy':<17}{'seconds':>9}{'requests':>10}{'prompt tok':>12}{'cached':>9}"
        f"{'hit share':>11}{'gen tok/s':>11}"
    )
    for policy, r in results.items():
        print(
            f"{policy:<17}{r['seconds']:>9.1f}{r['requests']:>10.0f}{r['prompt']:>12.0f}"
            f"{r['cached']:>9.0f}{r['cached'] / max(1, r['prompt']):>11.1%}"
            f"{r['generated'] / r['seconds']:>11.1f}"
        )
    base, aff = results["least_in_flight"], results["affinity"]
    print(f"affinity vs least-in-flight: {base['seconds'] / aff['seconds']:.2f}x throughput")
    for policy, r in results.items():
        best = 1 - r["needed"] / max(1, r["prompt"])
        own = 1 - r["needed_own"] / max(1, r["prompt"])
        print(
            f"{policy}: genuinely new prompt tokens {r['needed']:.0f}, so at most {best:.1%} "
            f"could be served from cache; {r['cached'] / max(1, r['prompt']) / best:.0%} of that "
            f"was; {r['moved']:.0f} conversations moved; a cache that reuses only each "
            f"conversation's own history could serve at most {own:.1%}"
        )


if __name__ == "__main__":
    main()
