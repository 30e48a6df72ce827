"""Attitude tables and plots from a results store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from stancelab.debates.experiment import ConditionConfig
from stancelab.debates.store import AgentRow, DebateRow, MessageRow, RunRow, Store, SurveyRow

if TYPE_CHECKING:
    import pandas as pd

KIND_COLORS = {"republican": "#c0392b", "democrat": "#2471a3", "default": "#555555"}


def condition_groups(store: Store, run_id: str) -> dict[str, tuple[str, bool]]:
    """Per condition name of a run: the label it is averaged under and whether it is tuned."""

    with store.session() as s:
        run = s.get(RunRow, run_id)
        stored = (run.config or {}).get("conditions", []) if run is not None else []
    out = {"": ("", False)}
    for item in stored:
        condition = ConditionConfig.model_validate(item)
        out[condition.name] = (condition.group, condition.is_tuned())
    return out


def attitude_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per survey answer of a run, with its debate and agent.

    ``condition`` is the condition's label (conditions sharing one, such as adapters
    trained with different seeds, are averaged together); ``tuned`` marks tuned models.
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    query = (
        select(
            DebateRow.id.label("debate_id"),
            DebateRow.condition.label("condition_name"),
            DebateRow.topic,
            DebateRow.setup,
            DebateRow.repetition,
            SurveyRow.iteration,
            SurveyRow.agent_index,
            AgentRow.name,
            AgentRow.kind,
            SurveyRow.question_id,
            SurveyRow.mode,
            SurveyRow.ok,
            SurveyRow.score,
            SurveyRow.most_likely,
            SurveyRow.entropy_bits,
            SurveyRow.coverage,
        )
        .join(SurveyRow, SurveyRow.debate_id == DebateRow.id)
        .join(
            AgentRow,
            (AgentRow.debate_id == DebateRow.id) & (AgentRow.agent_index == SurveyRow.agent_index),
        )
        .where(DebateRow.run_id == run_id)
        .order_by(DebateRow.id, SurveyRow.iteration, SurveyRow.agent_index)
    )
    with store.engine.connect() as conn:
        frame = pd.read_sql(query, conn)
    groups = condition_groups(store, run_id)
    names = frame["condition_name"].astype(str)
    frame.insert(2, "condition", [groups.get(n, (n, False))[0] for n in names])
    frame.insert(3, "tuned", [groups.get(n, (n, False))[1] for n in names])
    return frame


def mean_attitudes(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard error and count per condition, topic, setup, kind, mode and iteration.

    Failed answers (no number) are left out of the mean and counted in ``failed``.
    """
    if "condition" not in frame:
        frame = frame.assign(condition="", tuned=False)
    keys = ["condition", "tuned", "topic", "setup", "kind", "mode", "iteration"]
    if "question_id" in frame:
        frame = frame[frame["question_id"] == "attitude"]
    ok = frame[frame["ok"].astype(bool)]
    grouped = ok.groupby(keys, sort=False)["score"]  # conditions keep the file's order
    table = grouped.agg(mean="mean", sem="sem", n="count").reset_index()
    failed = (~frame["ok"].astype(bool)).groupby([frame[k] for k in keys]).sum()
    table["failed"] = [int(failed.get(tuple(r), 0)) for r in table[keys].itertuples(index=False)]
    return table


def plot_attitudes(frame: pd.DataFrame, path: Path, title: str | None = None) -> Path:
    """A panel per topic, a line per agent kind, standard-error bars (paper style)."""
    import matplotlib  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - lazy: matplotlib is heavy to import

    table = mean_attitudes(frame)
    topics = list(dict.fromkeys(table["topic"]))
    modes = list(dict.fromkeys(table["mode"]))
    fig, axes = plt.subplots(
        len(modes),
        max(1, len(topics)),
        figsize=(4.2 * max(1, len(topics)), 3.4 * len(modes)),
        squeeze=False,
        sharey=True,
    )
    for r, mode in enumerate(modes):
        for c, topic in enumerate(topics):
            ax = axes[r][c]
            sub = table[(table["topic"] == topic) & (table["mode"] == mode)]
            several = len(set(sub["setup"])) > 1 or len(set(sub["condition"])) > 1
            for (condition, tuned, setup, kind), line in sub.groupby(
                ["condition", "tuned", "setup", "kind"], sort=False
            ):
                where = ", ".join(str(x) for x in (condition, setup) if x)
                ax.errorbar(
                    line["iteration"],
                    line["mean"],
                    yerr=line["sem"].fillna(0.0),
                    marker="o",
                    capsize=3,
                    label=f"{kind} ({where})" if several else kind,
                    color=KIND_COLORS.get(str(kind)),
                    linestyle=":" if tuned else "-",
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


def turn_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per reply of a run, in speaking order, with its debate and speaker."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    query = (
        select(
            DebateRow.id.label("debate_id"),
            DebateRow.condition.label("condition_name"),
            DebateRow.topic,
            DebateRow.setup,
            DebateRow.repetition,
            MessageRow.iteration,
            MessageRow.agent_index,
            MessageRow.speaker,
            AgentRow.kind,
            MessageRow.text,
            MessageRow.attempts,
            MessageRow.truncated,
            MessageRow.prompt_tokens,
            MessageRow.cached_tokens,
            MessageRow.completion_tokens,
            MessageRow.latency_s,
        )
        .join(MessageRow, MessageRow.debate_id == DebateRow.id)
        .join(
            AgentRow,
            (AgentRow.debate_id == DebateRow.id) & (AgentRow.agent_index == MessageRow.agent_index),
        )
        .where(DebateRow.run_id == run_id)
        .order_by(DebateRow.id, MessageRow.iteration)
    )
    with store.engine.connect() as conn:
        return pd.read_sql(query, conn)
