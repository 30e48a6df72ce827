"""GGUF files the engine loads: their metadata, and the check that a LoRA adapter fits its base.

The adapter check lives with the engine because every model open runs it; the ``gguf``
package that reads the files is imported lazily (it is part of the ``finetune`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stancelab.engine._errors import AdapterError

BASE_SHA_KEY = "stancelab.base_sha256"
"""GGUF metadata key in which stancelab records the sha256 of an adapter's base model."""


def gguf_info(path: Path) -> dict[str, Any]:
    """Architecture, head counts, layer count and tensor shapes of a GGUF model."""
    import gguf  # noqa: PLC0415 - lazy: gguf is heavy to import

    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    arch = str(field("general.architecture"))
    return {
        "arch": arch,
        "type": field("general.type"),
        "n_head": field(f"{arch}.attention.head_count"),
        "n_head_kv": field(f"{arch}.attention.head_count_kv"),
        "n_layer": field(f"{arch}.block_count"),
        "alpha": field("adapter.lora.alpha"),
        "base_sha256": field(BASE_SHA_KEY),
        "shapes": {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors},
    }


def check_adapter_gguf(adapter_gguf: Path, base_gguf: Path, base_sha256: str) -> None:
    """Refuse a GGUF adapter that is not a LoRA or was made for another base model."""
    if not adapter_gguf.is_file():
        raise AdapterError(f"adapter file {adapter_gguf} does not exist")
    try:
        info = gguf_info(adapter_gguf)
    except Exception as exc:  # the reader raises ValueError/struct errors on junk
        raise AdapterError(f"{adapter_gguf} is not a GGUF file: {exc}") from exc
    if info["type"] != "adapter":
        raise AdapterError(f"{adapter_gguf} is not a GGUF adapter (general.type={info['type']!r})")
    recorded = info["base_sha256"]
    if recorded is not None and recorded != base_sha256:
        raise AdapterError(
            f"adapter {adapter_gguf.name} was made for another base model "
            f"(sha256 {str(recorded)[:12]}…, this base {base_sha256[:12]}…)"
        )
    base_shapes = gguf_info(base_gguf)["shapes"]
    for name, shape in info["shapes"].items():
        target = base_shapes.get(name.removesuffix(".lora_a").removesuffix(".lora_b"))
        if (
            target is None
            or (name.endswith(".lora_a") and shape[0] != target[0])
            or (name.endswith(".lora_b") and shape[1] != target[1])
        ):
            raise AdapterError(
                f"adapter {adapter_gguf.name} does not fit base model "
                f"{base_gguf.name} (tensor {name})"
            )
