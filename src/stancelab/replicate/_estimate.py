"""What a replication will take, counted before anything runs.

A study paper's pilot is counted by `stancelab.study.estimate_pilot` (`estimate_pilots`).

Every experiment of the design on every model is counted from its real prompts
(`stancelab.debates.estimate_run`); with ``measure``, each model is opened once and timed
for a few seconds on its first experiment, and that measurement serves its other
experiments and, later, the runs themselves (they are not measured again). Experiments
of one design share a persona file that the first of them writes, so its stories are
counted once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stancelab.debates import load_experiment
from stancelab.debates._estimate import Estimate, Measurement, combine_estimates, estimate_run
from stancelab.debates._results import experiment_text
from stancelab.debates._runner import ModelPool, plan_experiment
from stancelab.engine import get_backend
from stancelab.engine._base import LanguageModel
from stancelab.engine._errors import StancelabError
from stancelab.engine._factory import ModelConfig, open_model

if TYPE_CHECKING:
    from stancelab.study._config import StudyConfig
    from stancelab.study._estimate import PilotEstimate

Log = Callable[[str], None]


def estimate_design(
    name: str,
    configs: Sequence[ModelConfig],
    planned: dict[str, list[dict[str, Any]]],
    out: Path,
    *,
    measure: bool = True,
    log: Log = print,
) -> tuple[Estimate, dict[str, dict[str, Measurement]]]:
    """The whole design's estimate, and each model's measurements (by model name) for
    its runs to reuse.

    Args:
        name: what the estimate is called (the paper and scale).
        configs: the models, in order.
        planned: per model name, its experiments as mappings (what the runs will load).
        out: the folder holding the run folders.
        measure: open each model to count tokens as it does and time it; False counts
            characters / 4 and gives no time. A model that cannot be opened is counted
            without it, with a note.
        log: where the measuring messages go.
    """
    parts: list[Estimate] = []
    measured: dict[str, dict[str, Measurement]] = {}
    for config in configs:
        cache: dict[str, Measurement] = {}
        measured[config.name] = cache
        experiments = [load_experiment(e) for e in planned[config.name]]
        plans = [plan_experiment(e, experiment_text(e)) for e in experiments]
        persona_files = [e.personas.file for e in experiments]
        pool = ModelPool() if measure else None
        per_plan: list[Estimate] = []
        try:
            for k, plan in enumerate(plans):
                first = [p for p in persona_files[:k] if p is not None]
                try:
                    per_plan.append(estimate_run(plan, out, pool, log, cache, first))
                except StancelabError as exc:
                    if pool is None:
                        raise
                    log(f"could not open {config.name} to measure it ({exc}); counting without it")
                    pool.close()
                    pool = None
                    per_plan.append(estimate_run(plan, out, None, log, cache, first))
        finally:
            if pool is not None:
                pool.close()  # the runs open their own engines: one model at a time
        parts.append(combine_estimates(config.name, per_plan))
    return combine_estimates(name, parts, at_once=at_once(configs)), measured


def at_once(configs: Sequence[ModelConfig]) -> bool:
    """Whether several models run at the same time: only when every one is on remote
    servers (asked of its backend); local engines take turns, each with every core."""
    return len(configs) > 1 and all(get_backend(c).remote for c in configs)


def estimate_pilots(
    name: str,
    studies: dict[str, tuple[ModelConfig, StudyConfig, Path]],
    participants: int,
    *,
    measure: bool = True,
    log: Log = print,
) -> PilotEstimate:
    """A study paper's pilots, one per model, counted before any runs: per model name,
    its model, its pilot study and its database (participants done there are not run
    again). With ``measure``, each model still to run is opened for a few seconds (then
    closed: the pilot opens its own); one that cannot be opened is counted without it."""
    # lazy: the study package pulls in its web app
    from stancelab.study._estimate import (  # noqa: PLC0415
        combine_pilots,
        estimate_pilot,
        measure_pilot,
    )

    parts = []
    for config, study, db in studies.values():
        lm: LanguageModel | None = None
        measured = None
        if measure and estimate_pilot(study, participants, db=db).participants_left:
            try:
                log(f"measuring {config.name} on the pilot's prompts for the estimate…")
                lm = open_model(config)
                measured = measure_pilot(lm, study)
            except StancelabError as exc:
                log(f"could not open {config.name} to measure it ({exc}); counting without it")
        try:
            parts.append(estimate_pilot(study, participants, db=db, measured=measured, lm=lm))
        finally:
            if lm is not None:
                lm.close()
    configs = [c for c, _, _ in studies.values()]
    return combine_pilots(name, parts, at_once=at_once(configs))
