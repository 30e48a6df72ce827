"""Standard errors and tests cluster by debate (agents of one kind in a debate are not
independent), checked on fixtures whose values are worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from stancelab.debates._analysis import clustered_se, mean_attitudes
from stancelab.debates._report import change_statistics


def test_clustered_se_on_known_values() -> None:
    # Debate A: 1 and 3 (mean 2); debate B: 5 and 7 (mean 6). Grand mean 4.
    # CR1: sqrt(G/(G-1) * sum_g (sum_i (y - 4))^2) / N = sqrt(2 * (16 + 16)) / 4 = 2.0,
    # the standard error of the two debate means (sd 2.83 / sqrt 2), not of four answers.
    assert clustered_se([1, 3, 5, 7], ["a", "a", "b", "b"]) == pytest.approx(2.0)
    naive = pd.Series([1, 3, 5, 7]).sem()
    assert naive == pytest.approx(1.291, abs=1e-3)
    # One answer per debate: the usual standard error.
    assert clustered_se([1, 3, 5, 7], [1, 2, 3, 4]) == pytest.approx(naive)
    assert math.isnan(clustered_se([1, 3], ["a", "a"]))


def frame(debates: int = 3) -> pd.DataFrame:
    rows = []
    # Two Republicans per debate (an echo chamber) in three (or five) debates, surveyed at
    # 0 and 3.
    before = {1: (8, 8), 2: (6, 6), 3: (7, 7), 4: (5, 5), 5: (9, 9)}
    after = {1: (6, 4), 2: (5, 5), 3: (7, 5), 4: (4, 4), 5: (6, 8)}
    for debate in range(1, debates + 1):
        for agent in (0, 1):
            for iteration, scores in ((0, before), (3, after)):
                rows.append(
                    {
                        "debate_id": debate,
                        "condition": "",
                        "tuned": False,
                        "topic": "racism",
                        "setup": "rr",
                        "repetition": debate - 1,
                        "iteration": iteration,
                        "agent_index": agent,
                        "kind": "republican",
                        "question_id": "attitude",
                        "mode": "distribution",
                        "ok": True,
                        "score": float(scores[debate][agent]),
                    }
                )
    return pd.DataFrame(rows)


def test_mean_attitudes_cluster_by_debate() -> None:
    table = mean_attitudes(frame())
    last = table[table["iteration"] == 3].iloc[0]
    # Debate means 5, 5, 6: mean 5.33, SE = sd(5, 5, 6) / sqrt(3) = 0.333.
    assert last["mean"] == pytest.approx(16 / 3)
    assert last["sem"] == pytest.approx(0.57735 / math.sqrt(3), abs=1e-4)
    assert last["n"] == 6 and last["debates"] == 3


def test_change_tests_run_over_debates() -> None:
    stats = change_statistics(frame(debates=5)).iloc[0]
    # Per-debate changes: -3, -1, -1, -1, -2 (mean -1.6, sd sqrt(0.8)): t = -4.0 on 4 df.
    assert stats["n"] == 5 and stats["agents"] == 10
    assert stats["mean_change"] == pytest.approx(-1.6)
    assert stats["cohens_dz"] == pytest.approx(-1.6 / 0.8944, abs=1e-3)
    assert stats["t_test_p"] == pytest.approx(0.01613, abs=1e-4)
    assert stats["wilcoxon_p"] == pytest.approx(0.0625)  # all 5 signs negative: 2 / 2^5
    assert stats["note"] == ""


def test_too_few_debates_are_not_tested() -> None:
    # Three debates (make demo has two): the means are shown, no p-value or d_z is.
    stats = change_statistics(frame()).iloc[0]
    assert stats["n"] == 3 and stats["mean_change"] == pytest.approx(-5 / 3)
    assert math.isnan(stats["t_test_p"]) and math.isnan(stats["wilcoxon_p"])
    assert math.isnan(stats["cohens_dz"])
    assert stats["note"] == "too few to test: n=3 < 5"
