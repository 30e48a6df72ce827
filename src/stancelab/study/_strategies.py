"""Persuasion strategies: an LLM judge labels every message against a codebook.

Two judges share this module. ``label_study`` (template judge.v1) picks ONE label per
message with ``score_choices`` over the eight built-in label names, storing the whole
distribution in ``study_strategy_labels``. ``code_study`` (judge.v2) decides every label
of a codebook file separately (a message may carry several): whole-candidate scoring of
yes/no to "Does this message use LABEL: DEFINITION?", stored per message and label in
``study_strategy_codes`` beside the human coders' codes (``coding.py``).

``stancelab study report --judge`` runs only ``code_study``: its codes serve the strategy
counts, the strategy effects and the agreement table. ``label_study`` stays for code that
calls it; the report still reads its labels where a database has no codes.
"""

from __future__ import annotations

from collections.abc import Sequence

from stancelab.engine import ConfigError, StancelabError
from stancelab.engine._base import ChoiceRequest, LanguageModel, Message
from stancelab.study._chat import load_template
from stancelab.study._coding import SPEAKERS, Codebook, load_codebook
from stancelab.study._store import ChatMessageRow, StrategyCodeRow, StrategyLabelRow, StudyStore

BUILTIN = load_codebook()
CODEBOOK: dict[str, str] = {s.label: s.definition for s in BUILTIN.strategies}
"""The built-in codebook's labels and definitions (the labels of judge.v1)."""
LABELS: tuple[str, ...] = tuple(CODEBOOK)
MIN_COVERAGE = 0.2
"""Least mean probability mass a judge must put on its answers (label names, or yes/no);
below it the answer is noise (SmolLM2-135M puts 0.0 on the label names)."""
YES_NO = ("yes", "no", "Yes", "No")
"""The candidates of one label decision. Both spellings are scored and added: chat models
answer "Yes"/"No" far more than "yes"/"no" (Qwen2.5-Coder-0.5B: about 90% of its mass on
the capitalised ones), so lower case alone would fail the coverage check."""
PRESENT_AT = 0.5
"""A label is present when the judge's normalised P(yes) is at least this."""


class JudgeCoverageError(StancelabError):
    """A judge model puts too little probability on its answers (the label names, or a
    stance item's points) to be trusted."""


def judge_prompt(
    topic: str,
    role: str,
    text: str,
    version: str = "v1",
    codebook: Codebook = BUILTIN,
    label: str | None = None,
) -> list[Message]:
    """The labelling prompt for one message (judge.v1: which label; judge.v2 and later:
    does the message use ``label`` of ``codebook``)."""
    definition = codebook.strategy(label).definition.rstrip(".") if label else ""
    body = load_template("judge", version).format(
        topic=topic,
        speaker=SPEAKERS.get(role, role),
        message=text.replace('"""', "'''"),
        codebook=codebook.render(),
        label=label or "",
        definition=definition,
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
        _check_coverage(name, mean, len(labels), min_coverage, start)
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


def judge_name(lm: LanguageModel, version: str = "v1", codebook: Codebook | None = None) -> str:
    """The name labels (or, with a codebook, codes) of this judge model are stored under;
    codes name the codebook and its digest, so a reworded codebook is a new coder."""
    name = f"{lm.name}/judge.{version}"
    return name if codebook is None else f"{name}/{codebook.name}@{codebook.digest}"


def code_messages(
    lm: LanguageModel,
    items: Sequence[tuple[str, str, str]],
    codebook: Codebook = BUILTIN,
    version: str = "v2",
) -> list[dict[str, tuple[float, float]]]:
    """For each (topic, role, text): {label: (P(yes), coverage)}, one yes/no decision per
    codebook label; P(yes) is normalised over yes and no, coverage is the raw mass the
    judge put on the answers."""
    requests = [
        ChoiceRequest(judge_prompt(topic, role, text, version, codebook, label), YES_NO)
        for topic, role, text in items
        for label in codebook.labels
    ]
    scores = iter(lm.score_choices(requests))
    out = []
    for _ in items:
        decisions = {}
        for label in codebook.labels:
            answer = next(scores)
            p = dict(zip(answer.choices, answer.probabilities, strict=True))
            p_yes = p["yes"] + p["Yes"]
            decisions[label] = (float(p_yes), float(answer.coverage))
        out.append(decisions)
    return out


def code_study(
    store: StudyStore,
    lm: LanguageModel,
    codebook: Codebook = BUILTIN,
    judge: str | None = None,
    batch: int = 16,
    version: str = "v2",
    threshold: float = PRESENT_AT,
    min_coverage: float = MIN_COVERAGE,
) -> int:
    """Code every message this judge has not coded yet against every codebook label;
    returns how many messages.

    Codes are stored per message and label in ``study_strategy_codes`` (source 'judge',
    coder = the judge's name): present when P(yes) >= ``threshold``, with P(yes) and the
    coverage. Each batch of messages is checked before it is stored: when the judge's mean
    coverage over the batch's decisions is below ``min_coverage``, coding stops with
    JudgeCoverageError and that batch is not stored (earlier batches stay).

    Args:
        store: the study database.
        lm: the judge model.
        codebook: the labels to decide (default: the built-in codebook).
        judge: the coder name to store under (default: ``judge_name(lm, version, codebook)``).
        batch: messages per scoring call and per stored transaction.
        version: the judge template (``judge.v2.txt`` or a later one with ``{label}``).
        threshold: the P(yes) from which a label counts as present.
        min_coverage: the least mean mass on yes/no.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"the presence threshold must be between 0 and 1, not {threshold}")
    name = judge or judge_name(lm, version, codebook)
    done = store.coded_message_ids(name)
    topics = {p.id: p.topic for p in store.participants()}
    todo = [
        m
        for m in store.all_messages()
        if m.role in SPEAKERS and m.id not in done and m.status != "failed"
    ]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        decisions = code_messages(
            lm,
            [(topics.get(m.participant_id, ""), m.role, m.text) for m in chunk],
            codebook,
            version,
        )
        coverages = [coverage for d in decisions for _, coverage in d.values()]
        _check_coverage(name, sum(coverages) / len(coverages), len(chunk), min_coverage, start)
        store.replace_codes(
            [
                StrategyCodeRow(
                    message_id=m.id,
                    coder=name,
                    label=label,
                    present=p_yes >= threshold,
                    probability=p_yes,
                    coverage=coverage,
                    source="judge",
                )
                for m, decided in zip(chunk, decisions, strict=True)
                for label, (p_yes, coverage) in decided.items()
            ]
        )
    return len(todo)


def _check_coverage(name: str, mean: float, messages: int, minimum: float, done: int) -> None:
    """JudgeCoverageError when a judge's mean mass on its answers is below ``minimum``."""
    if mean < minimum:
        raise JudgeCoverageError(
            f"judge {name!r} puts {mean:.1%} of its probability on its answers "
            f"(mean over {messages} messages, minimum {minimum:.0%}): its labels "
            f"would be noise; use a larger judge model ({done} message(s) labelled)"
        )
