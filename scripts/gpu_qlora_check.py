"""Check the 4-bit QLoRA path (bitsandbytes NF4) on a CUDA machine: NWP then DPO.

CI machines have no GPU, so this is run by hand where one is present:

    python scripts/gpu_qlora_check.py CHECKPOINT_DIR [--random]

CHECKPOINT_DIR is a transformers checkpoint (config + tokenizer, with or without weights).
``--random`` builds the model from its config with random weights, enough to prove the
training path (4-bit load, k-bit preparation, LoRA, SFT and DPO steps, adapter saved).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--random", action="store_true")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import torch

    from stancelab.tuning._config import DpoSettings, LoraSettings, NwpSettings
    from stancelab.tuning._train import train_dpo, train_nwp

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check is for GPU machines")
    work = Path(tempfile.mkdtemp(prefix="qlora-check-"))
    checkpoint = args.checkpoint
    if args.random:
        from transformers import AutoConfig, AutoModelForCausalLM

        checkpoint = work / "base"
        shutil.copytree(
            args.checkpoint, checkpoint, ignore=shutil.ignore_patterns("*.safetensors", "*.bin")
        )
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(checkpoint)))
        model.save_pretrained(str(checkpoint))
    texts = [
        f"Answer {i}: secure the border and cut taxes for working families." for i in range(32)
    ]
    nwp = NwpSettings(
        lora=LoraSettings(r=16, dropout=0.05),
        batch_size=8,
        max_steps=args.steps,
        max_length=64,
        quantization="4bit",
        save_steps=2,
        logging_steps=1,
    )
    start = time.perf_counter()
    first = train_nwp(str(checkpoint), texts, work / "nwp", nwp, seed=0)
    meta = json.loads((first.adapter_dir / "stancelab_adapter.json").read_text())
    print(
        f"NWP (4-bit QLoRA): {first.steps} steps, loss {first.final_loss}, "
        f"{first.seconds:.1f} s, four_bit={meta['four_bit']}, "
        f"GPU memory peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    )
    assert meta["four_bit"] is True and first.steps == args.steps
    pairs = [
        {
            "prompt": f"Question {i}?\n",
            "chosen": texts[i],
            "rejected": "Open the border and raise taxes.",
        }
        for i in range(16)
    ]
    dpo = DpoSettings(
        lora=LoraSettings(r=8, dropout=0.0),
        batch_size=8,
        max_steps=2,
        max_length=64,
        quantization="4bit",
        logging_steps=1,
    )
    second = train_dpo(str(checkpoint), pairs, first.adapter_dir, work / "dpo", dpo)
    print(
        f"DPO on top: {second.steps} steps, loss {second.final_loss}, "
        f"{second.seconds:.1f} s; total {time.perf_counter() - start:.1f} s"
    )
    assert (second.adapter_dir / "adapter_config.json").is_file()
    print("QLoRA check passed")


if __name__ == "__main__":
    main()
