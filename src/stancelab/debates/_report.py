"""Experiment reports: paper-style figures, statistics and sample transcripts as HTML."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import select

from stancelab.conversation import Topic
from stancelab.debates._analysis import (
    KIND_COLORS,
    attitude_frame,
    mean_attitudes,
    reply_quality,
)
from stancelab.debates._fidelity import summarise
from stancelab.debates._store import AgentRow, DebateRow, MessageRow, Store
from stancelab.engine import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from stancelab.debates._runner import RunFolder


def change_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Change from the first to the last survey per topic, setup, kind and mode.

    Clustered by debate: agents of the same kind in one debate are not independent, so
    each debate contributes the mean change of its agents of that kind, and the tests run
    over debates: t-test on those changes (paired first/last), Wilcoxon signed-rank, and
    Cohen's d_z (mean change over their standard deviation). ``n`` counts debates,
    ``agents`` the agents behind them. Below ``statistics.MIN_N`` debates (or with no
    spread) the p-values and d_z are NaN and ``note`` says why ("too few to test: n=2 <
    5"): a p-value from two debates is not a finding.
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    frame = frame[(frame["question_id"] == "attitude") & frame["ok"].astype(bool)]
    if "condition" not in frame:
        frame = frame.assign(condition="")
    rows = []
    for (condition, topic, setup, kind, mode), group in frame.groupby(
        ["condition", "topic", "setup", "kind", "mode"]
    ):
        first_it, last_it = group["iteration"].min(), group["iteration"].max()
        wide = group.pivot_table(
            index=["debate_id", "agent_index"], columns="iteration", values="score"
        )
        if first_it == last_it or first_it not in wide or last_it not in wide:
            continue
        agent_pairs = wide[[first_it, last_it]].dropna()
        # One row per debate: the mean of its agents of this kind.
        pairs = agent_pairs.groupby(level="debate_id").mean()
        diff = pairs[last_it] - pairs[first_it]
        n = len(diff)
        # lazy: scipy and statsmodels are heavy, and reading a run must not need them
        from stancelab.conversation._statistics import MIN_N, paired_tests  # noqa: PLC0415

        t_row, wilcoxon_row = paired_tests(
            pairs[first_it], pairs[last_it], claim_id="attitude-change", min_n=MIN_N
        )
        d_z = float(diff.mean() / diff.std(ddof=1)) if t_row.ran else math.nan
        rows.append(
            {
                "condition": condition,
                "topic": topic,
                "setup": setup,
                "kind": kind,
                "mode": mode,
                "n": n,
                "agents": len(agent_pairs),
                "first_iteration": int(first_it),
                "last_iteration": int(last_it),
                "mean_first": float(pairs[first_it].mean()),
                "mean_last": float(pairs[last_it].mean()),
                "mean_change": float(diff.mean()),
                "t_test_p": t_row.p,
                "wilcoxon_p": wilcoxon_row.p,
                "cohens_dz": d_z,
                # Why a test did not run (too few debates, no spread); rank-CI remarks are
                # about an interval this table does not show.
                "note": next((r.note for r in (t_row, wilcoxon_row) if not r.ran), ""),
            }
        )
    return pd.DataFrame(rows)


def tuning_effects(frame: pd.DataFrame) -> pd.DataFrame:
    """Final attitude of every tuned condition against the first untuned one (the base).

    Paired by debate (topic, setup, repetition): base and tuned debates share personas
    and seeds. Agents of the same kind in one debate are averaged first (they are not
    independent), and so are conditions with the same label (training seeds). Paired
    t-test, Wilcoxon and Cohen's d_z on the per-debate differences.
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import
    from scipy import stats  # noqa: PLC0415 - lazy: scipy is heavy to import

    if "condition" not in frame or not frame["tuned"].any():
        return pd.DataFrame()
    ok = frame[(frame["question_id"] == "attitude") & frame["ok"].astype(bool)]
    last = ok[ok["iteration"] == ok.groupby("debate_id")["iteration"].transform("max")]
    keys = ["topic", "setup", "kind", "mode", "repetition"]
    untuned = [
        c
        for c in dict.fromkeys(last["condition"])
        if not last[last["condition"] == c]["tuned"].any()
    ]
    if not untuned:
        return pd.DataFrame()
    base = last[last["condition"] == untuned[0]].groupby(keys)["score"].mean()
    rows = []
    for condition in dict.fromkeys(last[last["tuned"].astype(bool)]["condition"]):
        tuned = last[last["condition"] == condition].groupby(keys)["score"].mean()
        both = pd.concat({"base": base, "tuned": tuned}, axis=1).dropna()
        for (topic, setup, kind, mode), pairs in both.groupby(level=[0, 1, 2, 3]):
            diff = pairs["tuned"] - pairs["base"]
            n = len(diff)
            t_p = w_p = d_z = math.nan
            if n >= 2 and diff.std(ddof=1) > 0:
                t_p = float(stats.ttest_rel(pairs["tuned"], pairs["base"]).pvalue)
                d_z = float(diff.mean() / diff.std(ddof=1))
            if n >= 2 and (diff != 0).any():
                w_p = float(stats.wilcoxon(diff).pvalue)
            rows.append(
                {
                    "condition": condition,
                    "base": untuned[0],
                    "topic": topic,
                    "setup": setup,
                    "kind": kind,
                    "mode": mode,
                    "n": n,
                    "final_base": float(pairs["base"].mean()),
                    "final_tuned": float(pairs["tuned"].mean()),
                    "difference": float(diff.mean()),
                    "t_test_p": t_p,
                    "wilcoxon_p": w_p,
                    "cohens_dz": d_z,
                }
            )
    return pd.DataFrame(rows)


def parse_failures(
    frame: pd.DataFrame, config: dict[str, Any], versions: dict[str, Any]
) -> pd.DataFrame:
    """Survey answers that held no number, per model, prompt format, agent kind and mode."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    frame = frame[frame["question_id"] == "attitude"]
    formats = versions.get("prompt_formats") or {}
    rows = []
    for (condition, kind, mode), group in frame.groupby(
        ["condition_name", "kind", "mode"], sort=False
    ):
        entry = _model_entry(config, str(kind), str(condition))
        key = f"{condition}/{kind}" if condition else str(kind)
        failed = int((~group["ok"].astype(bool)).sum())
        rows.append(
            {
                "model": entry.get("name", "?"),
                "format": formats.get(key, "transcript"),
                "kind": kind,
                "mode": mode,
                "answers": len(group),
                "no_number": failed,
                "share": failed / len(group) if len(group) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def _model_entry(config: dict[str, Any], kind: str, condition: str) -> dict[str, Any]:
    for c in config.get("conditions") or []:
        if c.get("name") == condition:
            chosen = (c.get("models") or {}).get(kind) or c.get("model")
            if chosen:
                return dict(chosen)
    return dict((config.get("models") or {}).get(kind) or config.get("model") or {})


def default_baseline(store: Store, run_id: str) -> dict[str, float]:
    """The Default agent's pre-debate score per topic, from the fidelity check."""
    return {
        r.topic: r.score
        for r in store.persona_checks(run_id)
        if r.kind == "default" and r.score is not None
    }


def default_gap(table: pd.DataFrame, baseline: dict[str, float]) -> pd.DataFrame:
    """Per topic, setup, partisan kind and iteration: mean attitude minus the Default line.

    The Default line is the Default agent's mean in the same setup when it takes part,
    else its pre-debate score. ``crosses`` says whether the partisan line ever changes
    side of the Default line after the first survey.
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    if "condition" not in table:
        table = table.assign(condition="")
    rows = []
    for (condition, topic, setup, mode), group in table.groupby(
        ["condition", "topic", "setup", "mode"]
    ):
        default = group[group["kind"] == "default"].set_index("iteration")["mean"]
        for kind, line in group[group["kind"] != "default"].groupby("kind"):
            line = line.set_index("iteration")["mean"]
            if len(default):
                ref = default.reindex(line.index)
                source = "in debate"
            elif topic in baseline:
                ref = pd.Series(baseline[topic], index=line.index)
                source = "pre-debate"
            else:
                continue
            gap = (line - ref).dropna()
            if gap.empty:
                continue
            signs = [math.copysign(1, g) for g in gap if g != 0]
            crosses = bool(signs) and any(s != signs[0] for s in signs[1:])
            rows.append(
                {
                    "condition": condition,
                    "topic": topic,
                    "setup": setup,
                    "mode": mode,
                    "kind": kind,
                    "default_source": source,
                    "gap_first": float(gap.iloc[0]),
                    "gap_last": float(gap.iloc[-1]),
                    "abs_gap_change": float(abs(gap.iloc[-1]) - abs(gap.iloc[0])),
                    "crosses_default": crosses,
                }
            )
    return pd.DataFrame(rows)


def plot_setup(
    table: pd.DataFrame,
    setup: str,
    mode: str,
    baseline: dict[str, float],
    path: Path,
    max_iteration: int | None = None,
) -> Path:
    """Draw :func:`setup_figure` into a PNG file."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    fig = setup_figure(table, setup, mode, baseline, max_iteration)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def setup_figure(
    table: pd.DataFrame,
    setup: str,
    mode: str,
    baseline: dict[str, float],
    max_iteration: int | None = None,
) -> Any:
    """The paper's figure for one setup: a panel per topic, a line per kind, SE bars,
    and the Default agent's pre-debate score dashed where it does not take part. With
    tuned model conditions, a row of panels per tuned label: the base lines solid, the
    tuned ones dotted (Figures 6, 11, 12)."""
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib is heavy to import
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    sub = table[(table["setup"] == setup) & (table["mode"] == mode)]
    if max_iteration is not None:
        sub = sub[sub["iteration"] <= max_iteration]
    topics = list(dict.fromkeys(sub["topic"]))
    tuned_flags = sub["tuned"].astype(bool)
    untuned = list(dict.fromkeys(sub[~tuned_flags]["condition"]))
    rows: list[list[str]] = [[*untuned, t] for t in dict.fromkeys(sub[tuned_flags]["condition"])]
    rows = rows or [untuned]
    width = max(1, len(topics))
    fig, axes = plt.subplots(
        len(rows), width, figsize=(4.2 * width, 3.4 * len(rows)), squeeze=False, sharey=True
    )
    for r, shown in enumerate(rows):
        for c, topic in enumerate(topics):
            ax = axes[r][c]
            part = sub[(sub["topic"] == topic) & sub["condition"].isin(shown)]
            several = len(shown) > 1
            for (condition, tuned, kind), line in part.groupby(
                ["condition", "tuned", "kind"], sort=False
            ):
                ax.errorbar(
                    line["iteration"],
                    line["mean"],
                    yerr=line["sem"].fillna(0.0),
                    marker="o",
                    markersize=3,
                    capsize=3,
                    label=f"{kind} ({condition})" if several else str(kind),
                    color=KIND_COLORS.get(str(kind)),
                    linestyle=":" if tuned else "-",
                )
            if "default" not in set(part["kind"]) and topic in baseline:
                ax.axhline(
                    baseline[topic],
                    linestyle="--",
                    color=KIND_COLORS["default"],
                    label="default (pre-debate)",
                )
            tuned_label = shown[-1] if shown[-1] not in untuned else ""
            ax.set_title(f"{topic} · {tuned_label}" if tuned_label else topic)
            ax.set_xlabel("iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(0, 10)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("attitude (0-10)")
            ax.legend(fontsize=7)
    fig.suptitle(f"{setup} ({mode})")
    fig.tight_layout()
    return fig


@dataclass
class Transcript:
    """A sample debate for the report."""

    title: str
    lines: list[tuple[str, str, str]]  # (speaker, kind, text)


def sample_transcripts(store: Store, run_id: str, per_cell: int = 1) -> list[Transcript]:
    """The first repetition(s) of each topic x setup."""
    out = []
    with store.session() as s:
        debates = s.scalars(
            select(DebateRow)
            .where(DebateRow.run_id == run_id, DebateRow.repetition < per_cell)
            .order_by(DebateRow.id)
        )
        for d in debates:
            kinds = {
                a.agent_index: a.kind
                for a in s.scalars(select(AgentRow).where(AgentRow.debate_id == d.id))
            }
            messages = s.scalars(
                select(MessageRow)
                .where(MessageRow.debate_id == d.id)
                .order_by(MessageRow.iteration)
            )
            where = f"{d.condition} · " if d.condition else ""
            out.append(
                Transcript(
                    f"{where}{d.topic} · {d.setup} · repetition {d.repetition}",
                    [(m.speaker, kinds.get(m.agent_index, ""), m.text) for m in messages],
                )
            )
    return out


def write_report(folder: RunFolder) -> Path:
    """Write report/index.html with figures, tables and transcripts; returns its path."""

    meta = folder.read_meta()
    store = folder.open_store()
    run = store.get_run(str(meta["run_id"]))
    frame = attitude_frame(store, run.id)
    if frame.empty:
        raise ConfigError(f"{folder.path} has no survey answers yet; run the experiment first")
    out = folder.report_dir
    out.mkdir(parents=True, exist_ok=True)
    table = mean_attitudes(frame)
    baseline = default_baseline(store, run.id)
    figures = []
    for setup in dict.fromkeys(table["setup"]):
        for mode in dict.fromkeys(table["mode"]):
            name = f"{setup}-{mode}.png".replace(" ", "_")
            plot_setup(table, str(setup), str(mode), baseline, out / name)
            figures.append({"file": name, "title": f"{setup} ({mode})"})
    changes = change_statistics(frame)
    gaps = default_gap(table, baseline)
    effects = tuning_effects(frame)
    if not effects.empty:
        effects.to_csv(out / "tuning_effect.csv", index=False)
    table.to_csv(out / "attitude_means.csv", index=False)
    changes.to_csv(out / "attitude_change.csv", index=False)
    gaps.to_csv(out / "default_gap.csv", index=False)
    fidelity = _fidelity_table(store, run.id, run.config)
    failures = parse_failures(frame, run.config, run.versions or {})
    failures.to_csv(out / "parse_failures.csv", index=False)
    quality = reply_quality(store, run.id)
    env = Environment(
        loader=PackageLoader("stancelab.debates", "report_assets"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    html = env.get_template("report.html.j2").render(
        run=run,
        meta=meta,
        figures=figures,
        fidelity=fidelity,
        means=_records(table),
        changes=_records(changes),
        gaps=_records(gaps),
        effects=_records(effects) if not effects.empty else None,
        failures=_records(failures),
        quality=quality,
        versions=run.versions or {},
        transcripts=sample_transcripts(store, run.id),
        colors=KIND_COLORS,
    )
    path = out / "index.html"
    path.write_text(html, encoding="utf-8")
    return path


def _records(frame: pd.DataFrame) -> dict[str, Any]:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.3g}" if abs(v) < 0.01 else f"{v:.2f}"
        return str(v)

    # A run without model conditions has no use for the condition columns.
    if "condition" in frame and not frame["condition"].astype(str).str.len().any():
        frame = frame.drop(columns=[c for c in ("condition", "tuned") if c in frame])
    return {
        "columns": list(frame.columns),
        "rows": [[fmt(v) for v in row] for row in frame.itertuples(index=False)],
    }


def _fidelity_table(store: Store, run_id: str, config: dict[str, Any]) -> dict[str, Any]:

    rows = store.persona_checks(run_id)
    topics = [Topic(t["name"], t.get("big_problem_for")) for t in config.get("topics", [])]
    personas = config.get("personas", {})
    on_side, separation = personas.get("min_on_side", 0.7), personas.get("min_separation", 1.0)
    out = []
    verdicts = []
    for t in summarise(rows, topics):  # type: ignore[arg-type]
        verdict = t.holds(on_side, separation)
        verdicts.append(verdict)
        out.append(
            {
                "topic": t.topic,
                "republican": "{}/{}".format(*t.on_side.get("republican", (0, 0))),
                "democrat": "{}/{}".format(*t.on_side.get("democrat", (0, 0))),
                "means": {k: ("–" if v is None else f"{v:.2f}") for k, v in t.means.items()},
                "separation": "–" if t.separation is None else f"{t.separation:+.2f}",
                "holds": {True: "yes", False: "NO", None: "–"}[verdict],
            }
        )
    return {
        "rows": out,
        "failed": any(v is False for v in verdicts),
        "min_on_side": on_side,
        "min_separation": separation,
    }
