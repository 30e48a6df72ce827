"""Every claim of the human-LLM study paper as a test: ``statistics.csv``.

Each function turns the analysed participants (``analysis.inclusion`` already applied)
into ``TestResult`` rows of ``conversation.statistics``; ``claim_tests`` runs them all and
Holm-adjusts within each family (one claim, one test, one measure). A test with fewer
than ``Analysis.min_n`` observations is reported as not run, with the reason, never as a
number. Claim ids (docs/human-llm-study.md maps each to the paper):

- ``human-shift``: the participant's stance after minus before (pre/post pages);
- ``llm-shift``: the chatbot's move toward where the participant stood before the chat
  (probe: turn 0 to the last turn; judge: reply 1 to the last reply);
- ``gap-narrows``: |human - chatbot| at the end minus at the start;
- ``personalisation-amplifies``: personalised minus standard on |chatbot change| and
  |human change|, and a regression adding topic;
- ``misperception``: perceived change minus the change measured between the first and
  last reply, its correlation and mean absolute error;
- ``change-declines-by-turn``: GEE logit of "changed at this turn" on turn, clustered by
  participant, both sides with the same rule;
- ``llm-toward-neutral``: distance to the scale's labelled midpoint, end minus start, and
  the share that flipped sides (probe expected value, probe mode, judge);
- ``trajectory``: mixed model of the stance on turn (participant and topic effects);
- ``measures-agree``: the probe against the judge's rating of the same turn's reply;
- ``strategy-effect``: a strategy's message against messages without it, on the other
  side's and the speaker's own change at that turn (GEE, controlling for turn).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import pandas as pd

from stancelab.conversation import (
    Scale,
    TestResult,
    correlation,
    detectable_effect,
    gee_logit_slope,
    holm_adjust,
    mixed_slope,
    ols_term,
    one_sample_tests,
    paired_tests,
    proportion,
    results_frame,
    two_sample_tests,
)

CHAT = ("standard", "personalised")

MEASURES = {
    "probe": ("llm_turn0", "llm_last"),
    "probe mode": ("llm_mode_turn0", "llm_mode_last"),
    "judge": ("judge_first", "judge_last"),
}
"""The chatbot's stance at the start and end, by measure (the judge rates replies, so it
starts at reply 1)."""
TOWARD = {
    "probe": "llm_toward_human",
    "probe mode": "llm_mode_toward_human",
    "judge": "judge_toward_human",
}
"""The chatbot's move toward the participant's stance before the chat, by measure."""
SIDES = {"human": "human", "llm": "chatbot (probe)", "judge": "chatbot (judge)"}
"""The per-turn series of turns.csv and the names tests give them."""


def _not_run(claim_id: str, condition: str, test: str, note: str) -> TestResult:
    """A claim that cannot be tested on these data, with the reason."""
    nan = math.nan
    return TestResult(claim_id, condition, 0, nan, nan, nan, nan, test, note=note)


def _tag(results: Sequence[TestResult], measure: str) -> list[TestResult]:
    """Name the measure in the test and give each (claim, test, measure) its Holm family."""
    out = []
    for r in results:
        test = f"{r.test} · {measure}" if measure else r.test
        out.append(replace(r, test=test, family=r.family or f"{r.claim_id} · {test}"))
    return out


def _conditions(people: pd.DataFrame, chat_only: bool) -> list[tuple[str, pd.DataFrame]]:
    groups = [(str(c), g) for c, g in people.groupby("condition", sort=True)]
    if chat_only:
        groups = [(c, g) for c, g in groups if c in CHAT]
    return groups


def _paired_by_condition(
    people: pd.DataFrame, start: str, end: str, claim_id: str, chat_only: bool, min_n: int
) -> list[TestResult]:
    """``end - start`` per condition: paired t and Wilcoxon signed-rank."""
    rows: list[TestResult] = []
    for condition, group in _conditions(people, chat_only):
        rows += paired_tests(
            group[start], group[end], claim_id=claim_id, condition=condition, min_n=min_n
        )
    return rows


def human_shift(people: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Per condition: stance after minus before (the stance pages)."""
    return _tag(
        _paired_by_condition(people, "stance_before", "stance_after", "human-shift", False, min_n),
        "",
    )


def llm_shift(people: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Per chat condition and measure: how far the chatbot moved toward where the
    participant stood before the chat (its change, signed by the side the person was on;
    a plain end-minus-start mean cancels out when people sit on both sides)."""
    out: list[TestResult] = []
    for measure, column in TOWARD.items():
        rows: list[TestResult] = []
        for condition, group in _conditions(people, chat_only=True):
            rows += one_sample_tests(
                group[column], claim_id="llm-shift", condition=condition, min_n=min_n
            )
        out += _tag(rows, f"{measure}, toward the participant")
    return out


def gap_narrows(people: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Per chat condition: |human - chatbot| at the end minus at the start (negative:
    the gap narrowed)."""
    return _tag(
        _paired_by_condition(people, "gap_start", "gap_end", "gap-narrows", True, min_n),
        "probe",
    )


def personalisation_amplifies(people: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Personalised minus standard on |chatbot change| (probe) and |human change|, as a
    two-sample comparison and as a regression with topic."""
    chat = people[people["condition"].isin(CHAT)].copy()
    out: list[TestResult] = []
    for side, column in (
        ("chatbot |change| (probe)", "llm_change"),
        ("human |change|", "human_change"),
    ):
        chat["abs_change"] = chat[column].abs()
        personalised = chat[chat["condition"] == "personalised"]["abs_change"]
        standard = chat[chat["condition"] == "standard"]["abs_change"]
        rows = two_sample_tests(
            personalised,
            standard,
            claim_id="personalisation-amplifies",
            condition="personalised - standard",
            min_n=min_n,
        )
        frame = chat.dropna(subset=["abs_change"]).assign(
            personalised=(chat["condition"] == "personalised").astype(float)
        )
        formula = "abs_change ~ personalised" + (
            " + C(topic)" if frame["topic"].nunique() > 1 else ""
        )
        rows.append(
            ols_term(
                frame,
                formula,
                "personalised",
                claim_id="personalisation-amplifies",
                condition="personalised - standard",
                min_n=min_n,
            )
        )
        out += _tag(rows, side)
    return out


def misperception(people: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Per chat condition: perceived change against the change the probe measured between
    the first and the last reply the person read."""
    out: list[TestResult] = []
    for condition, group in _conditions(people, chat_only=True):
        rows = paired_tests(
            group["llm_change_seen"],
            group["perceived_change"],
            claim_id="misperception",
            condition=condition,
            min_n=min_n,
        )
        rows.append(
            correlation(
                group["llm_change_seen"],
                group["perceived_change"],
                claim_id="misperception",
                condition=condition,
                min_n=min_n,
            )
        )
        out += _tag(rows, "perceived vs probe (reply 1 to last)")
        errors = group["perception_error"].abs().dropna()
        mae = paired_tests(
            pd.Series([0.0] * len(errors)),
            errors,
            claim_id="misperception",
            condition=condition,
            min_n=min_n,
        )[0]
        out.append(
            replace(
                mae,
                test="mean absolute error (t CI) · perceived vs probe",
                p=math.nan,
                family="",
                note=(mae.note + "; " if mae.note else "") + "descriptive: no test",
            )
        )
    return out


def change_declines(turns: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Whether the likelihood of a change falls over the turns: GEE logit of "changed at
    this turn" on turn, clustered by participant, for each side with the same rule."""
    later = turns[(turns["turn"] > 0) & turns["condition"].isin(CHAT)]
    out: list[TestResult] = []
    for side in ("human", "llm", "judge"):
        frame = later.dropna(subset=[f"{side}_changed"])
        result = gee_logit_slope(
            frame,
            f"{side}_changed",
            "turn",
            "participant_id",
            claim_id="change-declines-by-turn",
            condition="chat conditions",
            min_n=min_n,
        )
        out += _tag(
            [result], {"human": "human", "llm": "chatbot (probe)", "judge": "chatbot (judge)"}[side]
        )
    return out


def toward_neutral(people: pd.DataFrame, scale: Scale, min_n: int) -> list[TestResult]:
    """Distance to the labelled midpoint, end minus start (negative: toward neutral), and
    the share of chatbots whose stance crossed it, per measure and chat condition."""
    if scale.midpoint is None:
        return [
            _not_run(
                "llm-toward-neutral",
                "all",
                "distance to midpoint",
                f"not run: the {scale.low}-{scale.high} item has no labelled midpoint",
            )
        ]
    out: list[TestResult] = []
    for measure, prefix in (("probe", "llm"), ("probe mode", "llm_mode"), ("judge", "judge")):
        rows: list[TestResult] = []
        rows += _paired_by_condition(
            people,
            f"{prefix}_mid_distance_start",
            f"{prefix}_mid_distance_end",
            "llm-toward-neutral",
            True,
            min_n,
        )
        for condition, group in _conditions(people, chat_only=True):
            flipped = group[f"{prefix}_flipped"].dropna()
            share = proportion(
                int(flipped.sum()),
                len(flipped),
                claim_id="llm-toward-neutral",
                condition=condition,
                min_n=min_n,
            )
            rows.append(
                replace(
                    share,
                    test="share that flipped sides (Wilson CI)",
                    p=math.nan,
                    family="",
                    note=(share.note + "; " if share.note else "") + "descriptive: no test",
                )
            )
        out += _tag(rows, measure)
    return out


def trajectories(turns: pd.DataFrame, min_n: int) -> list[TestResult]:
    """Mixed models of each side's stance on turn: a random intercept per participant and
    a variance component per topic (when there are several topics)."""
    out: list[TestResult] = []
    chat = turns[turns["condition"].isin(CHAT)]
    for side, label in (
        ("human", "human"),
        ("llm", "chatbot (probe)"),
        ("judge", "chatbot (judge)"),
    ):
        frame = chat.dropna(subset=[side])
        components = {"topic": "0 + C(topic)"} if frame["topic"].nunique() > 1 else None
        result = mixed_slope(
            frame,
            side,
            "turn",
            "participant_id",
            claim_id="trajectory",
            condition="chat conditions",
            variance_components=components,
            min_n=min_n,
        )
        out += _tag([result], label)
    return out


def measures_agree(turns: pd.DataFrame, min_n: int) -> list[TestResult]:
    """How far the two chatbot measures agree, over every rated turn: the correlation of
    the probe's expected value with the judge's rating of the same turn's reply, and the
    mean difference (judge minus probe). Turns of one conversation are not independent:
    read the CI as descriptive."""
    rated = turns[(turns["turn"] > 0) & turns["condition"].isin(CHAT)].dropna(
        subset=["llm", "judge"]
    )
    if rated.empty:
        note = "no reply ratings: run `stancelab study rate-replies`"
        return [_not_run("measures-agree", "chat conditions", "probe vs judge", note)]
    r = correlation(
        rated["llm"],
        rated["judge"],
        claim_id="measures-agree",
        condition="chat conditions",
        min_n=min_n,
    )
    diff = paired_tests(
        rated["llm"],
        rated["judge"],
        claim_id="measures-agree",
        condition="chat conditions",
        min_n=min_n,
    )[0]
    return [
        replace(
            x,
            test=f"{x.test} · judge vs probe per turn",
            family="",
            p=math.nan,
            note=(x.note + "; " if x.note else "") + "descriptive: turns are clustered",
        )
        for x in (r, diff)
    ]


def strategy_effects(strategies: pd.DataFrame, min_n: int) -> list[TestResult]:
    """For each speaker and strategy: messages using it against messages without it (the
    baseline), on the other side's and the speaker's own change at that turn; GEE logit
    controlling for turn, clustered by participant; Holm over all labels x speakers."""
    out: list[TestResult] = []
    if strategies.empty:
        return out
    labels = [c for c in strategies.columns if c.startswith("uses::")]
    for outcome, family in (("other_changed", "other side"), ("own_changed", "own")):
        for speaker, group in strategies.groupby("speaker", sort=True):
            frame = group.dropna(subset=[outcome])
            for column in labels:
                label = column.removeprefix("uses::")
                result = gee_logit_slope(
                    frame.assign(uses=frame[column].fillna(0.0)),
                    outcome,
                    "uses",
                    "participant_id",
                    claim_id="strategy-effect",
                    condition=f"{speaker}: {label}",
                    covariates=("turn",),
                    min_n=min_n,
                )
                used = int(frame[column].fillna(0).sum())
                out.append(
                    replace(
                        result,
                        test=f"{result.test} · {family} changes",
                        family=f"strategy-effect · {family}",
                        note="; ".join(
                            x for x in (result.note, f"{used} of {len(frame)} messages use it") if x
                        ),
                    )
                )
    return out


def claim_tests(
    people: pd.DataFrame,
    turns: pd.DataFrame,
    scale: Scale,
    min_n: int,
    strategies: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """All claims, Holm-adjusted within families, as the statistics.csv table; with the
    smallest effect (Cohen's d) each paired test could detect at 80% power."""
    steps: list[Callable[[], list[TestResult]]] = [
        lambda: human_shift(people, min_n),
        lambda: llm_shift(people, min_n),
        lambda: gap_narrows(people, min_n),
        lambda: personalisation_amplifies(people, min_n),
        lambda: misperception(people, min_n),
        lambda: change_declines(turns, min_n),
        lambda: toward_neutral(people, scale, min_n),
        lambda: trajectories(turns, min_n),
        lambda: measures_agree(turns, min_n),
        lambda: strategy_effects(strategies if strategies is not None else pd.DataFrame(), min_n),
    ]
    results: list[TestResult] = []
    for step in steps:
        results += step()
    frame = results_frame(holm_adjust(results))
    frame["detectable_d_80"] = [
        detectable_effect(int(n), kind="paired")
        if str(test).startswith(("paired t", "Wilcoxon"))
        else math.nan
        for n, test in zip(frame["n"], frame["test"], strict=True)
    ]
    return frame
