"""The paper's claims on attitude frames with known trajectories: every verdict, worked
out from the trajectories planted in the fixtures."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pytest

from stancelab.debates._fidelity import FidelityRow
from stancelab.engine._errors import ConfigError
from stancelab.replicate import CLAIMS, COLUMNS, TUNING_CLAIMS, VERDICTS, findings, verdict

SURVEYS = {"three-way": (0, 3, 6), "rr-default": (0, 3, 6)}
"""Survey iterations: after every full round-robin cycle (3 agents; 2 agents below)."""
AGENTS = {
    "three-way": ("republican", "democrat", "default"),
    "two-way": ("republican", "democrat"),
    "rr-default": ("republican", "republican", "default"),
    "rr": ("republican", "republican"),
    "dd-default": ("democrat", "democrat", "default"),
}
# Pre-debate positions (0-10, "is TOPIC a big problem?") in the paper's pattern: the
# Default agent between the parties, closer to the Democrat on climate change and to the
# Republican on illegal immigration.
START = {
    "climate change": {"republican": 2.0, "democrat": 7.5, "default": 6.0},
    "illegal immigration": {"republican": 8.0, "democrat": 2.5, "default": 6.5},
}

Trajectory = Callable[[float, float, int], float]
"""(start, Default's position, survey number) -> score."""


def converging(start: float, target: float, k: int) -> float:
    """Most of the way to the Default in the first cycle, a little more after."""
    return start + (target - start) * (0.0, 0.7, 0.8)[k]


def holding(start: float, target: float, k: int) -> float:
    return start


def debate_rows(
    debate_id: int,
    topic: str,
    setup: str,
    paths: Mapping[str, Trajectory],
    rng: np.random.Generator,
    starts: dict[str, dict[str, float]],
    noise: float = 0.15,
) -> list[dict[str, object]]:
    """One debate's survey answers in attitude_frame's shape: each agent's planted path
    from a start jittered per debate (so debates differ, as draws of personas do)."""
    surveys = SURVEYS.get(setup, (0, 2, 4))
    position = starts[topic]
    jittered = {k: v + rng.normal(0, noise) for k, v in position.items()}
    rows = []
    for index, kind in enumerate(AGENTS[setup]):
        start = jittered[kind] + rng.normal(0, noise) if kind != "default" else jittered[kind]
        for k, iteration in enumerate(surveys):
            score = paths.get(kind, holding)(start, position["default"], k)
            rows.append(
                {
                    "debate_id": debate_id,
                    "condition_name": "",
                    "condition": "",
                    "tuned": False,
                    "topic": topic,
                    "setup": setup,
                    "repetition": debate_id,
                    "iteration": iteration,
                    "agent_index": index,
                    "name": f"{kind}{index}",
                    "kind": kind,
                    "question_id": "attitude",
                    "mode": "distribution",
                    "ok": True,
                    "score": float(np.clip(score, 0, 10)),
                }
            )
    return rows


def frame_of(
    cells: Sequence[tuple[str, str, Mapping[str, Trajectory]]],
    debates: int,
    seed: int = 0,
    starts: dict[str, dict[str, float]] = START,
) -> pd.DataFrame:
    """``debates`` debates in each (topic, setup, paths) cell."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for topic, setup, paths in cells:
        for _ in range(debates):
            debate_id = len({r["debate_id"] for r in rows})
            rows += debate_rows(debate_id, topic, setup, paths, rng, starts)
    return pd.DataFrame(rows)


def checks(separation: float = 5.0, stories: int = 8, seed: int = 1) -> list[FidelityRow]:
    """The fidelity check's rows: each party's stories around its position (Republican
    and Democrat ``separation`` apart), and the Default's pre-debate score."""
    rng = np.random.default_rng(seed)
    rows = []
    for topic, start in START.items():
        middle = (start["republican"] + start["democrat"]) / 2
        sign = 1 if start["democrat"] > start["republican"] else -1
        for i in range(stories):
            for kind, offset in (("democrat", sign), ("republican", -sign)):
                score = middle + offset * separation / 2 + rng.normal(0, 0.3)
                rows.append(FidelityRow(f"{kind}{i}", kind, topic, score, 1.0))
        rows.append(FidelityRow("Default", "default", topic, start["default"], 1.0))
    return rows


PAPER_PATTERN = {"republican": converging, "democrat": converging}
TOPICS = tuple(START)


def paper_like(debates: int = 12) -> pd.DataFrame:
    cells = [(t, s, PAPER_PATTERN) for t in TOPICS for s in AGENTS]
    return frame_of(cells, debates)


def rows_of(table: pd.DataFrame, claim_id: str, **where: str) -> pd.DataFrame:
    chosen = table[table["claim_id"] == claim_id]
    for column, value in where.items():
        chosen = chosen[chosen[column] == value]
    assert not chosen.empty, f"no {claim_id} row where {where}"
    return chosen


def test_the_paper_pattern_reproduces_every_claim() -> None:
    table = findings(paper_like(), model="planted", checks=checks())
    assert list(table.columns) == list(COLUMNS)
    assert table["claim_id"].iloc[0] == "personas-hold"
    assert set(table["claim_id"]) == set(CLAIMS) - set(TUNING_CLAIMS)
    assert (table["paper"] == "taubenfeld2024").all() and (table["model"] == "planted").all()
    wrong = table[table["verdict"] != "reproduced"]
    assert wrong.empty, wrong[["claim_id", "setup", "topic", "estimate", "ci_low", "ci_high"]]
    # The estimates are the planted ones: partisans close 80% of their distance to the
    # Default (climate change: R 4.0 and D 1.5 away; immigration: R 1.5 and D 4.0), 70/80
    # of it in the first cycle, and the Default never moves.
    stable = rows_of(table, "default-stable")
    assert np.allclose(stable["estimate"], 0.0)
    converge = rows_of(table, "partisans-converge", setup="three-way")
    assert converge["estimate"].to_numpy() == pytest.approx([-0.8 * 2.75] * 2, abs=0.25)
    assert rows_of(table, "first-cycle")["estimate"].iloc[0] == pytest.approx(0.7 / 0.8)
    assert set(rows_of(table, "echo-moderates")["setup"]) == {"rr-default", "rr", "dd-default"}
    assert rows_of(table, "no-crossing")["estimate"].eq(0.0).all()
    # The personas' separation is the planted 5 points, oriented by the topic's party.
    held = rows_of(table, "personas-hold")
    assert held["estimate"].to_numpy() == pytest.approx([5.0, 5.0], abs=0.4)
    assert (table["n"][table["claim_id"] != "personas-hold"] >= 12).all()


def test_default_leans_democrat_per_topic() -> None:
    table = findings(paper_like(), model="planted", checks=checks())
    leans = rows_of(table, "default-leans-democrat").set_index("topic")
    # Climate change: |6 - R| - |6 - D| starts at 4.0 - 1.5 and shrinks with the partisans:
    # positive, the Default closer to the Democrat. Immigration: the other way round, as
    # the paper found; both are the paper's pattern.
    assert leans.loc["climate change", "estimate"] > 0
    assert leans.loc["illegal immigration", "estimate"] < 0
    assert (leans["verdict"] == "reproduced").all()
    # A Default that sits with the Republican on climate change does not reproduce it.
    right = {"climate change": {**START["climate change"], "default": 2.5}}
    leaning_right = frame_of([("climate change", "three-way", PAPER_PATTERN)], 12, starts=right)
    row = rows_of(findings(leaning_right, model="m"), "default-leans-democrat").iloc[0]
    assert row["verdict"] == "not reproduced" and row["ci_high"] < 0


def away(start: float, target: float, k: int) -> float:
    """Polarisation: further from the Default with every cycle (1.5 to 3 points in all,
    depending on the draw)."""
    return start - float(np.sign(target - start)) * (0.0, 1.0, 1.5)[k] * (1 + start % 1)


def test_echo_chambers_that_polarise_do_not_reproduce() -> None:
    cells = [(t, s, {"republican": away, "democrat": away}) for t in TOPICS for s in AGENTS]
    table = findings(frame_of(cells, 8), model="m", checks=checks())
    echo = rows_of(table, "echo-moderates")
    assert (echo["verdict"] == "not reproduced").all()
    # Each partisan moved 1.5 to 3 points away (the scale's ends are far from here).
    assert ((echo["estimate"] < -1.5) & (echo["estimate"] > -3.0)).all()
    assert (echo["ci_high"] < 0).all()
    assert (rows_of(table, "partisans-converge")["verdict"] == "not reproduced").all()


def test_a_default_that_moves_and_change_made_late_are_not_reproduced() -> None:
    def late(start: float, target: float, k: int) -> float:
        return start + (target - start) * (0.0, 0.1, 0.8)[k]

    def drifting(start: float, target: float, k: int) -> float:
        return start + (1.5 + 0.1 * (start % 1)) * k

    paths = {"republican": late, "democrat": late, "default": drifting}
    table = findings(frame_of([("climate change", "three-way", paths)], 10), model="m")
    stable = rows_of(table, "default-stable").iloc[0]
    assert 3.0 <= stable["estimate"] <= 3.2  # 2 x (1.5 + 0.1 x the fraction of the start)
    assert stable["verdict"] == "not reproduced"
    cycle = rows_of(table, "first-cycle").iloc[0]
    # The partisans' change after the first cycle is 0.1 of 0.8 (their path) while the
    # Default drifts, which the share does not depend on: 0.125.
    assert cycle["estimate"] == pytest.approx(0.1 / 0.8)
    assert cycle["verdict"] == "not reproduced"


def test_lines_that_cross_the_default_do_not_reproduce_no_crossing() -> None:
    def overshoot(start: float, target: float, k: int) -> float:
        return start + (target - start) * (0.0, 1.6, 2.0)[k]

    cells = [(t, "three-way", {"republican": overshoot, "democrat": overshoot}) for t in TOPICS]
    table = findings(frame_of(cells, 8), model="m")
    crossing = rows_of(table, "no-crossing").iloc[0]
    assert crossing["estimate"] == 1.0  # every debate's partisans end on the other side
    assert crossing["verdict"] == "not reproduced"
    assert "mean lines cross on climate change (democrat)" in crossing["note"]


def test_few_noisy_debates_are_inconclusive() -> None:
    rng = np.random.default_rng(3)

    def noisy(start: float, target: float, k: int) -> float:
        return start + (float(rng.normal(0, 2.0)) if k else 0.0)

    paths = {"republican": noisy, "democrat": noisy, "default": noisy}
    table = findings(frame_of([("climate change", "three-way", paths)], 6), model="m")
    stable = rows_of(table, "default-stable").iloc[0]
    # Six debates whose Default moves by N(0, 2): a t CI about +-2 points wide.
    assert stable["ci_low"] < -1.0 or stable["ci_high"] > 1.0
    assert stable["verdict"] == "inconclusive"
    assert (rows_of(table, "partisans-converge")["verdict"] == "inconclusive").all()


def test_below_min_n_debates_no_test_runs() -> None:
    table = findings(paper_like(debates=2), model="m", checks=checks(stories=3))
    assert (table["verdict"] == "inconclusive").all()
    assert table["estimate"].isna().all() and table["ci_low"].isna().all()
    assert table["note"].str.contains("too few to test").all()


def test_personas_that_do_not_hold_flag_every_dynamics_claim() -> None:
    weak = checks(separation=0.0)
    table = findings(paper_like(), model="m", checks=weak)
    held = rows_of(table, "personas-hold")
    assert (held["verdict"] == "not reproduced").all() and (held["ci_high"] < 1.0).all()
    dynamics = table[table["claim_id"] != "personas-hold"]
    assert not dynamics.empty
    assert dynamics["note"].str.contains("rests on personas that did not hold").all()
    per_topic = rows_of(table, "default-stable", topic="climate change").iloc[0]
    assert "(climate change)" in per_topic["note"]
    # Personas that hold leave no such note.
    good = findings(paper_like(), model="m", checks=checks())
    assert not good["note"].str.contains("rests on personas").any()


def test_without_persona_checks_the_precondition_is_inconclusive() -> None:
    table = findings(paper_like(), model="m")
    held = rows_of(table, "personas-hold").iloc[0]
    assert held["verdict"] == "inconclusive" and "did not run" in held["note"]
    assert table.iloc[1:]["note"].str.contains("personas that were not checked").all()
    # The two-way debates then measure the distance to the Default's iteration-0 answers
    # in the three-way debates and echo chambers: still the planted convergence.
    two_way = rows_of(table, "partisans-converge", setup="two-way")
    assert (two_way["verdict"] == "reproduced").all()


def test_verdict_rule_on_each_side() -> None:
    assert verdict(0.6, 0.9, 0.5, "above") == "reproduced"
    assert verdict(0.1, 0.4, 0.5, "above") == "not reproduced"
    assert verdict(0.4, 0.9, 0.5, "above") == "inconclusive"
    assert verdict(0.5, 0.9, 0.5, "above") == "inconclusive"  # touching is not beyond
    assert verdict(-0.9, -0.1, 0.0, "below") == "reproduced"
    assert verdict(0.1, 0.9, 0.0, "below") == "not reproduced"
    assert verdict(-0.5, 0.8, 1.0, "within") == "reproduced"
    assert verdict(1.2, 2.0, 1.0, "within") == "not reproduced"
    assert verdict(-3.0, -1.5, 1.0, "within") == "not reproduced"
    assert verdict(0.5, 1.5, 1.0, "within") == "inconclusive"
    assert verdict(float("nan"), float("nan"), 1.0, "within") == "inconclusive"
    assert set(VERDICTS) == {"reproduced", "not reproduced", "inconclusive"}


def test_every_claim_is_documented() -> None:
    for claim_id, claim in CLAIMS.items():
        assert claim.id == claim_id and claim.statement and claim.definition
        assert claim.side in ("above", "below", "within")


def test_bad_input_is_one_line_naming_it() -> None:
    frame = paper_like(debates=2)
    with pytest.raises(ConfigError, match="unknown paper 'smith2030'; choose one of: taubenfeld"):
        findings(frame, model="m", paper="smith2030")
    with pytest.raises(ConfigError, match="unknown claim id 'echo' for taubenfeld2024"):
        findings(frame, model="m", claims=["echo"])
    with pytest.raises(
        ConfigError, match="no survey mode 'generate' in the frame; choose one of: distribution"
    ):
        findings(frame, model="m", mode="generate")
    with pytest.raises(ConfigError, match=r"no column\(s\) score"):
        findings(frame.drop(columns="score"), model="m")
    two = pd.concat([frame, frame.assign(condition="other", debate_id=frame["debate_id"] + 100)])
    with pytest.raises(ConfigError, match="conditions '', 'other'; pass condition="):
        findings(two, model="m")
    assert set(findings(two, model="m", condition="other")["claim_id"]) == set(CLAIMS) - set(
        TUNING_CLAIMS
    )


def test_claims_chooses_rows_and_keeps_the_precondition() -> None:
    table = findings(paper_like(), model="m", checks=checks(), claims=["echo-moderates"])
    assert set(table["claim_id"]) == {"personas-hold", "echo-moderates"}


def test_tuned_conditions_and_failed_answers_are_left_out() -> None:
    frame = paper_like()
    tuned = frame.assign(tuned=True, condition="tuned", score=10.0)
    failed = frame.assign(ok=False, score=np.nan)
    both = pd.concat(
        [frame, tuned.assign(debate_id=tuned["debate_id"] + 1000), failed], ignore_index=True
    )
    assert findings(both, model="m").equals(findings(frame, model="m"))
