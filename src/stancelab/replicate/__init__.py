"""Replicate a paper's findings on any model: its designs, and a verdict per claim.

``design(paper, scale, model)`` gives the experiments that replicate a paper at a scale
(``smoke``, ``quick``, ``paper``); run them like any experiment. ``findings(frame,
model=...)`` (or ``run_findings(run, ...)`` on stored runs) tests every claim of the paper
on the answers and returns one row per claim and cell with its estimate, 95% CI
(clustered by debate) and verdict: ``reproduced``, ``not reproduced`` or
``inconclusive``. ``CLAIMS`` holds each claim's definition and threshold;
docs/replicate.md explains them. ``replicate(paper, model=...)`` does it all: runs the
design on one model or several side by side and returns a `Replication`; with
``tuning=True`` it also runs the self-fine-tuning intervention (`TUNING_SCALES`) and tests
``TUNING_CLAIMS`` on it (``tuning_findings``), with Table 1 in ``Replication.table1()``.
"""

import sys
from types import ModuleType
from typing import Any

from stancelab.replicate._designs import SCALES, Scale, design
from stancelab.replicate._findings import CLAIMS, PAPERS, findings, run_findings, tuning_findings
from stancelab.replicate._replication import Replication, papers, replicate
from stancelab.replicate._tuning import TUNING_SCALES, TuningRun, TuningScale
from stancelab.replicate._verdict import COLUMNS, VERDICTS, Claim, verdict
from stancelab.replicate.taubenfeld2024 import TUNING_CLAIMS

__all__ = [
    "CLAIMS",
    "COLUMNS",
    "PAPERS",
    "SCALES",
    "TUNING_CLAIMS",
    "TUNING_SCALES",
    "VERDICTS",
    "Claim",
    "Replication",
    "Scale",
    "TuningRun",
    "TuningScale",
    "design",
    "findings",
    "papers",
    "replicate",
    "run_findings",
    "tuning_findings",
    "verdict",
]


class _Package(ModuleType):
    """``stancelab.replicate`` names both this package and the verb: Python's import
    system puts the package on ``stancelab`` once it is imported, so the package itself
    answers ``sl.replicate(paper, model=...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Replication:
        return replicate(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
