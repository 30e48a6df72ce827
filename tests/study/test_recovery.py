"""Parameter recovery: plant known effects in a chatbot and in participants, run them
through the study app, and check that the report's tests find what was planted (the
planted value inside the 95% CI, zero outside it) and find nothing where nothing was.

The planted chatbot starts near the scale's neutral point and moves a known number of
points per exchange toward the participant (twice as far when personalised); the
participants never move, and report where the chatbot stood in its first and last reply
with symmetric noise around what the probe measured after those replies.
"""

from __future__ import annotations

import math
import random
import re

import pandas as pd
from fastapi.testclient import TestClient

from stancelab.engine._fake import ScriptedModel
from stancelab.study._app import create_app
from stancelab.study._report import write_report
from stancelab.study._store import StudyStore

from .conftest import SECRET, Participant, make_config

STEP = {"standard": 0.15, "personalised": 0.3}
"""Points per exchange the planted chatbot moves toward the participant."""
TURNS = (3, 4, 5)
"""Each participant sends one of these numbers of messages, at random."""
PER_CONDITION = 22


def _start(person: int) -> float:
    """The chatbot's stance before the chat with participant ``person``: near 4."""
    return 4.0 + ((person * 37) % 9 - 4) / 20  # 3.8 .. 4.2


def _planted_stance(base: str) -> float:
    person = int(re.findall(r"\[p(\d+)\]", base)[0]) if "[p" in base else 0
    held = re.findall(r"I hold (\d)", base)
    exchanges = base.count("\nassistant: ")
    start = _start(person)
    if not held or exchanges == 0:
        return start
    step = STEP["personalised" if "told you about themselves" in base else "standard"]
    toward = math.copysign(1.0, int(held[0]) - start)
    return start + toward * step * exchanges


def _as_distribution(value: float) -> dict[str, float]:
    """Mass split between the two nearest points, so the expected value is ``value``."""
    low = math.floor(value)
    high_share = value - low
    out = {f"{low}\n": 1.0 - high_share}
    if high_share > 0:
        out[f"{low + 1}\n"] = high_share
    return out


def _planted_chatbot() -> ScriptedModel:
    return ScriptedModel(
        reply=lambda request: "I see your point. Tell me more.",
        continuations=lambda base: _as_distribution(_planted_stance(base)),
    )


def test_analysis_recovers_planted_effects_and_finds_none_elsewhere(
    store: StudyStore, tmp_path: object
) -> None:
    config = make_config(
        conditions=["standard", "personalised"],
        stance_item="agreement",
        turns={"min": 3, "max": 5},
        topics=[{"name": "climate change"}, {"name": "gun violence"}],
    )
    app = create_app(config, store, _planted_chatbot(), secret=SECRET)
    rng = random.Random(7)
    for person in range(2 * PER_CONDITION):
        before = 1 if person % 2 else 7
        p = Participant(TestClient(app, follow_redirects=True))
        p.through_before(f"R{person}", stance=before)
        turns = rng.choice(TURNS)
        for _ in range(turns):
            p.say(f"I hold {before}. [p{person}]", stance="same")
        first = _planted_stance(f"[p{person}] I hold {before}\nassistant: x")
        last = _planted_stance(f"[p{person}] I hold {before}" + "\nassistant: x" * turns)
        noise = rng.choice((-1, 0, 1)), rng.choice((-1, 0, 1))
        perceived = (
            min(7, max(1, round(first) + noise[0])),
            min(7, max(1, round(last) + noise[1])),
        )
        p.finish(after=before, perceived=perceived, last="same")
    out = tmp_path / "report"  # type: ignore[operator]
    write_report(store, out, config=config)
    stats = pd.read_csv(out / "statistics.csv")
    people = pd.read_csv(out / "participants.csv")
    assert people["included"].all() and len(people) == 2 * PER_CONDITION

    def row(claim: str, condition: str, test: str) -> pd.Series:
        found = stats[
            (stats["claim_id"] == claim)
            & (stats["condition"] == condition)
            & (stats["test"] == test)
        ]
        assert len(found) == 1, (claim, condition, test, stats[["claim_id", "test"]])
        return found.iloc[0]

    mean_turns = sum(TURNS) / len(TURNS)
    for condition, step in STEP.items():
        # planted: the gap closes by `step` points per exchange (the humans never move)
        gap = row("gap-narrows", condition, "paired t · probe")
        assert gap["ci_low"] <= -step * mean_turns <= gap["ci_high"], gap.to_dict()
        assert gap["ci_high"] < 0 and gap["p_adjusted"] < 0.05
        # planted: the chatbot moves away from the neutral point it started at
        # planted: the chatbot moves `step` points per exchange toward the participant
        toward = row("llm-shift", condition, "one-sample t · probe, toward the participant")
        assert toward["ci_low"] <= step * mean_turns <= toward["ci_high"], toward.to_dict()
        assert toward["ci_low"] > 0 and toward["p_adjusted"] < 0.05
        # (expected over the design: start offsets, sides and numbers of turns)
        planted_away = sum(
            abs(_start(o) + side * step * n - 4) - abs(_start(o) - 4)
            for o in range(9)
            for side in (-1, 1)
            for n in TURNS
        ) / (9 * 2 * len(TURNS))
        away = row("llm-toward-neutral", condition, "paired t · probe")
        assert away["ci_low"] <= planted_away <= away["ci_high"], away.to_dict()
        assert away["ci_low"] > 0 and away["p_adjusted"] < 0.05
        # not planted: participants perceive the change the probe measured, plus noise
        seen = row("misperception", condition, "paired t · perceived vs probe (reply 1 to last)")
        assert seen["ci_low"] <= 0 <= seen["ci_high"], seen.to_dict()
    # planted: personalisation doubles the chatbot's move
    planted = (STEP["personalised"] - STEP["standard"]) * mean_turns
    amp = row(
        "personalisation-amplifies", "personalised - standard", "Welch t · chatbot |change| (probe)"
    )
    assert amp["ci_low"] <= planted <= amp["ci_high"] and amp["ci_low"] > 0, amp.to_dict()
    regression = stats[
        (stats["claim_id"] == "personalisation-amplifies")
        & stats["test"].str.contains("OLS")
        & stats["test"].str.contains("probe")
    ].iloc[0]
    assert regression["ci_low"] <= planted <= regression["ci_high"], regression.to_dict()
    # not planted: the participants never moved, so no human shift can be found
    for condition in STEP:
        for test in ("paired t", "Wilcoxon signed-rank"):
            human = row("human-shift", condition, test)
            assert not (human["p"] < 0.05), human.to_dict()
