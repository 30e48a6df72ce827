"""GGUF LoRA export, loaded by the real llama.cpp engine, agrees with transformers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from stancelab.tuning._errors import AdapterError

pytestmark = pytest.mark.engine
pytest.importorskip("peft")

PROMPTS = [
    "The capital of France is",
    "Gun control in America",
    "On a scale of 0 to 10, how much do you think that racism is a big problem? Answer:",
]


def _hf_top(model: Any, tokenizer: Any, prompt: str, k: int = 5) -> dict[str, float]:
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, -1], dim=-1)
    values, indices = logprobs.topk(k)
    return {tokenizer.decode([int(i)]): float(v) for i, v in zip(indices, values, strict=True)}


def test_exported_adapter_matches_merged_transformers_model(
    tmp_path: Path, smol_base: tuple[Path, str], random_adapter: tuple[Path, Any]
) -> None:
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stancelab.engine._llamacpp import load_engine
    from stancelab.engine._models import resolve_model
    from stancelab.tuning._export import export_lora_gguf

    checkpoint, _ = smol_base
    adapter_dir, merged = random_adapter
    _, base_gguf = resolve_model("smollm2-135m")
    out = export_lora_gguf(adapter_dir, base_gguf, tmp_path / "tuned.gguf")
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 16.0
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.29.ffn_down.weight.lora_b" in names
    assert len(names) == 30 * 7 * 2

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    base = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    base.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval untyped
    with (
        load_engine("smollm2-135m", n_parallel=1, ctx_per_slot=512) as plain,
        load_engine("smollm2-135m", adapters=[(out, 1.0)], n_parallel=1, ctx_per_slot=512) as tuned,
    ):
        assert tuned.describe()["lora_adapters"][0]["path"] == str(out)
        cpp_base = [dict(t.tokens) for t in plain.next_tokens(PROMPTS, 5)]
        cpp_tuned = [dict(t.tokens) for t in tuned.next_tokens(PROMPTS, 5)]
    errors, shifts = [], []
    for k, prompt in enumerate(PROMPTS):
        hf_tuned = _hf_top(merged, tokenizer, prompt)
        hf_base = _hf_top(base, tokenizer, prompt)
        # The most likely token agrees, and shared top tokens have close logprobs.
        assert max(hf_tuned, key=hf_tuned.__getitem__) == max(
            cpp_tuned[k], key=cpp_tuned[k].__getitem__
        )
        shared = set(hf_tuned) & set(cpp_tuned[k])
        assert len(shared) >= 3
        errors += [abs(hf_tuned[t] - cpp_tuned[k][t]) for t in shared]
        shifts += [abs(hf_tuned[t] - hf_base[t]) for t in set(hf_tuned) & set(hf_base)]
        shifts += [math.inf for t in set(hf_tuned) - set(hf_base)]
        assert cpp_base[k] != cpp_tuned[k]
    # llama.cpp quantises activations for the Q4_1 matmuls: allow a small disagreement,
    # far below the change the adapter makes.
    print(
        f"adapter agreement: max |dlogprob| {max(errors):.3f}, median "
        f"{sorted(errors)[len(errors) // 2]:.3f}; median adapter shift "
        f"{sorted(shifts)[len(shifts) // 2]:.3f}"
    )
    assert max(errors) < 0.35, errors
    assert sorted(shifts)[len(shifts) // 2] > 2 * sorted(errors)[len(errors) // 2]


def test_adapter_for_another_base_is_refused(
    tmp_path: Path, random_adapter: tuple[Path, Any]
) -> None:
    from stancelab.engine._factory import load_model
    from stancelab.engine._models import resolve_model
    from stancelab.tuning._export import export_lora_gguf

    adapter_dir, _ = random_adapter
    _, base_gguf = resolve_model("smollm2-135m")
    # Recorded for another base model (stancelab metadata).
    other = tmp_path / "other"
    shutil.copytree(adapter_dir, other)
    meta = json.loads((other / "stancelab_adapter.json").read_text())
    meta["base_sha256"] = "f" * 64
    (other / "stancelab_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match="trained for base model"):
        export_lora_gguf(other, base_gguf, tmp_path / "x.gguf")
    # Shapes that do not fit (as if trained on a wider model), no stancelab metadata.
    (other / "stancelab_adapter.json").unlink()
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(other / "adapter_model.safetensors"))
    key = next(k for k in tensors if "q_proj.lora_A" in k)
    tensors[key] = tensors[key][:, :100].copy()
    save_file(tensors, str(other / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match="does not fit base model"):
        export_lora_gguf(other, base_gguf, tmp_path / "y.gguf", base_sha256="0" * 64)
    # A GGUF adapter made for another base file is refused before the engine starts.
    plain = tmp_path / "plain"
    shutil.copytree(adapter_dir, plain)
    (plain / "stancelab_adapter.json").unlink()
    good = export_lora_gguf(plain, base_gguf, tmp_path / "good.gguf", base_sha256="e" * 64)
    with pytest.raises(AdapterError, match="made for another base model"):
        load_model({"name": "smollm2-135m", "adapters": [good]})
    with pytest.raises(AdapterError, match=r"is not a GGUF file|not a GGUF adapter"):
        (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
        load_model({"name": "smollm2-135m", "adapters": [tmp_path / "junk.gguf"]})
