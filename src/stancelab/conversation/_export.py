"""The one exporter of result tables: CSV and Parquet, to files or to bytes.

Every table leaves stancelab through here, so every export gets the same treatment:
JSON-valued columns become JSON text, and CSV cells that a spreadsheet would run as a
formula (``=HYPERLINK(...)``, ``+1``, ``@SUM``, a leading tab or carriage return) are
prefixed with an apostrophe (OWASP's advice against CSV injection). Parquet keeps the
values as they are: it is read by code, not by spreadsheets.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stancelab.engine import StoreError

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("csv", "parquet")
FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The formats asked for, or one line naming the unknown one."""
    for fmt in formats:
        if fmt not in FORMATS:
            raise StoreError(f"unknown export format {fmt!r}; use csv or parquet")
    return tuple(formats)


def json_columns_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose dict/list cells are JSON text (CSV and Parquet take no nested values)."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype != object or frame.empty:
            continue
        if frame[column].map(lambda v: isinstance(v, dict | list)).any():
            frame[column] = frame[column].map(
                lambda v: json.dumps(v) if isinstance(v, dict | list) else v
            )
    return frame


def neutralise_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, prefixed with an apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def formula_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy in which no text cell starts like a spreadsheet formula."""
    frame = frame.copy()
    for column in frame.columns:
        # pandas 3 keeps text in a string dtype, older pandas in object columns.
        if frame[column].dtype == object or str(frame[column].dtype) in ("str", "string"):
            frame[column] = frame[column].map(neutralise_cell)
    return frame


def table_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """One table as CSV (formula-safe, UTF-8) or Parquet bytes."""
    check_formats([fmt])
    frame = json_columns_as_text(frame)
    if fmt == "csv":
        return bytes(formula_safe(frame).to_csv(index=False).encode("utf-8"))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_tables(
    frames: Mapping[str, pd.DataFrame], out_dir: Path, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Write each named table as ``NAME.FORMAT`` in a folder; returns the paths written."""
    chosen = check_formats(formats)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create export folder {out_dir}: {exc.strerror}") from exc
    written = []
    for name, frame in frames.items():
        for fmt in chosen:
            path = out_dir / f"{name}.{fmt}"
            path.write_bytes(table_bytes(frame, fmt))
            written.append(path)
    return written
