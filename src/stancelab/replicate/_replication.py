"""``replicate``: run a paper's design on one or more models and test its claims.

Everything that can be refused (the paper, the scale, claim ids, setups, each model entry
and whether its servers answer) is checked before anything runs. Then each model runs
the paper's design: a debate paper's experiments through the experiment runner (each in
its own run folder under ``out``, so the same call again resumes), a study paper as a
pilot with simulated participants through the real app. Models on remote servers run at
once (a thread each); models on this machine one after another, so each engine has the
cores to itself. With ``tuning``, each model then goes through the self-fine-tuning
intervention (`_tuning`), whose claims join the table and whose cost is Table 1
(`Replication.table1`). The findings of all models form one table, claim x model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import ValidationError

from stancelab.conversation._tally import Priced, check_cost, default_max_cost
from stancelab.debates import load_experiment
from stancelab.debates._estimate import Estimate
from stancelab.debates._results import Run, run_config
from stancelab.debates._runner import ensure_writable_dir
from stancelab.engine._errors import ConfigError, format_validation_error
from stancelab.engine._factory import ModelConfig, check_model, check_reachable, model_config
from stancelab.replicate import jiang2025
from stancelab.replicate._designs import FIG3_SETUPS, LATER_SETUPS, SCALES, _slug, design
from stancelab.replicate._estimate import at_once, estimate_design, estimate_pilots
from stancelab.replicate._findings import PAPERS, STUDY_PAPERS, run_findings
from stancelab.replicate._tuning import (
    TUNING_PAPERS,
    TuningRun,
    benchmark_tasks,
    check_tunable,
    estimate_tuning,
    run_tuning,
    run_tuning_findings,
    tuning_configs,
    tuning_table,
)
from stancelab.replicate._verdict import COLUMNS

if TYPE_CHECKING:
    from stancelab.study._estimate import PilotEstimate
    from stancelab.tuning._estimate import FinetuneEstimate

Log = Callable[[str], None]
ModelLike = ModelConfig | str | dict[str, Any]

NOT_COMPARED = {
    "taubenfeld2024": (
        "Table 1 and Figs. 6, 11 and 12 (the self-fine-tuning intervention: "
        "tuning-shifts-default, dpo-shifts-more, the cost on MMLU/HellaSwag) are not "
        "compared: pass --tuning (it trains LoRA adapters on the model's local weights; "
        "--benchmarks DIR measures the cost) to run them."
    ),
    "jiang2025": (
        "The paper's effect sizes come from people; this pilot's participants are LLM "
        "personas, so only the direction of each claim is compared, never its size."
    ),
}
"""Per paper: which of its published numbers a replication does not compare, and why."""


def papers() -> list[str]:
    """Every paper ``replicate`` knows."""
    return [*PAPERS, *STUDY_PAPERS]


def paper_claim_ids(paper: str) -> list[str]:
    """A paper's claim ids, or one line naming the papers there are."""
    if paper in PAPERS:
        return list(PAPERS[paper][0])
    if paper in STUDY_PAPERS:
        return list(STUDY_PAPERS[paper])
    raise ConfigError(f"unknown paper {paper!r}; choose one of: {', '.join(papers())}")


@dataclass
class Replication:
    """A paper replicated on one or more models: the findings and where the runs are.

    Attributes:
        paper: the paper's id.
        scale: the design's scale (None for a study paper).
        out: the folder holding the run folders.
        models: the models' names, in the order given.
        table: the findings of every model (see `findings`).
        runs: per model, its stored runs (a debate paper).
        studies: per model, its study report folder (a study paper).
        setups: the setups the design ran (a debate paper).
        estimate: what the design (or the study paper's pilot) needed when the call
            began: requests, tokens, time, cost; with ``dry_run`` the only result.
        tuning: per model, the self-fine-tuning runs, one per direction (``tuning=True``).
        tuning_estimates: what each fine-tuning run needed when the call began.
    """

    paper: str
    scale: str | None
    out: Path
    models: list[str]
    table: pd.DataFrame
    runs: dict[str, list[Run]] = field(default_factory=dict)
    studies: dict[str, Path] = field(default_factory=dict)
    setups: list[str] = field(default_factory=list)
    estimate: Estimate | PilotEstimate | None = None
    tuning: dict[str, list[TuningRun]] = field(default_factory=dict)
    tuning_estimates: list[FinetuneEstimate] = field(default_factory=list)

    def findings(self) -> pd.DataFrame:
        """One row per claim, cell and model: ``paper, claim_id, claim, model, setup,
        topic, mode, estimate, ci_low, ci_high, threshold, verdict, n, test, note``."""
        return self.table.copy()

    def table1(self) -> pd.DataFrame:
        """Table 1 on each model beside the paper's (a replication with ``tuning``): per
        model, direction and variant (``base``, ``r=X NWP``, ``r=8 DPO``), the seeds, the
        mean HellaSwag and MMLU accuracy (%) and the Default agent's final attitude on
        racism, then the paper's Mistral 7B values (``paper_*``) and a ``note``; empty
        without tuning."""
        return tuning_table([run for runs in self.tuning.values() for run in runs])

    def verdicts(self) -> pd.DataFrame:
        """The fidelity table: one row per claim and cell (``part`` tells apart rows of
        one cell: the party, or the study's measure), one column per model, each cell the
        verdict."""
        keys = ["claim_id", "setup", "topic", "part"]
        table = self.table.assign(
            part=[_part(n, t) for n, t in zip(self.table["note"], self.table["test"], strict=True)]
        )
        wide = table.pivot_table(
            index=keys, columns="model", values="verdict", aggfunc="first", sort=False
        )
        return wide.reindex(columns=self.models).reset_index().rename_axis(columns=None)

    def report(self, path: str | Path | None = None) -> Path:
        """Write the HTML report (the claim x model table, the findings, each model's
        figures); returns its ``index.html``.

        Args:
            path: the report's folder; default ``OUT/replicate-PAPER[-SCALE]``.
        """
        from stancelab.replicate._report import write_replication_report  # noqa: PLC0415

        stem = f"replicate-{self.paper}" + (f"-{self.scale}" if self.scale else "")
        return write_replication_report(self, Path(path) if path else self.out / stem)


def _part(note: str, test: str) -> str:
    """What tells apart the rows of one claim and cell: the party a debate claim is about
    (its note says "republican to Default"), else the measure a study test names."""
    for segment in str(note).split("; "):
        if segment.endswith(("to Default", "toward Default")):
            return segment
    return str(test).split(" · ", 1)[1] if " · " in str(test) else ""


def _model_configs(models: Sequence[ModelLike], tuning: bool = False) -> list[ModelConfig]:
    """Every model entry validated, named once, its engine checkable (and trainable, for
    ``tuning``) and its servers up."""
    if not models:
        raise ConfigError("no model given: name at least one (--model)")
    configs = []
    for model in models:
        try:
            configs.append(model_config(model))
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "model")) from None
    names = [_slug(c.name) for c in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"model {twice[0]!r} is given twice: models side by side need distinct names "
            "(their run folders are named after them)"
        )
    for config in configs:
        check_model(config)
        if tuning:
            check_tunable(config)
    for config in configs:  # after the cheap checks, so a typo is named first
        check_reachable(config)
    return configs


def _entry(config: ModelConfig) -> dict[str, Any]:
    """A model entry as an experiment or study file writes it (defaults left out)."""
    return config.model_dump(mode="json", exclude_defaults=True)


def _setups(setups: Sequence[str] | None) -> list[str]:
    known = [*FIG3_SETUPS, *LATER_SETUPS]
    if setups is None:
        return known
    unknown = [s for s in setups if s not in known]
    if unknown or not setups:
        raise ConfigError(
            f"unknown setup {unknown[0] if unknown else ''!r}; choose from: {', '.join(known)}"
        )
    return [s for s in known if s in setups]


def _experiments(
    paper: str,
    scale: str,
    config: ModelConfig,
    prompt_format: str,
    setups: list[str],
    out: Path,
) -> list[dict[str, Any]]:
    """The design's experiments for one model: only the chosen setups, the shared persona
    file under ``out`` (written once per model, read by every experiment)."""
    chosen = []
    for experiment in design(paper, scale, _entry(config), prompt_format).values():
        kept = [s for s in experiment["setups"] if s in setups]
        if not kept:
            continue
        personas = {**experiment["personas"], "file": str(out / experiment["personas"]["file"])}
        chosen.append({**experiment, "setups": kept, "personas": personas})
    return chosen


def _each_model(
    configs: list[ModelConfig], work: Callable[[ModelConfig, Log], Any], log: Log
) -> list[Any]:
    """``work`` for every model: at once when all are remote, else one after another."""

    def prefixed(config: ModelConfig) -> Log:
        return (lambda line: log(f"[{config.name}] {line}")) if len(configs) > 1 else log

    if at_once(configs):
        log(f"{len(configs)} models on remote servers: running them at once")
        with ThreadPoolExecutor(max_workers=len(configs), thread_name_prefix="model") as pool:
            futures = [pool.submit(work, c, prefixed(c)) for c in configs]
            return [f.result() for f in futures]
    return [work(c, prefixed(c)) for c in configs]


def replicate(
    paper: str,
    model: ModelLike | None = None,
    *,
    models: Sequence[ModelLike] = (),
    scale: str = "smoke",
    prompt_format: str = "auto",
    out: str | Path = "runs",
    claims: Sequence[str] | None = None,
    setups: Sequence[str] | None = None,
    participants: int = 6,
    min_probe_coverage: float | None = None,
    tuning: bool = False,
    benchmarks: str | Path | None = None,
    allow_network: bool = False,
    log: Log | None = print,
    dry_run: bool = False,
    measure: bool = True,
    max_cost: float | None = None,
    yes: bool = False,
    ask: Callable[[str], bool] | None = None,
) -> Replication:
    """Run a paper's design on one model or several side by side (or resume it), and
    test every claim of the paper on each.

    A debate paper (``taubenfeld2024``) runs its experiments through the experiment
    runner, each in its own run folder ``OUT/PAPER-SCALE-MODEL[...]``: the same call again
    resumes where it stopped. A study paper (``jiang2025``) is piloted: ``participants``
    simulated participants per model take the study through its web app
    (``OUT/jiang2025-MODEL``; again, only the missing ones), and the study's report tests
    its claims. Models on remote servers run at once, local ones one after another.

    Args:
        paper: ``taubenfeld2024`` or ``jiang2025``.
        model: one model: an embedded name, a GGUF path, a server URL, a mapping of
            ``ModelConfig`` fields or a ``ModelConfig``.
        models: several models, side by side (with or instead of ``model``).
        scale: the debate paper's scale: ``smoke``, ``quick`` or ``paper``.
        prompt_format: ``auto``, ``transcript`` (the paper's Figure 2) or ``chat``.
        out: the folder holding the run folders.
        claims: only these claim ids (``personas-hold`` always stays); default: all.
        setups: only these setups of the debate paper's design; default: all five.
        participants: simulated participants per model (study paper).
        min_probe_coverage: the study's probe coverage gate (study paper); None: the
            study's default, 0.5, which refuses models whose probe puts little on the scale.
        tuning: also run the self-fine-tuning intervention (``taubenfeld2024``; Figs. 6,
            11, 12, Table 1) through the tuning pipeline, each direction in its own folder
            ``OUT/taubenfeld2024-tuning-SCALE-MODEL-PARTY``; needs local weights.
        benchmarks: a folder of MMLU/HellaSwag files in the original formats
            (``examples/finetune-bench``): the cost rows of Table 1; None: not measured
            (unless ``allow_network``).
        allow_network: without ``benchmarks``, read the benchmarks from the Hugging Face
            hub.
        log: where progress lines go; None: nowhere.
        dry_run: count what the design or the pilot needs (requests, tokens, time,
            cost; printed to ``log``), and stop there: the `Replication` holds the
            ``estimate`` and no findings.
        measure: open each model for a few seconds to count tokens as it does and time
            it (the runs reuse the measurement); False: characters / 4 and no time.
        max_cost: refuse a design whose cost may exceed this many US dollars (priced
            models only); None: the STANCELAB_MAX_COST environment variable, else no limit.
        yes: run whatever the estimated cost.
        ask: asks the person at a terminal whether to go on above ``max_cost``; None
            refuses with one line.

    Returns:
        The `Replication`: ``findings()`` (one row per claim, cell and model) and
        ``report()``.

    Raises:
        ConfigError: an unknown paper, scale, claim id or setup, a bad model entry, no
            model, a model none of whose servers answers, ``tuning`` for a paper without
            it or on a model without local weights, or a benchmark folder that is not
            there: all checked before anything runs.
    """
    say = log or (lambda _: None)
    chosen_models = [*([model] if model is not None else []), *models]
    known = paper_claim_ids(paper)
    unknown = [c for c in claims or () if c not in known]
    if unknown:
        raise ConfigError(
            f"unknown claim id {unknown[0]!r} for {paper}; choose from: {', '.join(known)}"
        )
    chosen_claims = list(claims) if claims else None
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    root = Path(out)
    if tuning and paper not in TUNING_PAPERS:
        raise ConfigError(f"--tuning is for {', '.join(TUNING_PAPERS)}, not {paper}")
    limit = default_max_cost() if max_cost is None else max_cost  # a bad value fails first
    bench_dir = Path(benchmarks) if benchmarks else None
    tasks = benchmark_tasks(bench_dir, allow_network) if tuning else []
    if paper in STUDY_PAPERS:
        if participants < 1:
            raise ConfigError(f"--participants must be at least 1, got {participants}")
        configs = _model_configs(chosen_models)
        studies = {}
        for c in configs:
            folder = root / f"{paper}-{_slug(c.name)}"
            study = jiang2025.pilot_study(_entry(c), folder.name, min_probe_coverage)
            studies[c.name] = (c, study, folder / "study.db")
        pilots = estimate_pilots(paper, studies, participants, measure=measure, log=say)
        for line in pilots.lines():
            say(line)
        if dry_run:
            say("dry run: no participant was run")
            names = [c.name for c in configs]
            return Replication(paper, None, root, names, _concat([]), estimate=pilots)
        check_cost(pilots, limit, yes, ask)
        ensure_writable_dir(root)

        def pilot(config: ModelConfig, told: Log) -> tuple[pd.DataFrame, Path]:
            folder = root / f"{paper}-{_slug(config.name)}"
            report = _pilot(config, folder, participants, min_probe_coverage, told)
            statistics = pd.read_csv(report / "statistics.csv")
            margin = jiang2025.CHANGE_RULE
            table = jiang2025.study_findings(
                statistics, model=config.name, claims=chosen_claims, margin=margin
            )
            return table, report

        results = _each_model(configs, pilot, say)
        return Replication(
            paper,
            None,
            root,
            [c.name for c in configs],
            _concat([t for t, _ in results]),
            studies={c.name: r for c, (_, r) in zip(configs, results, strict=True)},
            estimate=pilots,
        )
    chosen_setups = _setups(setups)
    configs = _model_configs(chosen_models, tuning)
    planned = {
        c.name: _experiments(paper, scale, c, prompt_format, chosen_setups, root) for c in configs
    }
    found, measured = estimate_design(
        f"{paper} at {scale} scale", configs, planned, root, measure=measure, log=say
    )
    for line in found.lines():
        say(line)
    tuning_found: list[FinetuneEstimate] = []
    if tuning:
        for c in configs:
            tuning_found += estimate_tuning(
                tuning_configs(
                    c,
                    scale,
                    root,
                    tasks=tasks,
                    benchmarks=bench_dir,
                    design_personas=Path(planned[c.name][0]["personas"]["file"]),
                ),
                measure=measure,
                log=say,
            )
        for ft in tuning_found:
            for line in ft.lines():
                say(line)
    if dry_run:
        say("dry run: no debate was run" + (" and nothing was trained" if tuning else ""))
        return Replication(
            paper,
            scale,
            root,
            [c.name for c in configs],
            _concat([]),
            setups=chosen_setups,
            estimate=found,
            tuning_estimates=tuning_found,
        )
    parts: list[Priced] = [found, *tuning_found]
    for part in parts:
        check_cost(part, limit, yes, ask)
    ensure_writable_dir(root)

    def debates(config: ModelConfig, told: Log) -> tuple[pd.DataFrame, list[Run], list[TuningRun]]:
        experiments = planned[config.name]
        runs = [
            # The design's estimate was logged before anything ran: not each part again.
            run_config(
                load_experiment(e), root, log=told, measured=measured[config.name], announce=False
            )
            for e in experiments
        ]
        table = run_findings(*runs, model=config.name, paper=paper, claims=chosen_claims)
        if not tuning:
            return table, runs, []
        tuned = run_tuning(
            config,
            scale,
            root,
            tasks=tasks,
            benchmarks=bench_dir,
            # The design's stories: the paper re-runs its debates with the same personas.
            design_personas=Path(experiments[0]["personas"]["file"]),
            log=told,
        )
        return _concat([table, run_tuning_findings(tuned, chosen_claims)]), runs, tuned

    done = _each_model(configs, debates, say)
    return Replication(
        paper,
        scale,
        root,
        [c.name for c in configs],
        _concat([t for t, _, _ in done]),
        runs={c.name: r for c, (_, r, _) in zip(configs, done, strict=True)},
        setups=chosen_setups,
        estimate=found,
        tuning={c.name: t for c, (_, _, t) in zip(configs, done, strict=True) if t},
        tuning_estimates=tuning_found,
    )


def _concat(tables: list[pd.DataFrame]) -> pd.DataFrame:
    tables = [t for t in tables if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)


def _pilot(
    config: ModelConfig,
    folder: Path,
    participants: int,
    min_probe_coverage: float | None,
    log: Log,
    progress_every_s: float = 60.0,
) -> Path:
    """Simulated participants take the study through its app until ``participants`` have
    finished (a second call adds only the missing ones; a progress line every
    ``progress_every_s`` seconds meanwhile), then the study's report."""
    from stancelab.study._estimate import PilotProgress  # noqa: PLC0415 - lazy: the web app
    from stancelab.study._report import write_report  # noqa: PLC0415
    from stancelab.study._simulate import simulate, summary  # noqa: PLC0415
    from stancelab.study._store import StudyStore  # noqa: PLC0415

    study = jiang2025.pilot_study(_entry(config), folder.name, min_probe_coverage)
    ensure_writable_dir(folder)
    db = folder / "study.db"
    store = StudyStore(db)
    try:
        finished = sum(1 for p in store.participants(study.study) if p.step == "done")
    finally:
        store.close()
    missing = participants - finished
    if missing > 0:
        log(f"{missing} simulated participant(s) take the study ({finished} finished before)")
        # Each call its own personas: a resumed pilot does not repeat the first ones.
        with PilotProgress(db, study.study, missing, log, progress_every_s):
            counts = summary(simulate(study, missing, db=db, seed=finished))
        for failure in counts["failed"]:
            log(f"WARNING: participant {failure}")
    report = folder / "report"
    store = StudyStore(db)
    try:
        write_report(store, report, study=study.study, config=study)
    finally:
        store.close()
    return report
