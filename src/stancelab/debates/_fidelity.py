"""Do personas hold their party line? Survey every persona before any debate."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stancelab.conversation import PromptFormat, PromptSet, SurveyItem, SurveyMode, ask
from stancelab.conversation._personas import (
    PAPER_TOPICS,
    PARTIES,
    Persona,
    PersonaSet,
    Topic,
    ideology_lines,
    paper_topic,
    persona_prompt,
    persona_templates,
    write_story,
)
from stancelab.conversation._seeds import derive_seed
from stancelab.debates._debate import Debate, DebateSpec
from stancelab.engine import LanguageModel

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


def fidelity_items(
    personas: list[Persona],
    topics: list[Topic],
    prompts: PromptSet,
    prompt_format: PromptFormat | None = None,
) -> tuple[list[SurveyItem], list[tuple[Persona, Topic]]]:
    """The survey items of a fidelity check (every persona on every topic, empty
    history) and who and what each one asks about."""
    items, keys = [], []
    formats = None if prompt_format is None else (prompt_format,)
    for topic in topics:
        for persona in personas:
            debate = Debate(DebateSpec(topic.name, (persona,), 0), prompts, formats)
            items.append(SurveyItem(0, 0, debate.survey_prompt(0)))
            keys.append((persona, topic))
    return items, keys


def survey_personas(
    lm: LanguageModel,
    personas: list[Persona],
    topics: list[Topic],
    prompts: PromptSet,
    mode: SurveyMode = SurveyMode.DISTRIBUTION,
    prompt_format: PromptFormat | None = None,
) -> list[FidelityRow]:
    """Ask each persona the survey question with an empty history, for every topic, in
    the format the debates will use (None: ``prompts.format``)."""
    items, keys = fidelity_items(personas, topics, prompts, prompt_format)
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


def wrong_side(score: float | None, topic: Topic, party: str) -> bool:
    """True when a partisan's score sits on the other party's side of the midpoint."""
    belief = topic.believes(party)
    if score is None or belief is None:
        return False
    return (score > MIDPOINT) != belief or score == MIDPOINT


def screen_personas(
    personas: PersonaSet,
    writer: LanguageModel,
    engines: dict[str, LanguageModel],
    formats: dict[str, PromptFormat],
    topics: list[Topic],
    prompts: PromptSet,
    modes: Sequence[SurveyMode],
    max_redraws: int = 3,
    seed: int = 0,
    prompt_format: PromptFormat = PromptFormat.CHAT,
    prompt_folder: Path | None = None,
    max_tokens: int = 256,
) -> tuple[PersonaSet, dict[str, Any]]:
    """Re-draw stories whose own pre-debate survey sits on the wrong side of the scale.

    Optional (the paper did not screen). Each partisan is surveyed on every topic with a
    known party position, in its debate format; a story on the wrong side of the
    midpoint on any of them is written again (new seed, same name and meta-prompt) up to
    ``max_redraws`` times; the last draw is kept either way. Returns the new set and a
    record for the run: how many re-draws, and how many stories still sit wrong.
    """
    known = [t for t in topics if t.big_problem_for is not None]
    mode = SurveyMode.DISTRIBUTION if SurveyMode.DISTRIBUTION in modes else SurveyMode.GENERATE
    meta_template, background_template = persona_templates(prompt_folder)
    covered = [paper_topic(t) for t in PAPER_TOPICS]
    extra = [t for t in topics if t.name.strip().lower() not in PAPER_TOPICS]
    current = list(personas.personas)
    redrawn = still = 0
    record: dict[str, int] = {}

    def wrong(persona: Persona) -> bool:
        rows = survey_personas(
            engines[persona.kind], [persona], known, prompts, mode, formats[persona.kind]
        )
        by_topic = {t.name: t for t in known}
        return any(wrong_side(r.score, by_topic[r.topic], persona.kind) for r in rows)

    for k, persona in enumerate(current):
        if persona.kind not in PARTIES or not known:
            continue
        meta = meta_template.format(
            party=persona.kind.capitalize(),
            ideology=ideology_lines(persona.kind, [*covered, *extra]),
        )
        for attempt in range(max_redraws + 1):
            if not wrong(persona):
                break
            if attempt == max_redraws:
                still += 1
                break
            seeds = [derive_seed(seed, "screen", persona.name, attempt, j) for j in range(8)]
            story, _ = write_story(
                writer,
                persona_prompt(meta, prompt_format),
                persona.name,
                seeds,
                max_tokens,
                [*covered, *extra],
            )
            redrawn += 1
            record[persona.name] = attempt + 1
            if story is not None:
                persona = Persona(
                    persona.name,
                    persona.kind,
                    background_template.format(name=persona.name, story=story),
                )
                current[k] = persona
    screened = {
        "on": True,
        "redrawn": redrawn,
        "still_wrong": still,
        "max_redraws": max_redraws,
        "per_persona": record,
    }
    return PersonaSet(current, {**personas.meta, "screen": screened}), screened
