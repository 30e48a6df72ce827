"""Claims, their verdicts and the findings table every paper's replication shares.

A paper module computes one `Finding` per claim and cell (setup, topic) from the
statistics layer's `TestResult`; `verdict` turns its confidence interval into
``reproduced`` / ``not reproduced`` / ``inconclusive``; `findings_table` writes the rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd

from stancelab.conversation import TestResult

Side = Literal["above", "below", "within", "outside"]
"""Where the paper's finding puts the estimate against the claim's threshold: above it,
below it, within plus-or-minus it, or outside plus-or-minus it (with threshold 0: the CI
excludes 0)."""

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
"""Every verdict a finding can get."""

COLUMNS = (
    "paper",
    "claim_id",
    "claim",
    "model",
    "setup",
    "topic",
    "mode",
    "estimate",
    "ci_low",
    "ci_high",
    "threshold",
    "verdict",
    "n",
    "test",
    "note",
)
"""The columns of a findings table, in order."""


@dataclass(frozen=True)
class Claim:
    """One finding of a paper, stated so that a run can test it.

    Attributes:
        id: the claim id (``default-stable``).
        paper: the paper's id (``taubenfeld2024``).
        statement: the finding in one sentence, as the paper reports it.
        definition: what the estimate is and what one observation (a debate) is.
        threshold: the value the paper's side is judged against.
        side: where the paper's finding puts the estimate (`Side`).
        dynamics: a claim about the debates, which rests on the personas holding.
    """

    id: str
    paper: str
    statement: str
    definition: str
    threshold: float
    side: Side
    dynamics: bool = True


@dataclass(frozen=True)
class Finding:
    """One claim tested in one cell of the design.

    Attributes:
        claim: the claim tested.
        result: the statistics layer's test (estimate, 95% CI, n, note).
        setup: the setup the data come from, or ``all``.
        topic: the topic the data come from, or ``all``.
        side: the paper's side for this cell when it differs from the claim's (a
            per-topic expectation), else None.
        settled: a verdict the claim's own rule settles beyond the CI (e.g. mean lines
            that cross), else None.
        notes: what a reader should know besides the test's own note.
    """

    claim: Claim
    result: TestResult
    setup: str = "all"
    topic: str = "all"
    side: Side | None = None
    settled: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def verdict(self) -> str:
        """The verdict: settled by the claim's rule, else from the CI (`verdict`);
        ``inconclusive`` whenever there is no CI (below min_n, or undefined)."""
        if math.isnan(self.result.ci_low) or math.isnan(self.result.ci_high):
            return INCONCLUSIVE
        if self.settled is not None:
            return self.settled
        return verdict(
            self.result.ci_low,
            self.result.ci_high,
            self.claim.threshold,
            self.side or self.claim.side,
        )

    @property
    def note(self) -> str:
        """The test's note and the finding's own, joined."""
        return "; ".join(filter(None, [self.result.note, *self.notes]))


def verdict(low: float, high: float, threshold: float, side: Side) -> str:
    """The verdict of a 95% CI ``[low, high]`` against a claim's threshold.

    ``reproduced`` when the whole CI lies on the paper's side of the threshold (strictly),
    ``not reproduced`` when it lies wholly on the other side, ``inconclusive`` otherwise
    (the CI straddles or touches the threshold, or is undefined). For ``within``, the
    paper's side is the open interval (-threshold, threshold) and the other side is
    beyond either end; ``outside`` is the reverse (with threshold 0 only ``reproduced``
    or ``inconclusive`` can follow: a claim that something moves needs a margin of its own
    to be refuted, which its paper module settles).
    """
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if side == "above":
        paper, other = low > threshold, high < threshold
    elif side == "below":
        paper, other = high < threshold, low > threshold
    elif side == "within":
        paper = -threshold < low and high < threshold
        other = low > threshold or high < -threshold
    else:
        paper = low > threshold or high < -threshold
        other = -threshold < low and high < threshold
    return REPRODUCED if paper else NOT_REPRODUCED if other else INCONCLUSIVE


def findings_table(found: Sequence[Finding], *, model: str, mode: str) -> pd.DataFrame:
    """The findings table: one row per finding, columns in `COLUMNS` order."""
    rows = [
        {
            "paper": f.claim.paper,
            "claim_id": f.claim.id,
            "claim": f.claim.statement,
            "model": model,
            "setup": f.setup,
            "topic": f.topic,
            "mode": mode,
            "estimate": f.result.estimate,
            "ci_low": f.result.ci_low,
            "ci_high": f.result.ci_high,
            "threshold": f.claim.threshold,
            "verdict": f.verdict,
            "n": f.result.n,
            "test": f.result.test,
            "note": f.note,
        }
        for f in found
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))
