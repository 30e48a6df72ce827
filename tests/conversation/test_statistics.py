"""The statistics layer against values worked out by hand, textbook tables and planted effects.

Every reference number below is derived in the comment next to it (arithmetic, or a
table of the null distribution), not taken from the code under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from stancelab.conversation._statistics import (
    COLUMNS,
    MIN_N,
    TestResult,
    correlation,
    detectable_effect,
    gee_logit_slope,
    holm_adjust,
    mixed_slope,
    ols_term,
    one_sample_tests,
    paired_tests,
    power_at,
    proportion,
    results_frame,
    two_sample_tests,
)
from stancelab.engine._errors import ConfigError

T_975_DF4 = 2.7764451051977987  # t(0.975; 4), any t table: 2.776


def by_test(rows: list[TestResult]) -> dict[str, TestResult]:
    return {row.test: row for row in rows}


# --- paired and one-sample ----------------------------------------------------------------


def test_paired_t_matches_the_hand_computation() -> None:
    # d = after - before = [2, 1, 0, 2, 2]: mean 1.4; deviations .6 -.4 -1.4 .6 .6, squares
    # sum 3.2, var 3.2/4 = 0.8, sd 0.8944, se = sd/sqrt(5) = 0.4; t = 3.5 on 4 df;
    # CI 1.4 ± 2.776 * 0.4 = [0.2894, 2.5106]; p = 2 P(T4 > 3.5) = 0.0249.
    rows = by_test(paired_tests([3, 5, 4, 6, 5], [5, 6, 4, 8, 7], claim_id="human-shift"))
    t = rows["paired t"]
    assert (t.n, t.claim_id, t.condition, t.ran) == (5, "human-shift", "all", True)
    assert t.estimate == pytest.approx(1.4)
    assert (t.ci_low, t.ci_high) == pytest.approx((1.4 - T_975_DF4 * 0.4, 1.4 + T_975_DF4 * 0.4))
    assert t.p == pytest.approx(2 * stats.t.sf(3.5, 4))
    assert t.p == pytest.approx(0.0249, abs=1e-4)


def test_wilcoxon_row_small_n_with_zero_and_ties_says_so() -> None:
    # d = [2, 1, 0, 2, 2]. Walsh averages (i <= j), 15 of them, sorted:
    # 0, .5, 1, 1, 1, 1, 1.5, 1.5, 1.5, 2 x6 -> pseudo-median (8th) = 1.5.
    # n = 5: P(T+ <= 0) = 1/32 >= 0.025, so the CI is [W(1), W(15)] = [0, 2], covering
    # 1 - 2/32 = 93.75% only. The test drops the zero: 4 positive differences, exact
    # two-sided p = 2 * (1/16) = 0.125.
    w = by_test(paired_tests([3, 5, 4, 6, 5], [5, 6, 4, 8, 7], claim_id="c"))[
        "Wilcoxon signed-rank"
    ]
    assert w.estimate == 1.5
    assert (w.ci_low, w.ci_high) == (0.0, 2.0)
    assert w.p == pytest.approx(0.125)
    assert "1 zero(s) dropped" in w.note
    assert "93.8%" in w.note
    assert "ties" in w.note


def test_wilcoxon_pseudo_median_and_exact_ci_without_ties() -> None:
    # d = [-3, 1, 4, 6, 8, 11, 15, 20], |d| all distinct. Only -3 is negative, rank 2:
    # T- = 2; subsets of {1..8} with sum <= 2 are {}, {1}, {2}: p = 2 * 3/256 = 0.0234.
    # n = 8: P(T <= 3) = 5/256 = .0195 < .025 <= P(T <= 4) = 7/256 (table: critical value
    # 3), so the CI is [W(4), W(33)] of the 36 Walsh averages. Smallest four:
    # -3, (-3+1)/2 = -1, (-3+4)/2 = .5, (1+1)/2 = 1; largest four: 20, 17.5, 15.5, 15.
    d = [-3, 1, 4, 6, 8, 11, 15, 20]
    before = [10.0] * 8
    after = [10.0 + x for x in d]
    w = by_test(paired_tests(before, after, claim_id="c"))["Wilcoxon signed-rank"]
    walsh = [(a + b) / 2 for a, b in itertools.combinations_with_replacement(d, 2)]
    assert w.estimate == pytest.approx(float(np.median(walsh)))  # 7.75
    assert (w.ci_low, w.ci_high) == (1.0, 15.0)
    assert w.p == pytest.approx(6 / 256)
    assert w.note == ""  # exact coverage 1 - 2 * 5/256 = 96.1% >= 95%


def test_wilcoxon_ci_beyond_the_exact_limit_uses_the_normal_approximation() -> None:
    # n = 60 distinct differences: mu = 60*61/4 = 915, sigma = sqrt(60*61*121/24) = 135.84,
    # k = ceil(915 - .5 - 1.96 * 135.84) = 649; the exact null (the coefficients of
    # prod (1 + q^i), i = 1..60) gives the same k: P(T <= 648) < .025 <= P(T <= 649).
    counts = np.array([1.0])
    for rank in range(1, 61):
        counts = np.polynomial.polynomial.polyadd(counts, np.concatenate([np.zeros(rank), counts]))
    cdf = np.cumsum(counts) / counts.sum()
    assert cdf[648] < 0.025 <= cdf[649]
    d = np.arange(1, 61) ** 1.5 - 150.0
    w = by_test(paired_tests(np.zeros(60), d, claim_id="c"))["Wilcoxon signed-rank"]
    walsh = np.sort([(a + b) / 2 for a, b in itertools.combinations_with_replacement(d, 2)])
    assert (w.ci_low, w.ci_high) == pytest.approx((walsh[648], walsh[walsh.size - 649]))


def test_paired_direction_is_after_minus_before() -> None:
    rows = by_test(paired_tests([5, 6, 7, 8, 9, 10], [4, 5, 5, 7, 7, 9], claim_id="c"))
    assert rows["paired t"].estimate < 0
    assert rows["Wilcoxon signed-rank"].estimate < 0


def test_paired_drops_incomplete_pairs_and_counts_complete_ones() -> None:
    before = pd.Series([3, 5, np.nan, 4, 6, 5, 7])
    after = np.array([5, 6, 9, 4, 8, 7, np.nan])
    rows = by_test(paired_tests(before, after, claim_id="c"))
    # Left: the five pairs of the hand-computed example above.
    assert rows["paired t"].n == 5
    assert rows["paired t"].estimate == pytest.approx(1.4)


def test_paired_rejects_unequal_lengths_and_non_numbers() -> None:
    with pytest.raises(ConfigError, match="'c': before and after differ in length"):
        paired_tests([1, 2, 3], [1, 2], claim_id="c")
    with pytest.raises(ConfigError, match="'c': after holds a non-number"):
        paired_tests([1, 2, 3], ["1", "two", "3"], claim_id="c")


def test_below_min_n_nothing_runs_and_the_note_says_why() -> None:
    rows = paired_tests([1, 2, np.nan, 4], [2, 3, 4, np.nan], claim_id="c")
    assert [row.test for row in rows] == ["paired t", "Wilcoxon signed-rank"]
    for row in rows:
        assert not row.ran
        assert row.n == 2
        assert row.note == f"too few to test: n=2 < {MIN_N}"
        assert all(math.isnan(v) for v in (row.estimate, row.ci_low, row.ci_high, row.p))
    assert paired_tests([1, 2, 3], [2, 3, 5], claim_id="c", min_n=3)[0].ran


def test_all_zero_differences_are_not_run_rather_than_a_crash() -> None:
    rows = by_test(paired_tests([4, 5, 6, 7, 8], [4, 5, 6, 7, 8], claim_id="c"))
    assert not rows["paired t"].ran
    assert "every difference is 0" in rows["paired t"].note
    assert not rows["Wilcoxon signed-rank"].ran
    assert "no signed ranks" in rows["Wilcoxon signed-rank"].note


def test_one_sample_estimates_on_the_scale_of_the_values() -> None:
    # values 6 7 5 8 9 vs null 5: shifted 1 2 0 3 4, mean 2, sd sqrt(10/4) = 1.5811,
    # se 0.7071, t = 2.828 on 4 df; the mean 7 with CI 7 ± 2.776 * 0.7071.
    rows = by_test(one_sample_tests([6, 7, 5, 8, 9, np.nan], claim_id="c", null=5.0))
    t = rows["one-sample t"]
    assert t.n == 5
    assert t.estimate == pytest.approx(7.0)
    se = math.sqrt(2.5 / 5)
    assert (t.ci_low, t.ci_high) == pytest.approx((7 - T_975_DF4 * se, 7 + T_975_DF4 * se))
    assert t.p == pytest.approx(2 * stats.t.sf(2 / se, 4))
    # Walsh averages of 5..9 are symmetric about 7.
    assert rows["Wilcoxon signed-rank"].estimate == pytest.approx(7.0)


# --- two samples ----------------------------------------------------------------------------


def test_welch_t_matches_the_hand_computation() -> None:
    # a = 1..5: mean 3, var 2.5; b = 3..8: mean 5.5, var 3.5. se = sqrt(2.5/5 + 3.5/6)
    # = 1.04083; Welch df = 1.08333^2 / (.5^2/4 + .58333^2/5) = 8.9894; t = -2.4019.
    a, b = [1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8]
    welch = by_test(two_sample_tests(a, b, claim_id="c", condition="x"))["Welch t"]
    se, df = math.sqrt(2.5 / 5 + 3.5 / 6), 8.98936170212766
    half = stats.t.ppf(0.975, df) * se
    assert welch.n == 11
    assert welch.estimate == pytest.approx(-2.5)
    assert (welch.ci_low, welch.ci_high) == pytest.approx((-2.5 - half, -2.5 + half))
    assert welch.p == pytest.approx(2 * stats.t.sf(2.5 / se, df))
    mann_whitney = by_test(two_sample_tests(a, b, claim_id="c", condition="x"))["Mann-Whitney U"]
    assert "ties" in mann_whitney.note  # 3, 4 and 5 are in both groups


def test_mann_whitney_hodges_lehmann_shift_and_exact_ci() -> None:
    # No ties. U = #(a > b) = 1 (3.6) + 1 (4.2) + 3 (5.9) = 5. For m=5, n=6 the table's
    # two-sided 5% critical U is 3 (P(U <= 3) = 7/462 = .0152, P(U <= 4) = 12/462 = .026),
    # so the CI is the 4th smallest to the 4th largest of the 30 differences a_i - b_j,
    # and the exact p = 2 P(U <= 5) = 2 * 19/462 = 0.0823.
    a = [1.1, 2.3, 3.6, 4.2, 5.9]
    b = [3.4, 4.7, 5.1, 6.8, 7.5, 8.2]
    mw = by_test(two_sample_tests(a, b, claim_id="c", condition="x"))["Mann-Whitney U"]
    differences = sorted(x - y for x in a for y in b)
    assert mw.estimate == pytest.approx(float(np.median(differences)))  # -2.5
    assert (mw.ci_low, mw.ci_high) == pytest.approx((differences[3], differences[26]))
    assert mw.p == pytest.approx(2 * 19 / 462)
    # The brute-force null (all C(11, 5) rank sets) agrees with the table above.
    u_values = [sum(ranks) - 15 for ranks in itertools.combinations(range(1, 12), 5)]
    assert sum(u <= 3 for u in u_values) == 7
    assert sum(u <= 4 for u in u_values) == 12
    assert sum(u <= 5 for u in u_values) == 19


def test_two_sample_needs_min_n_in_each_group() -> None:
    rows = two_sample_tests([1, 2, 3, 4, 5, 6], [1, 2, np.nan], claim_id="c", condition="x")
    assert [row.ran for row in rows] == [False, False]
    assert rows[0].n == 8
    assert rows[0].note.startswith("too few to test: n=2 < 5")


# --- correlation and proportion ---------------------------------------------------------------


def test_pearson_r_with_fisher_z_interval() -> None:
    # x = 1..5, y = 2 4 5 4 5: sxy = 6, sxx = 10, syy = 6, r = 6/sqrt(60) = 0.7746.
    # z = atanh(r) = 1.0317, se = 1/sqrt(5-3) = .7071, z ± 1.96 se = [-.3542, 2.4176]
    # -> tanh: [-0.3401, 0.9843]. t = r sqrt(3)/sqrt(1-r^2) = 2.121 on 3 df: p = 0.124.
    result = correlation([1, 2, 3, 4, 5, np.nan], [2, 4, 5, 4, 5, 1], claim_id="misperception")
    assert result.n == 5
    assert result.estimate == pytest.approx(6 / math.sqrt(60))
    assert (result.ci_low, result.ci_high) == pytest.approx((-0.3401, 0.9843), abs=1e-4)
    assert result.p == pytest.approx(0.1240, abs=1e-4)


def test_correlation_of_a_constant_is_not_run() -> None:
    result = correlation([1, 2, 3, 4, 5], [3, 3, 3, 3, 3], claim_id="c")
    assert not result.ran
    assert "constant" in result.note


def test_proportion_wilson_interval_and_exact_binomial_p() -> None:
    # 7/10, z = 1.96: centre (.7 + z^2/20)/(1 + z^2/10) = .6445, half-width
    # z/(1 + z^2/10) * sqrt(.7*.3/10 + z^2/400) = .2477 -> [0.3968, 0.8922].
    # P(X >= 7 | 10, .5) = (120 + 45 + 10 + 1)/1024 = 0.171875; two-sided 0.34375.
    result = proportion(7, 10, claim_id="llm-toward-neutral")
    assert result.estimate == pytest.approx(0.7)
    assert (result.ci_low, result.ci_high) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert result.p == pytest.approx(0.34375)
    assert not proportion(2, 3, claim_id="c").ran
    with pytest.raises(ConfigError, match="11 successes out of 10"):
        proportion(11, 10, claim_id="c")


# --- regression ---------------------------------------------------------------------------------


def test_ols_term_with_hc1_and_cluster_robust_errors() -> None:
    # y = 1 3 2 5 4 on x = 1..5: slope sxy/sxx = 8/10 = 0.8; residuals -.4 .8 -1 1.2 -.6.
    # HC0 var = sum(dx^2 e^2)/sxx^2 = 4.16/100; HC1 = x 5/3 -> se 0.26331, t on 3 df.
    frame = pd.DataFrame({"y": [1, 3, 2, 5, 4], "x": [1, 2, 3, 4, 5], "g": [0, 0, 1, 1, 2]})
    hc1 = ols_term(frame, "y ~ x", "x", claim_id="personalisation-amplifies")
    se = math.sqrt(0.0416 * 5 / 3)
    half = stats.t.ppf(0.975, 3) * se
    assert (hc1.n, hc1.test) == (5, "OLS (HC1 robust SE)")
    assert hc1.estimate == pytest.approx(0.8)
    assert (hc1.ci_low, hc1.ci_high) == pytest.approx((0.8 - half, 0.8 + half))
    assert hc1.p == pytest.approx(2 * stats.t.sf(0.8 / se, 3))
    # Clusters {0,1}, {2,3}, {4}: sums of dx*e are 0, 1.2, -1.2 -> 2.88/100, times
    # G/(G-1) * (N-1)/(N-K) = 1.5 * 4/3 = 2 -> var .0576, se .24, t = 3.33 on G-1 = 2 df.
    clustered = ols_term(frame, "y ~ x", "x", claim_id="c", cluster="g", min_n=2)
    half = stats.t.ppf(0.975, 2) * 0.24
    assert clustered.test == "OLS (cluster-robust SE by g)"
    assert (clustered.ci_low, clustered.ci_high) == pytest.approx((0.8 - half, 0.8 + half))
    assert clustered.p == pytest.approx(2 * stats.t.sf(0.8 / 0.24, 2))


def test_ols_term_drops_missing_rows_and_reports_what_it_cannot_fit() -> None:
    frame = pd.DataFrame(
        {
            "y": [1, 3, 2, 5, 4, np.nan, 7],
            "x": [1, 2, 3, 4, 5, 6, np.nan],
            "condition": ["standard"] * 7,
        }
    )
    assert ols_term(frame, "y ~ x", "x", claim_id="c").estimate == pytest.approx(0.8)
    assert ols_term(frame, "y ~ x", "x", claim_id="c").n == 5
    # One condition only: the contrast is not in the model -> not run, named.
    absent = ols_term(frame, "y ~ x + C(condition)", "C(condition)[T.standard]", claim_id="c")
    assert not absent.ran
    assert "no term 'C(condition)[T.standard]'" in absent.note
    with pytest.raises(ConfigError, match="formula 'y ~ nothing'"):
        ols_term(frame, "y ~ nothing", "nothing", claim_id="c")


# --- GEE and mixed models on planted effects --------------------------------------------------


def clustered_binary(slope: float, seed: int, clusters: int = 60, turns: int = 8) -> pd.DataFrame:
    """Binary outcomes whose *marginal* log-odds are 0.3 + slope * turn, correlated within
    a participant: each draw uses, with probability .4, the participant's shared uniform
    instead of its own. A uniform is a uniform, so P(y = 1) is exactly the planted
    logistic curve (the population-averaged model a GEE estimates), while draws of one
    participant agree more often than chance.
    """
    rng = np.random.default_rng(seed)
    participant = np.repeat(np.arange(clusters), turns)
    turn = np.tile(np.arange(turns, dtype=float), clusters)
    shared = rng.random(clusters)[participant]
    uniform = np.where(rng.random(participant.size) < 0.4, shared, rng.random(participant.size))
    probability = 1 / (1 + np.exp(-(0.3 + slope * turn)))
    changed = (uniform < probability).astype(int)
    return pd.DataFrame({"participant": participant, "turn": turn, "changed": changed})


def test_gee_recovers_a_planted_negative_slope() -> None:
    result = gee_logit_slope(
        clustered_binary(-0.4, seed=7), "changed", "turn", "participant",
        claim_id="change-declines-by-turn",
    )  # fmt: skip
    assert result.ran
    assert result.n == 60
    assert result.test == "GEE logit (exchangeable, clustered by participant)"
    assert result.ci_low < -0.4 < result.ci_high
    assert result.ci_high < 0
    assert "480 observations" in result.note


def test_gee_finds_no_effect_where_none_is_planted() -> None:
    result = gee_logit_slope(
        clustered_binary(0.0, seed=11), "changed", "turn", "participant", claim_id="c"
    )
    assert result.ran
    assert result.ci_low < 0 < result.ci_high
    assert result.p > 0.05


def test_gee_does_not_run_on_a_constant_or_separated_outcome() -> None:
    frame = clustered_binary(0.0, seed=3)
    constant = gee_logit_slope(
        frame.assign(changed=0), "changed", "turn", "participant", claim_id="c"
    )
    assert not constant.ran
    assert "the outcome is always 0" in constant.note
    separated = frame.assign(changed=(frame["turn"] >= 4).astype(int))
    result = gee_logit_slope(separated, "changed", "turn", "participant", claim_id="c")
    assert not result.ran
    assert "separated" in result.note
    # Separation only through a covariate: caught by the fitted probabilities.
    frame["topic"] = frame["participant"] % 3
    frame.loc[frame["topic"] == 0, "changed"] = 0
    by_topic = gee_logit_slope(
        frame, "changed", "turn", "participant", claim_id="c", covariates=("C(topic)",)
    )
    assert not by_topic.ran
    assert "fitted probabilities of 0 or 1" in by_topic.note


def test_gee_counts_clusters_for_min_n_and_rejects_a_non_binary_outcome() -> None:
    frame = clustered_binary(-0.4, seed=5, clusters=4)
    result = gee_logit_slope(frame, "changed", "turn", "participant", claim_id="c")
    assert not result.ran
    assert result.note == "too few to test: n=4 < 5 participant clusters"
    with pytest.raises(ConfigError, match="outcome column 'turn' is not 0/1"):
        gee_logit_slope(frame, "turn", "changed", "participant", claim_id="c")
    with pytest.raises(ConfigError, match="outcome column 'changed' holds a non-number"):
        gee_logit_slope(frame.assign(changed="yes"), "changed", "turn", "participant", claim_id="c")


def stance_trajectories(slope: float, seed: int) -> pd.DataFrame:
    """40 participants x 6 turns; stance = 5 + slope * turn + participant effect (sd 1.5)
    + topic effect (5 topics, sd 1) + noise (sd 1)."""
    rng = np.random.default_rng(seed)
    participant = np.repeat(np.arange(40), 6)
    turn = np.tile(np.arange(6, dtype=float), 40)
    topic = participant % 5
    stance = (
        5
        + slope * turn
        + rng.normal(0, 1.5, 40)[participant]
        + rng.normal(0, 1, 5)[topic]
        + rng.normal(0, 1, participant.size)
    )
    return pd.DataFrame(
        {"participant": participant, "turn": turn, "topic": topic, "stance": stance}
    )


@pytest.mark.parametrize("components", [None, {"topic": "0 + C(topic)"}])
def test_mixed_model_recovers_a_planted_slope_and_finds_none_when_absent(
    components: dict[str, str] | None,
) -> None:
    planted = mixed_slope(
        stance_trajectories(0.3, seed=2), "stance", "turn", "participant",
        claim_id="trajectory", variance_components=components,
    )  # fmt: skip
    assert planted.ran
    assert planted.n == 40
    assert planted.ci_low < 0.3 < planted.ci_high
    assert planted.ci_low > 0
    absent = mixed_slope(
        stance_trajectories(0.0, seed=4), "stance", "turn", "participant",
        claim_id="trajectory", variance_components=components,
    )  # fmt: skip
    assert absent.ci_low < 0 < absent.ci_high
    expected = "participant, topic" if components else "participant"
    assert planted.test == f"MixedLM (REML; random intercepts: {expected})"


# --- Holm, the table, power ---------------------------------------------------------------------


def row(p: float, family: str = "f") -> TestResult:
    return TestResult("c", "all", 10, 0.0, 0.0, 0.0, p, "paired t", family=family)


def test_holm_step_down_within_each_family_ignoring_rows_not_run() -> None:
    # Sorted .005 .01 .03 .04, times 4 3 2 1: .02 .03 .06 .04; made monotone: .02 .03 .06
    # .06. Back in the input order [.01, .04, .03, .005] -> [.03, .06, .06, .02].
    results = [row(0.01), row(0.04), row(math.nan), row(0.03), row(0.005)]
    results += [row(0.02, family="other"), row(0.04, family="other")]
    adjusted = holm_adjust(results)
    assert [r.p_adjusted for r in adjusted[:2]] == pytest.approx([0.03, 0.06])
    assert math.isnan(adjusted[2].p_adjusted)  # not run: not counted (else x5, not x4)
    assert [r.p_adjusted for r in adjusted[3:5]] == pytest.approx([0.06, 0.02])
    # Family "other": .02 x 2 = .04, .04 x 1 = .04.
    assert [r.p_adjusted for r in adjusted[5:]] == pytest.approx([0.04, 0.04])
    kept = [0, 1, 3, 4, 5, 6]
    assert [adjusted[i].p for i in kept] == [results[i].p for i in kept]


def test_holm_leaves_a_row_without_family_alone() -> None:
    adjusted = holm_adjust([row(0.03, family=""), row(0.04, family="")])
    assert [r.p_adjusted for r in adjusted] == pytest.approx([0.03, 0.04])


def test_results_frame_has_the_csv_columns_in_order() -> None:
    rows = paired_tests([1, 2, 3, 4, 5], [2, 4, 3, 6, 7], claim_id="human-shift", family="shift")
    frame = results_frame(holm_adjust(rows))
    assert list(frame.columns) == list(COLUMNS)
    assert list(COLUMNS[:9]) == [
        "claim_id", "condition", "n", "estimate", "ci_low", "ci_high", "p", "p_adjusted", "test",
    ]  # fmt: skip
    assert frame["family"].tolist() == ["shift", "shift"]
    assert frame["p_adjusted"].notna().all()


def test_detectable_effect_and_power_for_the_achieved_n() -> None:
    # statsmodels TTestPower().solve_power(nobs=34, alpha=.05, power=.8) = 0.4950, and
    # TTestIndPower().solve_power(nobs1=34, ratio=1, ...) = 0.6896. Independently: at
    # d = 0.4950 and n = 34, the noncentral t (df 33, ncp d*sqrt(34)) exceeds
    # t(.975; 33) in absolute value with probability 0.80.
    d = detectable_effect(34)
    assert d == pytest.approx(0.4950, abs=1e-3)
    critical, ncp = stats.t.ppf(0.975, 33), d * math.sqrt(34)
    assert stats.nct.sf(critical, 33, ncp) + stats.nct.cdf(-critical, 33, ncp) == pytest.approx(
        0.8, abs=1e-4
    )
    assert power_at(34, d) == pytest.approx(0.8, abs=1e-4)
    assert detectable_effect(34, kind="two-sample") == pytest.approx(0.6896, abs=1e-3)
    assert math.isnan(detectable_effect(1))
    assert math.isnan(power_at(1, 0.5))
    with pytest.raises(ConfigError, match="power kind 'anova'"):
        power_at(10, 0.5, kind="anova")  # type: ignore[arg-type]
