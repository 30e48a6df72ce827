"""What an engine can do (token log-probabilities or not), asked without a request."""

from __future__ import annotations

from stancelab.engine.base import LanguageModel


def supports_logprobs(lm: LanguageModel) -> bool:
    """True if the engine can return next-token log-probabilities."""
    flag = getattr(lm, "supports_logprobs", None)
    if isinstance(flag, bool):
        return flag
    # Engines that keep the base class's next_tokens have no log-probabilities.
    return type(lm).next_tokens is not LanguageModel.next_tokens
