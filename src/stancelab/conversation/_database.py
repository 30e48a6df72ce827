"""One way to open a database for every store: SQLite by default, any SQLAlchemy URL too.

SQLite gets WAL and a long busy timeout so many writer threads (debates, participants)
wait for each other instead of failing; a server database gets a connection pool.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, mapped_column

from stancelab.engine import StoreError


def database_url(target: str | Path) -> str:
    """A SQLAlchemy URL from a URL or a path to an SQLite file."""
    text = str(target)
    return text if "://" in text else f"sqlite:///{Path(text).resolve()}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def open_engine(url: str) -> Engine:
    """A SQLAlchemy engine set up for many writer threads (SQLite) or a server."""
    if url.startswith("sqlite"):
        # Wait for a writer instead of failing; WAL lets readers (status) run alongside.
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def safe_url(url: str) -> str:
    """A database URL with any password masked, for messages."""

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: show nothing rather than risk a password
        return "(database url)"


def utc_now() -> dt.datetime:
    """The time every row is stamped with (timezone-aware UTC)."""
    return dt.datetime.now(dt.UTC)


def add_missing_columns(engine: Engine, metadata: MetaData) -> None:
    """Bring a database made by an older version up to date: add the columns of
    ``metadata``'s tables it lacks (each nullable or with a server default, so old rows
    stay valid). Tables it lacks altogether are made by ``create_all``."""
    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = ""
                if column.server_default is not None:
                    arg = getattr(column.server_default, "arg", None)
                    value = arg if isinstance(arg, str) else "false"
                    default = f" DEFAULT '{value}'" if isinstance(arg, str) else f" DEFAULT {value}"
                conn.execute(
                    text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{default}')
                )


def open_tables(
    target: str | Path,
    metadata: MetaData,
    what: str,
    upgrade: Callable[[Engine], None] | None = None,
) -> tuple[str, Engine]:
    """Open a database and create a store's tables (and add the columns a newer version
    needs, see ``add_missing_columns``); any failure is one StoreError naming the store,
    with the password masked. ``upgrade`` runs after that, for anything more."""
    url = database_url(target)
    try:
        engine = open_engine(url)
        metadata.create_all(engine)
        add_missing_columns(engine, metadata)
        if upgrade is not None:
            upgrade(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open {what} {safe_url(url)}: {exc.__cause__ or exc}") from exc
    return url, engine


class AnswerColumns:
    """The columns of one stored survey answer, whoever was asked (a debater, the study's
    chatbot, a judge rating a reply): one definition for every store, filled from
    ``SurveyAnswer.measurement()``."""

    mode: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    """Expected value over the scale (distribution) or the parsed number (generate)."""
    most_likely: Mapped[int | None] = mapped_column(Integer)
    entropy_bits: Mapped[float | None] = mapped_column(Float)
    coverage: Mapped[float | None] = mapped_column(Float)
    """Raw probability mass the model put on the scale's points before normalising."""
    distribution: Mapped[list[float] | None] = mapped_column(JSON)
    raw_text: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Prompt tokens the engine computed for this answer (those served from a prefix
    cache or by an identical request in flight are not counted), in both modes."""
    latency_s: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
