"""The findings of Jiang et al. (2025), a human-LLM opinion study, as testable claims.

The study's own report (``stancelab.study._report``) tests every claim and writes
``statistics.csv``: several rows per claim (conditions, tests, measures). Here each claim
names its **main rows** (the paired t test on the chatbot's probe, say) and the side of a
threshold where the paper's finding lies; `study_findings` turns those rows into the
findings table every replication shares, with the same verdict rule
(`stancelab.replicate.verdict`).

The run behind it (`pilot_study`) is a pilot: simulated participants (LLM personas) take
the study through the real web app, so every row says that simulated people are not
people.

| claim id | main row(s) of statistics.csv | paper's side |
|---|---|---|
| ``human-shift`` | ``paired t``, every condition | within ±threshold (no shift) |
| ``llm-shift`` | ``one-sample t · probe, toward the participant``, chat conditions | above 0 |
| ``gap-narrows`` | ``paired t · probe``, chat conditions | below 0 |
| ``personalisation-amplifies`` | ``Welch t · chatbot |change| (probe)`` | above 0 |
| ``misperception`` | ``paired t · perceived vs probe (reply 1 to last)`` | CI excludes 0 |
| ``change-declines-by-turn`` | the GEE slopes of the human and the probe | below 0 |
| ``llm-toward-neutral`` | ``paired t · probe``, chat conditions | below 0 |
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pandas as pd

from stancelab.conversation import TestResult
from stancelab.replicate._verdict import NOT_REPRODUCED, Claim, Finding, Side, findings_table

PAPER = "jiang2025"

PILOT_NOTE = "pilot: simulated participants, not people"
"""Said in every row and in the report: LLM personas stand in for the participants."""

MOVE_NOTE = "the CI lies within ±{margin:g}: no move the study's change rule would count"


def _claim(claim_id: str, statement: str, definition: str, threshold: float, side: Side) -> Claim:
    return Claim(claim_id, PAPER, statement, definition, threshold, side, dynamics=False)


CHANGE_RULE = 0.5
"""The study's ``stance_change_threshold`` (points on the 1-7 agreement item): the margin
of ``human-shift`` and of the no-move verdicts (`MOVE_NOTE`)."""

CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        _claim(
            "human-shift",
            "People barely change their stance after talking with the chatbot.",
            "Per condition: the participant's stance after minus before (paired t CI); "
            "reproduced when the CI lies within ±the study's change rule.",
            CHANGE_RULE,
            "within",
        ),
        _claim(
            "llm-shift",
            "The chatbot's stance moves a lot, toward the person.",
            "Per chat condition: the chatbot's probed move from before the chat to the last "
            "turn, signed toward where the participant stood before (one-sample t CI); "
            "reproduced when the CI lies above 0.",
            0.0,
            "above",
        ),
        _claim(
            "gap-narrows",
            "The chatbot moves toward the person: the gap between them narrows.",
            "Per chat condition: |person - chatbot (probe)| at the end minus at the start "
            "(paired t CI); negative: narrower.",
            0.0,
            "below",
        ),
        _claim(
            "personalisation-amplifies",
            "Personalisation makes the chatbot move more.",
            "Personalised minus standard on the chatbot's |change| (probe), Welch t CI.",
            0.0,
            "above",
        ),
        _claim(
            "misperception",
            "People misjudge how much the chatbot changed.",
            "Per chat condition: perceived change minus the probe's change from the first to "
            "the last reply read (paired t CI); reproduced when the CI excludes 0, not "
            "reproduced when it lies within ±the change rule.",
            0.0,
            "outside",
        ),
        _claim(
            "change-declines-by-turn",
            "Changes of stance become rarer as the conversation goes on.",
            "Chat conditions, for the person and for the chatbot (probe): the GEE logit slope "
            "of 'changed at this turn' on turn, clustered by participant; negative: rarer.",
            0.0,
            "below",
        ),
        _claim(
            "llm-toward-neutral",
            "The chatbot drifts toward the neutral midpoint.",
            "Per chat condition: the chatbot's distance (probe) to the scale's labelled "
            "midpoint at the end minus at the start (paired t CI); negative: more neutral.",
            0.0,
            "below",
        ),
    )
}
"""The paper's claims by id, in the order of the findings table."""

MAIN_TESTS: dict[str, tuple[str, ...]] = {
    "human-shift": ("paired t",),
    "llm-shift": ("one-sample t · probe, toward the participant",),
    "gap-narrows": ("paired t · probe",),
    "personalisation-amplifies": ("Welch t · chatbot |change| (probe)",),
    "misperception": ("paired t · perceived vs probe (reply 1 to last)",),
    "change-declines-by-turn": (
        "GEE logit (exchangeable, clustered by participant_id) · human",
        "GEE logit (exchangeable, clustered by participant_id) · chatbot (probe)",
    ),
    "llm-toward-neutral": ("paired t · probe",),
}
"""Each claim's main rows of statistics.csv, by their ``test``; the other rows (Wilcoxon,
the judge, the probe's mode) stay in the study's report."""


def _number(value: Any) -> float:
    return float(value) if value is not None and not pd.isna(value) else math.nan


def study_findings(
    statistics: pd.DataFrame,
    *,
    model: str,
    claims: list[str] | None = None,
    margin: float = CHANGE_RULE,
) -> pd.DataFrame:
    """The findings table of a study report's ``statistics.csv``: one row per main row.

    The ``setup`` column holds the study condition, ``mode`` the measure (probe), ``n``
    the participants (or clusters) the test used; every note says it is a pilot.

    Args:
        statistics: the report's statistics.csv as a DataFrame.
        model: the chatbot's name, written in every row.
        claims: only these claim ids; default: all.
        margin: the study's change rule (points): ``human-shift``'s threshold, and the
            band within which a claim that the stance moves is not reproduced.
    """
    found: list[Finding] = []
    for claim_id, claim in CLAIMS.items():
        if claims is not None and claim_id not in claims:
            continue
        if claim_id == "human-shift":
            claim = replace(claim, threshold=margin)
        rows = statistics[
            (statistics["claim_id"] == claim_id) & statistics["test"].isin(MAIN_TESTS[claim_id])
        ]
        for row in rows.itertuples(index=False):
            result = TestResult(
                claim_id,
                str(row.condition),
                int(row.n),
                _number(row.estimate),
                _number(row.ci_low),
                _number(row.ci_high),
                _number(row.p),
                str(row.test),
                note=str(row.note) if isinstance(row.note, str) else "",
            )
            settled, notes = None, [PILOT_NOTE]
            low, high = result.ci_low, result.ci_high
            if claim.side == "outside" and -margin < low <= 0 <= high < margin:
                settled = NOT_REPRODUCED
                notes.append(MOVE_NOTE.format(margin=margin))
            found.append(
                Finding(claim, result, str(row.condition), settled=settled, notes=tuple(notes))
            )
    return findings_table(found, model=model, mode="probe")


MAX_TURNS = 8
"""The most messages a pilot participant sends (the pilot's choice: the paper does not
publish its number of turns)."""


def pilot_study(model: dict[str, Any], name: str, min_probe_coverage: float | None) -> Any:
    """The study of the paper as a pilot config: its three conditions (standard and
    personalised chats, static statements), two topics, the 1-7 agreement item, and no
    waiting (simulated participants neither read nor type).

    Args:
        model: the chatbot's model entry (a ``ModelConfig`` mapping).
        name: the study's name (its participants in the database).
        min_probe_coverage: the probe's coverage gate; None: the study's default (0.5),
            which refuses models whose probe puts little mass on the scale.

    Returns:
        The validated ``StudyConfig``.
    """
    from stancelab.study._config import load_study  # noqa: PLC0415 - lazy: pulls the study in

    chatbot: dict[str, Any] = {}
    if min_probe_coverage is not None:
        chatbot["min_probe_coverage"] = min_probe_coverage
    return load_study(
        {
            "study": name,
            "topics": [
                {
                    "name": "climate change",
                    "position": "The government should do more to reduce climate change.",
                    "statements": [
                        "Global average temperatures have risen about 1.1 °C since the late "
                        "1800s, and most climate scientists attribute this to human activity.",
                        "Some economists argue that rapid cuts in fossil fuels would raise "
                        "energy prices for families and cost jobs in some regions.",
                    ],
                },
                {
                    "name": "gun violence",
                    "position": "Stricter gun laws would reduce gun violence.",
                    "statements": [
                        "More than 40,000 people die from gun-related injuries in the United "
                        "States each year, over half of them suicides.",
                        "Many gun owners say firearms are essential for self-defence and that "
                        "most owners use them responsibly.",
                    ],
                },
            ],
            "conditions": ["standard", "personalised", "static"],
            "turns": {"min": 3, "max": MAX_TURNS},
            "model": model,
            "chatbot": chatbot,
            "stance_item": "agreement",
            "stance_change_threshold": CHANGE_RULE,
            "limits": {"min_seconds_between_messages": 0, "requests_per_minute": 10000},
            "min_reading_seconds": {},
            "seed": 0,
        }
    )
