"""The study's own tables through SQLAlchemy: SQLite by default, PostgreSQL for deployments.

Every answer and every exchange is committed as soon as it exists. One exchange (the
participant's message and the chatbot's reply) is written in one transaction, and a
unique constraint on (participant, turn, role) makes a repeated submission fail
instead of duplicating a message.

Everything several server processes must agree on is decided here, so any number of them
can share one PostgreSQL database: a participant's condition (under a lock on the study's
settings row), who generates each reply and probe (claims that expire unless renewed),
the reply's text while it grows, and the rate limits' counters.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CursorResult,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    false,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from stancelab.conversation import SurveyAnswer
from stancelab.conversation._database import AnswerColumns, open_tables, utc_now
from stancelab.conversation._export import json_columns_as_text
from stancelab.engine import StoreError

STEPS = ("consent", "about", "before", "conversation", "after", "perception", "done")
ENDED = ("no_consent", "screened_out", "withdrawn")
"""Steps that end a session without completing it (they hold no place in a quota)."""


class StudyBase(DeclarativeBase):
    """Declarative base for the study tables (separate from the debate tables)."""


class ParticipantRow(StudyBase):
    """One participant's session: assignment, answers and where they are in the flow."""

    __tablename__ = "study_participants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    study: Mapped[str] = mapped_column(String(100), index=True)
    pid: Mapped[str] = mapped_column(String(100))
    condition: Mapped[str] = mapped_column(String(20))
    topic: Mapped[str] = mapped_column(Text)
    step: Mapped[str] = mapped_column(String(20), default="consent")
    session_nonce: Mapped[str] = mapped_column(String(64))
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    completion_code: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200), default="")
    template_hash: Mapped[str] = mapped_column(String(32), default="")
    demographics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    background: Mapped[str | None] = mapped_column(Text)
    stance_before: Mapped[int | None] = mapped_column(Integer)
    reason_before: Mapped[str | None] = mapped_column(Text)
    stance_after: Mapped[int | None] = mapped_column(Integer)
    reason_after: Mapped[str | None] = mapped_column(Text)
    perceived_start: Mapped[int | None] = mapped_column(Integer)
    """Where the participant thinks the chatbot stood in its FIRST reply (on the item)."""
    perceived_end: Mapped[int | None] = mapped_column(Integer)
    """Where the participant thinks the chatbot stood in its LAST reply (on the item)."""
    stance_item: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The stance item (wording, scale, labels) this participant answered, as stored when
    the session began; None for sessions made before 0.4 (the 0-10 item)."""
    stance_last: Mapped[int | None] = mapped_column(Integer)
    """The per-turn stance given after reading the chatbot's last reply (on the finish
    form, the same instrument as the stance sent with each message)."""
    stance_last_source: Mapped[str | None] = mapped_column(String(8))
    """'chosen' (a point was picked) or 'same' (the explicit "same as before" answer)."""
    stance_last_seconds: Mapped[float | None] = mapped_column(Float)
    platform_study_id: Mapped[str | None] = mapped_column(String(100))
    """Prolific's STUDY_ID from the recruiting link."""
    platform_session_id: Mapped[str | None] = mapped_column(String(100))
    """Prolific's SESSION_ID from the recruiting link."""
    attention: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Attention-check answers: {check id: {"answer": ..., "passed": bool}}."""
    page_times: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """When each page was first shown and submitted: {"consent.shown": iso time, ...}."""
    __table_args__ = (UniqueConstraint("study", "pid"),)


class ChatMessageRow(StudyBase):
    """One message: the participant's ('user'), the chatbot's ('assistant') or a static
    statement shown ('statement'). ``human_stance`` is the stance (on the study's item) the
    participant gave when sending the message: after reading the previous reply, or, with
    message 1, at the start of the chat."""

    __tablename__ = "study_messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("study_participants.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    human_stance: Mapped[int | None] = mapped_column(Integer)
    stance_source: Mapped[str | None] = mapped_column(String(8))
    """How ``human_stance`` was given: 'chosen' (a point was picked; the scale starts
    unselected) or 'same' (the explicit "same as before" answer). None: before 0.4,
    when the scale came pre-set to the last answer."""
    stance_seconds: Mapped[float | None] = mapped_column(Float)
    """Seconds from the form appearing to the stance being answered (from the browser;
    without JavaScript, to the submission)."""
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    client_key: Mapped[str | None] = mapped_column(String(64))
    """The idempotency key of the form that sent a participant message (a repeat finds it)."""
    status: Mapped[str] = mapped_column(String(16), default="answered", server_default="answered")
    """A participant message is 'pending' until its reply is stored, or 'failed'."""
    shown_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    """When a reply was first delivered to the participant's browser."""
    cut: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """A reply that hit max_tokens, cut back to its last full sentence."""
    __table_args__ = (
        UniqueConstraint("participant_id", "turn", "role"),
        UniqueConstraint("participant_id", "client_key"),
    )


class LlmStanceRow(AnswerColumns, StudyBase):
    """The chatbot's hidden stance on the study's item after ``turn`` exchanges (0 = before
    the chat), read by the probe: the measurement columns every stored answer has."""

    __tablename__ = "study_llm_stances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("study_participants.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=utc_now)
    """When the probe's answer was stored ("probe done")."""
    __table_args__ = (UniqueConstraint("participant_id", "turn", "mode"),)


class ReplyStanceRow(AnswerColumns, StudyBase):
    """The stance a judge model reads in one chatbot reply, rated on the study's item with
    whole-candidate scoring: what the reply SAYS, beside what the hidden probe reports."""

    __tablename__ = "study_reply_stances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("study_messages.id"), index=True)
    participant_id: Mapped[str] = mapped_column(ForeignKey("study_participants.id"), index=True)
    turn: Mapped[int] = mapped_column(Integer)
    judge: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=utc_now)
    __table_args__ = (UniqueConstraint("message_id", "judge", "mode"),)


class StrategyLabelRow(StudyBase):
    """An LLM judge's persuasion-strategy label for one message, with all probabilities."""

    __tablename__ = "study_strategy_labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("study_messages.id"), index=True)
    judge: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(40))
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    coverage: Mapped[float] = mapped_column(Float, default=0.0)
    __table_args__ = (UniqueConstraint("message_id", "judge"),)


class StrategyCodeRow(StudyBase):
    """Whether one coder found one codebook label in one message (a message may carry
    several). Coders are judge models (``source`` 'judge', with the probability of "yes"
    and the mass the judge put on yes/no) and people (``source`` 'human', no probability)."""

    __tablename__ = "study_strategy_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("study_messages.id"), index=True)
    coder: Mapped[str] = mapped_column(String(200), index=True)
    label: Mapped[str] = mapped_column(String(100))
    present: Mapped[bool] = mapped_column(Boolean)
    probability: Mapped[float | None] = mapped_column(Float)
    """A judge's normalised P(yes); None for a human coder."""
    coverage: Mapped[float | None] = mapped_column(Float)
    """The raw probability a judge put on the yes/no answers; None for a human coder."""
    source: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    __table_args__ = (UniqueConstraint("message_id", "coder", "label"),)


class AdminSessionRow(StudyBase):
    """A signed-in admin: the sha256 of the cookie's random token and when it expires."""

    __tablename__ = "study_admin_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class StudySettingRow(StudyBase):
    """Settings an admin changes while the study runs (closing it to new participants)."""

    __tablename__ = "study_settings"
    study: Mapped[str] = mapped_column(String(100), primary_key=True)
    closed: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The study file as the server last started with it: the report reads the analysis
    plan (inclusion rule, change threshold, minimum n) and the item from here, so the
    plan fixed before collection is the plan analysed."""


class ClaimRow(StudyBase):
    """Which server process generates one turn's reply (``kind`` 'reply') or measures one
    turn's hidden stance (``kind`` 'probe'). A claim is taken with one atomic statement,
    so exactly one process generates; it lasts until ``expires_at`` and its owner renews
    it while it works, so a claim whose owner died expires and another process takes the
    turn over (``attempts`` counts the takings). A finished claim stays as the record of
    who generated; a failed one is deleted, so sending the message again claims anew."""

    __tablename__ = "study_claims"
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("study_participants.id"), primary_key=True
    )
    turn: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    """The claiming process: host, process id and a random tag (``Replies.worker_id``)."""
    expires_at: Mapped[float] = mapped_column(Float)
    """Seconds since the epoch (every server's clock must be synchronised, e.g. by NTP)."""
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    partial_text: Mapped[str | None] = mapped_column(Text)
    """The reply's text so far while it is generated (every process's event stream reads
    it); cleared when the reply is stored."""
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)


class RateCountRow(StudyBase):
    """Events of one rate limit (``scope``) and key (a participant, an address) in one
    time slot: slot ``bucket`` covers [bucket * width, (bucket + 1) * width) seconds since
    the epoch, where the limiter's window is ``RATE_BUCKETS`` widths."""

    __tablename__ = "study_rate_counts"
    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


RATE_BUCKETS = 10
"""Slots per rate-limit window: a limiter counts the last RATE_BUCKETS + 1 slots, which
hold every event of the last window (and at most one slot more: it errs towards waiting)."""


@dataclass(frozen=True)
class ReplyProgress:
    """Where one turn's reply stands, as the database says (``StudyStore.reply_progress``)."""

    reply: str | None
    """The stored reply, once there is one."""
    partial: str | None
    """The reply's text so far while it is generated."""
    failed: bool
    """The message failed (the participant may send it again) or is gone."""
    orphaned: bool
    """Pending while no process holds a live claim: nobody is answering it."""

    @property
    def done(self) -> bool:
        """Nothing more will happen to this turn without the participant."""
        return self.reply is not None or self.failed


STUDY_TABLES = (
    "study_participants",
    "study_messages",
    "study_llm_stances",
    "study_reply_stances",
    "study_strategy_labels",
    "study_strategy_codes",
)


def _changed(result: Any) -> int:
    """The rows an UPDATE or DELETE changed (``CursorResult.rowcount``)."""
    return int(cast(CursorResult[Any], result).rowcount)


def _id_chunks(ids: Iterable[int], size: int = 500) -> Iterator[list[int]]:
    """Sorted distinct ids in slices, each under every database's bound-parameter limit."""
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


class StudyFull(StoreError):
    """No place is left: the cap or every condition's quota is reached."""


class DuplicateTurn(StoreError):
    """The exchange for this turn is already stored (a repeated submission)."""


class StudyStore:
    """Open (and create) the study tables in a database and read and write them."""

    def __init__(self, target: str | Path) -> None:
        self.url, self.engine = open_tables(target, StudyBase.metadata, "study database")

    def session(self) -> Session:
        """A new ORM session (use as a context manager)."""
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()

    # --- participants -------------------------------------------------------------
    def create_participant(
        self,
        study: str,
        pid: str,
        conditions: Sequence[str],
        topics: Sequence[str],
        rng: random.Random,
        *,
        model: str = "",
        template_hash: str = "",
        simulated: bool = False,
        fixed_code: str | None = None,
        active_since: dt.datetime | None = None,
        cap: int | None = None,
        quota_per_condition: int | None = None,
        platform_study_id: str | None = None,
        platform_session_id: str | None = None,
        stance_item: dict[str, Any] | None = None,
    ) -> ParticipantRow:
        """Insert a participant in the least-filled condition (then topic); ties at random.

        A place is held by a completed session or by an unfinished one active since
        ``active_since`` (None: every unfinished one); sessions that ended otherwise
        (no consent, screened out, withdrawn) hold none. StudyFull when the cap or every
        condition's quota is taken.

        Counting and inserting happen in one transaction holding the lock on the study's
        settings row, so server processes sharing the database assign one at a time: of
        two participants after the last place, exactly one gets it."""
        self._ensure_settings(study)
        with self.session() as s:
            # an UPDATE takes the row's lock on PostgreSQL and the database's write lock
            # on SQLite, until this transaction ends: the counts below are then final
            s.execute(
                update(StudySettingRow)
                .where(StudySettingRow.study == study)
                .values(updated_at=StudySettingRow.updated_at)
            )
            existing = s.scalar(
                select(ParticipantRow).where(
                    ParticipantRow.study == study, ParticipantRow.pid == pid
                )
            )
            if existing is not None:
                return existing
            holding = ParticipantRow.step == "done"
            unfinished = ParticipantRow.step.not_in(("done", *ENDED))
            active = (
                unfinished
                if active_since is None
                else and_(unfinished, ParticipantRow.updated_at >= active_since)
            )
            rows = s.execute(
                select(ParticipantRow.condition, ParticipantRow.topic, func.count())
                .where(ParticipantRow.study == study, holding | active)
                .group_by(ParticipantRow.condition, ParticipantRow.topic)
            ).all()
            cells = {(str(c), str(t)): int(n) for c, t, n in rows}
            if cap is not None and sum(cells.values()) >= cap:
                raise StudyFull(f"study {study!r} has reached its cap of {cap}")
            per_condition = {
                c: sum(n for (cc, _), n in cells.items() if cc == c) for c in conditions
            }
            if quota_per_condition is not None:
                per_condition = {c: n for c, n in per_condition.items() if n < quota_per_condition}
                if not per_condition:
                    raise StudyFull(f"study {study!r}: every condition has reached its quota")
            low = min(per_condition.values())
            condition = rng.choice([c for c in conditions if per_condition.get(c) == low])
            per_topic = {t: cells.get((condition, t), 0) for t in topics}
            low_t = min(per_topic.values())
            topic = rng.choice([t for t in topics if per_topic[t] == low_t])
            row = ParticipantRow(
                id=secrets.token_hex(16),
                study=study,
                pid=pid,
                condition=condition,
                topic=topic,
                session_nonce=secrets.token_hex(16),
                simulated=simulated,
                model=model,
                template_hash=template_hash,
                completion_code=fixed_code or secrets.token_hex(4).upper(),
                platform_study_id=platform_study_id,
                platform_session_id=platform_session_id,
                stance_item=stance_item,
            )
            s.add(row)
            try:
                s.commit()
            except IntegrityError:  # another server process created it first
                s.rollback()
                again = s.scalar(
                    select(ParticipantRow).where(
                        ParticipantRow.study == study, ParticipantRow.pid == pid
                    )
                )
                if again is None:
                    raise StoreError(f"cannot create participant {pid!r}") from None
                return again
            return row

    def _ensure_settings(self, study: str) -> None:
        """The study's settings row exists (the row assignment locks)."""
        with self.session() as s:
            if s.get(StudySettingRow, study) is not None:
                return
            s.add(StudySettingRow(study=study))
            try:
                s.commit()
            except IntegrityError:  # another server process made it at the same moment
                s.rollback()

    def is_closed(self, study: str) -> bool:
        """Whether an admin closed the study to new participants."""
        with self.session() as s:
            row = s.get(StudySettingRow, study)
            return bool(row is not None and row.closed)

    def record_config(self, study: str, config: dict[str, Any]) -> None:
        """Keep the study file the server runs with (the latest one wins)."""
        with self.session() as s:
            row = s.get(StudySettingRow, study)
            if row is None:
                s.add(StudySettingRow(study=study, config=config))
            else:
                row.config, row.updated_at = config, utc_now()
            try:
                s.commit()
            except IntegrityError:  # another server process recorded it at the same moment
                s.rollback()

    def recorded_config(self, study: str) -> dict[str, Any] | None:
        """The study file recorded by ``record_config``, if any."""
        with self.session() as s:
            row = s.get(StudySettingRow, study)
            return dict(row.config) if row is not None and row.config else None

    def set_closed(self, study: str, closed: bool) -> None:
        """Close (or reopen) the study to new participants."""
        with self.session() as s:
            row = s.get(StudySettingRow, study)
            if row is None:
                s.add(StudySettingRow(study=study, closed=closed))
            else:
                row.closed, row.updated_at = closed, utc_now()
            s.commit()

    def withdraw(self, participant_id: str, delete_data: bool = True) -> None:
        """End a session at the participant's request; with ``delete_data`` their answers,
        messages and the chatbot's stances are deleted (the id and times are kept)."""
        with self.session() as s:
            row = s.get(ParticipantRow, participant_id)
            if row is None:
                raise StoreError(f"no participant {participant_id!r}")
            if delete_data:  # every table that holds what the participant gave or caused
                ids = select(ChatMessageRow.id).where(
                    ChatMessageRow.participant_id == participant_id
                )
                s.execute(delete(StrategyLabelRow).where(StrategyLabelRow.message_id.in_(ids)))
                s.execute(delete(StrategyCodeRow).where(StrategyCodeRow.message_id.in_(ids)))
                s.execute(
                    delete(ChatMessageRow).where(ChatMessageRow.participant_id == participant_id)
                )
                s.execute(delete(LlmStanceRow).where(LlmStanceRow.participant_id == participant_id))
                s.execute(delete(ClaimRow).where(ClaimRow.participant_id == participant_id))
                s.execute(
                    delete(ReplyStanceRow).where(ReplyStanceRow.participant_id == participant_id)
                )
                for field in (
                    "demographics",
                    "background",
                    "stance_before",
                    "reason_before",
                    "stance_after",
                    "reason_after",
                    "perceived_start",
                    "perceived_end",
                    "stance_last",
                    "stance_last_source",
                    "stance_last_seconds",
                    "attention",
                ):
                    setattr(row, field, None)
            row.step = "withdrawn"
            row.updated_at = utc_now()
            s.commit()

    def participant(self, participant_id: str) -> ParticipantRow | None:
        """One participant by internal id."""
        with self.session() as s:
            return s.get(ParticipantRow, participant_id)

    def participant_by_pid(self, study: str, pid: str) -> ParticipantRow | None:
        """One participant by the platform's participant id."""
        with self.session() as s:
            return s.scalar(
                select(ParticipantRow).where(
                    ParticipantRow.study == study, ParticipantRow.pid == pid
                )
            )

    def update(self, participant_id: str, **fields: Any) -> ParticipantRow:
        """Set fields of a participant and commit."""
        with self.session() as s:
            row = s.get(ParticipantRow, participant_id)
            if row is None:
                raise StoreError(f"no participant {participant_id!r}")
            for key, value in fields.items():
                if not hasattr(ParticipantRow, key):
                    raise StoreError(f"participants have no field {key!r}")
                setattr(row, key, value)
            row.updated_at = utc_now()
            s.commit()
            return row

    def participants(self, study: str | None = None) -> list[ParticipantRow]:
        """All participants (of one study), oldest first."""
        with self.session() as s:
            query = select(ParticipantRow).order_by(ParticipantRow.created_at)
            if study is not None:
                query = query.where(ParticipantRow.study == study)
            return list(s.scalars(query))

    # --- messages and stances -------------------------------------------------------
    def add_exchange(
        self,
        participant_id: str,
        turn: int,
        user_text: str,
        human_stance: int | None,
        assistant_text: str | None,
        latency_s: float = 0.0,
        role: str = "user",
    ) -> None:
        """Commit a participant message and the chatbot's reply in one transaction."""
        with self.session() as s:
            s.add(
                ChatMessageRow(
                    participant_id=participant_id,
                    turn=turn,
                    role=role,
                    text=user_text,
                    human_stance=human_stance,
                )
            )
            if assistant_text is not None:
                s.add(
                    ChatMessageRow(
                        participant_id=participant_id,
                        turn=turn,
                        role="assistant",
                        text=assistant_text,
                        latency_s=latency_s,
                    )
                )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                raise DuplicateTurn(f"turn {turn} of {participant_id} is already stored") from None

    def add_user_message(
        self,
        participant_id: str,
        turn: int,
        user_text: str,
        human_stance: int | None,
        client_key: str | None,
        stance_source: str | None = None,
        stance_seconds: float | None = None,
    ) -> ChatMessageRow:
        """Commit a participant's message before the chatbot is asked (status 'pending');
        DuplicateTurn if this turn or this key is stored already."""
        with self.session() as s:
            row = ChatMessageRow(
                participant_id=participant_id,
                turn=turn,
                role="user",
                text=user_text,
                human_stance=human_stance,
                stance_source=stance_source,
                stance_seconds=stance_seconds,
                client_key=client_key,
                status="pending",
            )
            s.add(row)
            try:  # the update flushes the insert first: a duplicate fails on either line
                s.execute(  # activity: an unfinished session that sends messages holds its place
                    update(ParticipantRow)
                    .where(ParticipantRow.id == participant_id)
                    .values(updated_at=utc_now())
                )
                s.commit()
            except IntegrityError:
                s.rollback()
                raise DuplicateTurn(f"turn {turn} of {participant_id} is already stored") from None
            return row

    def message_by_key(self, participant_id: str, client_key: str) -> ChatMessageRow | None:
        """The participant message a form with this idempotency key stored, if any."""
        with self.session() as s:
            return s.scalar(
                select(ChatMessageRow).where(
                    ChatMessageRow.participant_id == participant_id,
                    ChatMessageRow.client_key == client_key,
                )
            )

    def resend_user_message(
        self,
        message_id: int,
        user_text: str,
        human_stance: int | None,
        client_key: str | None,
        stance_source: str | None = None,
        stance_seconds: float | None = None,
    ) -> ChatMessageRow:
        """A message whose reply failed, sent again: the same turn, new text, pending again."""
        with self.session() as s:
            row = s.get(ChatMessageRow, message_id)
            if row is None or row.status != "failed":
                raise DuplicateTurn(f"message {message_id} is not a failed one")
            row.text, row.human_stance, row.client_key = user_text, human_stance, client_key
            row.stance_source, row.stance_seconds = stance_source, stance_seconds
            row.status, row.created_at = "pending", utc_now()
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                raise DuplicateTurn(f"key {client_key!r} is already stored") from None
            return row

    def add_reply(
        self, participant_id: str, turn: int, reply: str, latency_s: float, cut: bool = False
    ) -> None:
        """Commit the chatbot's reply, mark the participant's message answered and the
        turn's reply claim finished, together."""
        with self.session() as s:
            s.execute(
                update(ClaimRow)
                .where(*self._claim_key(participant_id, turn, "reply"))
                .values(finished=True, partial_text=None)
            )
            s.execute(
                update(ChatMessageRow)
                .where(
                    ChatMessageRow.participant_id == participant_id,
                    ChatMessageRow.turn == turn,
                    ChatMessageRow.role == "user",
                )
                .values(status="answered")
            )
            s.add(
                ChatMessageRow(
                    participant_id=participant_id,
                    turn=turn,
                    role="assistant",
                    text=reply,
                    latency_s=latency_s,
                    cut=cut,
                )
            )
            try:  # the insert is flushed here: a reply stored already fails here
                s.commit()
            except IntegrityError:
                s.rollback()
                raise DuplicateTurn(f"the reply to turn {turn} is already stored") from None

    def set_status(self, participant_id: str, turn: int, status: str) -> None:
        """Mark a participant message 'pending', 'answered' or 'failed'."""
        with self.session() as s:
            s.execute(
                update(ChatMessageRow)
                .where(
                    ChatMessageRow.participant_id == participant_id,
                    ChatMessageRow.turn == turn,
                    ChatMessageRow.role == "user",
                )
                .values(status=status)
            )
            s.commit()

    def mark_shown(self, participant_id: str, turns: Sequence[int]) -> None:
        """Stamp when replies were first delivered to the browser (only the first time)."""
        if not turns:
            return
        with self.session() as s:
            s.execute(
                update(ChatMessageRow)
                .where(
                    ChatMessageRow.participant_id == participant_id,
                    ChatMessageRow.role == "assistant",
                    ChatMessageRow.turn.in_(list(turns)),
                    ChatMessageRow.shown_at.is_(None),
                )
                .values(shown_at=utc_now())
            )
            s.commit()

    def stamp_page(self, participant_id: str, event: str) -> None:
        """Record the first time of a page event ("about.shown", "about.submitted", ...)."""
        with self.session() as s:
            row = s.get(ParticipantRow, participant_id)
            if row is None:
                return
            times = dict(row.page_times or {})
            if event in times:
                return
            times[event] = utc_now().isoformat()
            row.page_times = times  # a new dict, so the JSON column is written
            s.commit()

    def stance_turns(self, participant_id: str) -> set[int]:
        """The turns whose chatbot stance is stored."""
        with self.session() as s:
            return set(
                s.scalars(
                    select(LlmStanceRow.turn).where(LlmStanceRow.participant_id == participant_id)
                )
            )

    def messages(self, participant_id: str) -> list[ChatMessageRow]:
        """A participant's messages in order (turn, then user before assistant)."""
        with self.session() as s:
            rows = list(
                s.scalars(
                    select(ChatMessageRow).where(ChatMessageRow.participant_id == participant_id)
                )
            )
        order = {"statement": 0, "user": 1, "assistant": 2}
        return sorted(rows, key=lambda r: (r.turn, order.get(r.role, 3), r.id))

    def add_stances(self, participant_id: str, answers: Sequence[SurveyAnswer]) -> None:
        """Commit the chatbot's hidden survey answers (iteration = turn)."""
        with self.session() as s:
            for a in answers:
                s.add(
                    LlmStanceRow(
                        participant_id=participant_id,
                        turn=a.iteration,
                        **a.measurement(),
                    )
                )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # measured already (a retried request): keep the first

    def add_reply_stances(
        self, rows: Sequence[tuple[ChatMessageRow, SurveyAnswer]], judge: str
    ) -> None:
        """Commit a judge's ratings of replies (one per reply and mode); a rating stored
        already (the same judge, reply and mode) is kept as it was."""
        with self.session() as s:
            for message, answer in rows:
                s.add(
                    ReplyStanceRow(
                        message_id=message.id,
                        participant_id=message.participant_id,
                        turn=message.turn,
                        judge=judge,
                        **answer.measurement(),
                    )
                )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                raise StoreError(
                    f"judge {judge!r} has rated some of these replies already"
                ) from None

    def rated_reply_ids(self, judge: str) -> set[int]:
        """Replies this judge has rated already."""
        with self.session() as s:
            return set(
                s.scalars(select(ReplyStanceRow.message_id).where(ReplyStanceRow.judge == judge))
            )

    def stances(self, participant_id: str) -> list[LlmStanceRow]:
        """The chatbot's stances for one participant, by turn."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(LlmStanceRow)
                    .where(LlmStanceRow.participant_id == participant_id)
                    .order_by(LlmStanceRow.turn)
                )
            )

    # --- claims: which server process generates a reply or a probe --------------------
    def claim(self, participant_id: str, turn: int, kind: str, owner: str, hold_s: float) -> bool:
        """Take the claim on one turn's reply or probe for ``hold_s`` seconds: True when
        it is now ``owner``'s (nobody held it, or its holder let it expire), False when
        another process holds it or it is finished. Atomic across processes: an insert
        that the primary key lets only one process make, else an update whose condition
        the database re-checks under the row's lock."""
        now = time.time()
        try:
            with self.session() as s:
                s.add(
                    ClaimRow(
                        participant_id=participant_id,
                        turn=turn,
                        kind=kind,
                        owner=owner,
                        expires_at=now + hold_s,
                    )
                )
                s.commit()
                return True
        except IntegrityError:
            pass  # claimed before: take it over only if it expired unfinished
        with self.session() as s:
            taken = s.execute(
                update(ClaimRow)
                .where(*self._claim_key(participant_id, turn, kind))
                .where(ClaimRow.finished == false(), ClaimRow.expires_at < now)
                .values(
                    owner=owner,
                    expires_at=now + hold_s,
                    attempts=ClaimRow.attempts + 1,
                    partial_text=None,
                )
            )
            s.commit()
            return _changed(taken) == 1

    @staticmethod
    def _claim_key(participant_id: str, turn: int, kind: str) -> tuple[Any, ...]:
        return (
            ClaimRow.participant_id == participant_id,
            ClaimRow.turn == turn,
            ClaimRow.kind == kind,
        )

    def renew_claims(self, owner: str, keys: Sequence[tuple[str, int, str]], hold_s: float) -> None:
        """Extend ``owner``'s unfinished claims on these (participant, turn, kind): the
        owner is alive and working on them."""
        expires = time.time() + hold_s
        with self.session() as s:
            for participant_id, turn, kind in keys:
                s.execute(
                    update(ClaimRow)
                    .where(*self._claim_key(participant_id, turn, kind))
                    .where(ClaimRow.owner == owner, ClaimRow.finished == false())
                    .values(expires_at=expires)
                )
            s.commit()

    def finish_claim(self, participant_id: str, turn: int, kind: str) -> None:
        """Mark a claim done (its result is stored): nobody takes the turn over."""
        with self.session() as s:
            s.execute(
                update(ClaimRow)
                .where(*self._claim_key(participant_id, turn, kind))
                .values(finished=True, partial_text=None)
            )
            s.commit()

    def release_claim(self, participant_id: str, turn: int, kind: str, owner: str) -> bool:
        """Drop ``owner``'s claim after a failure, so a retry can claim the turn again;
        False when the claim is not (or no longer) ``owner``'s."""
        with self.session() as s:
            dropped = s.execute(
                delete(ClaimRow)
                .where(*self._claim_key(participant_id, turn, kind))
                .where(ClaimRow.owner == owner, ClaimRow.finished == false())
            )
            s.commit()
            return _changed(dropped) == 1

    def fail_reply(self, participant_id: str, turn: int, owner: str) -> None:
        """A reply ``owner`` could not generate: drop its claim and mark the message
        'failed' (to be sent again), unless another process has taken the turn over."""
        if self.release_claim(participant_id, turn, "reply", owner):
            self.set_status(participant_id, turn, "failed")

    def set_partial(self, participant_id: str, turn: int, owner: str, text: str) -> None:
        """Publish the reply's text so far (read by every process's event stream)."""
        with self.session() as s:
            s.execute(
                update(ClaimRow)
                .where(*self._claim_key(participant_id, turn, "reply"))
                .where(ClaimRow.owner == owner, ClaimRow.finished == false())
                .values(partial_text=text)
            )
            s.commit()

    def claims(self, participant_id: str | None = None) -> list[ClaimRow]:
        """The claims (of one participant), by participant, turn and kind."""
        with self.session() as s:
            query = select(ClaimRow).order_by(ClaimRow.participant_id, ClaimRow.turn, ClaimRow.kind)
            if participant_id is not None:
                query = query.where(ClaimRow.participant_id == participant_id)
            return list(s.scalars(query))

    def reply_progress(self, participant_id: str, turn: int) -> ReplyProgress:
        """Where the reply to ``turn`` stands: stored, growing, failed, or orphaned."""
        with self.session() as s:
            rows = s.execute(
                select(ChatMessageRow.role, ChatMessageRow.status, ChatMessageRow.text).where(
                    ChatMessageRow.participant_id == participant_id,
                    ChatMessageRow.turn == turn,
                    ChatMessageRow.role.in_(("user", "assistant")),
                )
            ).all()
            claim = s.get(ClaimRow, (participant_id, turn, "reply"))
        reply = next((text for role, _, text in rows if role == "assistant"), None)
        status = next((st for role, st, _ in rows if role == "user"), None)
        failed = reply is None and status in (None, "failed")
        live = claim is not None and (claim.finished or claim.expires_at >= time.time())
        return ReplyProgress(
            reply=reply,
            partial=claim.partial_text if claim is not None and reply is None else None,
            failed=failed,
            orphaned=reply is None and not failed and not live,
        )

    # --- rate limits, counted in the database (shared by every server process) ---------
    def count_event(
        self, scope: str, key: str, limit: int, window_s: float, record: bool = True
    ) -> float:
        """Record one event of ``key`` under the rate limit ``scope`` (at most ``limit``
        per ``window_s`` seconds) unless that would exceed it; 0.0 when allowed, else the
        seconds until it would be (nothing recorded). ``record=False`` only asks.

        The increment and the sum run in one transaction: the incremented slot's row lock
        (PostgreSQL) or the write lock (SQLite) orders concurrent events of one key, and a
        refused event is rolled back, so no process ever lets ``limit`` be passed."""
        now = time.time()
        width = window_s / RATE_BUCKETS
        bucket = int(now // width)
        first = bucket - RATE_BUCKETS
        where = (RateCountRow.scope == scope, RateCountRow.key == key)
        for _attempt in range(5):
            with self.session() as s:
                if record and not self._bump(s, scope, key, bucket):
                    continue  # another process inserted this slot first: count again
                held = s.execute(
                    select(RateCountRow.bucket, RateCountRow.count).where(
                        *where, RateCountRow.bucket >= first, RateCountRow.count > 0
                    )
                ).all()
                total = sum(int(n) for _, n in held)
                if total > limit or (not record and total >= limit):
                    s.rollback()
                    oldest = min(int(b) for b, _ in held)
                    return max(0.05, (oldest + RATE_BUCKETS + 1) * width - now)
                if record:
                    if bucket % 64 == 0:  # now and then, forget slots no window reaches
                        s.execute(
                            delete(RateCountRow).where(
                                RateCountRow.scope == scope, RateCountRow.bucket < first
                            )
                        )
                    s.commit()
                return 0.0
        raise StoreError(f"cannot count rate limit {scope!r}: the database is too busy")

    @staticmethod
    def _bump(s: Session, scope: str, key: str, bucket: int) -> bool:
        """Add one event to a slot (inside the caller's transaction); False when a
        concurrent insert of the same slot won (the transaction is rolled back)."""
        slot = (RateCountRow.scope == scope, RateCountRow.key == key, RateCountRow.bucket == bucket)
        bumped = s.execute(update(RateCountRow).where(*slot).values(count=RateCountRow.count + 1))
        if _changed(bumped) == 1:
            return True
        s.add(RateCountRow(scope=scope, key=key, bucket=bucket, count=1))
        try:
            s.flush()
        except IntegrityError:
            s.rollback()
            return False
        return True

    # --- admin sessions ---------------------------------------------------------------
    def add_admin_session(self, token_sha256: str, lifetime: dt.timedelta) -> None:
        """Record a new admin session (and drop expired ones)."""
        now = utc_now()
        with self.session() as s:
            s.execute(delete(AdminSessionRow).where(AdminSessionRow.expires_at <= now))
            s.add(AdminSessionRow(token_sha256=token_sha256, expires_at=now + lifetime))
            s.commit()

    def admin_session_valid(self, token_sha256: str) -> bool:
        """Whether an admin session exists and has not expired."""
        with self.session() as s:
            row = s.get(AdminSessionRow, token_sha256)
        if row is None:
            return False
        expires = row.expires_at
        if expires.tzinfo is None:  # SQLite returns naive UTC
            expires = expires.replace(tzinfo=dt.UTC)
        return expires > utc_now()

    def end_admin_session(self, token_sha256: str) -> None:
        """Log an admin session out."""
        with self.session() as s:
            s.execute(delete(AdminSessionRow).where(AdminSessionRow.token_sha256 == token_sha256))
            s.commit()

    def expire_admin_sessions_now(self) -> None:
        """End every admin session (a token change, or a test of expiry)."""
        with self.session() as s:
            s.execute(
                update(AdminSessionRow).values(expires_at=utc_now() - dt.timedelta(seconds=1))
            )
            s.commit()

    def add_labels(self, rows: Sequence[StrategyLabelRow]) -> None:
        """Commit strategy labels."""
        with self.session() as s:
            s.add_all(rows)
            s.commit()

    def labelled_message_ids(self, judge: str) -> set[int]:
        """Messages this judge has labelled already."""
        with self.session() as s:
            return set(
                s.scalars(
                    select(StrategyLabelRow.message_id).where(StrategyLabelRow.judge == judge)
                )
            )

    def replace_codes(self, rows: Sequence[StrategyCodeRow]) -> None:
        """Store strategy codes in one transaction, replacing what each row's coder coded
        before for the same messages (a re-imported sheet replaces, never adds)."""
        by_coder: dict[str, set[int]] = {}
        for row in rows:
            by_coder.setdefault(row.coder, set()).add(row.message_id)
        with self.session() as s:
            for coder, message_ids in by_coder.items():
                for chunk in _id_chunks(message_ids):
                    s.execute(
                        delete(StrategyCodeRow).where(
                            StrategyCodeRow.coder == coder, StrategyCodeRow.message_id.in_(chunk)
                        )
                    )
            s.add_all(rows)
            s.commit()

    def coded_message_ids(self, coder: str) -> set[int]:
        """Messages this coder (judge or person) has coded already."""
        with self.session() as s:
            return set(
                s.scalars(
                    select(StrategyCodeRow.message_id)
                    .where(StrategyCodeRow.coder == coder)
                    .distinct()
                )
            )

    def codes(self) -> list[StrategyCodeRow]:
        """Every strategy code of every coder."""
        with self.session() as s:
            return list(s.scalars(select(StrategyCodeRow).order_by(StrategyCodeRow.id)))

    def message_ids(self, candidates: Sequence[int]) -> set[int]:
        """Which of these message ids exist."""
        found: set[int] = set()
        with self.session() as s:
            for chunk in _id_chunks(candidates):
                found.update(
                    s.scalars(select(ChatMessageRow.id).where(ChatMessageRow.id.in_(chunk)))
                )
        return found

    def all_messages(self) -> list[ChatMessageRow]:
        """Every message of every participant."""
        with self.session() as s:
            return list(s.scalars(select(ChatMessageRow).order_by(ChatMessageRow.id)))


def read_table(store: StudyStore, table: str) -> Any:
    """One study table as a pandas DataFrame, JSON columns as JSON text."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    if table not in STUDY_TABLES:
        raise StoreError(f"unknown study table {table!r}; use one of {', '.join(STUDY_TABLES)}")
    with store.engine.connect() as conn:
        frame = pd.read_sql_table(table, conn)
    frame = json_columns_as_text(frame)
    if table == "study_participants" and "session_nonce" in frame.columns:
        frame = frame.drop(columns=["session_nonce"])  # a secret: never exported
    return frame


def one_judge(frame: Any, judge: str | None, what: str) -> tuple[Any, str]:
    """The rows of ONE judge of a table that keeps every judge's rows apart (``judge``, or
    the judge that stored last: highest ``id``) and its name ('' when there are no rows).

    Args:
        frame: rows with ``id`` and ``judge`` columns.
        judge: the judge wanted, or None for the latest.
        what: what the rows are, for the error ("labels", "reply ratings").

    Raises:
        StoreError: the judge stored no rows while others did (the message names them).
    """
    if frame.empty:
        return frame.copy(), judge or ""
    if judge is None:
        judge = str(frame.sort_values("id")["judge"].iloc[-1])
    known = sorted(set(frame["judge"]))
    if judge not in known:
        raise StoreError(f"no {what} by judge {judge!r}; the database has: {', '.join(known)}")
    return frame[frame["judge"] == judge].copy(), judge
