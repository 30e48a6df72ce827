"""The debates' results store: runs, debates, agents, messages, surveys, persona checks.

SQLite by default, any SQLAlchemy URL (PostgreSQL) too (``conversation/_database.py``).

Every turn, decision whether to speak and survey answer is committed as soon as it exists,
so a crash loses at most the request in flight, and a resumed debate carries on exactly as
it would have (``Store.restore``). A run's status stays 'running' until it finishes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from stancelab.conversation import SurveyAnswer
from stancelab.conversation._database import AnswerColumns, open_tables, safe_url, utc_now
from stancelab.conversation._export import check_formats, write_tables
from stancelab.debates._debate import Debate, DecideStep, Decision, Turn, TurnStep
from stancelab.engine import StoreError

if TYPE_CHECKING:
    import pandas as pd

# 2: debates.condition (base and tuned models side by side in one run).
# Added since without a new version, since an older database gains them when opened and
# its runs still resume: agents.context, the decisions table.
SCHEMA_VERSION = 2


class Base(DeclarativeBase):
    """Declarative base for stancelab's tables."""


class RunRow(Base):
    """One invocation: configuration snapshot, versions, status."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utc_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32), default="debate")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    schema_version: Mapped[int] = mapped_column(Integer, default=SCHEMA_VERSION)


class DebateRow(Base):
    """One debate of a run."""

    __tablename__ = "debates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    topic: Mapped[str] = mapped_column(Text)
    setup: Mapped[str] = mapped_column(String(200), default="")
    repetition: Mapped[int] = mapped_column(Integer, default=0)
    condition: Mapped[str] = mapped_column(String(100), default="")
    seed: Mapped[int] = mapped_column(Integer)
    iterations: Mapped[int] = mapped_column(Integer)
    first_speaker: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="running")
    error: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (UniqueConstraint("run_id", "key"),)


class AgentRow(Base):
    """A debater: its position in the debate, name, kind and background."""

    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    debate_id: Mapped[int] = mapped_column(ForeignKey("debates.id"), index=True)
    agent_index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(50))
    background: Mapped[str] = mapped_column(Text)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """What else the agent was told, as given (``Debate.agent_context``): the opening of
    its prompts, its format, SAUCE's opinion and speaking personality. Null in runs made
    before it was stored (the column is added when an older database is opened)."""


class MessageRow(Base):
    """One reply in a debate."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    debate_id: Mapped[int] = mapped_column(ForeignKey("debates.id"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    agent_index: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str] = mapped_column(String(100))
    text: Mapped[str] = mapped_column(Text)
    raw_text: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    truncated: Mapped[bool] = mapped_column(default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    __table_args__ = (UniqueConstraint("debate_id", "iteration"),)


class DecisionRow(Base):
    """One decision of an agent that decides first (SAUCE's asynchronous persons): at which
    chance, whether it took it or passed, its answer and what the answer cost. Absent in
    runs made before decisions were stored (the table is made when such a database is
    opened)."""

    __tablename__ = "decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    debate_id: Mapped[int] = mapped_column(ForeignKey("debates.id"), index=True)
    chance: Mapped[int] = mapped_column(Integer)
    iteration: Mapped[int] = mapped_column(Integer)
    agent_index: Mapped[int] = mapped_column(Integer)
    speaker: Mapped[str] = mapped_column(String(100))
    speaks: Mapped[bool] = mapped_column()
    raw_text: Mapped[str] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    __table_args__ = (UniqueConstraint("debate_id", "chance"),)


class SurveyRow(AnswerColumns, Base):
    """One survey answer: iteration, agent, question, and the measurement columns every
    stored answer has (``AnswerColumns``)."""

    __tablename__ = "survey_answers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    debate_id: Mapped[int] = mapped_column(ForeignKey("debates.id"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    agent_index: Mapped[int] = mapped_column(Integer)
    question_id: Mapped[str] = mapped_column(String(100), default="attitude")
    question: Mapped[str] = mapped_column(Text)
    __table_args__ = (
        UniqueConstraint("debate_id", "iteration", "agent_index", "question_id", "mode"),
    )


class PersonaCheckRow(Base):
    """A persona's pre-debate attitude on a topic (the fidelity check)."""

    __tablename__ = "persona_checks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    persona: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(50))
    topic: Mapped[str] = mapped_column(Text)
    score: Mapped[float | None] = mapped_column(Float)
    coverage: Mapped[float | None] = mapped_column(Float)


class Store:
    """Open (and create) a results database and write runs into it."""

    def __init__(self, target: str | Path) -> None:
        self.url, self.engine = open_tables(target, Base.metadata, "results database")

    def session(self) -> Session:
        """A new ORM session (use as a context manager)."""
        return Session(self.engine, expire_on_commit=False)

    def start_run(
        self,
        config: dict[str, Any],
        versions: dict[str, Any],
        kind: str = "debate",
        run_id: str | None = None,
    ) -> str:
        """Insert a run in state 'running' and return its id."""
        run_id = run_id or uuid.uuid4().hex[:12]
        with self.session() as s:
            s.add(RunRow(id=run_id, config=config, versions=versions, kind=kind))
            s.commit()
        return run_id

    def update_run_versions(self, run_id: str, extra: dict[str, Any]) -> None:
        """Add entries to a run's version record (e.g. engines opened later in the run)."""
        with self.session() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.url}")
            row.versions = {**row.versions, **extra}
            s.commit()

    def finish_run(self, run_id: str, status: str = "complete", error: str | None = None) -> None:
        """Mark a run complete or failed."""
        with self.session() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.url}")
            row.status, row.error, row.finished_at = status, error, utc_now()
            s.commit()

    def add_debate(
        self,
        run_id: str,
        debate: Debate,
        key: str,
        setup: str = "",
        repetition: int = 0,
        condition: str = "",
    ) -> int:
        """Insert a debate and its agents; returns the debate's id."""
        spec = debate.spec
        with self.session() as s:
            row = DebateRow(
                run_id=run_id,
                key=key,
                topic=spec.topic,
                setup=setup,
                repetition=repetition,
                condition=condition,
                seed=spec.seed,
                iterations=spec.iterations,
                first_speaker=debate.first_speaker,
            )
            s.add(row)
            s.flush()
            for index, persona in enumerate(spec.personas):
                s.add(
                    AgentRow(
                        debate_id=row.id,
                        agent_index=index,
                        name=persona.name,
                        kind=persona.kind,
                        background=persona.background,
                        context=debate.agent_context(index),
                    )
                )
            s.commit()
            return row.id

    def add_turn(self, debate_id: int, debate: Debate, turn: Turn) -> None:
        """Commit one reply."""
        with self.session() as s:
            s.add(
                MessageRow(
                    debate_id=debate_id,
                    iteration=turn.iteration,
                    agent_index=turn.speaker,
                    speaker=debate.spec.personas[turn.speaker].name,
                    text=turn.text,
                    raw_text=turn.raw_text,
                    attempts=turn.attempts,
                    truncated=turn.truncated,
                    prompt_tokens=turn.prompt_tokens,
                    cached_tokens=turn.cached_tokens,
                    completion_tokens=turn.completion_tokens,
                    latency_s=turn.latency_s,
                )
            )
            s.commit()

    def add_decision(self, debate_id: int, debate: Debate, decision: Decision) -> None:
        """Commit one decision whether to speak."""
        with self.session() as s:
            s.add(
                DecisionRow(
                    debate_id=debate_id,
                    chance=decision.chance,
                    iteration=decision.iteration,
                    agent_index=decision.speaker,
                    speaker=debate.spec.personas[decision.speaker].name,
                    speaks=decision.speaks,
                    raw_text=decision.raw_text,
                    prompt_tokens=decision.prompt_tokens,
                    cached_tokens=decision.cached_tokens,
                    completion_tokens=decision.completion_tokens,
                    latency_s=decision.latency_s,
                )
            )
            s.commit()

    def add_surveys(self, debate_id: int, answers: list[SurveyAnswer]) -> None:
        """Commit survey answers."""
        with self.session() as s:
            for a in answers:
                s.add(
                    SurveyRow(
                        debate_id=debate_id,
                        iteration=a.iteration,
                        agent_index=a.agent_index,
                        question_id=a.question_id,
                        question=a.question,
                        **a.measurement(),
                    )
                )
            s.commit()

    def finish_debate(self, debate_id: int, error: str | None = None) -> None:
        """Mark a debate complete or failed."""
        with self.session() as s:
            row = s.get(DebateRow, debate_id)
            if row is not None:
                row.status = "failed" if error else "complete"
                row.error = error
                s.commit()

    def add_persona_checks(self, run_id: str, rows: list[Any]) -> None:
        """Commit fidelity-check rows (objects with persona, kind, topic, score, coverage)."""
        with self.session() as s:
            for r in rows:
                s.add(
                    PersonaCheckRow(
                        run_id=run_id,
                        persona=r.persona,
                        kind=r.kind,
                        topic=r.topic,
                        score=r.score,
                        coverage=r.coverage,
                    )
                )
            s.commit()

    def persona_checks(self, run_id: str) -> list[PersonaCheckRow]:
        """Fidelity-check rows of a run."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(PersonaCheckRow)
                    .where(PersonaCheckRow.run_id == run_id)
                    .order_by(PersonaCheckRow.id)
                )
            )

    def agents(self, run_id: str) -> list[tuple[DebateRow, AgentRow]]:
        """Every debate's agents with their stored context, in debate and speaking order."""
        with self.session() as s:
            return [
                (d, a)
                for d, a in s.execute(
                    select(DebateRow, AgentRow)
                    .join(AgentRow, AgentRow.debate_id == DebateRow.id)
                    .where(DebateRow.run_id == run_id)
                    .order_by(DebateRow.id, AgentRow.agent_index)
                )
            ]

    def debates(self, run_id: str) -> list[DebateRow]:
        """Debates of a run, in insertion order."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(DebateRow).where(DebateRow.run_id == run_id).order_by(DebateRow.id)
                )
            )

    def restore(self, debate_id: int, debate: Debate) -> int:
        """Replay a stored debate into a fresh Debate object: its survey answers, then its
        turns and decisions whether to speak in the order they were made, so it carries on
        as it would have without the interruption (same next speaker, passes and prompts).

        Returns how many decisions were inferred rather than read (see ``_replay``): none
        for a debate stored since decisions are.
        """
        with self.session() as s:
            # Surveys first: record_turn checks that each turn's surveys are done.
            for a in s.scalars(select(SurveyRow).where(SurveyRow.debate_id == debate_id)):
                debate.record_survey(
                    SurveyAnswer.from_measurement(
                        a,
                        iteration=a.iteration,
                        agent_index=a.agent_index,
                        question_id=a.question_id,
                        question=a.question,
                    )
                )
            messages = s.scalars(
                select(MessageRow)
                .where(MessageRow.debate_id == debate_id)
                .order_by(MessageRow.iteration)
            )
            turns = [
                Turn(
                    iteration=m.iteration,
                    speaker=m.agent_index,
                    text=m.text,
                    raw_text=m.raw_text,
                    attempts=m.attempts,
                    truncated=m.truncated,
                    prompt_tokens=m.prompt_tokens,
                    completion_tokens=m.completion_tokens,
                    cached_tokens=m.cached_tokens,
                    latency_s=m.latency_s,
                )
                for m in messages
            ]
            decisions = [
                Decision(
                    chance=d.chance,
                    iteration=d.iteration,
                    speaker=d.agent_index,
                    speaks=d.speaks,
                    raw_text=d.raw_text,
                    prompt_tokens=d.prompt_tokens,
                    completion_tokens=d.completion_tokens,
                    cached_tokens=d.cached_tokens,
                    latency_s=d.latency_s,
                )
                for d in s.scalars(select(DecisionRow).where(DecisionRow.debate_id == debate_id))
            ]
            where = f"debate {debate_id} in {safe_url(self.url)}"
            inferred = _replay(debate, turns, decisions, where)
            row = s.get(DebateRow, debate_id)
            if row is not None and row.status == "failed" and row.error:
                debate.failed = row.error
        return inferred

    def progress(self, run_id: str) -> tuple[dict[str, dict[str, int]], int]:
        """Debates per status and turns per cell (condition · topic · setup), and the
        number of survey answers, of one run."""
        cells: dict[str, dict[str, int]] = {}

        def cell_of(condition: str, topic: str, setup: str) -> str:
            return f"{condition} · {topic} · {setup}" if condition else f"{topic} · {setup}"

        keys = (DebateRow.condition, DebateRow.topic, DebateRow.setup)
        with self.session() as s:
            rows = s.execute(
                select(*keys, DebateRow.status, func.count())
                .where(DebateRow.run_id == run_id)
                .group_by(*keys, DebateRow.status)
            ).all()
            for condition, topic, setup, status, n in rows:
                cell = cells.setdefault(cell_of(condition, topic, setup), {"debates": 0})
                cell["debates"] += n
                cell[status] = cell.get(status, 0) + n
            turns = s.execute(
                select(*keys, func.count(MessageRow.id))
                .join(MessageRow, MessageRow.debate_id == DebateRow.id)
                .where(DebateRow.run_id == run_id)
                .group_by(*keys)
            ).all()
            for condition, topic, setup, n in turns:
                cells[cell_of(condition, topic, setup)]["turns"] = n
            surveys = s.execute(
                select(func.count(SurveyRow.id))
                .join(DebateRow, SurveyRow.debate_id == DebateRow.id)
                .where(DebateRow.run_id == run_id)
            ).scalar_one()
        return cells, int(surveys)

    def get_run(self, run_id: str) -> RunRow:
        """One run by id."""
        with self.session() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.url}")
            return row

    def set_run_status(self, run_id: str, status: str) -> None:
        """Set a run back to 'running' when it resumes."""
        with self.session() as s:
            row = s.get(RunRow, run_id)
            if row is not None:
                row.status, row.error, row.finished_at = status, None, None
                s.commit()

    def runs(self) -> list[RunRow]:
        """All runs, newest first."""
        with self.session() as s:
            return list(s.scalars(select(RunRow).order_by(RunRow.created_at.desc())))


def _replay(debate: Debate, turns: list[Turn], decisions: list[Decision], where: str) -> int:
    """Record stored turns and decisions into a debate in the order its steps ask for them.

    A decide step with no stored decision while stored replies remain comes from a database
    made before decisions were stored: the agent is taken to have spoken exactly when it
    made the next stored reply (and to have passed otherwise), with an empty answer. For
    greedy decisions that is what happened: an agent asked again before any new reply sees
    the same prompt and gives the same answer, so it cannot pass and then speak.

    Returns how many decisions were inferred so; raises StoreError (naming ``where``) when
    stored rows are left over that the debate's steps never ask for.
    """
    waiting = deque(turns)
    by_chance = {d.chance: d for d in decisions}
    inferred = 0
    while (step := debate.next_step()) is not None:
        if isinstance(step, TurnStep) and waiting and waiting[0].speaker == step.speaker:
            debate.record_turn(waiting.popleft())
        elif isinstance(step, DecideStep) and step.chance in by_chance:
            if by_chance[step.chance].speaker != step.speaker:
                break
            debate.add_decision(by_chance.pop(step.chance))
        elif isinstance(step, DecideStep) and waiting:
            speaks = waiting[0].speaker == step.speaker
            debate.add_decision(Decision(step.chance, step.iteration, step.speaker, speaks, ""))
            inferred += 1
        else:
            break
    if waiting or by_chance:
        raise StoreError(
            f"{where}: {len(waiting)} stored replies and {len(by_chance)} decisions do not "
            f"follow the debate's turn taking (stopped at {debate.next_step()})"
        )
    return inferred


TABLES = (
    "runs",
    "debates",
    "agents",
    "messages",
    "decisions",
    "survey_answers",
    "persona_checks",
)


def read_tables(store: Store) -> dict[str, pd.DataFrame]:
    """Every table of a results store as a DataFrame, by table name."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    with store.engine.connect() as conn:
        return {table: pd.read_sql_table(table, conn) for table in TABLES}


def export_tables(
    store: Store, out_dir: Path, formats: tuple[str, ...] = ("csv", "parquet")
) -> list[Path]:
    """Write every table as CSV and/or Parquet; JSON columns are written as JSON text."""
    check_formats(formats)
    return write_tables(read_tables(store), out_dir, formats)
