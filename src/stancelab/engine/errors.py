"""Exception hierarchy: every error a user can fix is a StancelabError with a one-line message."""

from __future__ import annotations


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
