"""Persuasion strategies: an LLM judge labels every message against a fixed codebook.

The label probabilities come from ``score_choices`` over the label names (whole-candidate
log-probabilities), so every message stores a full distribution, not only a winner.
"""

from __future__ import annotations

from collections.abc import Sequence

from stancelab.engine.base import ChoiceRequest, LanguageModel, Message
from stancelab.engine.errors import StancelabError
from stancelab.study.chat import load_template
from stancelab.study.store import ChatMessageRow, StrategyLabelRow, StudyStore

CODEBOOK: dict[str, str] = {
    "emotional appeal": "appeals to feelings, fears, hopes, moral outrage or compassion",
    "personal story": "the speaker's own experience or an anecdote about people they know",
    "logical argument": "reasoning from premises to a conclusion, cause and effect, analogy",
    "evidence or statistics": "facts, numbers, study results, named data",
    "source-related inquiry": "asks the other to consider, check or trust a named source, "
    "organisation or expert",
    "concession": "agrees with, grants or accepts part of the other's point",
    "question": "asks the other side for their view, reasons or experience",
    "other": "none of the above (greetings, small talk, off-topic text)",
}
LABELS: tuple[str, ...] = tuple(CODEBOOK)
MIN_COVERAGE = 0.2
"""Least mean probability mass a judge must put on the label names; below it the argmax
over the labels is noise (SmolLM2-135M puts 0.0 on them)."""


class JudgeCoverageError(StancelabError):
    """A judge model puts too little probability on its answers (the label names, or a
    stance item's points) to be trusted."""


SPEAKERS = {"user": "person", "assistant": "chatbot"}


def judge_prompt(topic: str, role: str, text: str, version: str = "v1") -> list[Message]:
    """The labelling prompt for one message."""
    body = load_template("judge", version).format(
        topic=topic, speaker=SPEAKERS.get(role, role), message=text.replace('"""', "'''")
    )
    return [{"role": "user", "content": body}]


def label_messages(
    lm: LanguageModel, items: Sequence[tuple[str, str, str]], version: str = "v1"
) -> list[tuple[str, dict[str, float], float]]:
    """(label, probabilities, coverage) for each (topic, role, text)."""
    requests = [
        ChoiceRequest(judge_prompt(topic, role, text, version), LABELS)
        for topic, role, text in items
    ]
    out = []
    for scores in lm.score_choices(requests):
        probs = {label: float(p) for label, p in zip(LABELS, scores.probabilities, strict=True)}
        label = scores.most_likely if scores.coverage > 0 else "other"
        out.append((label, probs, float(scores.coverage)))
    return out


def label_study(
    store: StudyStore,
    lm: LanguageModel,
    judge: str | None = None,
    batch: int = 32,
    version: str = "v1",
    min_coverage: float = MIN_COVERAGE,
) -> int:
    """Label every message this judge has not labelled yet; returns how many.

    Labels are kept per judge (a second judge adds its own, never mixes with the first).
    Each batch is checked before it is stored: when the judge's mean coverage (probability
    on the label names) is below ``min_coverage``, labelling stops with JudgeCoverageError
    and that batch is not stored."""
    name = judge or judge_name(lm, version)
    done = store.labelled_message_ids(name)
    topics = {p.id: p.topic for p in store.participants()}
    todo: list[ChatMessageRow] = [
        m
        for m in store.all_messages()
        if m.role in SPEAKERS and m.id not in done and m.status != "failed"
    ]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        labels = label_messages(
            lm, [(topics.get(m.participant_id, ""), m.role, m.text) for m in chunk], version
        )
        mean = sum(coverage for _, _, coverage in labels) / len(labels)
        if mean < min_coverage:
            raise JudgeCoverageError(
                f"judge {name!r} puts {mean:.1%} of its probability on the label names "
                f"(mean over {len(labels)} messages, minimum {min_coverage:.0%}): its labels "
                f"would be noise; use a larger judge model ({start} message(s) labelled)"
            )
        store.add_labels(
            [
                StrategyLabelRow(
                    message_id=m.id,
                    judge=name,
                    label=label,
                    probabilities=probs,
                    coverage=coverage,
                )
                for m, (label, probs, coverage) in zip(chunk, labels, strict=True)
            ]
        )
    return len(todo)


def judge_name(lm: LanguageModel, version: str = "v1") -> str:
    """The name labels of this judge model are stored under."""
    return f"{lm.name}/judge.{version}"
