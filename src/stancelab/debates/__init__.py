"""Agent debates: experiment files, the debate protocol, the runner, reports and SAUCE import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from stancelab._lazy import lazy_package

if TYPE_CHECKING:
    from stancelab.debates._analysis import (
        attitude_frame,
        mean_attitudes,
        plot_attitudes,
        turn_frame,
    )
    from stancelab.debates._debate import (
        Debate,
        DebateEvents,
        DebateSpec,
        DecideStep,
        Decision,
        Turn,
        TurnStep,
        run_debates,
    )
    from stancelab.debates._estimate import Estimate, combine_estimates, estimate_run
    from stancelab.debates._experiment import (
        ExperimentConfig,
        PlannedDebate,
        load_experiment,
        plan_debates,
    )
    from stancelab.debates._report import write_report
    from stancelab.debates._results import (
        Run,
        open_run,
    )
    from stancelab.debates._runner import (
        ModelPool,
        experiment_status,
        run_experiment,
    )
    from stancelab.debates._sauce import load_sauce
    from stancelab.debates._store import (
        Store,
        export_tables,
    )
    from stancelab.debates._turn_taking import (
        DecideFirst,
        RandomHost,
        RoundRobin,
        TurnTaking,
    )

_SOURCES = {
    "Estimate": ("stancelab.debates._estimate", "Estimate"),
    "combine_estimates": ("stancelab.debates._estimate", "combine_estimates"),
    "estimate_run": ("stancelab.debates._estimate", "estimate_run"),
    "ExperimentConfig": ("stancelab.debates._experiment", "ExperimentConfig"),
    "PlannedDebate": ("stancelab.debates._experiment", "PlannedDebate"),
    "load_experiment": ("stancelab.debates._experiment", "load_experiment"),
    "plan_debates": ("stancelab.debates._experiment", "plan_debates"),
    "Run": ("stancelab.debates._results", "Run"),
    "open_run": ("stancelab.debates._results", "open_run"),
    "ModelPool": ("stancelab.debates._runner", "ModelPool"),
    "experiment_status": ("stancelab.debates._runner", "experiment_status"),
    "run_experiment": ("stancelab.debates._runner", "run_experiment"),
    "Debate": ("stancelab.debates._debate", "Debate"),
    "DebateEvents": ("stancelab.debates._debate", "DebateEvents"),
    "DebateSpec": ("stancelab.debates._debate", "DebateSpec"),
    "DecideStep": ("stancelab.debates._debate", "DecideStep"),
    "Decision": ("stancelab.debates._debate", "Decision"),
    "Turn": ("stancelab.debates._debate", "Turn"),
    "TurnStep": ("stancelab.debates._debate", "TurnStep"),
    "run_debates": ("stancelab.debates._debate", "run_debates"),
    "DecideFirst": ("stancelab.debates._turn_taking", "DecideFirst"),
    "RandomHost": ("stancelab.debates._turn_taking", "RandomHost"),
    "RoundRobin": ("stancelab.debates._turn_taking", "RoundRobin"),
    "TurnTaking": ("stancelab.debates._turn_taking", "TurnTaking"),
    "Store": ("stancelab.debates._store", "Store"),
    "export_tables": ("stancelab.debates._store", "export_tables"),
    "attitude_frame": ("stancelab.debates._analysis", "attitude_frame"),
    "mean_attitudes": ("stancelab.debates._analysis", "mean_attitudes"),
    "plot_attitudes": ("stancelab.debates._analysis", "plot_attitudes"),
    "turn_frame": ("stancelab.debates._analysis", "turn_frame"),
    "write_report": ("stancelab.debates._report", "write_report"),
    "load_sauce": ("stancelab.debates._sauce", "load_sauce"),
}
"""Public name -> (private module, attribute), imported on first use."""

__all__ = [
    "Debate",
    "DebateEvents",
    "DebateSpec",
    "DecideFirst",
    "DecideStep",
    "Decision",
    "Estimate",
    "ExperimentConfig",
    "ModelPool",
    "PlannedDebate",
    "RandomHost",
    "RoundRobin",
    "Run",
    "Store",
    "Turn",
    "TurnStep",
    "TurnTaking",
    "attitude_frame",
    "combine_estimates",
    "estimate_run",
    "experiment_status",
    "export_tables",
    "load_experiment",
    "load_sauce",
    "mean_attitudes",
    "open_run",
    "plan_debates",
    "plot_attitudes",
    "run_debates",
    "run_experiment",
    "turn_frame",
    "write_report",
]

lazy_package(__name__)
