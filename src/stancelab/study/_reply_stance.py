"""The stance a chatbot's replies express, as a judge model reads it: the second LLM measure.

The hidden probe asks the chatbot where it stands; this asks a judge where each stored
reply stands, on the participant's own stance item, with the same whole-candidate scoring
as the survey (``conversation.survey.ask`` on the item's points). It runs after
collection, on stored transcripts, and is resumable: a reply this judge rated is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from stancelab.conversation import (
    StanceItem,
    SurveyAnswer,
    SurveyItem,
    SurveyMode,
    ask,
    parse_modes,
    survey_modes_for,
)
from stancelab.engine._base import LanguageModel, Message
from stancelab.study._chat import load_template
from stancelab.study._config import BIG_PROBLEM, StudyConfig, Topic
from stancelab.study._store import (
    ChatMessageRow,
    ParticipantRow,
    StudyStore,
    one_judge,
    read_table,
)
from stancelab.study._strategies import JudgeCoverageError

MIN_COVERAGE = 0.5
"""Least mean coverage (probability on the item's points; in generate mode, the share of
answers that parse as a point) a batch of ratings needs to be stored."""
FRAME_COLUMNS = (
    "participant_id",
    "turn",
    "message_id",
    "judge",
    "ok",
    "score",
    "most_likely",
    "entropy_bits",
    "coverage",
)


def judge_name(lm: LanguageModel, version: str = "v1") -> str:
    """The name this judge model's reply ratings are stored under."""
    return f"{lm.name}/reply_stance.{version}"


def participant_item(row: ParticipantRow) -> StanceItem:
    """The stance item the participant answered, as stored when the session began; a
    session made before 0.4 stored none and answered the 0-10 big-problem item."""
    if row.stance_item is None:
        return BIG_PROBLEM.item()
    return StanceItem.from_dict(row.stance_item)


def topic_statement(topic: str, config: StudyConfig | None) -> str:
    """The position a bipolar item asks agreement with: the study file's (``config``), or
    without one the default every topic has ("<Topic> is a big problem.")."""
    if config is not None:
        return config.topic(topic).statement
    return Topic(name=topic).statement


def reply_stance_prompt(
    topic: str, reply: str, item: StanceItem, statement: str, version: str = "v1"
) -> list[Message]:
    """The judge's prompt for one reply: the reply verbatim between delimiters, then the
    item as the reply's author would answer it."""
    body = load_template("reply_stance", version).format(
        topic=topic,
        reply=reply.replace('"""', "'''"),  # the reply cannot close the delimiters
        question=item.model_question(topic, statement),
    )
    return [{"role": "user", "content": body}]


def answer_coverage(mode: str, ok: bool, coverage: float | None) -> float:
    """How much an answer is on the scale: its probability on the points (distribution),
    or 1/0 for an answer that did/did not parse as a point (generate)."""
    if mode == SurveyMode.DISTRIBUTION:
        return float(coverage or 0.0)
    return 1.0 if ok else 0.0


def _replies_to_rate(
    store: StudyStore, participants: dict[str, ParticipantRow], done: set[int]
) -> list[ChatMessageRow]:
    """The chatbot's replies still to rate: part of the chat (neither the reply nor the
    message it answers marked failed) and not rated by this judge yet."""
    messages = [m for m in store.all_messages() if m.participant_id in participants]
    failed = {(m.participant_id, m.turn) for m in messages if m.status == "failed"}
    return [
        m
        for m in messages
        if m.role == "assistant" and m.id not in done and (m.participant_id, m.turn) not in failed
    ]


def rate_replies(
    store: StudyStore,
    lm: LanguageModel,
    *,
    study: str | None = None,
    judge: str | None = None,
    config: StudyConfig | None = None,
    modes: Sequence[str] = ("distribution",),
    batch: int = 32,
    min_coverage: float = MIN_COVERAGE,
    version: str = "v1",
) -> int:
    """Rate the stance of every chatbot reply this judge has not rated yet; returns how many.

    Each reply is rated on its participant's stance item (``ParticipantRow.stance_item``)
    with the item's points as whole candidates. A bipolar item's ``{statement}`` comes from
    ``config`` (its topic's ``position``); without a config it is the default statement
    "<Topic> is a big problem.", which is what a study file without ``position`` used.
    A model without log-probabilities is asked in generate mode instead of distribution.

    Args:
        store: the study database.
        lm: the judge model.
        study: only this study's participants (default: ``config.study`` when a config is
            given, else every study).
        judge: the name the ratings are stored under (default ``judge_name(lm, version)``).
        config: the study file the replies were collected with (topic statements).
        modes: survey modes ("distribution", "generate"); see ``survey_modes_for``.
        batch: replies scored per engine call and stored per commit.
        min_coverage: least mean coverage of a batch (``answer_coverage``).
        version: the ``reply_stance`` template version.

    Raises:
        JudgeCoverageError: a batch's mean coverage is below ``min_coverage``; that batch
            is not stored (earlier batches are, so a rerun resumes after them).
        ConfigError: a participant's topic is not in ``config``.
    """
    name = judge or judge_name(lm, version)
    used, _fallback_note = survey_modes_for(lm, parse_modes(modes))
    if study is None and config is not None:
        study = config.study
    participants = {p.id: p for p in store.participants(study)}
    todo = _replies_to_rate(store, participants, store.rated_reply_ids(name))
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        items = []
        for message in chunk:
            row = participants[message.participant_id]
            item = participant_item(row)
            statement = topic_statement(row.topic, config)
            items.append(
                SurveyItem(
                    iteration=message.turn,
                    agent_index=0,
                    prompt=reply_stance_prompt(row.topic, message.text, item, statement, version),
                    question_id=item.id,
                    question=item.question(row.topic, statement),
                    scale=item.scale,
                )
            )
        answers = ask(lm, items, used)
        mean = sum(answer_coverage(a.mode, a.ok, a.coverage) for a in answers) / len(answers)
        if mean < min_coverage:
            raise JudgeCoverageError(
                f"reply judge {name!r} puts {mean:.1%} on the stance item's points (mean "
                f"over {len(chunk)} replies, minimum {min_coverage:.0%}): its ratings would "
                f"be noise; use a larger judge model ({start} reply(ies) rated)"
            )
        per_reply = len(answers) // len(chunk)  # ask() answers item by item, then mode
        rated: list[tuple[ChatMessageRow, SurveyAnswer]] = [
            (chunk[k // per_reply], answer) for k, answer in enumerate(answers)
        ]
        store.add_reply_stances(rated, name)
    return len(todo)


def reply_stance_frame(
    store: StudyStore,
    study: str | None = None,
    judge: str | None = None,
    mode: str = "distribution",
) -> pd.DataFrame:
    """One row per reply rated by ONE judge in one mode: ``FRAME_COLUMNS``, ordered by
    participant and turn (join it with the probe on participant_id and turn).

    Args:
        store: the study database.
        study: only this study's participants.
        judge: the judge's name, or None for the judge that rated last; the frame's
            ``attrs["judge"]`` names the one used ('' when nothing is rated).
        mode: "distribution" or "generate".

    Raises:
        StoreError: ``judge`` rated nothing here (the message names the judges that did).
    """
    ratings = read_table(store, "study_reply_stances")
    if study is not None:
        ids = {p.id for p in store.participants(study)}
        ratings = ratings[ratings["participant_id"].isin(ids)]
    ratings, chosen = one_judge(ratings, judge, "reply ratings")
    ratings = ratings[ratings["mode"] == mode]
    frame = ratings.sort_values(["participant_id", "turn", "id"])[list(FRAME_COLUMNS)]
    frame = frame.reset_index(drop=True)
    frame.attrs["judge"] = chosen
    return frame
