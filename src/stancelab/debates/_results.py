"""A run's results as pandas DataFrames: open a run folder (or a results database) and read.

The same reader serves experiment runs (``runs/NAME``) and single debates
(``runs/debate-…``): both are run folders with ``run.json``, made by the same runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stancelab.debates._analysis import (
    agent_frame,
    attitude_frame,
    decision_frame,
    mean_attitudes,
    turn_frame,
)
from stancelab.debates._estimate import Measurement, ProgressLines, estimate_run
from stancelab.debates._experiment import ExperimentConfig
from stancelab.debates._report import change_statistics, write_report
from stancelab.debates._runner import (
    RUN_META,
    ModelPool,
    RunFolder,
    execute,
    experiment_status,
    plan_experiment,
)
from stancelab.debates._store import Store
from stancelab.engine._errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Run:
    """One stored run. Every table is read fresh, so a run still going can be watched."""

    store: Store
    run_id: str
    folder: Path | None = None
    """The run folder, when the run has one."""

    @property
    def status(self) -> str:
        """running, complete, complete-with-failures, failed or interrupted."""
        return self.store.get_run(self.run_id).status

    @property
    def config(self) -> dict[str, Any]:
        """The configuration the run was started with."""
        return dict(self.store.get_run(self.run_id).config)

    @property
    def versions(self) -> dict[str, Any]:
        """Provenance: package, models (with file hashes), prompt templates, seed, notes."""
        return dict(self.store.get_run(self.run_id).versions)

    def turns(self) -> pd.DataFrame:
        """One row per reply, in speaking order."""
        return turn_frame(self.store, self.run_id)

    def decisions(self) -> pd.DataFrame:
        """One row per decision whether to speak of an agent that decides first (SAUCE's
        asynchronous persons): its answer, and whether it spoke or passed."""
        return decision_frame(self.store, self.run_id)

    def agents(self) -> pd.DataFrame:
        """One row per agent of each debate: who it was and everything it was told (its
        prompts' opening, prompt format, SAUCE's opinion and speaking personality)."""
        return agent_frame(self.store, self.run_id)

    def surveys(self) -> pd.DataFrame:
        """One row per hidden-survey answer (score, most likely answer, entropy, coverage)."""
        return attitude_frame(self.store, self.run_id)

    def means(self) -> pd.DataFrame:
        """Mean attitude with standard error and counts per topic, setup, kind, mode and
        iteration (failed answers counted apart)."""
        return mean_attitudes(self.surveys())

    def changes(self) -> pd.DataFrame:
        """First-to-last survey change per topic, setup, kind and mode, with tests."""
        return change_statistics(self.surveys())

    def progress(self) -> dict[str, Any]:
        """How far the run has got (debates, turns and surveys per cell)."""
        return experiment_status(self._run_folder())

    def report(self) -> Path:
        """Write the run's HTML report; returns report/index.html."""
        return write_report(self._run_folder())

    def _run_folder(self) -> RunFolder:
        if self.folder is None or not (self.folder / RUN_META).is_file():
            raise ConfigError(
                "only a run folder (with run.json) has a report and progress; this run was "
                "opened from a database: read it with turns() and surveys()"
            )
        return RunFolder(self.folder)


def open_run(where: str | Path, run_id: str | None = None) -> Run:
    """A run by folder (``runs/quick``, ``runs/debate-…``), database file or URL.

    Without ``run_id``, an experiment folder gives its own run and a database its newest.
    """
    text = str(where)
    folder: Path | None = None
    store: Store | None = None
    if "://" in text:
        store = Store(text)
    else:
        path = Path(where)
        if path.is_dir():
            folder = path
            if (path / RUN_META).is_file():
                run_folder = RunFolder(path)
                run_id = run_id or str(run_folder.read_meta()["run_id"])
                store = run_folder.open_store()
            path = path / "stancelab.db"
        if store is None:
            if not path.is_file():
                raise ConfigError(f"no stancelab results at {where} (no run folder or database)")
            store = Store(path)
    if run_id is None:
        runs = store.runs()
        if not runs:
            raise ConfigError(f"{where} holds no runs yet")
        run_id = runs[0].id
    store.get_run(run_id)  # a clear error for an unknown id
    return Run(store, run_id, folder)


def experiment_text(config: ExperimentConfig) -> str:
    """The experiment file kept in the run folder of an experiment built in Python."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def run_config(
    config: ExperimentConfig,
    out: Path,
    text: str | None = None,
    log: Callable[[str], None] = print,
    progress_every_s: float = 60.0,
    measured: dict[str, Measurement] | None = None,
    announce: bool = True,
) -> Run:
    """Run (or resume) an experiment in ``OUT/NAME`` and open the finished run.

    Before the first reply is asked, the estimate of what the design still needs
    (requests, tokens, time measured on its models, cost where priced) goes to ``log``;
    while it runs, a progress line every ``progress_every_s`` seconds.

    Args:
        config: the validated experiment.
        out: the folder that holds run folders.
        text: the experiment file's text, kept in the run folder; None: the config
            written as YAML (an experiment built in Python).
        log: where the estimate and progress lines go.
        progress_every_s: seconds between progress lines.
        measured: models already measured for an estimate (by ``model_key``), not
            measured again (see `estimate_run`).
        announce: log the estimate; False where a caller has logged one for a whole
            design (the progress lines still count from it).
    """
    plan = plan_experiment(config, experiment_text(config) if text is None else text)
    with ModelPool() as pool:
        found = estimate_run(plan, out, pool, log, measured)
        for line in found.lines() if announce else ():
            log(line)
        with ProgressLines(found, pool.stats, log, progress_every_s) as lines:
            result = execute(plan, out, None, log, models=pool, events=lines.events())
    return open_run(result.folder.path, result.run_id)
