"""Attitude tables and plots from a results store."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from stancelab.debates._experiment import ConditionConfig
from stancelab.debates._store import (
    AgentRow,
    DebateRow,
    DecisionRow,
    MessageRow,
    RunRow,
    Store,
    SurveyRow,
)

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
    frame = _per_agent_rows(
        store,
        run_id,
        SurveyRow,
        [
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
        ],
        order=[SurveyRow.iteration, SurveyRow.agent_index],
    )
    groups = condition_groups(store, run_id)
    names = frame["condition_name"].astype(str)
    frame.insert(2, "condition", [groups.get(n, (n, False))[0] for n in names])
    frame.insert(3, "tuned", [groups.get(n, (n, False))[1] for n in names])
    return frame


def clustered_se(values: Sequence[float], clusters: Sequence[object]) -> float:
    """Cluster-robust (CR1) standard error of a mean, clustering by ``clusters``.

    Agents of the same kind in one debate (two Republicans in an echo chamber) hear the
    same conversation, so their answers are not independent: the debate, not the agent,
    is the unit. With one answer per cluster this is the usual standard error; with
    equal-sized clusters it is the standard error of the cluster means. NaN with fewer
    than two clusters.
    """
    if len(values) != len(clusters):
        raise ValueError("values and clusters must have the same length")
    n = len(values)
    if n == 0:
        return math.nan
    mean = sum(values) / n
    sums: dict[object, float] = {}
    for value, cluster in zip(values, clusters, strict=True):
        sums[cluster] = sums.get(cluster, 0.0) + (value - mean)
    g = len(sums)
    if g < 2:
        return math.nan
    return math.sqrt(g / (g - 1) * sum(v * v for v in sums.values())) / n


def mean_attitudes(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard error and count per condition, topic, setup, kind, mode and iteration.

    ``sem`` is clustered by debate (:func:`clustered_se`); ``n`` counts answers and
    ``debates`` the clusters. Failed answers (no number) are left out of the mean and
    counted in ``failed``.
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    if "condition" not in frame:
        frame = frame.assign(condition="", tuned=False)
    keys = ["condition", "tuned", "topic", "setup", "kind", "mode", "iteration"]
    if "question_id" in frame:
        frame = frame[frame["question_id"] == "attitude"]
    ok = frame[frame["ok"].astype(bool)]
    rows = []
    for key, group in ok.groupby(keys, sort=False):  # conditions keep the file's order
        scores = [float(v) for v in group["score"]]
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "mean": sum(scores) / len(scores),
                "sem": clustered_se(scores, list(group["debate_id"])),
                "n": len(scores),
                "debates": int(group["debate_id"].nunique()),
            }
        )
    table = pd.DataFrame(rows, columns=[*keys, "mean", "sem", "n", "debates"])
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


def _costs(table: type[MessageRow] | type[DecisionRow]) -> list[Any]:
    """What a generated answer (a reply, a decision) cost, as its table stores it."""
    return [table.prompt_tokens, table.cached_tokens, table.completion_tokens, table.latency_s]


def turn_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per reply of a run, in speaking order, with its debate and speaker."""
    return _per_agent_rows(
        store,
        run_id,
        MessageRow,
        [
            MessageRow.iteration,
            MessageRow.agent_index,
            MessageRow.speaker,
            AgentRow.kind,
            MessageRow.text,
            MessageRow.attempts,
            MessageRow.truncated,
            *_costs(MessageRow),
        ],
        order=[MessageRow.iteration],
    )


def decision_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per decision whether to speak (agents that decide first, SAUCE's
    asynchronous persons), in the order of the chances: ``speaks`` False is a pass, which
    costs no reply and is shown to no agent. Empty when no agent decides first."""
    return _per_agent_rows(
        store,
        run_id,
        DecisionRow,
        [
            DecisionRow.chance,
            DecisionRow.iteration,
            DecisionRow.agent_index,
            DecisionRow.speaker,
            AgentRow.kind,
            DecisionRow.speaks,
            DecisionRow.raw_text,
            *_costs(DecisionRow),
        ],
        order=[DecisionRow.chance],
    )


def agent_frame(store: Store, run_id: str) -> pd.DataFrame:
    """One row per agent of each debate of a run: its debate's cell, who it is, and what
    it was told (the stored context, a column per entry: ``system_prompt``,
    ``prompt_format``, ``opinion``, ``speaking_personality``, ...; missing in runs made
    before contexts were stored)."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    return pd.DataFrame(
        [
            {
                "debate_id": debate.id,
                "condition_name": debate.condition,
                "topic": debate.topic,
                "setup": debate.setup,
                "repetition": debate.repetition,
                "agent_index": agent.agent_index,
                "name": agent.name,
                "kind": agent.kind,
                "background": agent.background,
                **(agent.context or {}),
            }
            for debate, agent in store.agents(run_id)
        ]
    )


def _per_agent_rows(
    store: Store,
    run_id: str,
    table: type[MessageRow] | type[SurveyRow] | type[DecisionRow],
    columns: list[Any],
    order: list[Any],
) -> pd.DataFrame:
    """Rows of a per-agent table (replies, decisions or survey answers) of one run, each with its
    debate's cell (condition, topic, setup, repetition) and its agent."""
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    query = (
        select(
            DebateRow.id.label("debate_id"),
            DebateRow.condition.label("condition_name"),
            DebateRow.topic,
            DebateRow.setup,
            DebateRow.repetition,
            *columns,
        )
        .join(table, table.debate_id == DebateRow.id)
        .join(
            AgentRow,
            (AgentRow.debate_id == DebateRow.id) & (AgentRow.agent_index == table.agent_index),
        )
        .where(DebateRow.run_id == run_id)
        .order_by(DebateRow.id, *order)
    )
    with store.engine.connect() as conn:
        return pd.read_sql(query, conn)


_SPEAKER_LABEL = re.compile(
    r"(?:^|\n|[.!?\"]\s+)\s*\**([A-Z][A-Za-z'\-]{0,20}(?: [A-Z][A-Za-z'\-]{0,20})?)\**\s*:"
)
_NOT_SPEAKERS = frozenset({"Me", "System", "Note", "Answer", "Reply", "Response", "Assistant"})


def foreign_script(text: str) -> bool:
    """True when a reply holds letters outside the Latin scripts (e.g. a Chinese reply)."""
    return any(ch.isalpha() and ord(ch) > 0x024F for ch in text)


def other_speakers(raw: str, own: str) -> set[str]:
    """Speaker labels in a raw reply ("Tom: ...", at its start, a line's or a sentence's)
    naming anyone but the replying agent: the model writing lines for someone else, a
    debater or an invented one."""
    names = {m.group(1).strip() for m in _SPEAKER_LABEL.finditer(raw)}
    return {n for n in names if n != own and n not in _NOT_SPEAKERS}


def reply_quality(store: Store, run_id: str) -> dict[str, float | int]:
    """How many replies read as a debate: no other script, no lines for other speakers.

    ``clean_share`` is the share of replies with neither. Replies are judged on the raw
    model output (before the debate cut at the next speaker line), since a reply that
    writes lines for someone else ("Jacob: ...", "Tom: ...") shows the model lost the
    conversation; ``invented_speaker`` counts those replies.
    """
    with store.session() as s:
        rows = s.execute(
            select(MessageRow.speaker, MessageRow.text, MessageRow.raw_text)
            .join(DebateRow, MessageRow.debate_id == DebateRow.id)
            .where(DebateRow.run_id == run_id)
        ).all()
    foreign = invented = clean = 0
    for speaker, text, raw in rows:
        is_foreign = foreign_script(text)
        has_invented = bool(other_speakers(raw or "", speaker))
        foreign += is_foreign
        invented += has_invented
        clean += not (is_foreign or has_invented)
    total = len(rows)
    return {
        "replies": total,
        "other_script": foreign,
        "invented_speaker": invented,
        "clean": clean,
        "clean_share": clean / total if total else math.nan,
    }
