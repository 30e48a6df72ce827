"""The study report: figures (PNG), tables (CSV) and one HTML page tying them together."""

from __future__ import annotations

import datetime as dt
import html
import math
from pathlib import Path

import pandas as pd

from stancelab.conversation.database import safe_url
from stancelab.engine.errors import StoreError
from stancelab.study.analysis import (
    condition_summary,
    label_counts,
    load_frames,
    participant_frame,
    per_turn,
    strategy_effects,
    turn_frame,
)
from stancelab.study.store import StudyStore

_COLORS = {"standard": "#1f77b4", "personalised": "#d62728", "static": "#7f7f7f"}


def _plot_lines(
    table: pd.DataFrame,
    columns: list[tuple[str, str, str]],
    path: Path,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> Path:
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for condition, group in table.groupby("condition", sort=True):
        color = _COLORS.get(str(condition))
        for column, style, label in columns:
            if column not in group or group[column].isna().all():
                continue
            se_column = f"{column}_se"
            err = group.get(se_column, None)
            ax.errorbar(
                group["turn"],
                group[column],
                yerr=err,
                linestyle=style,
                marker="o",
                color=color,
                capsize=3,
                label=f"{label} · {condition}",
            )
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("turn")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_bars(
    labels: list[str], series: dict[str, list[float]], path: Path, title: str, ylabel: str
) -> Path:
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.2))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [x + i * width for x in range(len(labels))]
        ax.bar(
            xs,
            [0.0 if math.isnan(v) else v for v in values],
            width=width,
            label=name,
            color=_COLORS.get(name),
        )
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(alpha=0.3, axis="y")
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    store: StudyStore,
    out_dir: Path,
    study: str | None = None,
    threshold: float = 0.5,
    judge: str | None = None,
) -> list[Path]:
    """Compute every analysis and write figures, CSV tables and index.html into out_dir.
    Strategy results use one judge's labels (``judge``, or the one that labelled last),
    named in the report."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create report folder {out_dir}: {exc.strerror}") from exc
    frames = load_frames(store, study, judge=judge)
    judge_used = str(frames["labels"].attrs.get("judge", ""))
    if frames["participants"].empty:
        raise StoreError(f"no participants{' in study ' + study if study else ''} in {store.url}")
    people = participant_frame(frames)
    turns = turn_frame(frames, threshold)
    summary = condition_summary(people)
    by_turn = per_turn(turns)
    effects = strategy_effects(frames, turns)
    counts = label_counts(frames)
    tables = {
        "participants": people,
        "turns": turns,
        "conditions": summary,
        "per_turn": by_turn,
        "strategy_effects": effects,
        "strategy_counts": counts,
    }
    written: list[Path] = []
    for name, table in tables.items():
        path = out_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        written.append(path)
    figures: list[tuple[str, Path]] = []
    chat = by_turn[by_turn["condition"] != "static"] if not by_turn.empty else by_turn
    if not chat.empty:
        figures.append(
            (
                "LLM stance per turn (hidden survey) and the participants' stance",
                _plot_lines(
                    chat,
                    [("llm", "-", "LLM"), ("human", ":", "human")],
                    out_dir / "stance_per_turn.png",
                    "Stance per turn",
                    "stance (0-10)",
                    (0, 10),
                ),
            )
        )
        figures.append(
            (
                "Opinion gap |human − LLM| over turns",
                _plot_lines(
                    chat,
                    [("gap", "-", "gap")],
                    out_dir / "opinion_gap.png",
                    "Opinion gap over turns",
                    "|human − LLM|",
                ),
            )
        )
        later = chat[chat["turn"] > 0]
        figures.append(
            (
                "Per-turn likelihood of a stance change on each side",
                _plot_lines(
                    later,
                    [("p_llm_change", "-", "LLM"), ("p_human_change", ":", "human")],
                    out_dir / "change_likelihood.png",
                    "Likelihood of a stance change",
                    "share changing",
                    (0, 1.05),
                ),
            )
        )
    if not summary.empty:
        measures = [
            "human_change",
            "llm_change",
            "llm_toward_human",
            "perceived_change",
            "perception_error",
        ]
        series = {
            str(r.condition): [float(getattr(r, m)) for m in measures] for r in summary.itertuples()
        }
        figures.append(
            (
                "Changes by condition (personalised vs standard vs static)",
                _plot_bars(
                    measures,
                    series,
                    out_dir / "conditions.png",
                    "Mean change by condition",
                    "points (0-10 scale)",
                ),
            )
        )
    if not effects.empty:
        series = {}
        for speaker, group in effects.groupby("speaker", sort=True):
            series[f"{speaker} message → other side changes"] = [
                float(v)
                for v in group.set_index("strategy").reindex(list(effects["strategy"].unique()))[
                    "p_other_changed_weighted"
                ]
            ]
        figures.append(
            (
                "Which strategies precede the other side's stance change",
                _plot_bars(
                    list(effects["strategy"].unique()),
                    series,
                    out_dir / "strategies.png",
                    "Stance change after each strategy",
                    "P(other side changes), label-weighted",
                ),
            )
        )
    written.extend(path for _, path in figures)
    index = out_dir / "index.html"
    index.write_text(_html(tables, figures, study, store, judge_used), encoding="utf-8")
    written.append(index)
    return written


def _html(
    tables: dict[str, pd.DataFrame],
    figures: list[tuple[str, Path]],
    study: str | None,
    store: StudyStore,
    judge: str = "",
) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Study report {html.escape(study or '')}</title>",
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:auto;"
        "padding:1rem}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}"
        "td,th{border:1px solid #ddd;padding:.2rem .45rem}img{max-width:100%}</style>",
        "</head><body>",
        f"<h1>Human-LLM study report{(' · ' + html.escape(study)) if study else ''}</h1>",
        f"<p>{html.escape(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))} · "
        f"{len(tables['participants'])} participants · database "
        f"{html.escape(_masked(store.url))}</p>",
        f"<p id='judge'>Strategy labels by judge: <strong>{html.escape(judge)}</strong></p>"
        if judge
        else "<p id='judge'>No strategy labels (run <code>report --judge MODEL</code>).</p>",
    ]
    for caption, path in figures:
        parts.append(
            f"<h2>{html.escape(caption)}</h2><img src='{html.escape(path.name)}' "
            f"alt='{html.escape(caption)}'>"
        )
    for name in ("conditions", "per_turn", "strategy_effects", "strategy_counts"):
        table = tables[name]
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>")
        parts.append(f"<p><a href='{name}.csv'>{name}.csv</a></p>")
        parts.append(
            table.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}", na_rep="–")
        )
    parts.append(
        "<p>Per-participant values: <a href='participants.csv'>participants.csv</a>;"
        " per turn: <a href='turns.csv'>turns.csv</a>.</p></body></html>"
    )
    return "\n".join(parts)


def _masked(url: str) -> str:

    return safe_url(url)
