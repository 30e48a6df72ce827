"""Do personas hold their party line? Survey every persona before any debate."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from stancelab.conversation.personas import PARTIES, Persona, Topic
from stancelab.conversation.survey import SurveyItem, SurveyMode, ask
from stancelab.conversation.templates import PromptSet
from stancelab.debates.debate import Debate, DebateSpec
from stancelab.engine.base import LanguageModel

MIDPOINT = 5.0


@dataclass
class FidelityRow:
    """One persona's pre-debate attitude on one topic."""

    persona: str
    kind: str
    topic: str
    score: float | None
    coverage: float | None


@dataclass
class TopicFidelity:
    """How well the personas of both parties separate on one topic."""

    topic: str
    expected_high: str | None
    on_side: dict[str, tuple[int, int]]
    """party -> (personas on their party's side of the midpoint, personas surveyed)."""
    means: dict[str, float | None]
    """party or 'default' -> mean attitude."""
    separation: float | None
    """Mean of the party expected to score high minus the other party's mean."""

    def holds(self, min_on_side: float, min_separation: float) -> bool | None:
        """True when both parties mostly sit on their side and are far enough apart."""
        if self.expected_high is None or self.separation is None:
            return None
        fractions = [k / n for k, n in self.on_side.values() if n]
        return (
            bool(fractions)
            and min(fractions) >= min_on_side
            and (self.separation >= min_separation)
        )


def survey_personas(
    lm: LanguageModel,
    personas: list[Persona],
    topics: list[Topic],
    prompts: PromptSet,
    mode: SurveyMode = SurveyMode.DISTRIBUTION,
) -> list[FidelityRow]:
    """Ask each persona the survey question with an empty history, for every topic."""
    items, keys = [], []
    for topic in topics:
        for persona in personas:
            debate = Debate(DebateSpec(topic.name, (persona,), 0), prompts)
            items.append(SurveyItem(0, 0, debate.survey_prompt(0)))
            keys.append((persona, topic))
    answers = ask(lm, items, (mode,))
    return [
        FidelityRow(p.name, p.kind, t.name, a.score, a.coverage)
        for (p, t), a in zip(keys, answers, strict=True)
    ]


def summarise(rows: list[FidelityRow], topics: list[Topic]) -> list[TopicFidelity]:
    """Per topic: how many partisans sit on their party's side, the means, the separation."""
    out = []
    for topic in topics:
        mine = [r for r in rows if r.topic == topic.name and r.score is not None]
        means: dict[str, float | None] = {}
        on_side: dict[str, tuple[int, int]] = {}
        for kind in (*PARTIES, "default"):
            scores = [r.score for r in mine if r.kind == kind and r.score is not None]
            means[kind] = statistics.fmean(scores) if scores else None
            belief = topic.believes(kind) if kind in PARTIES else None
            if belief is not None:
                hits = sum(1 for s in scores if (s > MIDPOINT) == belief and s != MIDPOINT)
                on_side[kind] = (hits, len(scores))
        separation = None
        high = topic.big_problem_for
        if high is not None:
            low = next(p for p in PARTIES if p != high)
            if means.get(high) is not None and means.get(low) is not None:
                separation = float(means[high]) - float(means[low])  # type: ignore[arg-type]
        out.append(TopicFidelity(topic.name, high, on_side, means, separation))
    return out
