"""Both sides' stance dynamics from the study tables, as pandas frames.

Turn k (1-based) is the k-th exchange. ``llm`` at turn k is the chatbot's hidden stance
after its k-th reply (turn 0: before the chat). ``human`` at turn k is the stance the
participant reported after reading the k-th reply: sent with message k+1, or the final
'stance after' for the last turn (turn 0: 'stance before').
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from stancelab.study.store import StudyStore, one_judge, read_table
from stancelab.study.strategies import LABELS


def _sign(x: float) -> float:
    return 0.0 if x == 0 or math.isnan(x) else math.copysign(1.0, x)


def load_frames(
    store: StudyStore,
    study: str | None = None,
    mode: str = "distribution",
    judge: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The raw study tables, filtered to one study, one stance-probe mode and ONE judge's
    strategy labels (``judge``, or the judge that labelled last; the labels frame's
    ``attrs["judge"]`` names it, empty when there are no labels)."""
    participants = read_table(store, "study_participants")
    if study is not None:
        participants = participants[participants["study"] == study]
    ids = set(participants["id"])
    messages = read_table(store, "study_messages")
    messages = messages[messages["participant_id"].isin(ids)]
    if "status" in messages.columns:  # a message whose reply failed was never part of the chat
        messages = messages[messages["status"] != "failed"]
    stances = read_table(store, "study_llm_stances")
    stances = stances[stances["participant_id"].isin(ids) & (stances["mode"] == mode)]
    labels = read_table(store, "study_strategy_labels")
    labels = labels[labels["message_id"].isin(set(messages["id"]))]
    labels, chosen = one_judge(labels, judge, "labels")
    labels.attrs["judge"] = chosen
    return {
        "participants": participants,
        "messages": messages,
        "stances": stances,
        "labels": labels,
    }


def turn_frame(frames: dict[str, pd.DataFrame], threshold: float = 0.5) -> pd.DataFrame:
    """One row per chat participant and turn: both stances, the gap, and who changed."""
    participants = frames["participants"]
    messages = frames["messages"]
    stances = frames["stances"]
    rows: list[dict[str, Any]] = []
    for p in participants.itertuples():
        if p.condition == "static" or pd.isna(p.stance_before):
            continue
        mine = messages[messages["participant_id"] == p.id]
        user = mine[mine["role"] == "user"].set_index("turn")["human_stance"].to_dict()
        llm = stances[stances["participant_id"] == p.id].set_index("turn")["score"].to_dict()
        n_turns = len(user)
        finished = not pd.isna(p.stance_after)
        previous_h: float | None = None
        previous_l: float | None = None
        for k in range(n_turns + 1):
            if k == 0:
                human = float(p.stance_before)
            elif k + 1 in user and not pd.isna(user[k + 1]):
                human = float(user[k + 1])
            elif k == n_turns and finished:
                human = float(p.stance_after)
            else:
                human = math.nan
            llm_k = float(llm[k]) if k in llm and not pd.isna(llm[k]) else math.nan
            row: dict[str, Any] = {
                "participant_id": p.id,
                "condition": p.condition,
                "topic": p.topic,
                "simulated": bool(p.simulated),
                "turn": k,
                "human": human,
                "llm": llm_k,
                "gap": abs(human - llm_k),
                "human_changed": math.nan,
                "llm_changed": math.nan,
                "human_delta": math.nan,
                "llm_delta": math.nan,
            }
            if k > 0 and previous_h is not None and previous_l is not None:
                row["human_delta"] = human - previous_h
                row["llm_delta"] = llm_k - previous_l
                if not math.isnan(row["human_delta"]):
                    row["human_changed"] = float(row["human_delta"] != 0)
                if not math.isnan(row["llm_delta"]):
                    row["llm_changed"] = float(abs(row["llm_delta"]) >= threshold)
            rows.append(row)
            previous_h, previous_l = human, llm_k
    return pd.DataFrame(
        rows,
        columns=[
            "participant_id",
            "condition",
            "topic",
            "simulated",
            "turn",
            "human",
            "llm",
            "gap",
            "human_changed",
            "llm_changed",
            "human_delta",
            "llm_delta",
        ],
    )


def participant_frame(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per participant: human change, LLM change, gap, perception error."""
    participants = frames["participants"]
    stances = frames["stances"]
    messages = frames["messages"]
    rows = []
    for p in participants.itertuples():
        llm = stances[stances["participant_id"] == p.id].sort_values("turn")
        llm = llm[llm["score"].notna()]
        n_turns = int(((messages["participant_id"] == p.id) & (messages["role"] == "user")).sum())
        llm_start = (
            float(llm["score"].iloc[0]) if len(llm) and llm["turn"].iloc[0] == 0 else math.nan
        )
        llm_end = float(llm["score"].iloc[-1]) if len(llm) else math.nan
        before = float(p.stance_before) if not pd.isna(p.stance_before) else math.nan
        after = float(p.stance_after) if not pd.isna(p.stance_after) else math.nan
        llm_change = llm_end - llm_start
        perceived = (
            float(p.perceived_end) - float(p.perceived_start)
            if not pd.isna(p.perceived_start) and not pd.isna(p.perceived_end)
            else math.nan
        )
        rows.append(
            {
                "participant_id": p.id,
                "pid": p.pid,
                "condition": p.condition,
                "topic": p.topic,
                "simulated": bool(p.simulated),
                "completed": p.step == "done",
                "turns": n_turns,
                "stance_before": before,
                "stance_after": after,
                "human_change": after - before,
                "llm_start": llm_start,
                "llm_end": llm_end,
                "llm_change": llm_change,
                "llm_toward_human": llm_change * _sign(before - llm_start),
                "human_toward_llm": (after - before) * _sign(llm_start - before),
                "gap_start": abs(before - llm_start),
                "gap_end": abs(after - llm_end),
                "perceived_start": float(p.perceived_start)
                if not pd.isna(p.perceived_start)
                else math.nan,
                "perceived_end": float(p.perceived_end)
                if not pd.isna(p.perceived_end)
                else math.nan,
                "perceived_change": perceived,
                "perception_error": perceived - llm_change,
            }
        )
    return pd.DataFrame(rows)


def _mean_se(values: pd.Series) -> tuple[float, float, int]:
    values = values.dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se, n


def condition_summary(people: pd.DataFrame) -> pd.DataFrame:
    """Per condition: mean (and standard error) of every change measure."""
    measures = [
        "human_change",
        "human_toward_llm",
        "llm_change",
        "llm_toward_human",
        "gap_start",
        "gap_end",
        "perceived_change",
        "perception_error",
    ]
    rows = []
    for condition, group in people.groupby("condition", sort=True):
        row: dict[str, Any] = {"condition": condition, "participants": len(group)}
        for m in measures:
            mean, se, _ = _mean_se(group[m])
            row[m] = mean
            row[f"{m}_se"] = se
        row["abs_human_change"] = _mean_se(group["human_change"].abs())[0]
        row["abs_llm_change"] = _mean_se(group["llm_change"].abs())[0]
        row["abs_perception_error"] = _mean_se(group["perception_error"].abs())[0]
        rows.append(row)
    return pd.DataFrame(rows)


def per_turn(turns: pd.DataFrame) -> pd.DataFrame:
    """Per condition and turn: mean stances, gap, and likelihood of a change on each side."""
    if turns.empty:
        return pd.DataFrame(
            columns=[
                "condition",
                "turn",
                "n",
                "human",
                "llm",
                "gap",
                "p_human_change",
                "p_llm_change",
            ]
        )
    grouped = turns.groupby(["condition", "turn"], sort=True)
    out = grouped.agg(
        n=("participant_id", "count"),
        human=("human", "mean"),
        llm=("llm", "mean"),
        llm_se=("llm", "sem"),
        gap=("gap", "mean"),
        gap_se=("gap", "sem"),
        p_human_change=("human_changed", "mean"),
        p_llm_change=("llm_changed", "mean"),
    )
    return out.reset_index()


def strategy_effects(frames: dict[str, pd.DataFrame], turns: pd.DataFrame) -> pd.DataFrame:
    """Which strategies precede the other side's stance change.

    A participant's message at turn k is followed by the chatbot's change at turn k; a
    chatbot reply at turn k by the participant's change at turn k. Rows per speaker and
    label: messages whose top label it is, how often the other side then changed, the
    mean signed move toward the speaker, and the same rates weighted by label probability.
    """
    labels = frames["labels"]
    messages = frames["messages"]
    if labels.empty or turns.empty:
        return pd.DataFrame(
            columns=[
                "speaker",
                "strategy",
                "n_top",
                "p_other_changed",
                "mean_move_toward",
                "weighted_n",
                "p_other_changed_weighted",
            ]
        )
    by_turn = turns.set_index(["participant_id", "turn"])
    joined = labels.merge(
        messages[["id", "participant_id", "turn", "role"]],
        left_on="message_id",
        right_on="id",
        suffixes=("", "_msg"),
    )
    records = []
    for row in joined.itertuples():
        key = (row.participant_id, row.turn)
        if key not in by_turn.index or (row.participant_id, row.turn - 1) not in by_turn.index:
            continue
        now = by_turn.loc[key]
        before = by_turn.loc[(row.participant_id, row.turn - 1)]
        if row.role == "user":
            changed, delta = now["llm_changed"], now["llm_delta"]
            toward = delta * _sign(before["human"] - before["llm"])
        else:
            changed, delta = now["human_changed"], now["human_delta"]
            toward = delta * _sign(now["llm"] - before["human"])
        if pd.isna(changed):
            continue
        probs = row.probabilities
        probs = json.loads(probs) if isinstance(probs, str) else dict(probs)
        records.append(
            {
                "speaker": "human" if row.role == "user" else "llm",
                "label": row.label,
                "changed": float(changed),
                "toward": toward,
                **{f"p::{k}": float(probs.get(k, 0.0)) for k in LABELS},
            }
        )
    if not records:
        return pd.DataFrame(
            columns=[
                "speaker",
                "strategy",
                "n_top",
                "p_other_changed",
                "mean_move_toward",
                "weighted_n",
                "p_other_changed_weighted",
            ]
        )
    frame = pd.DataFrame(records)
    rows = []
    for speaker, group in frame.groupby("speaker", sort=True):
        for label in LABELS:
            top = group[group["label"] == label]
            weights = group[f"p::{label}"]
            wsum = float(weights.sum())
            rows.append(
                {
                    "speaker": speaker,
                    "strategy": label,
                    "n_top": len(top),
                    "p_other_changed": float(top["changed"].mean()) if len(top) else math.nan,
                    "mean_move_toward": float(top["toward"].mean()) if len(top) else math.nan,
                    "weighted_n": wsum,
                    "p_other_changed_weighted": float((weights * group["changed"]).sum() / wsum)
                    if wsum > 0
                    else math.nan,
                }
            )
    return pd.DataFrame(rows)


def label_counts(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """How often each side used each strategy (top label)."""
    labels = frames["labels"].merge(
        frames["messages"][["id", "role"]],
        left_on="message_id",
        right_on="id",
        suffixes=("", "_msg"),
    )
    if labels.empty:
        return pd.DataFrame(columns=["speaker", "strategy", "messages"])
    labels["speaker"] = labels["role"].map({"user": "human", "assistant": "llm"})
    counts = labels.groupby(["speaker", "label"]).size().reset_index(name="messages")
    return counts.rename(columns={"label": "strategy"})
