"""PEFT LoRA adapter -> GGUF LoRA adapter for llama.cpp (written with the ``gguf`` package).

Decision (measured, see README): tuned models are served as the *base GGUF plus a GGUF
LoRA adapter*, not as merged full GGUFs. The adapter is a few MB per seed and rank, the
quantised base file is shared and its prefix cache logic is unchanged, and no
dequantise-merge-requantise pass is needed. ``merge_to_gguf`` exists for comparison and
for users who want a single file.

Tensor layout: PEFT stores ``lora_A`` as (r, in) and ``lora_B`` as (out, r); llama.cpp
wants ``blk.N.<name>.weight.lora_a`` with ggml shape [in, r] and ``lora_b`` with [r, out],
which are the same numpy arrays. For the ``llama`` architecture the GGUF q/k weights are
stored with rows permuted for rotary embeddings, so lora_B rows of q and k are permuted
the same way (W = B @ A, rows of W are rows of B).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stancelab.engine import AdapterError
from stancelab.engine._adapters import BASE_SHA_KEY, gguf_info
from stancelab.engine._models import model_fingerprint
from stancelab.tuning._train import adapter_meta, check_adapter_base

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_KEY = re.compile(r"layers\.(\d+)\.(self_attn\.\w+_proj|mlp\.\w+_proj)\.lora_([AB])\.weight$")
PERMUTED_ARCHS = ("llama",)


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """The rotary row order llama GGUF files use for q/k (HF halves -> interleaved)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from safetensors.numpy import load_file  # noqa: PLC0415 - lazy: safetensors is heavy to import

    config_path = adapter_dir / "adapter_config.json"
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise AdapterError(
            f"{adapter_dir} is not a PEFT adapter folder "
            "(adapter_config.json and adapter_model.safetensors expected)"
        )
    config: dict[str, Any] = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise AdapterError(
            f"{adapter_dir}: only LoRA adapters can be exported, got {config.get('peft_type')}"
        )
    if config.get("use_rslora") or config.get("use_dora"):
        raise AdapterError(f"{adapter_dir}: rsLoRA/DoRA adapters cannot be exported")
    return config, load_file(str(weights_path))


def lora_pairs(
    adapter_dir: Path, base_gguf: Path
) -> tuple[float, int, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(alpha, rank, {gguf tensor name: (lora_a, lora_b)}) checked against the base GGUF."""
    config, tensors = _read_adapter(adapter_dir)
    info = gguf_info(base_gguf)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise AdapterError(
                f"{adapter_dir}: tensor {key} has no GGUF equivalent "
                "(only the seven projection modules can be exported)"
            )
        layer, module, which = match.groups()
        name = f"blk.{layer}.{HF_TO_GGUF[module]}.weight"
        pairs.setdefault(name, {})[which] = value.astype(np.float32)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rank = int(config["r"])
    for name, ab in sorted(pairs.items()):
        a, b = ab["A"], ab["B"]
        shape = info["shapes"].get(name)
        # GGUF shapes are ggml order [in, out]; A is (r, in), B is (out, r).
        if shape is None or shape[0] != a.shape[1] or shape[1] != b.shape[0]:
            raise AdapterError(
                f"adapter {adapter_dir.name} does not fit base model {base_gguf.name}: "
                f"{name} is {shape} in the base, the adapter needs "
                f"[{a.shape[1]}, {b.shape[0]}]; it was trained for another base model"
            )
        if info["arch"] in PERMUTED_ARCHS and ".attn_q." in name:
            b = _permute(b, info["n_head"], info["n_head"])
        elif info["arch"] in PERMUTED_ARCHS and ".attn_k." in name:
            b = _permute(b, info["n_head"], info["n_head_kv"])
        out[name] = (np.ascontiguousarray(a), np.ascontiguousarray(b))
    return float(config.get("lora_alpha", rank)), rank, out


def export_lora_gguf(
    adapter_dir: Path, base_gguf: Path, out_path: Path, base_sha256: str | None = None
) -> Path:
    """Write a PEFT LoRA adapter as a GGUF LoRA that llama.cpp applies to ``base_gguf``."""
    import gguf  # noqa: PLC0415 - lazy: gguf is heavy to import

    sha = base_sha256 or model_fingerprint(base_gguf)
    if (adapter_dir / "stancelab_adapter.json").is_file():
        check_adapter_base(adapter_dir, sha)
        meta = adapter_meta(adapter_dir)
    else:
        meta = {}
    alpha, rank, pairs = lora_pairs(adapter_dir, base_gguf)
    arch = gguf_info(base_gguf)["arch"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(f"stancelab {meta.get('kind', 'lora')} r={rank}")
    writer.add_string(BASE_SHA_KEY, sha)
    for name, (a, b) in pairs.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_path)
    return out_path


def merge_to_gguf(base_gguf: Path, adapter_dirs: Sequence[Path], out_path: Path) -> Path:
    """Merged full GGUF (F16 for the merged matrices): the alternative to an adapter file."""
    import gguf  # noqa: PLC0415 - lazy: gguf is heavy to import

    reader = gguf.GGUFReader(str(base_gguf))
    deltas: dict[str, np.ndarray] = {}
    for adapter in adapter_dirs:
        alpha, rank, pairs = lora_pairs(adapter, base_gguf)
        for name, (a, b) in pairs.items():
            delta = (alpha / rank) * (b @ a)
            deltas[name] = deltas.get(name, 0) + delta
    arch = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(out_path), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for tensor in reader.tensors:
        if tensor.name in deltas:
            weights = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            merged = (weights + deltas[tensor.name]).astype(np.float16)
            writer.add_tensor(tensor.name, merged)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
