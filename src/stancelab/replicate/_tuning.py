"""The self-fine-tuning intervention of Taubenfeld et al. (2024) as a replication design.

Sections 5 and 7 of the paper tune the model toward a party with answers it wrote
itself, then re-run the same three-way debates on the tuned model (Figs. 6, 11, 12) and
measure the cost in general ability (Table 1). `TUNING_SCALES` holds that design at the
replication's three scales; `run_tuning` runs it per party through the tuning package's
own pipeline (`run_finetune` with a `FinetuneConfig` built here), each party in its own
folder ``OUT/taubenfeld2024-tuning-SCALE-MODEL-PARTY``, so the same call resumes (the
pipeline's stages skip finished work). `tuning_table` lays out Table 1 beside the
paper's numbers; the two tuning claims are tested by `_findings.tuning_findings`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stancelab.conversation import PAPER_TOPICS, Topic, paper_topic
from stancelab.conversation._tally import Measurement
from stancelab.debates._results import Run, open_run
from stancelab.engine import ConfigError, get_backend
from stancelab.engine._factory import ModelConfig
from stancelab.replicate._designs import _slug
from stancelab.replicate._findings import answered, one_mode, tuning_findings
from stancelab.replicate.taubenfeld2024 import PAPER, default_finals
from stancelab.tuning._config import FinetuneConfig
from stancelab.tuning._estimate import FinetuneEstimate, estimate_finetune
from stancelab.tuning._evaluate import TASKS
from stancelab.tuning._pipeline import STAGE_NAMES, run_finetune
from stancelab.tuning._report import load_results_file, summarize_rows

Log = Callable[[str], None]

TUNING_PAPERS = (PAPER,)
"""Papers whose replication has a ``tuning`` part."""

TABLE1_TOPIC = "racism"
"""Table 1's attitude column: the Default agent's final attitude on racism."""

PAPER_TABLE1: dict[str, tuple[float | None, float | None, float | None]] = {
    "base": (83.6, 59.0, 8.4),
    "r=16 NWP": (81.8, 57.6, 5.1),
    "r=64 NWP": (81.2, 56.3, 4.3),
    "r=128 NWP": (79.7, 54.3, 2.5),
    "r=256 NWP": (73.8, 48.6, 1.9),
    "r=8 DPO": (81.4, 57.0, 0.4),
}
"""Table 1 (Mistral 7B tuned toward Republican, each tuned row the mean of three seeds):
HellaSwag %, MMLU %, the Default agent's final attitude on racism, per variant."""

PAPER_REFERENCE = ("Llama 2 7B", 77.2, 45.3)
"""Table 1's last row: another base model's benchmarks, for scale (not tuned)."""

NOT_MEASURED = "not measured: no benchmark files (--benchmarks DIR)"

NOT_COMPARED = (
    "Table 1's numbers are Mistral 7B's: they stand beside this model's rows for "
    "reading, never tested against them (another model's benchmark levels and attitudes "
    "differ); only the direction of each tuning claim is tested. Table 1's Llama 2 7B row "
    "(another base model, not tuned) is shown for scale only."
)
"""What a replication with tuning does not compare, and why."""


@dataclass(frozen=True)
class TuningScale:
    """How big the tuning design is at one scale.

    Attributes:
        parties: the directions tuned (each its own pipeline run).
        questions: the question bank's size (Table 2's 10 seeds, then model-written).
        answers_per_question: self-written answers per question and party.
        ranks: per party, the NWP LoRA ranks (alpha = 2r); DPO trains on the largest.
        dpo_rank: the DPO adapter's own rank.
        seeds: training seeds; every tuned score is the mean over them.
        topics: the topics of the three-way debates re-run on every model.
        repetitions: debates per topic and model.
        iterations: replies per debate.
        nwp: NWP trainer settings beyond the paper's defaults (`NwpSettings` fields).
        dpo: DPO trainer settings beyond the paper's defaults (`DpoSettings` fields).
        eval_limit: benchmark items per task (None: all of them).
        check_fidelity: survey the personas before the debates (each condition).
        design_personas: the debates use the debate design's persona file (the paper's
            "same personas"); else the built-in personas.
        generation_parallel: requests in flight while the model writes its data.
        debate_parallel: requests in flight in the debates.
        purpose: what the scale is for, in one line.
    """

    parties: tuple[str, ...]
    questions: int
    answers_per_question: int
    ranks: dict[str, tuple[int, ...]]
    dpo_rank: int
    seeds: tuple[int, ...]
    topics: tuple[str, ...]
    repetitions: int
    iterations: int
    nwp: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    eval_limit: int | None = None
    check_fidelity: bool = True
    design_personas: bool = False
    generation_parallel: int = 8
    debate_parallel: int = 4
    purpose: str = ""


_TINY = {"batch_size": 2, "max_length": 48, "save_steps": 1, "logging_steps": 1}

TUNING_SCALES: dict[str, TuningScale] = {
    "smoke": TuningScale(
        parties=("republican",),
        questions=10,  # Table 2's seed questions alone: nothing to generate
        answers_per_question=1,
        ranks={"republican": (16,)},
        dpo_rank=8,
        seeds=(0,),
        topics=(TABLE1_TOPIC,),
        repetitions=1,
        iterations=3,
        nwp={**_TINY, "max_steps": 2, "lora": {"dropout": 0.0}},
        dpo={**_TINY, "max_steps": 1, "pairs_per_question": 1, "lora": {"r": 8, "dropout": 0.0}},
        eval_limit=2,
        check_fidelity=False,
        generation_parallel=4,
        debate_parallel=2,
        purpose="a pipeline check in minutes on a tiny model: Table 2's 10 questions, one "
        "answer each, 2 training steps, one seed, toward Republican only; no claim can be "
        "tested (1 debate per model < 5)",
    ),
    "quick": TuningScale(
        parties=("republican", "democrat"),
        questions=30,
        answers_per_question=5,
        ranks={"republican": (16, 256), "democrat": (256,)},
        dpo_rank=8,
        seeds=(0, 1),
        topics=(TABLE1_TOPIC, "climate change"),
        repetitions=5,
        iterations=6,
        nwp={"batch_size": 8, "max_length": 128},
        dpo={"batch_size": 8, "max_length": 128, "pairs_per_question": 5},
        eval_limit=200,
        generation_parallel=8,
        purpose="a first look: both directions, the smallest and the paper's NWP rank, two "
        "seeds, 5 debates per model and topic (the fewest a test takes), 200 benchmark items",
    ),
    "paper": TuningScale(
        parties=("republican", "democrat"),
        questions=100,
        answers_per_question=20,
        ranks={"republican": (16, 64, 128, 256), "democrat": (256,)},
        dpo_rank=8,
        seeds=(0, 1, 2),
        topics=tuple(PAPER_TOPICS),
        repetitions=40,
        iterations=9,
        design_personas=True,
        purpose="the paper's design: 100 questions x 20 answers, Table 1's ranks "
        "(Republican), DPO r=8 on r=256 NWP, 3 seeds, the three-way debates on the 4 "
        "topics with the design's 40 persona pairs, 9 iterations",
    ),
}
"""The tuning design at each replication scale (docs/replicate.md says what the paper
leaves open and what was chosen)."""


def check_tunable(config: ModelConfig) -> None:
    """Refuse a model whose weights are not here to train (a remote server, or a backend
    that takes no LoRA adapters), before anything runs."""
    chosen = get_backend(config)
    if chosen.remote or not chosen.adapters:
        why = "serves a remote model" if chosen.remote else "takes no LoRA adapters"
        raise ConfigError(
            f"model {config.name!r}: --tuning trains LoRA adapters on local weights and "
            f"backend {config.backend!r} {why}; give an embedded model name or a GGUF path"
        )


def benchmark_tasks(benchmarks: Path | None, allow_network: bool) -> list[str]:
    """The benchmarks the cost rows measure: the tasks whose folder ``benchmarks`` holds
    (the original formats, see tuning/_evaluate.py), both from the hub with
    ``allow_network``, none otherwise."""
    if benchmarks is None:
        return list(TASKS) if allow_network else []
    if not benchmarks.is_dir():
        raise ConfigError(f"--benchmarks {benchmarks}: no such folder")
    tasks = [t for t in TASKS if (benchmarks / t).is_dir()]
    if not tasks:
        raise ConfigError(
            f"--benchmarks {benchmarks} holds neither {' nor '.join(f'{t}/' for t in TASKS)}"
        )
    return tasks


def tuning_folder(root: Path, scale: str, model: str, party: str) -> Path:
    """Where one direction's pipeline run lives."""
    return root / f"{PAPER}-tuning-{scale}-{_slug(model)}-{party}"


def finetune_config(
    scale: str,
    model: str,
    party: str,
    root: Path,
    *,
    tasks: Sequence[str] = (),
    benchmarks: Path | None = None,
    personas: Path | None = None,
) -> FinetuneConfig:
    """The pipeline's config for one model and direction at a scale.

    Args:
        scale: ``smoke``, ``quick`` or ``paper`` (`TUNING_SCALES`).
        model: the model (an embedded name or a GGUF path).
        party: the direction tuned.
        root: the replication's ``out`` folder.
        tasks: the benchmarks to measure (`benchmark_tasks`); none: no evaluation.
        benchmarks: their local folder; None with tasks: the hub.
        personas: the debates' persona file; None: the built-in personas.
    """
    size = TUNING_SCALES[scale]
    ranks = size.ranks[party]
    folder = tuning_folder(root, scale, model, party).resolve()
    # Both directions of one model and scale share one question bank, as in the paper.
    bank = (root / f"{PAPER}-tuning-{scale}-{_slug(model)}-questions.yaml").resolve()
    # And one set of answers: each direction trains on both parties' (DPO's rejected
    # answers are the other party's), so the second direction finds them written.
    answers = (root / f"{PAPER}-tuning-{scale}-{_slug(model)}-answers").resolve()
    evaluation = (
        {
            "tasks": list(tasks),
            "data_dir": str(benchmarks.resolve()) if benchmarks else None,
            "allow_network": benchmarks is None,
            "limit": size.eval_limit,
        }
        if tasks
        else None
    )
    return FinetuneConfig.model_validate(
        {
            "name": folder.name,
            "model": model,
            "party": party,
            "output_dir": str(folder),
            "seeds": list(size.seeds),
            "ranks": list(ranks),
            "questions": {"count": size.questions, "file": str(bank)},
            "dataset": {"answers_per_question": size.answers_per_question, "folder": str(answers)},
            "nwp": size.nwp,
            "dpo": {**size.dpo, "lora": {**size.dpo.get("lora", {}), "r": size.dpo_rank}},
            "dpo_rank": max(ranks),
            "evaluation": evaluation,
            "debates": {
                "topics": list(size.topics),
                "setup": ["republican", "democrat", "default"],
                "repetitions": size.repetitions,
                "iterations": size.iterations,
                "parallel": size.debate_parallel,
                "personas": str(personas.resolve()) if personas else None,
                "check_fidelity": size.check_fidelity,
            },
            "generation_parallel": size.generation_parallel,
        }
    )


@dataclass(frozen=True)
class TuningRun:
    """One direction of the intervention on one model: the pipeline's output folder.

    Attributes:
        model: the model's name.
        party: the direction tuned.
        folder: the pipeline's output folder (``results.json``, ``table.txt``, ...).
        tasks: the benchmarks measured.
        stages: per pipeline stage, ``ran`` or ``skipped`` (its output was there).
    """

    model: str
    party: str
    folder: Path
    tasks: tuple[str, ...] = ()
    stages: dict[str, str] = field(default_factory=dict)

    def results(self) -> dict[str, Any]:
        """The pipeline's ``results.json``."""
        return load_results_file(self.folder)

    def debates(self) -> Run:
        """The debates on the base and every tuned model, one condition each."""
        stored = self.results().get("debates_run")
        if not stored:
            raise ConfigError(f"{self.folder}: the tuning run has no debates yet")
        # Found by name under the output folder, so a moved OUT folder still opens.
        return open_run(self.folder / "debates" / Path(stored).name)


def tuning_configs(
    config: ModelConfig,
    scale: str,
    root: Path,
    *,
    tasks: Sequence[str] = (),
    benchmarks: Path | None = None,
    design_personas: Path | None = None,
) -> list[FinetuneConfig]:
    """The fine-tuning runs of the intervention on one model: one per direction of the
    scale. ``design_personas`` (the design's persona file) serves the tuned debates at
    the scales that re-run the design's own personas, once the file exists."""
    size = TUNING_SCALES[scale]
    personas = None
    if size.design_personas and design_personas is not None and design_personas.is_file():
        personas = design_personas
    return [
        finetune_config(
            scale, config.name, party, root, tasks=tasks, benchmarks=benchmarks, personas=personas
        )
        for party in size.parties
    ]


SHARED_STAGES = ("questions", "answers")
"""Stages whose output the directions of one model share (the bank and the answers)."""


def estimate_tuning(
    configs: Sequence[FinetuneConfig], *, measure: bool, log: Log
) -> list[FinetuneEstimate]:
    """What each fine-tuning run still needs (`stancelab.tuning.estimate_finetune`); the
    question bank and answers that directions share are counted for the first of them."""
    found: list[FinetuneEstimate] = []
    counted: dict[tuple[Path | None, Path | None], str] = {}
    measured: dict[str, Measurement] = {}  # the directions debate on one model: measured once
    for finetune in configs:
        shared = (finetune.questions.file, finetune.dataset.folder)
        if shared in counted:
            later = [s for s in STAGE_NAMES if s not in SHARED_STAGES]
            part = estimate_finetune(
                finetune, only=later, measure=measure, log=log, measured=measured
            )
            part.notes.append(
                f"the question bank and the answers are shared with the {counted[shared]} "
                "run: counted there"
            )
        else:
            counted[shared] = finetune.party
            part = estimate_finetune(finetune, measure=measure, log=log, measured=measured)
        found.append(part)
    return found


def run_tuning(
    config: ModelConfig,
    scale: str,
    root: Path,
    *,
    tasks: Sequence[str] = (),
    benchmarks: Path | None = None,
    design_personas: Path | None = None,
    log: Log,
) -> list[TuningRun]:
    """Run (or resume) the intervention on one model, every direction of the scale."""
    out = []
    for finetune in tuning_configs(
        config, scale, root, tasks=tasks, benchmarks=benchmarks, design_personas=design_personas
    ):
        log(f"tuning toward {finetune.party}: {finetune.output_dir}")
        result = run_finetune(finetune, log=log)
        out.append(
            TuningRun(
                config.name, finetune.party, finetune.output_dir, tuple(tasks), result["stages"]
            )
        )
    return out


def _topics(run: Run) -> list[Topic]:
    return [
        Topic(t["name"], t.get("big_problem_for")) if isinstance(t, dict) else paper_topic(t)
        for t in run.config.get("topics") or []
    ]


def run_tuning_findings(
    runs: Sequence[TuningRun], claims: Sequence[str] | None = None
) -> pd.DataFrame:
    """Both tuning claims on each direction's debates, one table."""
    tables = []
    for tuning in runs:
        debates = tuning.debates()
        tables.append(
            tuning_findings(
                debates.surveys(),
                model=tuning.model,
                party=tuning.party,
                topics=_topics(debates) or None,
                claims=claims,
            )
        )
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _attitudes(run: TuningRun, topic: str) -> dict[str, float]:
    """Per variant group: the Default's final attitude on ``topic``, the mean over its
    seeds of each seed's mean over debates (as Table 1 averages its three seeds)."""
    frame, _ = one_mode(answered(run.debates().surveys()), None)
    finals = default_finals(frame)
    finals = finals[finals["topic"] == topic]
    per_seed = finals.groupby(["condition", "condition_name"], sort=False)["final"].mean()
    return {str(k): float(v) for k, v in per_seed.groupby(level=0, sort=False).mean().items()}


def _value(row: dict[str, Any], key: str) -> float:
    return float(row[key]) if row.get(key) is not None else math.nan


def tuning_table(runs: Sequence[TuningRun]) -> pd.DataFrame:
    """Table 1 on this model beside the paper's: per model, direction and variant
    (``base``, ``r=X NWP``, ``r=8 DPO``; tuned rows the mean over their seeds).

    Columns: ``model, party, variant, seeds, hellaswag, mmlu, attitude, paper_hellaswag,
    paper_mmlu, paper_attitude, note``. Benchmarks are accuracy %; ``attitude`` is the
    Default agent's final attitude on racism (0-10). The paper's columns hold Table 1's
    Mistral 7B values, on Republican rows whose variant Table 1 has.
    """
    rows = []
    for run in runs:
        attitudes = _attitudes(run, TABLE1_TOPIC)
        for summary in summarize_rows(run.results().get("rows", [])):
            variant = str(summary["model"])
            paper = PAPER_TABLE1.get(variant) if run.party == "republican" else None
            missing = [t for t in TASKS if t not in run.tasks]
            note = (
                NOT_MEASURED
                if not run.tasks
                else f"{', '.join(missing)}: not in the benchmark folder"
                if missing
                else ""
            )
            rows.append(
                {
                    "model": run.model,
                    "party": run.party,
                    "variant": variant,
                    "seeds": int(summary["seeds"]) if variant != "base" else 0,
                    "hellaswag": _value(summary, "hellaswag"),
                    "mmlu": _value(summary, "mmlu"),
                    "attitude": attitudes.get(variant, math.nan),
                    "paper_hellaswag": paper[0] if paper else math.nan,
                    "paper_mmlu": paper[1] if paper else math.nan,
                    "paper_attitude": paper[2] if paper else math.nan,
                    "note": note,
                }
            )
    columns = [
        "model",
        "party",
        "variant",
        "seeds",
        "hellaswag",
        "mmlu",
        "attitude",
        "paper_hellaswag",
        "paper_mmlu",
        "paper_attitude",
        "note",
    ]
    return pd.DataFrame(rows, columns=columns)
