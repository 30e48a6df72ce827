"""Both sides' stance dynamics from the study tables, as pandas frames.

Who is analysed is decided first, by one rule fixed in the study file before any data
existed (``StudyConfig.analysis``): completed, passed the attention checks, not simulated,
not withdrawn. ``inclusion`` applies it and ``flow_table`` counts every stage.

Turn k (1-based) is the k-th exchange. Two instruments measure the participant:
- the stance pages before and after the conversation (with a reason): the pre/post
  measure of ``human-shift``;
- the per-turn stance given with every message and on the finish form (no point is
  pre-selected; "same as before" is an explicit answer): ``human`` at turn k is the stance
  given after reading reply k (sent with message k+1, or on the finish form after the last
  reply); turn 0 is the stance sent with message 1, before any reply.
Two measures read the chatbot, both on the same item:
- the hidden probe (``llm``): asked on a copy of the conversation after reply k (turn 0:
  before any reply), never kept in the history; expected value, most likely answer and
  entropy;
- a judge's rating of reply k itself (``judge``): what the reply says.
One change rule serves both sides: a move of at least ``threshold`` points.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from stancelab.conversation import ZERO_TO_TEN, Scale
from stancelab.engine import StoreError
from stancelab.study._config import Analysis
from stancelab.study._store import StudyStore, one_judge, read_table

REASONS = ("withdrawn", "simulated", "not completed", "failed attention check")
"""Exclusion reasons, in the order they are checked (a participant gets the first)."""


def _sign(x: float) -> float:
    return 0.0 if x == 0 or math.isnan(x) else math.copysign(1.0, x)


def _num(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def load_frames(
    store: StudyStore,
    study: str | None = None,
    mode: str | None = None,
    judge: str | None = None,
    reply_judge: str | None = None,
) -> dict[str, pd.DataFrame]:
    """The raw study tables, filtered to one study, one probe mode (``mode``; None: the
    distribution when stored, else generate), ONE strategy judge and one reply-stance judge
    (``reply_judge``, or the one that rated last; ``attrs["judge"]`` of that frame).

    The strategy judge's results are ``codes`` (the multi-label judge: one row per message
    and codebook label, ``judge`` its coder name) or, for a judge that only labelled with
    the older single-label judge (judge.v1), ``labels`` (one top label per message); the
    other frame is empty, so no table mixes two judges. ``judge`` names it (a code's coder
    or a label's judge); None takes the coder that coded last when any judge coded, else
    the judge that labelled last. ``attrs["judge"]`` of both frames names it."""
    participants = read_table(store, "study_participants")
    if study is not None:
        participants = participants[participants["study"] == study]
    ids = set(participants["id"])
    messages = read_table(store, "study_messages")
    messages = messages[messages["participant_id"].isin(ids)]
    if "status" in messages.columns:  # a message whose reply failed was never part of the chat
        messages = messages[messages["status"] != "failed"]
    stances = read_table(store, "study_llm_stances")
    stances = stances[stances["participant_id"].isin(ids)]
    if mode is None:
        present = set(stances["mode"])
        mode = "distribution" if "distribution" in present or not present else "generate"
    stances = stances[stances["mode"] == mode].copy()
    stances.attrs["mode"] = mode
    codes, labels = _strategy_judge(
        read_table(store, "study_strategy_codes"),
        read_table(store, "study_strategy_labels"),
        set(messages["id"]),
        judge,
    )
    replies = _one_judge(
        read_table(store, "study_reply_stances"), set(messages["id"]), reply_judge, "ratings"
    )
    if not replies.empty:  # the judge's ratings in the probe's mode, when it has them
        rater = replies.attrs["judge"]
        same = replies[replies["mode"] == mode]
        replies = same if not same.empty else replies[replies["mode"] == replies["mode"].iloc[0]]
        replies.attrs["judge"] = rater
    return {
        "participants": participants,
        "messages": messages,
        "stances": stances,
        "labels": labels,
        "reply_stances": replies,
        "codes": codes,
    }


def _one_judge(table: pd.DataFrame, ids: set[Any], judge: str | None, what: str) -> pd.DataFrame:
    """Rows of one judge about these messages (the named judge, or the one that wrote
    last); ``attrs["judge"]`` names it."""
    rows, chosen = one_judge(table[table["message_id"].isin(ids)], judge, what)
    rows.attrs["judge"] = chosen
    return rows


def _strategy_judge(
    codes: pd.DataFrame, labels: pd.DataFrame, ids: set[Any], judge: str | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(codes, labels) of ONE strategy judge about these messages: its multi-label codes
    when it coded, else its single-label labels; the other frame is empty."""
    codes = codes[codes["source"] == "judge"].rename(columns={"coder": "judge"})
    coders = set(codes.loc[codes["message_id"].isin(ids), "judge"])
    labellers = set(labels.loc[labels["message_id"].isin(ids), "judge"])
    if judge is not None and coders | labellers and judge not in coders | labellers:
        raise StoreError(
            f"no labels by judge {judge!r}; the database has: "
            + ", ".join(sorted(coders | labellers))
        )
    if judge in coders or (judge is None and coders):
        chosen = _one_judge(codes, ids, judge, "codes")
        return chosen, _none_of(labels, chosen.attrs["judge"])
    chosen = _one_judge(labels, ids, judge, "labels")
    return _none_of(codes, chosen.attrs["judge"]), chosen


def _none_of(table: pd.DataFrame, judge: str) -> pd.DataFrame:
    """No rows of ``table``, its columns kept, ``attrs["judge"]`` naming the judge used."""
    empty = table.iloc[0:0].copy()
    empty.attrs["judge"] = judge
    return empty


def participant_scale(stance_item: Any) -> Scale:
    """The scale a participant answered on (stored per session; before 0.4: 0-10)."""
    if stance_item is None or (isinstance(stance_item, float) and math.isnan(stance_item)):
        return ZERO_TO_TEN
    data = json.loads(stance_item) if isinstance(stance_item, str) else stance_item
    return Scale.from_dict(data["scale"])


def study_scale(participants: pd.DataFrame) -> Scale:
    """The one scale of the analysed sessions; a database mixing items cannot be pooled."""
    scales = {participant_scale(v) for v in participants.get("stance_item", pd.Series([]))}
    if len(scales) > 1:
        described = sorted(f"{s.low}..{s.high}" for s in scales)
        raise StoreError(
            f"the sessions used different stance items ({', '.join(described)}): report one "
            "study at a time (--study)"
        )
    return scales.pop() if scales else ZERO_TO_TEN


def _failed_attention(attention: Any) -> bool:
    if attention is None or (isinstance(attention, float) and math.isnan(attention)):
        return False
    data = json.loads(attention) if isinstance(attention, str) else attention
    return any(not answer.get("passed", True) for answer in data.values())


def inclusion(participants: pd.DataFrame, plan: Analysis) -> pd.DataFrame:
    """``included`` and ``excluded_reason`` for every participant, by the study's rule.

    A database whose participants are all simulated is a pilot: simulated participants
    are then analysed (``attrs["pilot"]`` is True) and the report says so."""
    frame = participants.copy()
    simulated = frame["simulated"].astype(bool) if not frame.empty else pd.Series([], dtype=bool)
    pilot = bool(len(frame)) and bool(simulated.all())
    reasons: list[str] = []
    for row in frame.itertuples():
        reason = ""
        if plan.exclude_withdrawn and row.step == "withdrawn":
            reason = "withdrawn"
        elif plan.exclude_simulated and bool(row.simulated) and not pilot:
            reason = "simulated"
        elif plan.require_completed and row.step != "done":
            reason = "not completed"
        elif plan.require_attention and _failed_attention(getattr(row, "attention", None)):
            reason = "failed attention check"
        reasons.append(reason)
    frame["excluded_reason"] = reasons
    frame["included"] = [not r for r in reasons]
    frame.attrs["pilot"] = pilot
    return frame


def flow_table(participants: pd.DataFrame) -> pd.DataFrame:
    """Participant flow (a CONSORT-style count): entered, consented, assigned per
    condition, completed, excluded by reason, analysed; one column per condition."""
    conditions = sorted(set(participants["condition"]))
    consented = ~participants["step"].isin(["consent", "no_consent"])
    stages: list[tuple[str, pd.Series]] = [
        ("entered", pd.Series(True, index=participants.index)),
        ("consented", consented),
        ("assigned (after consent)", consented),
        ("screened out (attention check)", participants["step"] == "screened_out"),
        ("withdrawn", participants["step"] == "withdrawn"),
        ("completed", participants["step"] == "done"),
    ]
    for reason in REASONS:
        stages.append((f"excluded: {reason}", participants["excluded_reason"] == reason))
    stages.append(("analysed", participants["included"].astype(bool)))
    rows = []
    for name, mask in stages:
        row: dict[str, Any] = {"stage": name, "all": int(mask.sum())}
        for condition in conditions:
            row[condition] = int((mask & (participants["condition"] == condition)).sum())
        rows.append(row)
    return pd.DataFrame(rows, columns=["stage", "all", *conditions])


def turn_frame(frames: dict[str, pd.DataFrame], threshold: float = 0.5) -> pd.DataFrame:
    """One row per chat participant and turn: both sides' stances (the probe's expected
    value, most likely answer and entropy; the judge's rating of the reply), the gap, and
    who changed by the one rule |move| >= ``threshold``."""
    participants = frames["participants"]
    messages = frames["messages"]
    stances = frames["stances"]
    replies = frames.get("reply_stances", pd.DataFrame())
    rows: list[dict[str, Any]] = []
    for p in participants.itertuples():
        if p.condition == "static":
            continue
        mine = messages[(messages["participant_id"] == p.id) & (messages["role"] == "user")]
        user = mine.set_index("turn")
        probe = stances[stances["participant_id"] == p.id].set_index("turn")
        rated = (
            replies[replies["participant_id"] == p.id].set_index("turn")
            if not replies.empty
            else pd.DataFrame()
        )
        n_turns = len(user)
        if n_turns == 0:
            continue
        previous: dict[str, float] = {}
        for k in range(n_turns + 1):
            if k + 1 in user.index:
                human = _num(user.loc[k + 1, "human_stance"])
                source = user.loc[k + 1].get("stance_source")
            elif k == n_turns:
                human = _num(getattr(p, "stance_last", None))
                source = getattr(p, "stance_last_source", None)
            else:
                human, source = math.nan, None
            row: dict[str, Any] = {
                "participant_id": p.id,
                "condition": p.condition,
                "topic": p.topic,
                "simulated": bool(p.simulated),
                "turn": k,
                "human": human,
                "human_source": source if isinstance(source, str) else "",
                "llm": _num(probe.loc[k, "score"]) if k in probe.index else math.nan,
                "llm_mode": _num(probe.loc[k, "most_likely"]) if k in probe.index else math.nan,
                "llm_entropy": _num(probe.loc[k, "entropy_bits"]) if k in probe.index else math.nan,
                "llm_coverage": _num(probe.loc[k, "coverage"]) if k in probe.index else math.nan,
                "judge": _num(rated.loc[k, "score"]) if k in rated.index else math.nan,
            }
            row["gap"] = abs(row["human"] - row["llm"])
            for side in ("human", "llm", "judge"):
                delta = row[side] - previous.get(side, math.nan) if k > 0 else math.nan
                row[f"{side}_delta"] = delta
                row[f"{side}_changed"] = (
                    math.nan if math.isnan(delta) else float(abs(delta) >= threshold - 1e-9)
                )
                previous[side] = row[side]
            rows.append(row)
    columns = [
        "participant_id",
        "condition",
        "topic",
        "simulated",
        "turn",
        "human",
        "human_source",
        "llm",
        "llm_mode",
        "llm_entropy",
        "llm_coverage",
        "judge",
        "gap",
        "human_delta",
        "human_changed",
        "llm_delta",
        "llm_changed",
        "judge_delta",
        "judge_changed",
    ]
    return pd.DataFrame(rows, columns=columns)


def participant_frame(
    frames: dict[str, pd.DataFrame], scale: Scale | None = None, min_coverage: float = 0.0
) -> pd.DataFrame:
    """One row per participant: the pre/post change, the chatbot's change by both measures
    (probe: turn 0 to the last turn, and from reply 1 to the last reply; judge: reply 1 to
    the last reply), the gap, perception against the measure at the replies the person
    saw, distances to the scale's neutral point and side flips, and probe coverage."""
    participants = frames["participants"]
    stances = frames["stances"]
    messages = frames["messages"]
    replies = frames.get("reply_stances", pd.DataFrame())
    scale = scale or study_scale(participants)
    mid = scale.midpoint
    rows = []
    for p in participants.itertuples():
        probe = stances[stances["participant_id"] == p.id].set_index("turn")
        rated = (
            replies[replies["participant_id"] == p.id].set_index("turn")
            if not replies.empty
            else pd.DataFrame()
        )
        n_turns = int(((messages["participant_id"] == p.id) & (messages["role"] == "user")).sum())

        def at(table: pd.DataFrame, turn: int, column: str = "score") -> float:
            return _num(table.loc[turn, column]) if turn in table.index else math.nan

        before, after = _num(p.stance_before), _num(p.stance_after)
        llm0, llm1, llm_n = at(probe, 0), at(probe, 1), at(probe, n_turns)
        mode0, mode_n = at(probe, 0, "most_likely"), at(probe, n_turns, "most_likely")
        judge1, judge_n = at(rated, 1), at(rated, n_turns)
        perceived_first, perceived_last = _num(p.perceived_start), _num(p.perceived_end)
        coverage = probe["coverage"].dropna() if "coverage" in probe else pd.Series([])
        chat = p.condition != "static" and n_turns > 0
        row: dict[str, Any] = {
            "participant_id": p.id,
            "pid": p.pid,
            "condition": p.condition,
            "topic": p.topic,
            "simulated": bool(p.simulated),
            "completed": p.step == "done",
            "included": bool(getattr(p, "included", True)),
            "excluded_reason": getattr(p, "excluded_reason", ""),
            "turns": n_turns,
            "stance_before": before,
            "stance_after": after,
            "human_change": after - before,
            "llm_turn0": llm0 if chat else math.nan,
            "llm_first": llm1 if chat else math.nan,
            "llm_last": llm_n if chat else math.nan,
            "llm_change": llm_n - llm0 if chat else math.nan,
            "llm_change_seen": llm_n - llm1 if chat else math.nan,
            "llm_mode_turn0": mode0 if chat else math.nan,
            "llm_mode_last": mode_n if chat else math.nan,
            "llm_mode_change": mode_n - mode0 if chat else math.nan,
            "judge_first": judge1,
            "judge_last": judge_n,
            "judge_change": judge_n - judge1,
            "llm_toward_human": (llm_n - llm0) * _sign(before - llm0) if chat else math.nan,
            "llm_mode_toward_human": (mode_n - mode0) * _sign(before - mode0) if chat else math.nan,
            "judge_toward_human": (judge_n - judge1) * _sign(before - judge1),
            "human_toward_llm": (after - before) * _sign(llm0 - before) if chat else math.nan,
            "gap_start": abs(before - llm0) if chat else math.nan,
            "gap_end": abs(after - llm_n) if chat else math.nan,
            "perceived_first": perceived_first,
            "perceived_last": perceived_last,
            "perceived_change": perceived_last - perceived_first,
            "perception_error": (perceived_last - perceived_first) - (llm_n - llm1),
            "perception_error_first": perceived_first - llm1,
            "perception_error_last": perceived_last - llm_n,
            "probe_coverage_min": float(coverage.min()) if len(coverage) else math.nan,
        }
        row["low_coverage"] = bool(len(coverage)) and row["probe_coverage_min"] < min_coverage
        for name, start, end in (
            ("llm", llm0, llm_n),
            ("llm_mode", mode0, mode_n),
            ("judge", judge1, judge_n),
        ):
            if mid is None or not chat:
                row[f"{name}_mid_distance_start"] = row[f"{name}_mid_distance_end"] = math.nan
                row[f"{name}_flipped"] = math.nan
                continue
            row[f"{name}_mid_distance_start"] = abs(start - mid)
            row[f"{name}_mid_distance_end"] = abs(end - mid)
            row[f"{name}_flipped"] = (
                math.nan
                if math.isnan(start) or math.isnan(end)
                else float(scale.side(start) * scale.side(end) == -1)
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_se(values: pd.Series) -> tuple[float, float, int]:
    values = values.dropna()
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(values.mean()), se, n


CONDITION_MEASURES = (
    "human_change",
    "human_toward_llm",
    "llm_change",
    "llm_change_seen",
    "judge_change",
    "llm_toward_human",
    "gap_start",
    "gap_end",
    "perceived_change",
    "perception_error",
)


def condition_summary(people: pd.DataFrame) -> pd.DataFrame:
    """Per condition: mean, standard error and n of every change measure (each measure
    its own n: a number is never averaged over people who lack it)."""
    rows = []
    for condition, group in people.groupby("condition", sort=True):
        row: dict[str, Any] = {"condition": condition, "participants": len(group)}
        for m in CONDITION_MEASURES:
            mean, se, n = _mean_se(group[m])
            row[m], row[f"{m}_se"], row[f"{m}_n"] = mean, se, n
        rows.append(row)
    return pd.DataFrame(rows)


def per_turn(turns: pd.DataFrame) -> pd.DataFrame:
    """Per condition and turn: how many people are still there (``n``), mean stances, gap,
    and the share changing on each side. Descriptive: people stop between turns.min and
    turns.max, so the tests use models of all turns (statistics.csv), not these shares."""
    columns = [
        "condition",
        "turn",
        "n",
        "human",
        "llm",
        "llm_se",
        "llm_mode",
        "llm_entropy",
        "judge",
        "gap",
        "gap_se",
        "p_human_change",
        "p_llm_change",
        "p_judge_change",
        "share_same_as_before",
    ]
    if turns.empty:
        return pd.DataFrame(columns=columns)
    frame = turns.assign(same=(turns["human_source"] == "same").astype(float))
    grouped = frame.groupby(["condition", "turn"], sort=True)
    out = grouped.agg(
        n=("participant_id", "count"),
        human=("human", "mean"),
        llm=("llm", "mean"),
        llm_se=("llm", "sem"),
        llm_mode=("llm_mode", "mean"),
        llm_entropy=("llm_entropy", "mean"),
        judge=("judge", "mean"),
        gap=("gap", "mean"),
        gap_se=("gap", "sem"),
        p_human_change=("human_changed", "mean"),
        p_llm_change=("llm_changed", "mean"),
        p_judge_change=("judge_changed", "mean"),
        share_same_as_before=("same", "mean"),
    )
    return out.reset_index()[columns]


STRATEGY_COUNT_COLUMNS = (
    "speaker",
    "condition",
    "strategy",
    "messages_with_label",
    "messages_judged",
    "share",
)
"""The columns of strategy_counts.csv."""


def strategy_codes(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The strategy judge's decisions, one row per message and label: ``message_id``,
    ``label``, ``present`` (1.0/0.0). From the multi-label judge's codes (every codebook
    label decided for every message, several may be present) when there are any, else
    from the older single-label judge (its top label present, every other label it gave
    any message absent). ``attrs``: ``judge`` names the judge, ``kind`` the kind of decision
    ('several labels per message' or 'top label'), ``source`` both."""
    codes = frames.get("codes", pd.DataFrame())
    labels = frames.get("labels", pd.DataFrame())
    columns = ["message_id", "label", "present"]
    if not codes.empty:
        long = codes[columns].assign(present=codes["present"].astype(float))
        judge, kind = str(codes.attrs.get("judge", "")), "several labels per message"
    elif not labels.empty:
        offered = sorted(set(labels["label"]))
        long = pd.DataFrame(
            [
                (m, label, float(label == top))
                for m, top in zip(labels["message_id"], labels["label"], strict=True)
                for label in offered
            ],
            columns=columns,
        )
        judge, kind = str(labels.attrs.get("judge", "")), "top label"
    else:
        long, judge, kind = pd.DataFrame(columns=columns), "", ""
    long.attrs["judge"], long.attrs["kind"] = judge, kind
    long.attrs["source"] = f"{judge} ({kind})" if judge else ""
    return long


def label_counts(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """How often each side used each strategy, per condition: for every speaker
    (human/llm), condition and label, ``messages_with_label`` (the speaker's messages the
    judge found using the label), ``messages_judged`` (the speaker's messages it judged)
    and ``share`` (their ratio). A message may carry several labels (the multi-label
    judge), so one speaker's counts add up to more than its messages; with an older
    single-label judge each message carries one. ``attrs`` are ``strategy_codes``'s."""
    decided = strategy_codes(frames)
    if decided.empty:
        empty = pd.DataFrame(columns=list(STRATEGY_COUNT_COLUMNS))
        empty.attrs.update(decided.attrs)
        return empty
    who = frames["messages"][["id", "role", "participant_id"]].merge(
        frames["participants"][["id", "condition"]],
        left_on="participant_id",
        right_on="id",
        suffixes=("", "_participant"),
    )
    joined = decided.merge(who, left_on="message_id", right_on="id")
    joined["speaker"] = joined["role"].map({"user": "human", "assistant": "llm"})
    counts = (
        joined.groupby(["speaker", "condition", "label"], sort=True)
        .agg(messages_with_label=("present", "sum"), messages_judged=("message_id", "nunique"))
        .reset_index()
        .rename(columns={"label": "strategy"})
    )
    counts["messages_with_label"] = counts["messages_with_label"].astype(int)
    counts["share"] = counts["messages_with_label"] / counts["messages_judged"]
    counts = counts[list(STRATEGY_COUNT_COLUMNS)]
    counts.attrs.update(decided.attrs)
    return counts


def message_strategies(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Which strategies each judged message uses, one 0/1 column ``uses::LABEL`` per
    label (``strategy_codes``: several labels per message from the multi-label judge,
    the top label from an older single-label one). ``attrs["source"]`` names the judge
    and the kind."""
    decided = strategy_codes(frames)
    if decided.empty:
        return pd.DataFrame()
    wide = decided.pivot_table(
        index="message_id", columns="label", values="present", aggfunc="max"
    ).astype(float)
    wide.columns = [f"uses::{c}" for c in wide.columns]
    wide = wide.reset_index()
    wide.attrs["source"] = decided.attrs["source"]
    return wide


def strategy_frame(frames: dict[str, pd.DataFrame], turns: pd.DataFrame) -> pd.DataFrame:
    """One row per labelled message whose turn is measured: the speaker, the strategies
    it uses (``uses::LABEL`` columns), the turn, and what followed: the OTHER side's
    change at that turn and the speaker's OWN change.

    A participant's message k is followed by the probe after reply k (the chatbot's change
    at turn k) and by the participant's own stance after reading reply k; a chatbot reply
    k by the participant's stance after reading it (human change at turn k) and the
    probe right after it (its own change at turn k)."""
    uses = message_strategies(frames)
    messages = frames["messages"]
    if uses.empty or turns.empty:
        return pd.DataFrame(columns=["participant_id", "turn", "speaker"])
    by_turn = turns.set_index(["participant_id", "turn"])
    joined = uses.merge(
        messages[["id", "participant_id", "turn", "role"]], left_on="message_id", right_on="id"
    )
    records = []
    for row in joined.to_dict("records"):
        key = (row["participant_id"], row["turn"])
        if key not in by_turn.index:
            continue
        now = by_turn.loc[key]
        human = row["role"] == "user"
        records.append(
            {
                "participant_id": row["participant_id"],
                "turn": int(row["turn"]),
                "speaker": "human" if human else "llm",
                "other_changed": now["llm_changed"] if human else now["human_changed"],
                "own_changed": now["human_changed"] if human else now["llm_changed"],
                **{k: v for k, v in row.items() if k.startswith("uses::")},
            }
        )
    frame = pd.DataFrame(records)
    frame.attrs["source"] = uses.attrs.get("source", "")
    return frame
