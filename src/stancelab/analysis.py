"""Attitude tables and plots from a results store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from stancelab.store import AgentRow, DebateRow, Store, SurveyRow

if TYPE_CHECKING:
    import pandas as pd

KIND_COLORS = {"republican": "#c0392b", "democrat": "#2471a3", "default": "#555555"}


def attitude_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per survey answer of a run, with its debate and agent."""
    import pandas as pd

    query = (
        select(
            DebateRow.id.label("debate_id"), DebateRow.topic, DebateRow.setup,
            DebateRow.repetition, SurveyRow.iteration, SurveyRow.agent_index, AgentRow.name,
            AgentRow.kind, SurveyRow.question_id, SurveyRow.mode, SurveyRow.ok, SurveyRow.score,
            SurveyRow.most_likely, SurveyRow.entropy_bits, SurveyRow.coverage,
        )
        .join(SurveyRow, SurveyRow.debate_id == DebateRow.id)
        .join(AgentRow, (AgentRow.debate_id == DebateRow.id)
              & (AgentRow.agent_index == SurveyRow.agent_index))
        .where(DebateRow.run_id == run_id)
        .order_by(DebateRow.id, SurveyRow.iteration, SurveyRow.agent_index)
    )
    with store.engine.connect() as conn:
        return pd.read_sql(query, conn)


def mean_attitudes(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard error and count per topic, setup, kind, mode and iteration.

    Failed answers (no number) are left out of the mean and counted in ``failed``.
    """
    keys = ["topic", "setup", "kind", "mode", "iteration"]
    if "question_id" in frame:
        frame = frame[frame["question_id"] == "attitude"]
    ok = frame[frame["ok"].astype(bool)]
    grouped = ok.groupby(keys)["score"]
    table = grouped.agg(mean="mean", sem="sem", n="count").reset_index()
    failed = (~frame["ok"].astype(bool)).groupby([frame[k] for k in keys]).sum()
    table["failed"] = [int(failed.get(tuple(r), 0)) for r in table[keys].itertuples(index=False)]
    return table


def plot_attitudes(frame: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """A panel per topic, a line per agent kind, standard-error bars (paper style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = mean_attitudes(frame)
    topics = list(dict.fromkeys(table["topic"]))
    modes = list(dict.fromkeys(table["mode"]))
    fig, axes = plt.subplots(
        len(modes), max(1, len(topics)), figsize=(4.2 * max(1, len(topics)), 3.4 * len(modes)),
        squeeze=False, sharey=True,
    )
    for r, mode in enumerate(modes):
        for c, topic in enumerate(topics):
            ax = axes[r][c]
            sub = table[(table["topic"] == topic) & (table["mode"] == mode)]
            for (setup, kind), line in sub.groupby(["setup", "kind"], sort=False):
                label = kind if len(set(sub["setup"])) == 1 else f"{kind} ({setup})"
                ax.errorbar(
                    line["iteration"], line["mean"], yerr=line["sem"].fillna(0.0),
                    marker="o", capsize=3, label=label, color=KIND_COLORS.get(str(kind)),
                )
            ax.set_title(topic if len(modes) == 1 else f"{topic} ({mode})")
            ax.set_xlabel("iteration")
            ax.set_ylim(0, 10)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("attitude (0-10)")
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
