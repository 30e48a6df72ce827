"""The one exporter: formula cells neutralised in CSV, values kept in Parquet."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest

from stancelab.conversation._export import table_bytes, write_tables
from stancelab.engine._errors import StoreError

CELLS = ['=HYPERLINK("http://x")', "=1+2", "+1", "-2", "@SUM(A1)", "\tx", "plain", "a=b"]


def test_csv_cells_that_look_like_formulas_are_neutralised() -> None:
    frame = pd.DataFrame({"text": CELLS, "n": range(len(CELLS)), "meta": [{"a": 1}] * len(CELLS)})
    back = pd.read_csv(io.BytesIO(table_bytes(frame, "csv")), keep_default_na=False)
    assert list(back["text"]) == ["'" + c for c in CELLS[:6]] + ["plain", "a=b"]
    assert list(back["n"]) == list(range(len(CELLS)))  # numbers are not text: untouched
    assert set(back["meta"]) == {'{"a": 1}'}  # JSON cells become JSON text


def test_parquet_keeps_the_values(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": CELLS})
    (path,) = write_tables({"messages": frame}, tmp_path, ["parquet"])
    assert path.name == "messages.parquet"
    assert list(pd.read_parquet(path)["text"]) == CELLS


def test_unknown_format_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown export format 'xlsx'"):
        write_tables({"t": pd.DataFrame({"a": [1]})}, tmp_path / "out", ["csv", "xlsx"])
    assert not (tmp_path / "out").exists()
