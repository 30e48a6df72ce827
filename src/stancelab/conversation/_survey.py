"""The hidden attitude survey: asked on a copy of an agent's context, never kept in history."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stancelab.engine import ConfigError
from stancelab.engine._base import ChoiceRequest, GenerationRequest, LanguageModel, Prompt

ATTITUDE = "attitude"
_RATING = re.compile(r"(?<![\d.])(10(?:\.0+)?|[0-9](?:\.\d+)?)(?![\d.]*\d)")


@dataclass(frozen=True)
class Scale:
    """The answer points of a rating question and what they mean.

    Points are the whole numbers ``low..high``; ``labels`` names some of them and must name
    both ends. A labelled middle point (an odd number of points) is the scale's neutral
    point: only a scale that has one can say whether an answer moved "toward neutral" or
    "flipped sides". The model is scored on every point as a whole candidate, so at most
    eleven points (0-10) are allowed.
    """

    low: int
    high: int
    labels: tuple[tuple[int, str], ...]
    """(point, label) pairs, in point order."""

    def __post_init__(self) -> None:
        if not 2 <= self.high - self.low + 1 <= 11 or self.low < 0:
            raise ConfigError(
                f"a scale needs 2 to 11 whole points from 0 up, got {self.low}..{self.high}"
            )
        named = dict(self.labels)
        for point in named:
            if not self.low <= point <= self.high:
                raise ConfigError(f"scale label for {point} is outside {self.low}..{self.high}")
        missing = [p for p in (self.low, self.high) if not named.get(p, "").strip()]
        if missing:
            raise ConfigError(
                f"a scale needs a label at both ends; none for {', '.join(map(str, missing))}"
            )

    @classmethod
    def of(cls, low: int, high: int, labels: dict[int, str]) -> Scale:
        """A scale from a mapping of labels."""
        return cls(low, high, tuple(sorted((int(k), str(v)) for k, v in labels.items())))

    @property
    def points(self) -> tuple[int, ...]:
        """Every answer a person or model may give."""
        return tuple(range(self.low, self.high + 1))

    @property
    def candidates(self) -> tuple[str, ...]:
        """The answers as the whole candidates a model is scored on."""
        return tuple(str(p) for p in self.points)

    @property
    def midpoint(self) -> float | None:
        """The labelled neutral point, or None when the scale has none."""
        if (self.low + self.high) % 2:
            return None
        middle = (self.low + self.high) // 2
        return float(middle) if dict(self.labels).get(middle, "").strip() else None

    def label(self, point: int) -> str:
        """The label of a point ('' when unlabelled)."""
        return dict(self.labels).get(point, "")

    def side(self, value: float) -> int:
        """-1 below the neutral point, 0 on it, +1 above it (needs a midpoint)."""
        if self.midpoint is None:
            raise ConfigError("this scale has no labelled midpoint, so it has no sides")
        return (value > self.midpoint) - (value < self.midpoint)

    def instruction(self) -> str:
        """How to answer, as told to a model: the range and every labelled point."""
        named = ", ".join(f"{p} = {text}" for p, text in self.labels)
        return f"Answer with a single number from {self.low} to {self.high} ({named})."

    def as_dict(self) -> dict[str, Any]:
        """The scale as stored with every answer it was used for."""
        return {"low": self.low, "high": self.high, "labels": {str(p): t for p, t in self.labels}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scale:
        """The scale stored by ``as_dict``."""
        return cls.of(
            int(data["low"]), int(data["high"]), {int(k): v for k, v in data["labels"].items()}
        )


ZERO_TO_TEN = Scale.of(0, 10, {0: "Not a problem at all", 10: "A very big problem"})
"""The debate paper's one-ended attitude scale (no neutral point)."""
SCALE = ZERO_TO_TEN.candidates


@dataclass(frozen=True)
class StanceItem:
    """One stance question, worded once and asked of people and models alike.

    ``text`` may hold ``{topic}`` and ``{statement}`` (the position a bipolar item asks
    agreement with). A model is told the scale's points and labels after the question; a
    person sees them as the answer buttons.
    """

    text: str
    scale: Scale = ZERO_TO_TEN
    id: str = ATTITUDE

    def question(self, topic: str, statement: str = "") -> str:
        """The question as a person reads it."""
        return self.text.format(topic=topic, statement=statement)

    def model_question(self, topic: str, statement: str = "") -> str:
        """The question as a model is asked it: with how to answer."""
        return f"{self.question(topic, statement)} {self.scale.instruction()}"

    def as_dict(self) -> dict[str, Any]:
        """The item as stored with the answers it produced."""
        return {"id": self.id, "text": self.text, "scale": self.scale.as_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StanceItem:
        """The item stored by ``as_dict``."""
        return cls(str(data["text"]), Scale.from_dict(data["scale"]), str(data.get("id", ATTITUDE)))


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


@dataclass(frozen=True)
class SurveyQuestion:
    """A question asked on a copy of every agent's context.

    ``iterations`` None follows the paper: before the debate and after every full
    round-robin cycle. Otherwise "always" (before every reply and at the end) or a
    tuple of message counts at which to ask, where -1 means at the end (SAUCE's rule).
    ``kind`` "scale" reads an answer on ``scale`` (the debate paper's 0-10 by default:
    the same ``Scale`` the human-LLM study's stance item uses); "text" stores the greedy
    reply as it is.
    """

    id: str
    text: str
    kind: str = "scale"
    iterations: tuple[int, ...] | str | None = None
    scale: Scale = ZERO_TO_TEN

    def __post_init__(self) -> None:
        if not self.id.strip() or not self.text.strip():
            raise ConfigError("a survey question needs a non-empty id and text")
        if self.kind not in ("scale", "text"):
            raise ConfigError(f"survey question {self.id!r}: kind must be scale or text")
        if isinstance(self.iterations, str) and self.iterations != "always":
            raise ConfigError(
                f"survey question {self.id!r}: iterations must be a list of "
                "numbers, 'always', or omitted"
            )


@dataclass
class SurveyAnswer:
    """One agent's answer to one question at one survey iteration in one mode."""

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
    question_id: str = ATTITUDE
    question: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    def measurement(self) -> dict[str, Any]:
        """What every store keeps of an answer, whoever was asked (the columns of
        ``conversation.database.AnswerColumns``)."""
        return {
            "mode": str(self.mode),
            "ok": self.ok,
            "score": self.score,
            "most_likely": self.most_likely,
            "entropy_bits": self.entropy_bits,
            "coverage": self.coverage,
            "distribution": self.distribution,
            "raw_text": self.raw_text,
            "prompt_tokens": self.prompt_tokens,
            "latency_s": self.latency_s,
        }

    @classmethod
    def from_measurement(cls, row: Any, **where: Any) -> SurveyAnswer:
        """An answer read back from a stored row with ``AnswerColumns``; ``where`` gives
        the fields that say who was asked (iteration, agent_index, question ...)."""
        return cls(
            mode=SurveyMode(row.mode),
            ok=row.ok,
            score=row.score,
            most_likely=row.most_likely,
            entropy_bits=row.entropy_bits,
            coverage=row.coverage,
            distribution=row.distribution,
            raw_text=row.raw_text,
            prompt_tokens=row.prompt_tokens or 0,
            latency_s=row.latency_s or 0.0,
            **where,
        )


def parse_rating(text: str, scale: Scale = ZERO_TO_TEN) -> float | None:
    """The first number 0..10 in a reply ('8', '8/10', 'About 7.', '7.5') when it lies on
    the scale, else None."""
    match = _RATING.search(text)
    if match is None:
        return None
    value = float(match.group(1))
    return value if scale.low <= value <= scale.high else None


@dataclass(frozen=True)
class SurveyItem:
    """One survey to ask: which iteration, agent and question, and the prompt to ask it on."""

    iteration: int
    agent_index: int
    prompt: Prompt
    question_id: str = ATTITUDE
    question: str = ""
    kind: str = "scale"
    conversation_id: str | None = None
    scale: Scale = ZERO_TO_TEN
    """The points a scale question is answered on."""


def answer_max_tokens(item: SurveyItem) -> int:
    """The most tokens a generated answer to a survey item may take."""
    if item.kind != "scale":
        return 96
    # A transcript continues "Me:" with the number; a chat model starts a fresh message
    # and may lead with a few words ("I would say 7"), so it gets room for them.
    return 8 if isinstance(item.prompt, str) else 16


def ask(
    lm: LanguageModel, items: Sequence[SurveyItem], modes: Sequence[SurveyMode]
) -> list[SurveyAnswer]:
    """Ask every item in every mode, batched; answers come in item-then-mode order.

    Text questions are answered once, greedily (mode ``generate``), whatever the modes.
    """
    answers: dict[tuple[int, SurveyMode], SurveyAnswer] = {}
    scale = [k for k, item in enumerate(items) if item.kind == "scale"]
    text = [k for k, item in enumerate(items) if item.kind == "text"]

    def base(item: SurveyItem, mode: SurveyMode) -> dict[str, object]:
        return {
            "iteration": item.iteration,
            "agent_index": item.agent_index,
            "mode": mode,
            "question_id": item.question_id,
            "question": item.question,
        }

    if SurveyMode.DISTRIBUTION in modes and scale:
        scores = lm.score_choices(
            [
                ChoiceRequest(items[k].prompt, items[k].scale.candidates, items[k].conversation_id)
                for k in scale
            ]
        )
        for k, s in zip(scale, scores, strict=True):
            ok = s.coverage > 0
            answers[(k, SurveyMode.DISTRIBUTION)] = SurveyAnswer(
                **base(items[k], SurveyMode.DISTRIBUTION),  # type: ignore[arg-type]
                ok=ok,
                score=s.expected_value() if ok else None,
                most_likely=int(s.most_likely) if ok else None,
                entropy_bits=s.entropy_bits() if ok else None,
                coverage=s.coverage,
                distribution=list(s.probabilities),
                prompt_tokens=s.prompt_tokens,
                latency_s=s.latency_s,
            )
    greedy = (scale if SurveyMode.GENERATE in modes else []) + text
    if greedy:
        gens = lm.generate(
            [
                GenerationRequest(
                    items[k].prompt,
                    temperature=0.0,
                    max_tokens=answer_max_tokens(items[k]),
                    stop=("\n",),
                    conversation_id=items[k].conversation_id,
                )
                for k in greedy
            ]
        )
        for k, g in zip(greedy, gens, strict=True):
            item = items[k]
            mode = SurveyMode.GENERATE
            if item.kind == "scale":
                rating = parse_rating(g.text, item.scale)
                ok, score = rating is not None, rating
            else:
                ok, score, rating = bool(g.text.strip()), None, None
            answers[(k, mode)] = SurveyAnswer(
                **base(item, mode),  # type: ignore[arg-type]
                ok=ok,
                score=score,
                most_likely=round(rating) if rating is not None else None,
                raw_text=g.text,
                prompt_tokens=g.prompt_tokens - g.cached_tokens,
                latency_s=g.latency_s,
            )
    return [
        answers[(k, m)]
        for k, item in enumerate(items)
        for m in (modes if item.kind == "scale" else (SurveyMode.GENERATE,))
    ]


def survey_modes_for(
    lm: LanguageModel, modes: Sequence[SurveyMode]
) -> tuple[tuple[SurveyMode, ...], str | None]:
    """The modes to run on this engine and a note for the run record if they changed."""
    wanted = tuple(modes)
    if SurveyMode.DISTRIBUTION not in wanted or lm.logprobs_cap() is not None:
        return wanted, None
    used = tuple(
        dict.fromkeys(SurveyMode.GENERATE if m == SurveyMode.DISTRIBUTION else m for m in wanted)
    )
    note = (
        f"{lm.name} returns no token log-probabilities: survey mode 'distribution' "
        "was replaced by 'generate'"
    )
    return used, note
