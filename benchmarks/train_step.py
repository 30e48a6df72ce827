"""Cost of one LoRA training step: a plain forward+backward vs our SFTTrainer settings.

Run: python benchmarks/train_step.py [--model smollm2-135m] [--batch 8] [--tokens 80]
         [--rank 16] [--steps 4] [--trl-defaults]
Prints the median time of a plain forward+backward+optimiser step on the PEFT model and of
one SFTTrainer step with stancelab's CPU settings on the same batch shape, and their ratio
(the target is at most 2). ``--trl-defaults`` also times one step with TRL's default
precision and gradient checkpointing (bf16 autocast + recomputation; very slow on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any


def _texts(tokenizer: Any, n: int, tokens: int) -> list[str]:
    words = " ".join(
        [
            "the government should consider how policy affects families and",
            "workers in every state while protecting freedom and security",
        ]
    ).split()
    texts = []
    for i in range(n):
        ids: list[int] = []
        k = i
        while len(ids) < tokens:
            ids = tokenizer(" ".join(words[k % len(words) :] + words * 4))["input_ids"]
            k += 1
        texts.append(tokenizer.decode(ids[: tokens - 1]))  # the trainer appends EOS
    return texts


def plain_step(model: Any, batch: dict[str, Any], steps: int) -> tuple[float, float]:
    """Fastest (wall s, CPU s) of forward+backward+AdamW step on one fixed batch."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):
        start, cpu = time.perf_counter(), time.process_time()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return min(times[1:])


def trainer_step(
    model: Any, tokenizer: Any, texts: list[str], steps: int, lora: Any, overrides: dict[str, Any]
) -> tuple[float, float]:
    """Fastest (wall s, CPU s) optimiser step of SFTTrainer with our (or overridden) settings."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]

    from stancelab.tuning._config import NwpSettings
    from stancelab.tuning._train import training_arguments

    settings = NwpSettings(
        batch_size=len(texts) // (steps + 1),
        max_steps=steps + 1,
        save_steps=10_000,
        logging_steps=10_000,
    )
    times: list[tuple[float, float]] = []

    class Timer(TrainerCallback):
        start = (0.0, 0.0)

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    with tempfile.TemporaryDirectory() as tmp:
        kwargs = training_arguments(settings, Path(tmp), 0, False)
        kwargs.update(overrides)
        args = SFTConfig(**kwargs, dataset_text_field="text", packing=False)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict({"text": texts}),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[Timer()],
        )
        trainer.train()
    return min(times[1:]) if len(times) > 1 else times[0]


def main() -> None:
    """Measure and print both timings and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=80)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trl-defaults", action="store_true")
    opts = parser.parse_args()

    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stancelab.tuning._config import LoraSettings
    from stancelab.tuning._hf import base_checkpoint
    from stancelab.tuning._train import lora_config, set_threads

    set_threads(None)
    checkpoint, _ = base_checkpoint(opts.model)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    texts = _texts(tokenizer, opts.batch * (opts.steps + 1), opts.tokens)
    eos = tokenizer.eos_token
    enc = tokenizer([t + eos for t in texts[: opts.batch]], return_tensors="pt", padding=True)
    batch = {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": enc["input_ids"].clone(),
    }
    lora = lora_config(LoraSettings(r=opts.rank))

    def fresh() -> Any:
        return AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)

    print(
        f"model {opts.model}, batch {opts.batch} x {batch['input_ids'].shape[1]} tokens, "
        f"LoRA r={opts.rank}, torch threads {torch.get_num_threads()}"
    )
    # The machine may be shared: wall time is reported with CPU time (less sensitive to
    # other processes), and the plain step is measured before and after the trainer.
    full = plain_step(fresh(), batch, opts.steps)
    line("plain forward+backward, full model", full)
    plain = plain_step(get_peft_model(fresh(), lora), batch, opts.steps)
    line("plain forward+backward, LoRA model", plain)
    ours = trainer_step(fresh(), tokenizer, texts, opts.steps, lora, {})
    line("SFTTrainer step, stancelab settings", ours)
    again = plain_step(get_peft_model(fresh(), lora), batch, opts.steps)
    line("plain forward+backward, LoRA, again", again)
    best = (min(plain[0], again[0]), min(plain[1], again[1]))
    print(
        f"ratio trainer / plain LoRA step:      wall {ours[0] / best[0]:5.2f}   "
        f"CPU {ours[1] / best[1]:5.2f}   (target <= 2)"
    )
    print(
        f"ratio trainer / plain full-model step: wall {ours[0] / full[0]:5.2f}   "
        f"CPU {ours[1] / full[1]:5.2f}"
    )
    if opts.trl_defaults:
        slow = trainer_step(
            fresh(),
            tokenizer,
            texts[: opts.batch * 2],
            1,
            lora,
            {"bf16": True, "gradient_checkpointing": True},
        )
        line("SFTTrainer step, TRL default bf16+ckpt", slow)


def line(label: str, value: tuple[float, float]) -> None:
    """Print one timing as wall and CPU seconds."""
    print(f"{label:<40} wall {value[0]:7.2f} s   CPU {value[1]:7.2f} s", flush=True)


if __name__ == "__main__":
    main()
