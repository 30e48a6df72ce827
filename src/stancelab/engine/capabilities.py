"""What an engine can do, and the survey modes a run should use on it.

A server without token log-probabilities (some hosted APIs, some proxies) cannot score
the survey's candidates, so the survey falls back to ``generate`` mode; the note this
module returns is what a run records about that substitution.
"""

from __future__ import annotations

from collections.abc import Sequence

from stancelab.engine.base import LanguageModel
from stancelab.survey import SurveyMode


def supports_logprobs(lm: LanguageModel) -> bool:
    """True if the engine can return next-token log-probabilities."""
    flag = getattr(lm, "supports_logprobs", None)
    if isinstance(flag, bool):
        return flag
    # Engines that keep the base class's next_tokens have no log-probabilities.
    return type(lm).next_tokens is not LanguageModel.next_tokens


def survey_modes_for(
    lm: LanguageModel, modes: Sequence[SurveyMode]
) -> tuple[tuple[SurveyMode, ...], str | None]:
    """The modes to run on this engine and a note for the run record if they changed."""
    wanted = tuple(modes)
    if SurveyMode.DISTRIBUTION not in wanted or supports_logprobs(lm):
        return wanted, None
    used = tuple(dict.fromkeys(
        SurveyMode.GENERATE if m == SurveyMode.DISTRIBUTION else m for m in wanted
    ))
    note = (f"{lm.name} returns no token log-probabilities: survey mode 'distribution' "
            "was replaced by 'generate'")
    return used, note
