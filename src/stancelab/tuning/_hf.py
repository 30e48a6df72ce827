"""Bridge from stancelab's GGUF models to trainable transformers checkpoints (offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from stancelab.engine._models import cache_dir, model_fingerprint, resolve_model
from stancelab.tuning._errors import AdapterError, FinetuneError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def set_offline(allow_network: bool = False) -> None:
    """Forbid model-hub access (the default) unless the caller explicitly allows it."""
    if allow_network:
        return
    for var in OFFLINE_VARS:
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def hf_cache_dir() -> Path:
    """Folder for plain transformers checkpoints made from GGUF files."""

    return cache_dir().parent / "hf"


def base_checkpoint(model: str, allow_network: bool = False) -> tuple[Path, str]:
    """A plain (unquantised-mark) transformers checkpoint for a model name or GGUF path.

    GGUF models are loaded once through ``gguf_file=``, stripped of the GGUF quantisation
    mark that makes the Trainer refuse them, saved under the cache and reused afterwards.
    A folder holding a transformers checkpoint is returned as it is. Returns
    (checkpoint folder, fingerprint of the source).
    """
    set_offline(allow_network)
    folder = Path(model).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        return folder, _folder_fingerprint(folder)

    _, path = resolve_model(model)
    sha = model_fingerprint(path)
    target = hf_cache_dir() / sha[:16]
    if (target / "stancelab_base.json").is_file():
        return target, sha
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        hf_model, tokenizer = load_gguf(path)
        hf_model.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        (partial / "stancelab_base.json").write_text(
            json.dumps({"gguf": str(path), "sha256": sha}, indent=2)
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target, sha


def _folder_fingerprint(folder: Path) -> str:
    marker = folder / "stancelab_base.json"
    if marker.is_file():
        return str(json.loads(marker.read_text()).get("sha256", ""))
    return f"folder:{folder.resolve()}"


def load_gguf(path: Path) -> tuple[Any, Any]:
    """Load a GGUF file into transformers (dequantised to fp32) and clear its GGUF mark."""
    import torch  # noqa: PLC0415 - lazy: torch is heavy to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - lazy: transformers is heavy to import

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many types for unsupported files
        raise FinetuneError(f"transformers cannot load {path.name}: {exc}") from exc
    strip_quantization_mark(model)
    return model, tokenizer


def strip_quantization_mark(model: Any) -> None:
    """Remove the GGUF quantiser that transformers attaches (weights are already fp32)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        del model.quantization_method
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def cuda_available() -> bool:
    """True when torch sees a CUDA device."""
    import torch  # noqa: PLC0415 - lazy: torch is heavy to import

    return bool(torch.cuda.is_available())


def check_rank(model: Any, rank: int, target_modules: list[str]) -> None:
    """Refuse a LoRA rank larger than the width of any targeted layer."""
    import torch  # noqa: PLC0415 - lazy: torch is heavy to import

    found = False
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name.rsplit(".", 1)[-1] not in target_modules:
            continue
        found = True
        width = min(module.in_features, module.out_features)
        if rank > width:
            raise AdapterError(
                f"LoRA rank {rank} is larger than the width {width} of layer {name} "
                f"({module.in_features}->{module.out_features}); choose r <= {width}"
            )
    if not found:
        raise AdapterError(f"none of the target modules {target_modules} exist in this model")
