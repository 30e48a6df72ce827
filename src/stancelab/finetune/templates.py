"""Read the fine-tuning prompt templates (``prompts/NAME.VERSION.txt``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from stancelab.errors import ConfigError

DEFAULT_VERSION = "v1"


def read_template(name: str, version: str = DEFAULT_VERSION, folder: Path | None = None) -> str:
    """Text of one template, built-in or from a user folder."""
    file_name = f"{name}.{version}.txt"
    if folder is not None:
        path = folder / file_name
        if not path.is_file():
            raise ConfigError(f"prompt folder {folder} lacks {file_name}")
        return path.read_text(encoding="utf-8")
    resource = resources.files("stancelab.finetune.prompts").joinpath(file_name)
    if not resource.is_file():
        raise ConfigError(f"no built-in fine-tuning prompt {file_name}")
    return resource.read_text(encoding="utf-8")
