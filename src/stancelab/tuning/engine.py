"""Serve tuned models on the same in-process llama.cpp engine: base GGUF + GGUF LoRA files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.engine.llamacpp import LlamaCppEngine, load_engine

AdapterSpec = str | Path | tuple[str | Path, float] | list[Any] | dict[str, Any]
"""A GGUF adapter path, (path, scale), [path, scale] or {path: ..., scale: ...}."""


def _adapter_spec(item: AdapterSpec) -> tuple[Path, float]:
    if isinstance(item, dict):
        return Path(str(item["path"])).expanduser(), float(item.get("scale", 1.0))
    if isinstance(item, tuple | list):
        return Path(str(item[0])).expanduser(), float(item[1]) if len(item) > 1 else 1.0
    return Path(item).expanduser(), 1.0


def open_tuned(
    base: str, adapters: Sequence[AdapterSpec], name: str | None = None, **kwargs: Any
) -> LlamaCppEngine:
    """Open base model (name or GGUF) with GGUF LoRA adapters as a LanguageModel."""
    engine = load_engine(base, adapters=[_adapter_spec(item) for item in adapters], **kwargs)
    if name:
        engine.name = name
    return engine
