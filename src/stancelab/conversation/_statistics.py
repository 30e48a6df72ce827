"""Statistical tests for the claims of a study, one `TestResult` row per test.

Pure functions over numbers and pandas frames: they know nothing of a study's tables.
A caller picks the numbers a claim rests on, calls the test here, and writes the rows
(`results_frame`) to ``statistics.csv``. Every function

- drops missing values first (NaN pairs, rows with a missing model variable) and counts
  only what it used in ``n``;
- refuses to test on too little: below ``min_n`` observations (pairs, participants or
  clusters, named per function) it returns rows whose ``ran`` is False, whose numbers are
  NaN, and whose ``note`` says why ("too few to test: n=3 < 5"). The same happens where a
  test is undefined (no spread, a constant outcome, separated logistic data), so a report
  never shows a p-value computed from two points or from an unbounded fit;
- reports 95% confidence intervals and two-sided p-values.

`holm_adjust` then corrects the p-values within each family of claims, and
`detectable_effect` / `power_at` give the power for the achieved n.

Formulas (``ols_term``, covariates and variance components) are patsy formulas, the
engine statsmodels uses when patsy is installed (statsmodels requires it).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from patsy import PatsyError
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.tools.sm_exceptions import ModelWarning

from stancelab.engine import ConfigError

MIN_N: int = 5
"""The default fewest observations (pairs, participants or clusters) a test needs."""

CONFIDENCE = 0.95
"""The level of every confidence interval here."""

COLUMNS = (
    "claim_id",
    "condition",
    "n",
    "estimate",
    "ci_low",
    "ci_high",
    "p",
    "p_adjusted",
    "test",
    "family",
    "note",
)
"""The columns of ``statistics.csv``, in order."""

# Up to this many observations (per group, for two samples) the rank tests' confidence
# intervals use the exact null distribution; beyond it the normal approximation (as R
# and scipy do).
EXACT_RANK_LIMIT = 50

# A logistic fit whose fitted probabilities reach this close to 0 or 1 has run off
# towards infinite log-odds: the data are (quasi-)separated and the slope is unbounded.
SEPARATION_TOLERANCE = 1e-8

PowerKind = Literal["paired", "one-sample", "two-sample"]
Values = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
Fitted = TypeVar("Fitted")

NAN = math.nan


@dataclass(frozen=True)
class TestResult:
    """One statistical test of one claim in one condition: a row of ``statistics.csv``.

    Attributes:
        claim_id: the claim the test bears on (``human-shift``, ``gap-narrows``, ...).
        condition: the study condition the data come from, or ``all``.
        n: the observations the test used (pairs, participants or clusters; each
            function says which).
        estimate: the effect on its natural scale (mean difference, log-odds slope, ...);
            NaN when the test did not run.
        ci_low: lower end of the 95% confidence interval; NaN when not run or undefined.
        ci_high: upper end of the 95% confidence interval; NaN when not run or undefined.
        p: two-sided p-value; NaN when the test did not run.
        test: the test's name, e.g. ``paired t`` or ``Wilcoxon signed-rank``.
        p_adjusted: Holm-adjusted p-value within ``family`` (set by `holm_adjust`).
        family: the Holm family the row belongs to; empty: a family of its own.
        note: why the test did not run, or what a reader should know (warnings).
    """

    # pytest would otherwise try to collect this class in every test module importing it.
    __test__ = False

    claim_id: str
    condition: str
    n: int
    estimate: float
    ci_low: float
    ci_high: float
    p: float
    test: str
    p_adjusted: float = NAN
    family: str = ""
    note: str = ""

    @property
    def ran(self) -> bool:
        """Whether the test produced a p-value."""
        return not math.isnan(self.p)

    def as_row(self) -> dict[str, object]:
        """The result as a ``statistics.csv`` row (keys in `COLUMNS` order)."""
        return {column: getattr(self, column) for column in COLUMNS}


def results_frame(results: Sequence[TestResult]) -> pd.DataFrame:
    """The ``statistics.csv`` table: one row per result, columns in `COLUMNS` order."""
    return pd.DataFrame([result.as_row() for result in results], columns=list(COLUMNS))


@dataclass(frozen=True)
class _Label:
    """Who a result belongs to: the fields every row of one call shares."""

    claim_id: str
    condition: str
    family: str

    def result(
        self,
        test: str,
        n: int,
        estimate: float,
        ci: tuple[float, float],
        p: float,
        note: str = "",
    ) -> TestResult:
        return TestResult(
            claim_id=self.claim_id,
            condition=self.condition,
            n=n,
            estimate=float(estimate),
            ci_low=float(ci[0]),
            ci_high=float(ci[1]),
            p=float(p),
            test=test,
            family=self.family,
            note=note,
        )

    def not_run(self, test: str, n: int, note: str) -> TestResult:
        return self.result(test, n, NAN, (NAN, NAN), NAN, note)


def _too_few(n: int, min_n: int, unit: str = "") -> str | None:
    """The note for a test below its minimum n, or None when n is enough."""
    if n >= min_n:
        return None
    return f"too few to test: n={n} < {min_n}" + (f" {unit}" if unit else "")


def _as_floats(values: Values, claim_id: str, name: str) -> FloatArray:
    """``values`` as a 1-d float array (NaN kept), or one line naming what is not a number."""
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values).ravel())
    try:
        numbers = pd.to_numeric(series, errors="raise")
    except (TypeError, ValueError) as error:
        raise ConfigError(f"claim {claim_id!r}: {name} holds a non-number ({error})") from error
    return np.asarray(numbers.to_numpy(dtype=float, na_value=np.nan), dtype=np.float64)


def _complete_pairs(
    x: Values, y: Values, claim_id: str, names: tuple[str, str]
) -> tuple[FloatArray, FloatArray]:
    """The pairs of ``x`` and ``y`` with neither value missing."""
    first, second = _as_floats(x, claim_id, names[0]), _as_floats(y, claim_id, names[1])
    if first.size != second.size:
        raise ConfigError(
            f"claim {claim_id!r}: {names[0]} and {names[1]} differ in length "
            f"({first.size} vs {second.size})"
        )
    complete = ~(np.isnan(first) | np.isnan(second))
    return first[complete], second[complete]


def _present(values: Values, claim_id: str, name: str) -> FloatArray:
    numbers = _as_floats(values, claim_id, name)
    return numbers[~np.isnan(numbers)]


# --- rank-based confidence intervals (Hodges-Lehmann) ----------------------------------


def _signed_rank_null(n: int) -> FloatArray:
    """P(T+ = t) for t = 0 .. n(n+1)/2: the Wilcoxon signed-rank null distribution.

    Each rank 1..n joins the positive sum with probability 1/2, independently.
    """
    probabilities = np.ones(1)
    for rank in range(1, n + 1):
        grown = np.zeros(probabilities.size + rank)
        grown[: probabilities.size] += probabilities / 2
        grown[rank:] += probabilities / 2
        probabilities = grown
    return probabilities


def _rank_sum_null(m: int, n: int) -> FloatArray:
    """P(U = u) for u = 0 .. m*n: the Mann-Whitney null distribution of #(a_i > b_j).

    Recursion on the largest of the i + j values: with probability i/(i+j) it is an a,
    beating all j b's (U grows by j, i-1 a's remain); otherwise it is a b (j-1 remain).
    """
    previous = [np.ones(1) for _ in range(n + 1)]  # i = 0 a's: U = 0 whatever j
    for i in range(1, m + 1):
        current = [np.ones(1)]  # j = 0 b's: U = 0
        for j in range(1, n + 1):
            out = np.zeros(i * j + 1)
            out[j : j + (i - 1) * j + 1] += i / (i + j) * previous[j]
            out[: i * (j - 1) + 1] += j / (i + j) * current[j - 1]
            current.append(out)
        previous = current
    return previous[n]


def _order_statistic_rank(
    null: FloatArray | None, mean: float, sd: float, alpha: float
) -> tuple[int, float]:
    """The rank k of the lower CI end among the sorted averages/differences, and coverage.

    The interval is [D(k), D(N + 1 - k)] with k the smallest q with P(T <= q) >= alpha/2
    (R's ``qsignrank``/``qwilcox`` rule, at least 1); its exact coverage is
    1 - 2 P(T <= k - 1). ``null`` is the exact distribution, or None to use the normal
    approximation with continuity correction (``mean``, ``sd``).
    """
    half = alpha / 2
    if null is not None:
        cdf = np.cumsum(null)
        # A hair under alpha/2 so a cdf equal to it in exact arithmetic is not missed.
        k = max(int(np.searchsorted(cdf, half * (1 - 1e-9))), 1)
        return k, float(1 - 2 * cdf[k - 1])
    z = float(stats.norm.ppf(half))
    k = max(math.ceil(mean - 0.5 + z * sd), 1)
    return k, float(1 - 2 * stats.norm.cdf((k - 0.5 - mean) / sd))


def _hodges_lehmann(
    sorted_values: FloatArray, k: int, coverage: float, ties: bool
) -> tuple[float, tuple[float, float], str]:
    """The median of sorted Walsh averages/differences, its order-statistic CI, a note."""
    count = sorted_values.size
    notes = []
    if coverage < CONFIDENCE - 1e-9:
        notes.append(f"the rank CI reaches only {coverage:.1%} at this n")
    if ties:
        notes.append("ties: the rank CI is approximate")
    ci = (float(sorted_values[k - 1]), float(sorted_values[count - k]))
    return float(np.median(sorted_values)), ci, "; ".join(notes)


# --- location tests ---------------------------------------------------------------------


def _location_tests(
    values: FloatArray, null: float, t_test: str, noun: str, label: _Label, min_n: int
) -> list[TestResult]:
    """A t-test and a Wilcoxon signed-rank test of ``values`` against ``null``.

    Estimates and CIs are on the scale of ``values`` (the mean; the Hodges-Lehmann
    pseudo-median); the p-values test a centre equal to ``null``.
    """
    n = int(values.size)
    wilcoxon = "Wilcoxon signed-rank"
    too_few = _too_few(n, min_n)
    if too_few:
        return [label.not_run(t_test, n, too_few), label.not_run(wilcoxon, n, too_few)]
    shifted = values - null
    if np.ptp(shifted) == 0:
        t_row = label.not_run(
            t_test, n, f"every {noun} is {values[0]:g}: no spread, so t is undefined"
        )
    else:
        t = stats.ttest_1samp(shifted, 0.0)
        low, high = t.confidence_interval(CONFIDENCE)
        t_row = label.result(t_test, n, float(np.mean(values)), (low + null, high + null), t.pvalue)

    zeros = int(np.count_nonzero(shifted == 0))
    if zeros == n:
        return [t_row, label.not_run(wilcoxon, n, f"every {noun} is {null:g}: no signed ranks")]
    # Default zero rule ("wilcox"): the test drops zero differences; the pseudo-median
    # and its CI keep them (Hodges-Lehmann's estimator is over all n values).
    p = stats.wilcoxon(shifted).pvalue
    rows, cols = np.triu_indices(n)
    walsh = np.sort((shifted[rows] + shifted[cols]) / 2)
    null_distribution = _signed_rank_null(n) if n <= EXACT_RANK_LIMIT else None
    k, coverage = _order_statistic_rank(
        null_distribution,
        mean=n * (n + 1) / 4,
        sd=math.sqrt(n * (n + 1) * (2 * n + 1) / 24),
        alpha=1 - CONFIDENCE,
    )
    ties = np.unique(np.abs(shifted)).size < n
    estimate, (low, high), note = _hodges_lehmann(walsh, k, coverage, ties)
    if zeros:
        note = "; ".join(filter(None, [f"{zeros} zero(s) dropped by the test", note]))
    return [t_row, label.result(wilcoxon, n, estimate + null, (low + null, high + null), p, note)]


def paired_tests(
    before: Values,
    after: Values,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    min_n: int = MIN_N,
) -> list[TestResult]:
    """Paired t and Wilcoxon signed-rank tests of ``after - before``.

    Rows: ``paired t`` (estimate: mean difference, 95% t CI) and ``Wilcoxon
    signed-rank`` (estimate: Hodges-Lehmann pseudo-median of the differences, CI from
    the order statistics of the Walsh averages, exact null distribution up to n=50;
    p from scipy, which drops zero differences). Pairs with a missing value are dropped;
    ``n`` counts complete pairs.

    Args:
        before: the first measurement of each pair.
        after: the second measurement, aligned with ``before``.
        claim_id: the claim tested.
        condition: the study condition the pairs come from.
        family: the Holm family of these rows.
        min_n: the fewest complete pairs to test.
    """
    first, second = _complete_pairs(before, after, claim_id, ("before", "after"))
    return _location_tests(
        second - first, 0.0, "paired t", "difference", _Label(claim_id, condition, family), min_n
    )


def one_sample_tests(
    values: Values,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    null: float = 0.0,
    min_n: int = MIN_N,
) -> list[TestResult]:
    """One-sample t and Wilcoxon signed-rank tests of ``values`` against ``null``.

    Estimates are on the scale of ``values``: the mean (``one-sample t``) and the
    Hodges-Lehmann pseudo-median (``Wilcoxon signed-rank``), with their 95% CIs; the
    p-values test whether the centre equals ``null``. Missing values are dropped.
    """
    numbers = _present(values, claim_id, "values")
    return _location_tests(
        numbers, null, "one-sample t", "value", _Label(claim_id, condition, family), min_n
    )


def two_sample_tests(
    a: Values,
    b: Values,
    *,
    claim_id: str,
    condition: str,
    family: str = "",
    min_n: int = MIN_N,
) -> list[TestResult]:
    """Welch t and Mann-Whitney U tests of group ``a`` against group ``b``.

    Rows: ``Welch t`` (estimate: mean(a) - mean(b), Welch 95% CI) and ``Mann-Whitney
    U`` (estimate: the Hodges-Lehmann shift, the median of all differences a_i - b_j,
    with its order-statistic CI, exact null distribution when both groups have at most
    50). Missing values are dropped; ``n`` is the two groups' sizes together, and each
    group needs ``min_n``.
    """
    label = _Label(claim_id, condition, family)
    first, second = _present(a, claim_id, "a"), _present(b, claim_id, "b")
    m, k = int(first.size), int(second.size)
    n = m + k
    welch, mann_whitney = "Welch t", "Mann-Whitney U"
    too_few = _too_few(min(m, k), min_n, f"(group sizes {m} and {k})")
    if too_few:
        return [label.not_run(welch, n, too_few), label.not_run(mann_whitney, n, too_few)]
    if np.ptp(first) == 0 and np.ptp(second) == 0:
        t_row = label.not_run(welch, n, "no spread within either group: t is undefined")
    else:
        t = stats.ttest_ind(first, second, equal_var=False)
        low, high = t.confidence_interval(CONFIDENCE)
        t_row = label.result(
            welch, n, float(np.mean(first) - np.mean(second)), (low, high), t.pvalue
        )
    if np.ptp(np.concatenate([first, second])) == 0:
        return [t_row, label.not_run(mann_whitney, n, f"every value is {first[0]:g}")]
    p = stats.mannwhitneyu(first, second, alternative="two-sided").pvalue
    differences = np.sort(np.subtract.outer(first, second).ravel())
    exact = m <= EXACT_RANK_LIMIT and k <= EXACT_RANK_LIMIT
    rank, coverage = _order_statistic_rank(
        _rank_sum_null(m, k) if exact else None,
        mean=m * k / 2,
        sd=math.sqrt(m * k * (n + 1) / 12),
        alpha=1 - CONFIDENCE,
    )
    ties = np.unique(np.concatenate([first, second])).size < n
    estimate, ci, note = _hodges_lehmann(differences, rank, coverage, ties)
    return [t_row, label.result(mann_whitney, n, estimate, ci, p, note)]


def correlation(
    x: Values,
    y: Values,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    min_n: int = MIN_N,
) -> TestResult:
    """Pearson's r with its Fisher-z 95% CI and the t-test p (scipy's ``pearsonr``).

    Pairs with a missing value are dropped; ``n`` counts complete pairs (at least 4,
    whatever ``min_n``: the Fisher-z standard error is 1/sqrt(n - 3)).
    """
    label = _Label(claim_id, condition, family)
    test = "Pearson r (Fisher-z CI)"
    first, second = _complete_pairs(x, y, claim_id, ("x", "y"))
    n = int(first.size)
    too_few = _too_few(n, max(min_n, 4))
    if too_few:
        return label.not_run(test, n, too_few)
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return label.not_run(test, n, "a constant variable: r is undefined")
    result = stats.pearsonr(first, second)
    r = float(result.statistic)
    half_width = stats.norm.ppf(1 - (1 - CONFIDENCE) / 2) / math.sqrt(n - 3)
    with np.errstate(divide="ignore"):  # r = ±1 gives an infinite z and the CI [r, r]
        z = np.arctanh(r)
    return label.result(
        test, n, r, (np.tanh(z - half_width), np.tanh(z + half_width)), result.pvalue
    )


def proportion(
    successes: int,
    n: int,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    null: float = 0.5,
    min_n: int = MIN_N,
) -> TestResult:
    """The share ``successes / n`` with its Wilson 95% CI and the exact binomial p vs ``null``."""
    label = _Label(claim_id, condition, family)
    test = "exact binomial (Wilson CI)"
    if not 0 <= successes <= n:
        raise ConfigError(f"claim {claim_id!r}: {successes} successes out of {n} trials")
    if not 0 < null < 1:
        raise ConfigError(f"claim {claim_id!r}: null proportion {null} is not in (0, 1)")
    too_few = _too_few(n, min_n)
    if too_few:
        return label.not_run(test, n, too_few)
    result = stats.binomtest(successes, n, null)
    ci = result.proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return label.result(test, n, successes / n, (ci.low, ci.high), result.pvalue)


# --- models -----------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], claim_id: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ConfigError(f"claim {claim_id!r}: the table has no column(s) {', '.join(missing)}")


def _formula_name(column: str) -> str:
    """A column as a patsy formula term (quoted when it is not a Python name)."""
    return column if column.isidentifier() else f"Q({column!r})"


def _fit_noting_warnings(fit: Callable[[], Fitted]) -> tuple[Fitted, list[str]]:
    """``fit()``'s result and the statsmodels/numeric warnings it raised, de-duplicated.

    Model warnings (convergence, singular covariance) belong in the row's note, where a
    reader of the report sees them; any other warning is passed on unchanged.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitted = fit()
    notes: list[str] = []
    for warning in caught:
        if issubclass(warning.category, ModelWarning | RuntimeWarning):
            message = " ".join(str(warning.message).split())
            if message not in notes:
                notes.append(message)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return fitted, notes


def _coefficient(
    fitted: sm.regression.linear_model.RegressionResults, term: str
) -> tuple[float, tuple[float, float], float]:
    """A fitted coefficient's estimate, 95% CI and p-value."""
    low, high = fitted.conf_int(alpha=1 - CONFIDENCE).loc[term]
    return float(fitted.params[term]), (float(low), float(high)), float(fitted.pvalues[term])


def ols_term(
    frame: pd.DataFrame,
    formula: str,
    term: str,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    cluster: str | None = None,
    min_n: int = MIN_N,
) -> TestResult:
    """One coefficient of an OLS regression: estimate, 95% CI and p (t distribution).

    Standard errors are HC1 heteroskedasticity-robust, or cluster-robust by the column
    ``cluster`` (t with clusters - 1 degrees of freedom). Rows with a missing model
    variable (or cluster) are dropped; ``n`` is the rows used. The test does not run
    below ``min_n`` rows (or clusters), without residual degrees of freedom, with
    collinear terms, or when ``term`` is not among the fitted coefficients (for
    example ``C(condition)[T.personalised]`` when only one condition has data).

    Args:
        frame: the data.
        formula: a patsy formula, e.g. ``abs_change ~ C(condition) + C(topic)``.
        term: the coefficient's name as statsmodels writes it.
        cluster: the column whose values the errors are clustered by, or None.
    """
    label = _Label(claim_id, condition, family)
    test = f"OLS (cluster-robust SE by {cluster})" if cluster else "OLS (HC1 robust SE)"
    data = frame.reset_index(drop=True)
    if cluster is not None:
        _require_columns(data, [cluster], claim_id)
        data = data[data[cluster].notna()].reset_index(drop=True)
    too_few = _too_few(len(data), min_n)
    if too_few:  # before fitting: statsmodels cannot even build a model of no rows
        return label.not_run(test, len(data), too_few)
    try:
        model = smf.ols(formula, data=data, missing="drop")
    except PatsyError as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"claim {claim_id!r}: formula {formula!r}: {message}") from error
    except ValueError:  # every row had a missing model variable
        return label.not_run(test, 0, too_few or f"too few to test: n=0 < {min_n}")
    n = int(model.nobs)
    if term not in model.exog_names:
        return label.not_run(
            test, n, f"no term {term!r} in the model ({', '.join(model.exog_names)})"
        )
    too_few = _too_few(n, min_n)
    if too_few:
        return label.not_run(test, n, too_few)
    k = len(model.exog_names)
    if n <= k:
        return label.not_run(test, n, f"{n} rows for {k} coefficients: no residual df")
    if np.linalg.matrix_rank(model.exog) < k:
        return label.not_run(test, n, "collinear terms: the coefficients are not identified")
    if cluster is None:
        fitted = model.fit(cov_type="HC1", use_t=True)
    else:
        groups = data.loc[model.data.row_labels, cluster]
        clusters = int(groups.nunique())
        too_few = _too_few(clusters, min_n, "clusters")
        if too_few:
            return label.not_run(test, n, too_few)
        codes = pd.factorize(groups)[0]
        fitted = model.fit(cov_type="cluster", cov_kwds={"groups": codes}, use_t=True)
    estimate, ci, p = _coefficient(fitted, term)
    if not math.isfinite(p):
        return label.not_run(test, n, f"the standard error of {term} is undefined")
    return label.result(test, n, estimate, ci, p)


def _model_frame(frame: pd.DataFrame, columns: Sequence[str], claim_id: str) -> pd.DataFrame:
    """The rows of ``frame`` with every one of ``columns`` present, freshly indexed."""
    _require_columns(frame, columns, claim_id)
    return frame.dropna(subset=list(columns)).reset_index(drop=True)


def _separation(outcome: pd.Series, predictor: pd.Series) -> str | None:
    """Why a logistic slope on ``predictor`` alone is unbounded, or None.

    (Quasi-)complete separation: every 1 lies at or beyond every 0 along the predictor
    (or the reverse); the likelihood then grows without limit as the slope does.
    """
    ones, zeros = predictor[outcome == 1], predictor[outcome == 0]
    if ones.min() >= zeros.max() or zeros.min() >= ones.max():
        return "the outcome is separated by the predictor: the log-odds slope is unbounded"
    return None


def gee_logit_slope(
    frame: pd.DataFrame,
    outcome: str,
    predictor: str,
    groups: str,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    covariates: Sequence[str] = (),
    min_n: int = MIN_N,
) -> TestResult:
    """The log-odds slope of a binary outcome on a predictor, clustered by ``groups``.

    A binomial GEE (logit link, exchangeable working correlation, robust sandwich
    standard errors, normal CI and p) of ``outcome ~ predictor + covariates``. The
    estimate is the change in log-odds per unit of ``predictor``; its odds ratio is
    ``exp(estimate)`` (and ``exp`` of the CI ends). ``n`` counts clusters (``min_n``
    applies to them); the note gives the observations.

    Does not run (rather than fail) on a constant outcome or predictor, on separated
    data (fitted probabilities of 0 or 1) or when the GEE does not converge.

    Args:
        frame: one row per observation (e.g. per participant and turn).
        outcome: a 0/1 (or boolean) column, e.g. "changed at this turn".
        predictor: a numeric column, e.g. the turn number.
        groups: the cluster column, e.g. the participant id.
        covariates: further patsy terms, e.g. ``("C(topic)",)``; their rows must be
            complete.
    """
    label = _Label(claim_id, condition, family)
    test = f"GEE logit (exchangeable, clustered by {groups})"
    data = _model_frame(frame, [outcome, predictor, groups], claim_id)
    y = pd.Series(_as_floats(data[outcome], claim_id, f"outcome column {outcome!r}"))
    if not y.isin([0.0, 1.0]).all():
        raise ConfigError(f"claim {claim_id!r}: outcome column {outcome!r} is not 0/1")
    data[outcome] = y
    clusters, observations = int(data[groups].nunique()), len(data)
    too_few = _too_few(clusters, min_n, f"{groups} clusters")
    if too_few:
        return label.not_run(test, clusters, too_few)
    size = f"{observations} observations in {clusters} clusters"
    if y.nunique() == 1:
        return label.not_run(test, clusters, f"the outcome is always {y.iloc[0]:g}; {size}")
    x = pd.Series(_as_floats(data[predictor], claim_id, f"predictor column {predictor!r}"))
    if x.nunique() == 1:
        return label.not_run(test, clusters, f"the predictor is constant; {size}")
    separated = _separation(y, x)
    if separated:
        return label.not_run(test, clusters, f"{separated}; {size}")

    term = _formula_name(predictor)
    formula = " + ".join([f"{_formula_name(outcome)} ~ {term}", *covariates])
    model = smf.gee(
        formula,
        groups=groups,
        data=data,
        family=sm.families.Binomial(),
        cov_struct=sm.cov_struct.Exchangeable(),
    )
    try:
        fitted, notes = _fit_noting_warnings(model.fit)
    except (np.linalg.LinAlgError, ValueError) as error:
        return label.not_run(test, clusters, f"the GEE fit failed: {error}; {size}")
    # statsmodels returns None (with a warning, now in notes) when it cannot estimate.
    if fitted is None or not fitted.converged:
        return label.not_run(test, clusters, "; ".join([*notes, "the GEE did not converge", size]))
    fitted_mean = np.asarray(fitted.fittedvalues, dtype=float)
    if np.any((fitted_mean < SEPARATION_TOLERANCE) | (fitted_mean > 1 - SEPARATION_TOLERANCE)):
        return label.not_run(
            test, clusters, f"fitted probabilities of 0 or 1 (separated data); {size}"
        )
    estimate, ci, p = _coefficient(fitted, term)
    if not (math.isfinite(estimate) and math.isfinite(p)):
        return label.not_run(test, clusters, f"the slope's standard error is undefined; {size}")
    return label.result(test, clusters, estimate, ci, p, "; ".join([*notes, size]))


def mixed_slope(
    frame: pd.DataFrame,
    outcome: str,
    predictor: str,
    groups: str,
    *,
    claim_id: str,
    condition: str = "all",
    family: str = "",
    variance_components: Mapping[str, str] | None = None,
    covariates: Sequence[str] = (),
    min_n: int = MIN_N,
) -> TestResult:
    """The fixed slope of ``outcome`` on ``predictor`` in a linear mixed model (REML).

    ``outcome ~ predictor + covariates`` with a random intercept per ``groups`` (e.g.
    participant). ``variance_components`` adds further random intercepts, e.g.
    ``{"topic": "0 + C(topic)"}``; these are *crossed* with ``groups``, not nested in
    it (statsmodels nests variance components inside its groups, so the model is fitted
    as one group whose variance components are the ``groups`` intercept and the given
    ones). Estimate, normal 95% CI and p are the fixed slope's. ``n`` counts ``groups``
    (``min_n`` applies to them); the note gives the observations and any convergence
    or singular-covariance warning.

    Args:
        frame: one row per observation (e.g. per participant and turn).
        outcome: a numeric column, e.g. the stance.
        predictor: a numeric column, e.g. the turn number.
        groups: the column of the random intercept, e.g. the participant id.
        variance_components: name -> patsy formula of further (crossed) random
            intercepts; their columns must be complete.
        covariates: further fixed patsy terms; their rows must be complete.
    """
    label = _Label(claim_id, condition, family)
    crossed = dict(variance_components or {})
    parts = ", ".join([groups, *crossed])
    test = f"MixedLM (REML; random intercepts: {parts})"
    data = _model_frame(frame, [outcome, predictor, groups], claim_id)
    clusters, observations = int(data[groups].nunique()), len(data)
    too_few = _too_few(clusters, min_n, groups)
    if too_few:
        return label.not_run(test, clusters, too_few)
    size = f"{observations} observations in {clusters} groups"
    if np.ptp(_as_floats(data[predictor], claim_id, f"predictor column {predictor!r}")) == 0:
        return label.not_run(test, clusters, f"the predictor is constant; {size}")

    term = _formula_name(predictor)
    formula = " + ".join([f"{_formula_name(outcome)} ~ {term}", *covariates])
    if crossed:
        # One group holding every row, so the intercepts below are crossed, not nested.
        data = data.assign(_one_group=0)
        crossed = {groups: f"0 + C({_formula_name(groups)})", **crossed}
        model = smf.mixedlm(formula, data, groups="_one_group", re_formula="0", vc_formula=crossed)
    else:
        model = smf.mixedlm(formula, data, groups=groups)
    try:
        fitted, notes = _fit_noting_warnings(lambda: model.fit(reml=True))
    except (np.linalg.LinAlgError, ValueError) as error:
        return label.not_run(test, clusters, f"the mixed model fit failed: {error}; {size}")
    if not fitted.converged:
        notes.append("the optimiser did not converge")
    estimate, ci, p = _coefficient(fitted, term)
    if not (math.isfinite(estimate) and math.isfinite(p)):
        return label.not_run(
            test, clusters, "; ".join([*notes, "the slope's SE is undefined", size])
        )
    return label.result(test, clusters, estimate, ci, p, "; ".join([*notes, size]))


# --- multiplicity and power ---------------------------------------------------------------


def holm_adjust(results: Sequence[TestResult]) -> list[TestResult]:
    """The results with ``p_adjusted`` set by Holm's step-down within each ``family``.

    Rows that did not run keep NaN and do not count toward their family's size. A row
    with an empty family is a family of its own (its adjusted p is its p). The order
    of the rows is kept.
    """
    families: dict[str, list[int]] = {}
    for index, result in enumerate(results):
        if result.ran:
            families.setdefault(result.family or f"\0row {index}", []).append(index)
    adjusted = [replace(result, p_adjusted=NAN) for result in results]
    for indices in families.values():
        corrected = multipletests([results[i].p for i in indices], method="holm")[1]
        for index, p_adjusted in zip(indices, corrected, strict=True):
            adjusted[index] = replace(results[index], p_adjusted=float(p_adjusted))
    return adjusted


def _check_power_kind(kind: str) -> None:
    if kind not in ("paired", "one-sample", "two-sample"):
        raise ConfigError(f"power kind {kind!r} is not paired, one-sample or two-sample")


def detectable_effect(
    n: int, *, alpha: float = 0.05, power: float = 0.8, kind: PowerKind = "paired"
) -> float:
    """The smallest Cohen's d a two-sided t-test detects with ``power`` at ``alpha``.

    ``kind`` ``paired``/``one-sample``: d_z (mean difference over the SD of the
    differences) with ``n`` pairs; ``two-sample``: d with ``n`` in each of two groups.
    NaN for n < 2.
    """
    _check_power_kind(kind)
    if n < 2:
        return NAN
    if kind == "two-sample":
        solved = TTestIndPower().solve_power(
            nobs1=n, ratio=1.0, alpha=alpha, power=power, alternative="two-sided"
        )
    else:
        solved = TTestPower().solve_power(nobs=n, alpha=alpha, power=power, alternative="two-sided")
    return float(np.asarray(solved).item())


def power_at(
    n: int, effect_size: float, *, alpha: float = 0.05, kind: PowerKind = "paired"
) -> float:
    """The power of a two-sided t-test to detect Cohen's d ``effect_size`` with ``n``.

    ``n`` is pairs (``paired``/``one-sample``) or each group's size (``two-sample``).
    NaN for n < 2.
    """
    _check_power_kind(kind)
    if n < 2:
        return NAN
    if kind == "two-sample":
        value = TTestIndPower().power(
            effect_size=effect_size, nobs1=n, ratio=1.0, alpha=alpha, alternative="two-sided"
        )
    else:
        value = TTestPower().power(
            effect_size=effect_size, nobs=n, alpha=alpha, alternative="two-sided"
        )
    return float(np.asarray(value).item())
