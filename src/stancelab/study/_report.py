"""The study report: figures (PNG), tables (CSV) and one HTML page tying them together."""

from __future__ import annotations

import datetime as dt
import html
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select

from stancelab.conversation import Scale
from stancelab.conversation._database import safe_url
from stancelab.conversation._export import formula_safe
from stancelab.engine import ConfigError, StoreError
from stancelab.study._analysis import (
    condition_summary,
    flow_table,
    inclusion,
    label_counts,
    load_frames,
    participant_frame,
    per_turn,
    strategy_frame,
    study_scale,
    turn_frame,
)
from stancelab.study._claims import claim_tests
from stancelab.study._coding import agreement_table
from stancelab.study._config import Analysis, StudyConfig, load_study
from stancelab.study._store import ParticipantRow, StudyStore

_COLORS = {"standard": "#1f77b4", "personalised": "#d62728", "static": "#7f7f7f"}
_MEANING = {
    "strategy_counts": (
        ": per speaker, condition and label, <code>messages_with_label</code> is how many of "
        "that speaker's messages the judge found using the label, <code>messages_judged</code>"
        " how many it judged, <code>share</code> their ratio. A message may carry several "
        "labels, so a speaker's counts can add up to more than its messages."
    ),
}
"""What a table's numbers mean, said beside its link where the column names cannot."""


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


def study_plan(
    store: StudyStore, study: str | None, config: StudyConfig | None = None
) -> tuple[str, StudyConfig | None]:
    """The study to report and its plan: the given config, else the study file the server
    recorded in the database, else None (the defaults, said so in the report)."""
    with store.session() as s:
        names = sorted(set(s.scalars(select(ParticipantRow.study))))
    if study is None:
        if len(names) > 1:
            raise StoreError(
                f"the database holds studies {', '.join(names)}: choose one with --study"
            )
        study = names[0] if names else (config.study if config else "")
    if not study or study not in names:
        raise StoreError(f"no participants{' in study ' + study if study else ''} in {store.url}")
    if config is None:
        recorded = store.recorded_config(study)
        if recorded is not None:
            try:
                config = load_study(recorded)
            except ConfigError:
                config = None  # a file of another version: the defaults, said so
    return study, config


def write_report(
    store: StudyStore,
    out_dir: Path,
    study: str | None = None,
    threshold: float | None = None,
    judge: str | None = None,
    config: StudyConfig | None = None,
    reply_judge: str | None = None,
) -> list[Path]:
    """Compute every analysis and write figures, CSV tables and index.html into out_dir.

    The plan (inclusion rule, change threshold, minimum n) is the study file's: ``config``,
    else the one recorded in the database by the server; ``threshold`` overrides the
    change rule. Strategy results (counts and effects) use one judge's codes (``judge``,
    or the one that coded last), else an older database's single-label labels, named in
    the report. The report is written to a new folder and then
    put in place, so a failure leaves no half-written report that could be taken for new.
    """
    study, config = study_plan(store, study, config)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    except OSError as exc:
        raise StoreError(f"cannot create report folder {out_dir}: {exc.strerror}") from exc
    try:
        names = _write_into(store, work, study, config, threshold, judge, reply_judge)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return [out_dir / name for name in names]


def mark_stale(out_dir: Path, reason: str) -> None:
    """Mark an earlier report in ``out_dir`` as not current (a new one could not be
    written): a banner on its page and STALE.txt beside it."""
    index = out_dir / "index.html"
    if not index.is_file():
        return
    banner = (
        "<p id='stale' style='background:#fdd;padding:.6rem;border:2px solid #b00'>"
        f"<strong>Out of date:</strong> a newer report could not be written "
        f"({html.escape(reason)}). These results are from an earlier run.</p>"
    )
    text = index.read_text(encoding="utf-8")
    if "id='stale'" not in text:
        index.write_text(text.replace("<body>", "<body>" + banner, 1), encoding="utf-8")
    (out_dir / "STALE.txt").write_text(reason + "\n", encoding="utf-8")


def _write_into(
    store: StudyStore,
    out_dir: Path,
    study: str,
    config: StudyConfig | None,
    threshold: float | None,
    judge: str | None,
    reply_judge: str | None,
) -> list[str]:
    plan = config.analysis if config is not None else Analysis()
    threshold = (
        threshold
        if threshold is not None
        else (config.stance_change_threshold if config is not None else 0.5)
    )
    min_coverage = config.chatbot.min_probe_coverage if config is not None else 0.5
    frames = load_frames(store, study, judge=judge, reply_judge=reply_judge)
    rater = str(frames["reply_stances"].attrs.get("judge", ""))
    everyone = inclusion(frames["participants"], plan)
    pilot = bool(everyone.attrs.get("pilot"))
    flow = flow_table(everyone)
    scale = (
        study_scale(everyone[everyone["included"]])
        if everyone["included"].any()
        else (study_scale(everyone))
    )
    all_people = participant_frame({**frames, "participants": everyone}, scale, min_coverage)
    included = everyone[everyone["included"]]
    analysed = {**frames, "participants": included}
    people = all_people[all_people["included"]]
    turns = turn_frame(analysed, threshold)
    summary = condition_summary(people)
    by_turn = per_turn(turns)
    strategies = strategy_frame(analysed, turns)
    statistics = claim_tests(people, turns, scale, plan.min_n, strategies)
    low = people[people["low_coverage"]]
    if len(low):
        flag = (
            f"rests on probe answers below {min_coverage:.0%} coverage "
            f"({len(low)} of {len(people)} participants)"
        )
        probe_rows = statistics["test"].str.contains("probe")
        statistics.loc[probe_rows, "note"] = [
            f"{n}; {flag}" if n else flag for n in statistics.loc[probe_rows, "note"]
        ]
    counts = label_counts(analysed)
    agreement = formula_safe(agreement_table(store))
    tables = {
        "participants": all_people,
        "flow": flow,
        "statistics": statistics,
        "turns": turns,
        "conditions": summary,
        "per_turn": by_turn,
        "strategy_counts": counts,
        "agreement": agreement,
    }
    written: list[str] = []
    for name, table in tables.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
        written.append(f"{name}.csv")
    figures = _figures(out_dir, by_turn, summary, scale)
    written.extend(path.name for _, path in figures)
    context = {
        "study": study,
        "store": store,
        "judge": str(counts.attrs.get("judge", "")),
        "kind": str(counts.attrs.get("kind", "")),
        "rater": rater,
        "pilot": pilot,
        "plan": plan,
        "threshold": threshold,
        "scale": scale,
        "planned": config is not None,
        "low": len(low),
        "min_coverage": min_coverage,
        "mode": frames["stances"].attrs.get("mode", ""),
    }
    (out_dir / "index.html").write_text(_html(tables, figures, context), encoding="utf-8")
    written.append("index.html")
    return written


def _figures(
    out_dir: Path, by_turn: pd.DataFrame, summary: pd.DataFrame, scale: Scale
) -> list[tuple[str, Path]]:
    figures: list[tuple[str, Path]] = []
    chat = by_turn[by_turn["condition"] != "static"] if not by_turn.empty else by_turn
    if not chat.empty:
        figures.append(
            (
                "Stance per turn: the chatbot (hidden probe; judge of its replies) and the "
                "participants (per-turn answers)",
                _plot_lines(
                    chat,
                    [
                        ("llm", "-", "chatbot probe"),
                        ("judge", "--", "chatbot judge"),
                        ("human", ":", "human"),
                    ],
                    out_dir / "stance_per_turn.png",
                    "Stance per turn",
                    f"stance ({scale.low}-{scale.high})",
                    (scale.low, scale.high),
                ),
            )
        )
        figures.append(
            (
                "Opinion gap |human − chatbot| over turns",
                _plot_lines(
                    chat,
                    [("gap", "-", "gap")],
                    out_dir / "opinion_gap.png",
                    "Opinion gap over turns",
                    "|human − chatbot|",
                ),
            )
        )
        later = chat[chat["turn"] > 0]
        figures.append(
            (
                "Share changing at each turn (one rule for both sides; n per turn in "
                "per_turn.csv: people stop at different turns)",
                _plot_lines(
                    later,
                    [("p_llm_change", "-", "chatbot"), ("p_human_change", ":", "human")],
                    out_dir / "change_likelihood.png",
                    "Share changing at each turn",
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
                    f"points ({scale.low}-{scale.high} scale)",
                ),
            )
        )
    return figures


def _statistics_html(statistics: pd.DataFrame) -> str:
    """The tests as a reader wants them: a test that did not run says why, not a number."""
    rows = []
    for r in statistics.itertuples():
        if pd.isna(r.estimate):
            numbers = (
                f"<td colspan='4' class='not-run'>{html.escape(str(r.note or 'not run'))}</td>"
            )
        else:
            ci = "–" if pd.isna(r.ci_low) else f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"
            p = "–" if pd.isna(r.p) else f"{r.p:.3g}"
            p_adj = "–" if pd.isna(r.p_adjusted) else f"{r.p_adjusted:.3g}"
            numbers = f"<td>{r.estimate:.2f}</td><td>{ci}</td><td>{p}</td><td>{p_adj}</td>"
        note = "" if pd.isna(r.estimate) else html.escape(str(r.note or ""))
        rows.append(
            f"<tr><td>{html.escape(str(r.claim_id))}</td><td>{html.escape(str(r.condition))}"
            f"</td><td>{html.escape(str(r.test))}</td><td>{int(r.n)}</td>{numbers}"
            f"<td>{note}</td></tr>"
        )
    return (
        "<div class='scroll'><table id='statistics'><tr><th>claim</th><th>condition</th>"
        "<th>test</th><th>n</th><th>estimate</th><th>95% CI</th><th>p</th><th>p (Holm)</th>"
        "<th>note</th></tr>" + "".join(rows) + "</table></div>"
    )


def _html(
    tables: dict[str, pd.DataFrame], figures: list[tuple[str, Path]], c: dict[str, Any]
) -> str:
    plan: Analysis = c["plan"]
    scale: Scale = c["scale"]
    flow = tables["flow"]
    analysed = int(flow.loc[flow["stage"] == "analysed", "all"].iloc[0])
    entered = int(flow.loc[flow["stage"] == "entered", "all"].iloc[0])
    rule = [
        label
        for on, label in (
            (plan.require_completed, "completed the study"),
            (plan.require_attention, "passed every attention check"),
            (plan.exclude_simulated, "not simulated"),
            (plan.exclude_withdrawn, "not withdrawn"),
        )
        if on
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>Study report {html.escape(c['study'])}</title>",
        "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:72rem;margin:auto;"
        "padding:1rem}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}"
        "td,th{border:1px solid #ddd;padding:.2rem .45rem}img{max-width:100%;height:auto}"
        # the page fits its window: wide tables scroll in their own box, a long path or
        # judge name breaks instead of widening the page
        "p,li,h1,h2{overflow-wrap:anywhere}"
        ".scroll{overflow-x:auto;max-width:100%}.not-run{color:#666;font-style:italic}"
        ".pilot{background:#fff3cd;padding:.6rem;border:1px solid #c9a227}</style>",
        "</head><body>",
        f"<h1>Human-LLM study report · {html.escape(c['study'])}</h1>",
    ]
    if c["pilot"]:
        parts.append(
            "<p class='pilot' id='pilot'><strong>Pilot:</strong> every participant in this "
            "database is simulated, so all of them are analysed. Simulated people are not "
            "people: these numbers test the pipeline, not the paper's claims.</p>"
        )
    parts += [
        f"<p>{html.escape(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))} · "
        f"<strong id='analysed'>{analysed} analysed</strong> of {entered} who entered · "
        f"database {html.escape(_masked(c['store'].url))}</p>",
        "<h2>Analysis plan</h2><ul id='plan'>",
        f"<li>Included: {html.escape(', '.join(rule) or 'everyone')} "
        f"({'the study file' if c['planned'] else 'defaults: no study file was recorded'})."
        "</li>",
        f"<li>Stance item: {scale.low}-{scale.high}, "
        + html.escape(", ".join(f"{p} = {t}" for p, t in scale.labels))
        + (" (labelled midpoint)" if scale.midpoint is not None else " (no midpoint)")
        + ".</li>",
        f"<li>A change on either side: a move of at least {c['threshold']:g} points (one "
        "rule for both sides).</li>",
        f"<li>Tests need at least {plan.min_n} observations; fewer: not run. p values are "
        "Holm-adjusted within each family (claim · test · measure).</li>",
        f"<li>Chatbot stance: hidden probe ({html.escape(str(c['mode']))})"
        + (
            f"; judge of replies: <strong>{html.escape(c['rater'])}</strong>"
            if c["rater"]
            else "; no judge ratings of replies (run <code>study rate-replies</code>)"
        )
        + ".</li>",
    ]
    if c["low"]:
        parts.append(
            f"<li class='warning'><strong>{c['low']} analysed participant(s) have probe "
            f"answers below {c['min_coverage']:.0%} coverage</strong>: every probe-based "
            "number is flagged in statistics.csv.</li>"
        )
    parts.append("</ul>")
    parts.append(
        f"<p id='judge'>Strategy labels by judge: <strong>{html.escape(c['judge'])}</strong> "
        f"({html.escape(c['kind'])}), used by strategy counts and strategy effects.</p>"
        if c["judge"]
        else "<p id='judge'>No strategy labels (run <code>report --judge MODEL</code>).</p>"
    )
    parts.append("<h2>Participant flow</h2><p><a href='flow.csv'>flow.csv</a></p>")
    parts.append("<div class='scroll'>" + flow.to_html(index=False, escape=True) + "</div>")
    parts.append("<h2>Claims and tests</h2><p><a href='statistics.csv'>statistics.csv</a></p>")
    parts.append(_statistics_html(tables["statistics"]))
    for caption, path in figures:
        parts.append(
            f"<h2>{html.escape(caption)}</h2><img src='{html.escape(path.name)}' "
            f"alt='{html.escape(caption)}'>"
        )
    for name in ("conditions", "per_turn", "strategy_counts", "agreement"):
        if name == "agreement" and tables[name].empty:
            parts.append(
                "<h2>agreement</h2><p>No second rater: export a sample for human coders with "
                "<code>stancelab study coding export</code>.</p>"
            )
            continue
        table = tables[name]
        parts.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2>")
        parts.append(f"<p><a href='{name}.csv'>{name}.csv</a>{_MEANING.get(name, '')}</p>")
        parts.append(
            "<div class='scroll'>"
            + table.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}", na_rep="–")
            + "</div>"
        )
    parts.append(
        "<p>Per participant (with <code>included</code> and <code>excluded_reason</code>): "
        "<a href='participants.csv'>participants.csv</a>; per turn: "
        "<a href='turns.csv'>turns.csv</a>.</p></body></html>"
    )
    return "\n".join(parts)


def _masked(url: str) -> str:

    return safe_url(url)
