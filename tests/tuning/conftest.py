"""Fixtures of the fine-tuning tests: a SmolLM2 base checkpoint and a random LoRA adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


@pytest.fixture(scope="session")
def smol_base() -> tuple[Path, str]:
    """Plain transformers checkpoint of the embedded SmolLM2-135M (made once, cached)."""
    pytest.importorskip("transformers")
    from stancelab.tuning.hf import base_checkpoint

    return base_checkpoint("smollm2-135m")


@pytest.fixture(scope="session")
def random_adapter(
    smol_base: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Any]:
    """A PEFT LoRA (r=8, all seven modules) with random B, and the merged HF model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    checkpoint, sha = smol_base
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=SEVEN, lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.08)
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(str(folder))
    (folder / "stancelab_adapter.json").write_text(
        json.dumps({"kind": "nwp", "base_model": "smollm2-135m", "base_sha256": sha, "r": 8})
    )
    merged = peft_model.merge_and_unload().eval()
    return folder, merged
