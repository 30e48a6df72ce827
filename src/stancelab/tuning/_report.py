"""Default agent's attitude on base vs tuned models, and the Table-1 style summary."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.engine import ConfigError


def load_results_file(path: Path) -> dict[str, Any]:
    """The whole results.json written by run_finetune (a folder means its results.json)."""
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ConfigError(f"no results file at {path}; run `stancelab finetune FILE` first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.json written by run_finetune."""
    return list(load_results_file(path).get("rows", []))


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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def gate_banner(gate: dict[str, Any] | None) -> list[str]:
    """The warning that opens the report when the data failed the partisanship gate."""
    if not gate or gate.get("passed") is not False:
        return []
    return [
        "!" * 78,
        f"! WARNING: the {gate['party']} training data is not partisan enough; the rows below",
        "! may not measure the intervention the paper describes.",
        *(f"!   - {p}" for p in gate.get("problems", [])),
        "!" * 78,
    ]


def learning_banner(training: dict[str, dict[str, Any]] | None) -> list[str]:
    """The warning that opens the report when a training run did not learn."""
    failed = {k: v for k, v in (training or {}).items() if v.get("learned") is False}
    if not failed:
        return []
    return [
        "!" * 78,
        "! WARNING: these training runs did not learn; their rows are not tuned models:",
        *(f"!   - {label}: {v.get('verdict')}" for label, v in failed.items()),
        "!" * 78,
    ]


def data_lines(results: dict[str, Any]) -> list[str]:
    """Question screen, answer partisanship per party and the filters that were on."""
    lines = []
    q = results.get("questions") or {}
    if q:
        screened = (
            f"screened by {q.get('judge')}: {q.get('checked')} checked, "
            f"{_pct(q.get('kept_share'))} kept, dropped {q.get('dropped') or {}}"
            if q.get("screened")
            else "not screened"
        )
        lines.append(
            f"questions: {q.get('questions')} of {q.get('wanted')} "
            f"({q.get('seed')} seed, {q.get('generated')} generated); {screened}"
        )
        if q.get("shortfall"):
            lines.append(f"  short: {q['shortfall']}")
    for party, summary in (results.get("datasets") or {}).items():
        p = summary.get("partisanship") or {}
        lean = p.get("mean_lean")
        lines.append(
            f"{party} answers: {summary.get('usable')} usable of {summary.get('generated')}; "
            + (
                f"{_pct(p.get('on_side_share'))} lean {party}, mean lean "
                f"{lean:+.2f} (+1 Republican, -1 Democrat)"
                if lean is not None
                else "partisanship not scored"
            )
        )
    screening = results.get("screening") or {}
    if screening:
        lines.append(
            "filters: on-side answers only "
            + ("ON" if screening.get("keep_on_side_only") else "off (as in the paper)")
            + "; DPO pairs in the intended direction only "
            + ("ON" if screening.get("dpo_direction") else "off (as in the paper)")
        )
    gate = results.get("gate")
    if gate and gate.get("passed") is not None:
        told = gate.get("distinguishability") or {}
        lines.append(
            f"gate: {'passed' if gate['passed'] else 'FAILED'} "
            f"(on side {_pct(gate.get('on_side_share'))}, needs {_pct(gate.get('min_on_side'))}; "
            f"separation {gate.get('separation')}, needs {gate.get('min_separation')}"
            + (
                f"; parties told apart on unseen questions {_pct(told['accuracy'])} "
                f"of {told['answers']} answers (chance 50% +- {_pct(told['band'])}), "
                f"needs {_pct(gate.get('min_distinguishable'))}"
                if told.get("accuracy") is not None
                else f"; parties' answers not compared: {told['unmeasured']}"
                if told.get("unmeasured")
                else ""
            )
            + ")"
        )
    return lines


def training_lines(training: dict[str, dict[str, Any]] | None) -> list[str]:
    """Per training run: loss first -> last, held-out before -> after, learned or not."""
    if not training:
        return []
    lines = [
        f"{'run':<14} {'steps':>5} {'loss':>15} {'held-out':<40} learned",
    ]
    for label, t in training.items():
        curve = t.get("curve") or []
        losses = [p["loss"] for p in curve if "loss" in p]
        loss = f"{losses[0]:.3f}->{losses[-1]:.3f}" if losses else "-"
        held = t.get("heldout") or {}
        if "loss_before" in held:
            heldout = (
                f"loss {held['loss_before']:.3f}->{held['loss_after']:.3f}"
                if held.get("loss_before") is not None
                else "none"
            )
        elif held.get("after"):
            b, a = held["before"], held["after"]
            heldout = (
                f"acc {b['reward_accuracy']:.2f}->{a['reward_accuracy']:.2f} "
                f"margin {b['reward_margin']:+.2f}->{a['reward_margin']:+.2f}"
            )
        else:
            heldout = "none"
        learned = {True: "yes", False: "NO", None: "unchecked"}[t.get("learned")]
        lines.append(f"{label:<14} {t.get('steps', 0):>5} {loss:>15} {heldout:<40} {learned}")
    return lines


def table(results: Path | dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """Table-1 style text: per adapter rank, HellaSwag %, MMLU %, Default agent's attitude;
    with a whole results record, also the data checks, the training checks and banners."""
    if isinstance(results, Path):
        results = load_results_file(results)
    record: dict[str, Any] = results if isinstance(results, dict) else {"rows": list(results)}
    summary = summarize_rows(record.get("rows", []))
    lines = [*gate_banner(record.get("gate")), *learning_banner(record.get("training"))]
    lines.append(f"{'model':<14} {'seeds':>5} {'HellaSwag':>9} {'MMLU':>6} {'attitude':>8}")
    for s in summary:
        lines.append(
            f"{s['model']:<14} {s['seeds']:>5} {_fmt(s['hellaswag']):>9} "
            f"{_fmt(s['mmlu']):>6} {_fmt(s['attitude']):>8}"
        )
    data = data_lines(record)
    if data:
        lines += ["", "data:", *(f"  {line}" for line in data)]
    train = training_lines(record.get("training"))
    if train:
        lines += ["", "training (held-out questions kept out of training):"]
        lines += [f"  {line}" for line in train]
    return "\n".join(lines)
