"""Default agent's attitude on base vs tuned models, and the Table-1 style summary."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.engine.errors import ConfigError


def load_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.json written by run_finetune."""
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ConfigError(f"no results file at {path}; run `stancelab finetune FILE` first")
    data = json.loads(path.read_text())
    return list(data.get("rows", []))


def summarize_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (kind, rank): HellaSwag, MMLU, Default agent's final attitude."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row["kind"]), int(row.get("rank") or 0)), []).append(row)
    order = {"base": 0, "nwp": 1, "dpo": 2}
    out = []
    for (kind, rank), items in sorted(
        groups.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
    ):

        def mean(key: str, values: list[dict[str, Any]] = items) -> float | None:
            found = [float(v[key]) for v in values if v.get(key) is not None]
            return round(statistics.fmean(found), 2) if found else None

        out.append(
            {
                "model": "base" if kind == "base" else f"r={rank} {kind.upper()}",
                "seeds": len(items),
                "hellaswag": mean("hellaswag"),
                "mmlu": mean("mmlu"),
                "attitude": mean("attitude"),
            }
        )
    return out


def table(results: Path | Sequence[dict[str, Any]]) -> str:
    """Table-1 style text: per adapter rank, HellaSwag %, MMLU %, Default agent's attitude."""
    rows = load_results(results) if isinstance(results, Path) else list(results)
    summary = summarize_rows(rows)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [f"{'model':<14} {'seeds':>5} {'HellaSwag':>9} {'MMLU':>6} {'attitude':>8}"]
    for s in summary:
        lines.append(
            f"{s['model']:<14} {s['seeds']:>5} {fmt(s['hellaswag']):>9} "
            f"{fmt(s['mmlu']):>6} {fmt(s['attitude']):>8}"
        )
    return "\n".join(lines)
