"""Default agent's attitude on base vs tuned models, and the Table-1 style summary."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.engine.base import LanguageModel
from stancelab.errors import ConfigError


def default_attitude(lm: LanguageModel, topics: Sequence[str], setup: Sequence[str],
                     repetitions: int, iterations: int, seed: int = 0) -> dict[str, Any]:
    """Run the debates and return the Default agent's mean attitude before and at the end."""
    from stancelab.debate import Debate, DebateSpec, run_debates
    from stancelab.personas import personas_for
    from stancelab.templates import load_prompts

    prompts = load_prompts()
    personas = tuple(personas_for(list(setup)))
    if not any(p.kind == "default" for p in personas):
        raise ConfigError("the debate setup needs a default agent to report its attitude")
    debates = [Debate(DebateSpec(topic=topic, personas=personas, iterations=iterations,
                                 seed=seed * 1000 + rep), prompts)
               for topic in topics for rep in range(repetitions)]
    run_debates(lm, debates)
    start: list[float] = []
    final: list[float] = []
    per_topic: dict[str, list[float]] = {}
    for debate in debates:
        agent = next(i for i, p in enumerate(debate.spec.personas) if p.kind == "default")
        scores = {it: a.score for (it, ag, _, _), a in debate.surveys.items()
                  if ag == agent and a.ok and a.score is not None}
        if not scores:
            continue
        start.append(float(scores[min(scores)]))
        final.append(float(scores[max(scores)]))
        per_topic.setdefault(debate.spec.topic, []).append(float(scores[max(scores)]))
    return {
        "default_start": round(statistics.fmean(start), 3) if start else None,
        "default_final": round(statistics.fmean(final), 3) if final else None,
        "per_topic_final": {t: round(statistics.fmean(v), 3) for t, v in per_topic.items()},
        "debates": len(debates),
        "failed": sum(1 for d in debates if d.failed),
    }


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
    for (kind, rank), items in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 9),
                                                                        kv[0][1])):
        def mean(key: str, values: list[dict[str, Any]] = items) -> float | None:
            found = [float(v[key]) for v in values if v.get(key) is not None]
            return round(statistics.fmean(found), 2) if found else None

        out.append({"model": "base" if kind == "base" else f"r={rank} {kind.upper()}",
                    "seeds": len(items), "hellaswag": mean("hellaswag"),
                    "mmlu": mean("mmlu"), "attitude": mean("attitude")})
    return out


def table(results: Path | Sequence[dict[str, Any]]) -> str:
    """Table-1 style text: per adapter rank, HellaSwag %, MMLU %, Default agent's attitude."""
    rows = load_results(results) if isinstance(results, Path) else list(results)
    summary = summarize_rows(rows)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [f"{'model':<14} {'seeds':>5} {'HellaSwag':>9} {'MMLU':>6} {'attitude':>8}"]
    for s in summary:
        lines.append(f"{s['model']:<14} {s['seeds']:>5} {fmt(s['hellaswag']):>9} "
                     f"{fmt(s['mmlu']):>6} {fmt(s['attitude']):>8}")
    return "\n".join(lines)
