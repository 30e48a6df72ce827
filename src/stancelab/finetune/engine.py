"""Serve tuned models on the same in-process llama.cpp engine: base GGUF + GGUF LoRA files."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.engine.llamacpp import LlamaCppEngine
from stancelab.errors import EngineError

_PARAMS_LOCK = threading.Lock()


class TunedLlamaCppEngine(LlamaCppEngine):
    """LlamaCppEngine whose server applies GGUF LoRA adapters to every request.

    LlamaCppEngine builds its ``xllamacpp.CommonParams`` inside ``__init__``; this class
    reuses that constructor unchanged and only adds ``params.lora_adapters``, by handing it
    a CommonParams factory for the duration of the call (under a lock). A
    ``lora_adapters`` argument on LlamaCppEngine itself would make this unnecessary.
    """

    def __init__(self, model_path: Path, adapters: Sequence[tuple[Path, float]],
                 **kwargs: Any) -> None:
        import xllamacpp

        self.adapters = [(Path(p), float(s)) for p, s in adapters]
        infos = [(str(p), s) for p, s in self.adapters]
        with _PARAMS_LOCK:
            original = xllamacpp.CommonParams

            def with_adapters() -> Any:
                params = original()
                params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(path, scale)
                                        for path, scale in infos]
                return params

            xllamacpp.CommonParams = with_adapters
            try:
                super().__init__(model_path, **kwargs)
            except EngineError as exc:
                raise EngineError(f"{exc} (with LoRA adapters {[p for p, _ in infos]})"
                                  ) from exc
            finally:
                xllamacpp.CommonParams = original

    def describe(self) -> dict[str, Any]:
        """Base model description plus the adapter files and scales."""
        from stancelab.models import sha256_file

        info = super().describe()
        info["lora_adapters"] = [
            {"path": str(p), "scale": s, "sha256": sha256_file(p)} for p, s in self.adapters
        ]
        return info


AdapterSpec = str | Path | tuple[str | Path, float] | list[Any] | dict[str, Any]
"""A GGUF adapter path, (path, scale), [path, scale] or {path: ..., scale: ...}."""


def _adapter_spec(item: AdapterSpec) -> tuple[Path, float]:
    if isinstance(item, dict):
        return Path(str(item["path"])).expanduser(), float(item.get("scale", 1.0))
    if isinstance(item, tuple | list):
        return Path(str(item[0])).expanduser(), float(item[1]) if len(item) > 1 else 1.0
    return Path(item).expanduser(), 1.0


def open_tuned(base: str, adapters: Sequence[AdapterSpec], name: str | None = None,
               **kwargs: Any) -> TunedLlamaCppEngine:
    """Open base model (name or GGUF) with GGUF LoRA adapters as a LanguageModel."""
    from stancelab.finetune.export import check_adapter_gguf
    from stancelab.models import model_fingerprint, resolve_model

    base_name, path = resolve_model(base)
    sha = model_fingerprint(path)
    pairs = [_adapter_spec(item) for item in adapters]
    for adapter_path, _ in pairs:
        check_adapter_gguf(adapter_path, path, sha)
    label = name or f"{base_name}+" + "+".join(p.stem for p, _ in pairs)
    return TunedLlamaCppEngine(path, pairs, name=label, fingerprint=sha, **kwargs)
