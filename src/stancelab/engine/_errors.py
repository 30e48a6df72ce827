"""Exception hierarchy: every error a user can fix is a StancelabError with a one-line message."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class StancelabError(Exception):
    """Base class; the CLI prints its message on one line and exits non-zero."""


class ConfigError(StancelabError):
    """A configuration value or file is invalid."""


class ModelError(StancelabError):
    """A model cannot be found, assembled or verified."""


class EngineError(StancelabError):
    """The language-model engine failed to answer a request."""


class ChatOnlyError(EngineError):
    """The model has no text-completion route: prompts must be chat messages."""


class StoreError(StancelabError):
    """The results store cannot be opened or written."""


class AdapterError(StancelabError):
    """A LoRA adapter does not fit the base model, or cannot be exported or loaded."""


def format_validation_error(
    exc: ValidationError, where: str | None = None, *, prefix: str = ""
) -> str:
    """The first problem of a pydantic validation as one line: ``WHERE: FIELD: PROBLEM``.

    The one formatter of every config stancelab checks (files, mappings, backend
    options, command-line values), so each problem reads the same way.

    Args:
        exc: The validation error.
        where: What was validated (a file path, ``experiment``, ``model 'x'``); None
            leaves it out.
        prefix: Put before the field's dotted path (``--`` for a command-line option,
            ``llamacpp option `` for a backend's options).

    Returns:
        One line; ``(and N more)`` counts the problems not shown.
    """
    first = exc.errors()[0]
    field = prefix + (".".join(str(p) for p in first["loc"]) or "(top level)")
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    line = f"{field}: {first['msg']}{more}"
    return f"{where}: {line}" if where else line
