"""The study's exports: every table and the wide one-row-per-participant table (written by
the one exporter, ``conversation/_export.py``), and the live progress summary."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.conversation._export import check_formats, write_tables
from stancelab.study._config import StudyConfig
from stancelab.study._store import STUDY_TABLES, ParticipantRow, StudyStore, read_table

WIDE_EXPORT = "participants_wide"
"""The name of the wide export (beside the raw tables)."""


def wide_participants(store: StudyStore, study: str | None = None) -> Any:
    """One row per participant: their answers, and per turn k the message, the stance sent
    with it, the reply and the chatbot's measured stance (``msg_k``, ``human_stance_k``,
    ``reply_k``, ``llm_stance_k``; ``llm_stance_0`` is before the chat)."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    participants = read_table(store, "study_participants")
    if study is not None:
        participants = participants[participants["study"] == study]
    messages = read_table(store, "study_messages")
    stances = read_table(store, "study_llm_stances")
    if "mode" in stances.columns and (stances["mode"] == "distribution").any():
        stances = stances[stances["mode"] == "distribution"]
    rows: list[dict[str, Any]] = []
    for p in participants.to_dict("records"):
        row = dict(p)
        mine = messages[messages["participant_id"] == p["id"]]
        if "status" in mine.columns:
            mine = mine[mine["status"] != "failed"]
        for m in mine.sort_values("turn").to_dict("records"):
            k = int(m["turn"])
            if m["role"] == "user":
                row[f"msg_{k}"] = m["text"]
                row[f"human_stance_{k}"] = m["human_stance"]
                row[f"human_stance_source_{k}"] = m.get("stance_source")
                row[f"msg_sent_at_{k}"] = m["created_at"]
            elif m["role"] == "assistant":
                row[f"reply_{k}"] = m["text"]
                row[f"reply_shown_at_{k}"] = m.get("shown_at")
                row[f"reply_cut_{k}"] = m.get("cut")
            else:
                row[f"statement_{k}"] = m["text"]
        for s in stances[stances["participant_id"] == p["id"]].to_dict("records"):
            row[f"llm_stance_{int(s['turn'])}"] = s["score"]
            row[f"probe_done_at_{int(s['turn'])}"] = s.get("created_at")
        row["n_messages"] = int((mine["role"] == "user").sum())
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame[reader_order(list(frame.columns))]


TURN_COLUMNS = (
    "statement",
    "msg",
    "human_stance",
    "human_stance_source",
    "msg_sent_at",
    "reply",
    "reply_shown_at",
    "reply_cut",
    "llm_stance",
    "probe_done_at",
)
"""The columns of one turn k (``msg_k`` ...), in the order a reader follows the turn: what
the participant wrote and where they stood, the reply, where the chatbot stood after it."""


def reader_order(columns: list[str]) -> list[str]:
    """The wide table's columns as a reader wants them: the participant's own columns as
    they come, then turn by turn (0 first), each turn's columns in ``TURN_COLUMNS`` order
    (pandas would keep the order in which the first participants happened to add them)."""
    turn_of: dict[str, tuple[int, int]] = {}
    for column in columns:
        name, _, turn = column.rpartition("_")
        if turn.isdigit() and name in TURN_COLUMNS:
            turn_of[column] = (int(turn), TURN_COLUMNS.index(name))
    own = [c for c in columns if c not in turn_of]
    return own + sorted(turn_of, key=turn_of.__getitem__)


def progress(config: StudyConfig, rows: Sequence[ParticipantRow]) -> dict[str, Any]:
    """Started, completed and in progress, overall and per condition (simulated
    participants counted apart)."""
    real = [r for r in rows if not r.simulated]
    per_condition: dict[str, dict[str, int]] = {}
    for condition in config.conditions:
        mine = [r for r in real if r.condition == str(condition)]
        per_condition[str(condition)] = {
            "started": len(mine),
            "completed": sum(1 for r in mine if r.step == "done"),
            "in_progress": sum(1 for r in mine if r.step != "done"),
        }
    return {
        "study": config.study,
        "started": len(real),
        "completed": sum(1 for r in real if r.step == "done"),
        "in_progress": sum(1 for r in real if r.step != "done"),
        "simulated": len(rows) - len(real),
        "per_condition": per_condition,
    }


def export_study(
    store: StudyStore,
    out_dir: Path,
    formats: tuple[str, ...] = ("csv", "parquet"),
    study: str | None = None,
) -> list[Path]:
    """Write every study table and the wide participant table as CSV and/or Parquet
    (through the one exporter: CSV cells neutralised against formula injection)."""
    check_formats(formats)
    frames = {table: read_table(store, table) for table in STUDY_TABLES}
    frames[WIDE_EXPORT] = wide_participants(store, study)
    return write_tables(frames, out_dir, formats)
