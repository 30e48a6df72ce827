"""Replicate a paper's findings on any model: its designs, and a verdict per claim.

``design(paper, scale, model)`` gives the experiments that replicate a paper at a scale
(``smoke``, ``quick``, ``paper``); run them like any experiment. ``findings(frame,
model=...)`` (or ``run_findings(run, ...)`` on stored runs) tests every claim of the paper
on the answers and returns one row per claim and cell with its estimate, 95% CI
(clustered by debate) and verdict: ``reproduced``, ``not reproduced`` or
``inconclusive``. ``CLAIMS`` holds each claim's definition and threshold;
docs/replicate.md explains them.
"""

from stancelab.replicate._designs import SCALES, Scale, design
from stancelab.replicate._findings import CLAIMS, PAPERS, findings, run_findings
from stancelab.replicate._verdict import COLUMNS, VERDICTS, Claim, verdict

__all__ = [
    "CLAIMS",
    "COLUMNS",
    "PAPERS",
    "SCALES",
    "VERDICTS",
    "Claim",
    "Scale",
    "design",
    "findings",
    "run_findings",
    "verdict",
]
