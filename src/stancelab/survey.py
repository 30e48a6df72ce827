"""The hidden attitude survey: asked on a copy of an agent's context, never kept in history."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from stancelab.engine.base import ChoiceRequest, GenerationRequest, LanguageModel, Prompt
from stancelab.errors import ConfigError

SCALE = tuple(str(i) for i in range(11))
_RATING = re.compile(r"(?<![\d.])(10(?:\.0+)?|[0-9](?:\.\d+)?)(?![\d.]*\d)")


class SurveyMode(StrEnum):
    """How the 0-10 answer is read from the model."""

    DISTRIBUTION = "distribution"
    """Probability of every answer 0..10 from whole-candidate log-probabilities."""
    GENERATE = "generate"
    """Greedy generation (temperature 0) and a parsed number, as the paper did."""


def parse_modes(text: str | Sequence[str]) -> tuple[SurveyMode, ...]:
    """Parse 'distribution', 'generate' or a comma list of both."""
    items = text.split(",") if isinstance(text, str) else list(text)
    modes = []
    for item in items:
        item = item.strip()
        try:
            modes.append(SurveyMode(item))
        except ValueError:
            raise ConfigError(
                f"unknown survey mode {item!r}; use distribution, generate or both"
            ) from None
    if not modes:
        raise ConfigError("at least one survey mode is needed")
    return tuple(dict.fromkeys(modes))


@dataclass
class SurveyAnswer:
    """One agent's answer at one survey iteration in one mode."""

    iteration: int
    agent_index: int
    mode: SurveyMode
    ok: bool
    score: float | None
    """Expected value (distribution) or parsed number (generate); None on failure."""
    most_likely: int | None = None
    entropy_bits: float | None = None
    coverage: float | None = None
    distribution: list[float] | None = None
    raw_text: str | None = None
    prompt_tokens: int = 0
    latency_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def parse_rating(text: str) -> float | None:
    """The first number 0..10 in a reply ('8', '8/10', 'About 7.', '7.5'), else None."""
    match = _RATING.search(text)
    return float(match.group(1)) if match else None


@dataclass(frozen=True)
class SurveyItem:
    """One survey to ask: which iteration and agent, and the prompt to ask it on."""

    iteration: int
    agent_index: int
    prompt: Prompt


def ask(
    lm: LanguageModel, items: Sequence[SurveyItem], modes: Sequence[SurveyMode]
) -> list[SurveyAnswer]:
    """Ask every item in every mode, batched; returns answers in item-then-mode order."""
    by_mode: dict[SurveyMode, list[SurveyAnswer]] = {}
    if SurveyMode.DISTRIBUTION in modes:
        scores = lm.score_choices([ChoiceRequest(i.prompt, SCALE) for i in items])
        answers = []
        for item, s in zip(items, scores, strict=True):
            ok = s.coverage > 0
            answers.append(
                SurveyAnswer(
                    iteration=item.iteration,
                    agent_index=item.agent_index,
                    mode=SurveyMode.DISTRIBUTION,
                    ok=ok,
                    score=s.expected_value() if ok else None,
                    most_likely=int(s.most_likely) if ok else None,
                    entropy_bits=s.entropy_bits() if ok else None,
                    coverage=s.coverage,
                    distribution=list(s.probabilities),
                    prompt_tokens=s.prompt_tokens,
                    latency_s=s.latency_s,
                )
            )
        by_mode[SurveyMode.DISTRIBUTION] = answers
    if SurveyMode.GENERATE in modes:
        gens = lm.generate(
            [GenerationRequest(i.prompt, temperature=0.0, max_tokens=8, stop=("\n",))
             for i in items]
        )
        answers = []
        for item, g in zip(items, gens, strict=True):
            rating = parse_rating(g.text)
            answers.append(
                SurveyAnswer(
                    iteration=item.iteration,
                    agent_index=item.agent_index,
                    mode=SurveyMode.GENERATE,
                    ok=rating is not None,
                    score=rating,
                    most_likely=round(rating) if rating is not None else None,
                    raw_text=g.text,
                    prompt_tokens=g.prompt_tokens - g.cached_tokens,
                    latency_s=g.latency_s,
                )
            )
        by_mode[SurveyMode.GENERATE] = answers
    return [by_mode[m][k] for k in range(len(items)) for m in modes]
