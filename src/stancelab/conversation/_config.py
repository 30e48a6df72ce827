"""The one base of every config stancelab reads: experiments, fine-tuning runs, studies.

Rules every config follows:

- **Unknown keys are refused**: config models derive from ``StrictModel``.
- **A problem is one line** naming where it is: ``FILE: FIELD: PROBLEM (and N more)``
  (``format_validation_error``); a file that is missing, unreadable, not YAML or not a
  mapping is one line naming the file (``load_yaml_mapping``).
- **Relative paths inside a config file resolve against the folder of that file**, so a
  project folder can be moved or run from anywhere; in a config built in Python (a
  mapping or keyword arguments) they resolve against the working folder. Path fields
  typed ``RelativePath`` follow the rule when the config is validated by ``load_config``
  (or ``validate_config`` with the file's folder); ``resolve_path`` applies it to any
  other value. Model names that may be GGUF paths are not config paths: the engine
  resolves them (embedded name, else a path from the working folder).

The formatter and the path rule live in the engine (whose model entries need them, and
which imports nothing above it); this module is where everything above the engine
takes them from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from stancelab.engine._errors import ConfigError, format_validation_error
from stancelab.engine._registry import RelativePath, resolve_path

__all__ = [
    "RelativePath",
    "StrictModel",
    "format_validation_error",
    "load_config",
    "load_yaml_mapping",
    "read_yaml",
    "resolve_path",
    "validate_config",
]

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """A config section: a key it does not know is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def read_yaml(path: Path, what: str) -> Any:
    """The YAML document of a file (None when it is empty).

    Args:
        path: The file.
        what: What the file is, for the error line (``experiment``, ``persona file``).

    Raises:
        ConfigError: One line naming the file: it does not exist, cannot be read, or is
            not valid YAML (with the line and column of the problem).
    """
    if not path.exists():
        raise ConfigError(f"cannot read {what} {path}: it does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {what} {path}: it is not UTF-8 text") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{what} {path} is not valid YAML: {problem}{at}") from exc


def load_yaml_mapping(
    source: Path | str | Mapping[str, Any], what: str
) -> tuple[dict[str, Any], Path | None]:
    """The settings of a config file or mapping, and the folder its relative paths are in.

    Args:
        source: A YAML file (path), or settings already parsed (a mapping).
        what: What the config is, for error lines (``experiment``, ``study config``).

    Returns:
        The settings (an empty file is an empty mapping) and the file's folder, or None
        for a mapping (its relative paths are relative to the working folder).

    Raises:
        ConfigError: One line: the file cannot be read, is not YAML, or does not hold a
            mapping of settings.
    """
    if isinstance(source, Mapping):
        return dict(source), None
    path = Path(source)
    data = read_yaml(path, what)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of settings")
    return data, path.resolve().parent


def validate_config(
    model: type[M], data: Mapping[str, Any], where: str, base_dir: Path | None = None
) -> M:
    """Validate settings into a config model; relative paths resolve against ``base_dir``.

    Raises:
        ConfigError: The first problem as one line, ``WHERE: FIELD: PROBLEM``.
    """
    try:
        return model.model_validate(data, context={"base": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def load_config(model: type[M], source: Path | str | Mapping[str, Any], what: str) -> M:
    """Read and validate a config file (or mapping) by every rule of this module.

    Args:
        model: The config model.
        source: A YAML file, or settings already parsed.
        what: What the config is; errors in a mapping start with it, errors in a file
            with the file's path.
    """
    data, base_dir = load_yaml_mapping(source, what)
    where = what if base_dir is None else str(source)
    return validate_config(model, data, where, base_dir)
