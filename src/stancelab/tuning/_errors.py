"""Errors of the fine-tuning package: one-line messages a user can act on."""

from __future__ import annotations

from stancelab.engine import AdapterError, ConfigError, StancelabError


class FinetuneError(StancelabError):
    """Base class for fine-tuning failures."""


class DatasetError(FinetuneError):
    """A self-generated dataset is missing, malformed or has no usable answers."""


class HardwareError(FinetuneError):
    """The requested training mode needs hardware this machine lacks (e.g. 4-bit without CUDA)."""


class BenchmarkError(FinetuneError):
    """A benchmark file is missing or not in the original dataset's format."""


__all__ = [
    "AdapterError",
    "BenchmarkError",
    "ConfigError",
    "DatasetError",
    "FinetuneError",
    "HardwareError",
]
