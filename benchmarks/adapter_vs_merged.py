"""Serving a tuned model: base GGUF + GGUF LoRA adapter vs one merged GGUF.

Run: python benchmarks/adapter_vs_merged.py [--rank 32] [--tokens 64] [--rounds 2]
Makes a random LoRA adapter on the embedded SmolLM2-135M, exports it as a GGUF adapter and
as a merged GGUF, and prints export time, file size and llama.cpp decode speed of base,
base+adapter and merged (interleaved rounds, best of each).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stancelab.engine._base import GenerationRequest, LanguageModel


def decode_rate(lm: LanguageModel, tokens: int) -> float:
    """Completion tokens per second for 4 parallel greedy requests."""
    requests = [
        GenerationRequest(f"Tell a story about topic {i}:", temperature=0.0, max_tokens=tokens)
        for i in range(4)
    ]
    start = time.perf_counter()
    out = lm.generate(requests)
    return sum(g.completion_tokens for g in out) / (time.perf_counter() - start)


def main() -> None:
    """Measure and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    opts = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from stancelab.engine._llamacpp import LlamaCppEngine, load_engine
    from stancelab.engine._models import resolve_model
    from stancelab.tuning._config import PAPER_TARGETS
    from stancelab.tuning._export import export_lora_gguf, merge_to_gguf
    from stancelab.tuning._hf import base_checkpoint

    checkpoint, sha = base_checkpoint("smollm2-135m")
    _, base_gguf = resolve_model("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32),
            LoraConfig(
                r=opts.rank,
                lora_alpha=2 * opts.rank,
                target_modules=PAPER_TARGETS,
                task_type="CAUSAL_LM",
            ),
        )
        adapter = Path(tmp) / "adapter"
        model.save_pretrained(str(adapter))
        start = time.perf_counter()
        lora_file = export_lora_gguf(adapter, base_gguf, Path(tmp) / "lora.gguf", sha)
        t_lora = time.perf_counter() - start
        start = time.perf_counter()
        merged = merge_to_gguf(base_gguf, [adapter], Path(tmp) / "merged.gguf")
        t_merge = time.perf_counter() - start
        mib = 1 << 20
        print(f"base GGUF      {base_gguf.stat().st_size / mib:7.1f} MiB")
        print(
            f"LoRA GGUF r={opts.rank:<3} {lora_file.stat().st_size / mib:6.1f} MiB, "
            f"export {t_lora:5.1f} s"
        )
        print(f"merged GGUF    {merged.stat().st_size / mib:7.1f} MiB, merge {t_merge:5.1f} s")
        engines: dict[str, LanguageModel] = {
            "base": load_engine("smollm2-135m", n_parallel=4, ctx_per_slot=512),
            "base+adapter": load_engine(
                "smollm2-135m", adapters=[(lora_file, 1.0)], n_parallel=4, ctx_per_slot=512
            ),
            "merged": LlamaCppEngine(merged, n_parallel=4, ctx_per_slot=512),
        }
        best = dict.fromkeys(engines, 0.0)
        for _ in range(opts.rounds):
            for name, lm in engines.items():
                best[name] = max(best[name], decode_rate(lm, opts.tokens))
        for name, rate in best.items():
            print(f"decode {name:<13} {rate:6.1f} tok/s (4 parallel)")
        for lm in engines.values():
            lm.close()


if __name__ == "__main__":
    main()
