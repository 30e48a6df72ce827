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
    from stancelab.tuning._hf import base_checkpoint

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


def write_fixture(data_dir: Path) -> Path:
    """Write a handful of made-up MMLU and HellaSwag items in the original formats."""
    mmlu = data_dir / "mmlu"
    hella = data_dir / "hellaswag"
    mmlu.mkdir(parents=True, exist_ok=True)
    hella.mkdir(parents=True, exist_ok=True)
    items = [
        ("What is 2 + 2?", "elementary_mathematics", ["3", "4", "5", "22"], 1),
        (
            "Which planet is closest to the Sun?",
            "astronomy",
            ["Venus", "Earth", "Mercury", "Mars"],
            2,
        ),
        (
            "What is the chemical symbol for water?",
            "high_school_chemistry",
            ["H2O", "CO2", "NaCl", "O2"],
            0,
        ),
        (
            "How many days are in a leap year?",
            "elementary_mathematics",
            ["365", "364", "360", "366"],
            3,
        ),
        (
            "Which branch of the U.S. government makes federal laws?",
            "us_foreign_policy",
            ["The courts", "Congress", "The president", "The states"],
            1,
        ),
        (
            "What is the capital of France?",
            "high_school_geography",
            ["Paris", "Rome", "Berlin", "Madrid"],
            0,
        ),
    ]
    rows = [{"question": q, "subject": s, "choices": c, "answer": a} for q, s, c, a in items]
    (mmlu / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
    (mmlu / "dev.jsonl").write_text(json.dumps(rows[0]) + "\n")
    stories = [
        (
            "Baking cookies",
            "A woman puts a tray of dough in the oven.",
            "She",
            [
                "waits for the cookies to bake and takes them out.",
                "swims across the lake.",
                "paints the ceiling of the garage blue.",
                "reads the newspaper to her dog.",
            ],
            0,
        ),
        (
            "Washing a car",
            "A man sprays water over a dirty red car.",
            "He",
            [
                "eats a sandwich on the roof.",
                "scrubs the doors with a soapy sponge.",
                "flies a kite in the rain.",
                "plays the piano loudly.",
            ],
            1,
        ),
        (
            "Brushing teeth",
            "A child squeezes toothpaste onto a toothbrush.",
            "The child",
            [
                "throws the brush at the window.",
                "sings to a cat outside.",
                "brushes their teeth in front of the mirror.",
                "drives a truck to town.",
            ],
            2,
        ),
        (
            "Playing guitar",
            "A man sits on a stool holding a guitar.",
            "He",
            [
                "plants a tree in the kitchen.",
                "bakes bread in a boat.",
                "jumps over a fence.",
                "strums the strings and starts to sing.",
            ],
            3,
        ),
    ]
    hrows = [
        {
            "ind": i,
            "activity_label": act,
            "ctx_a": a,
            "ctx_b": b,
            "ctx": f"{a} {b}",
            "endings": e,
            "source_id": f"fixture~{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(lab),
        }
        for i, (act, a, b, e, lab) in enumerate(stories)
    ]
    (hella / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hrows))
    return data_dir
