"""``run_finetune``: questions -> datasets -> NWP (ranks x seeds) -> DPO -> GGUF export ->
debates on base and tuned models -> benchmarks -> Table-1 summary, from one YAML file.

The loop is a row of named stages (``STAGES``). Each says when its output is already on
disk (``done``) and is then skipped, so an interrupted run continues where it stopped,
and each can be run alone (``run_finetune(file, only=["answers"])``) once the stages
before it have written their files. A stage reads what it needs from those files, never
from the stage before it in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stancelab.conversation import BUILTIN_PERSONAS, PersonaSet
from stancelab.debates import Store, attitude_frame, load_experiment, write_report
from stancelab.debates._runner import COMPATIBLE, Progress, RunFolder, run_experiment
from stancelab.engine import ConfigError, open_model
from stancelab.engine._models import content_hash, folder_hash, model_fingerprint, resolve_model
from stancelab.tuning import _datasets as ds
from stancelab.tuning._config import FinetuneConfig
from stancelab.tuning._errors import DatasetError
from stancelab.tuning._evaluate import evaluate
from stancelab.tuning._export import export_lora_gguf
from stancelab.tuning._hf import set_offline
from stancelab.tuning._questions import (
    BankLog,
    Question,
    generate_questions,
    load_questions,
    save_questions,
    seed_questions,
)
from stancelab.tuning._report import table
from stancelab.tuning._screening import calibrate, check_questions, partisanship_gate
from stancelab.tuning._train import TrainResult, finished_adapter, train_dpo, train_nwp

if TYPE_CHECKING:
    from stancelab.engine import LanguageModel


def _log(message: str) -> None:
    print(f"[finetune {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass(frozen=True)
class TrainingData:
    """The answers training reads: the training party's (minus held-out questions, after
    the optional on-side filter), its held-out ones, and the other party's."""

    own: list[dict[str, Any]]
    own_heldout: list[dict[str, Any]]
    other: list[dict[str, Any]]
    """Every usable answer of the other party (empty when it has no dataset)."""
    heldout_ids: set[str]


class FinetuneRun:
    """What the stages of one ``run_finetune`` call share: the config, where each output
    lies, the log, and the generation engine (opened on first use, released by the
    driver after the last stage that uses it, or when a stage fails).

    Derived data (the question bank, the training split, the gate) is read from the
    stages' files when first asked for, so a stage run alone sees what a full run sees.
    """

    def __init__(self, config: FinetuneConfig, log: Callable[[str], None]) -> None:
        self.config = config
        self.log = log
        self.out = config.output_dir
        self.allow_network = bool(config.evaluation and config.evaluation.allow_network)
        self.started = time.perf_counter()
        self.timings: dict[str, float] = {}
        self.results: dict[str, Any] | None = None
        """What the report stage wrote to results.json (None until it runs)."""
        self._stack = contextlib.ExitStack()
        self._engines: tuple[LanguageModel, LanguageModel] | None = None
        self.steps_done = 0
        """Optimiser steps taken in this process (the progress lines read it)."""
        self.debate_progress: Progress | None = None
        """Where the debates stage counts its steps (set for progress lines)."""

    def count_step(self, _step: int) -> None:
        """Count one optimiser step (a trainer callback)."""
        self.steps_done += 1

    def engine_stats(self) -> dict[str, int]:
        """Requests and tokens the open generation engines have counted so far."""
        engines = {id(e): e for e in self._engines or ()}.values()
        return {
            "requests": sum(e.stats.requests for e in engines),
            "tokens": sum(e.stats.prompt_tokens + e.stats.completion_tokens for e in engines),
        }

    # -- where things are -------------------------------------------------------------

    @property
    def question_file(self) -> Path:
        """The question bank (the configured file, else ``questions.yaml`` in the output)."""
        return self.config.questions.file or self.out / "questions.yaml"

    @property
    def screen_file(self) -> Path:
        """How the bank was built and screened (beside the bank)."""
        qfile = self.question_file
        return qfile.with_name(qfile.stem + ".screen.json")

    def answers_file(self, party: str) -> Path:
        """A party's self-written answers."""
        return (self.config.dataset.folder or self.out / "data") / f"{party}.jsonl"

    @property
    def parties(self) -> list[str]:
        """Parties whose answers are written: the configured ones and the trained one."""
        return sorted(set(self.config.dataset.parties) | {self.config.party})

    @property
    def other_party(self) -> str:
        """The party DPO's rejected answers come from."""
        return "democrat" if self.config.party == "republican" else "republican"

    @cached_property
    def base(self) -> tuple[Path, str]:
        """The base model's GGUF file and its fingerprint (adapters are tied to it)."""
        _, gguf = resolve_model(self.config.model)
        return gguf, model_fingerprint(gguf)

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The models compared: the base, then NWP per rank and seed, then DPO per seed,
        each with its adapter folders (in merge order) and their GGUF files."""
        config = self.config
        adapters = self.out / "adapters"
        variants: list[dict[str, Any]] = []
        for rank in config.ranks:
            for seed in config.seeds:
                label = f"nwp-r{rank}-s{seed}"
                variants.append(
                    {
                        "label": label,
                        "kind": "nwp",
                        "rank": rank,
                        "seed": seed,
                        "adapters": [adapters / label / "adapter"],
                    }
                )
        if config.dpo is not None:
            dpo_rank = config.dpo_rank or config.ranks[0]
            for seed in config.seeds:
                label = f"dpo-r{config.dpo.lora.r}-s{seed}"
                nwp_dir = adapters / f"nwp-r{dpo_rank}-s{seed}" / "adapter"
                variants.append(
                    {
                        "label": label,
                        "kind": "dpo",
                        "rank": config.dpo.lora.r,
                        "seed": seed,
                        "adapters": [nwp_dir, adapters / label / "adapter"],
                    }
                )
        for v in variants:
            v["gguf"] = [self.out / "gguf" / f"{a.parent.name}.gguf" for a in v["adapters"]]
        base = {
            "label": "base",
            "kind": "base",
            "rank": 0,
            "seed": None,
            "adapters": [],
            "gguf": [],
        }
        return [base, *variants]

    def trained(self, kind: str) -> list[dict[str, Any]]:
        """The rows of one training kind (nwp or dpo)."""
        return [r for r in self.rows if r["kind"] == kind]

    # -- what the stages read -----------------------------------------------------------

    @property
    def bank(self) -> list[Question]:
        """The question bank as it is on disk now (Table 2's seeds before it exists)."""
        qfile = self.question_file
        return load_questions(qfile) if qfile.is_file() else seed_questions()

    @cached_property
    def training_data(self) -> TrainingData:
        """The training split of the answers on disk (logs the on-side filter)."""
        config = self.config
        screening = config.screening
        own_all = ds.load_answers(self.answers_file(config.party))
        heldout_ids = heldout_questions(self.bank, config.dataset.heldout_questions)
        own = [r for r in own_all if r["question_id"] not in heldout_ids]
        own_heldout = [r for r in own_all if r["question_id"] in heldout_ids]
        if screening is not None and screening.keep_on_side_only:
            kept = ds.keep_on_side(own)
            self.log(
                f"filter on: {len(kept)} of {len(own)} {config.party} training answers "
                f"lean {config.party}"
            )
            if not kept:
                raise DatasetError(
                    f"screening.keep_on_side_only left no {config.party} answer to train on"
                )
            own = kept
        other_file = self.answers_file(self.other_party)
        other = ds.load_answers(other_file) if other_file.is_file() else []
        return TrainingData(own, own_heldout, other, heldout_ids)

    @cached_property
    def gate(self) -> dict[str, Any] | None:
        """The partisanship gate over the training data (None when it is off)."""
        screening = self.config.screening
        if screening is None or not (screening.partisanship or screening.min_distinguishable > 0):
            return None
        data = self.training_data
        return partisanship_gate(
            data.own,
            data.other,
            self.config.party,
            screening.min_on_side,
            screening.min_separation,
            screening.min_distinguishable,
        )

    # -- the generation engine ----------------------------------------------------------

    def engines(self) -> tuple[LanguageModel, LanguageModel]:
        """The model that writes the data and the judge that screens it (the same engine
        unless ``screening.judge`` names another model); opened on first use."""
        if self._engines is None:
            lm = self._stack.enter_context(self._open(self.config.model))
            judge = lm
            screening = self.config.screening
            if screening is not None and screening.judge not in (None, self.config.model):
                judge = self._stack.enter_context(self._open(str(screening.judge)))
            self._engines = (lm, judge)
        return self._engines

    def _open(self, model: str) -> LanguageModel:
        # through the registry like every other model: the backend's own capabilities
        return open_model(
            {"name": model, "parallel": self.config.generation_parallel, "ctx_per_slot": 1024}
        )

    def release_engines(self) -> None:
        """Close the generation engines (training wants the memory back)."""
        self._stack.close()
        self._engines = None


@dataclass(frozen=True)
class Stage:
    """One named step of the loop."""

    name: str
    done: Callable[[FinetuneRun], bool]
    """Whether the stage's output is already on disk (the driver then skips it)."""
    run: Callable[[FinetuneRun], None]
    """Write the stage's output (resuming from whatever part of it exists)."""
    engine: bool = False
    """Uses the generation engine: it stays open across consecutive stages that do."""


def _never(_: FinetuneRun) -> bool:
    """For the cheap stages that derive their result from files afresh every time."""
    return False


# 1. Question bank: Table 2's seeds plus model-written questions (screened by a judge).


def questions_done(run: FinetuneRun) -> bool:
    """The bank holds the questions asked for (the seeds alone may be enough)."""
    return len(run.bank) >= run.config.questions.count


def make_questions(run: FinetuneRun) -> None:
    """Let the model write questions until the bank is full; save it and its screen log."""
    config, q, screening = run.config, run.config.questions, run.config.screening
    lm, judge = run.engines()
    bank = run.bank
    bank_log = BankLog()
    screen = None
    thresholds: tuple[float, float] | None = None
    if screening is not None and screening.questions:
        thresholds = (
            calibrate(judge, [s.text for s in seed_questions()])
            if screening.min_question_score is None
            else (screening.min_question_score, screening.min_question_score)
        )
        min_score = thresholds

        def screen(texts: list[str]) -> list[tuple[bool, str | None, dict[str, Any]]]:
            return [
                (c.kept, c.reason, c.as_dict()) for c in check_questions(judge, texts, min_score)
            ]

    bank = generate_questions(
        lm,
        q.count,
        start=bank,
        per_request=q.per_request,
        threshold=q.similarity,
        parallel=config.generation_parallel,
        max_rounds=q.max_rounds,
        temperature=q.temperature,
        max_tokens=q.max_tokens,
        progress=lambda r, n: run.log(f"questions: round {r}, {n}"),
        screen=screen,
        log=bank_log,
    )
    save_questions(bank, run.question_file)
    run.screen_file.write_text(
        json.dumps(
            {
                "judge": judge.name if screen is not None else None,
                "screened": screen is not None,
                "thresholds": thresholds,
                **bank_log.as_dict(),
            },
            indent=2,
        )
    )
    run.log(f"question bank: {len(bank)} questions in {run.question_file}")
    if len(bank) < q.count:
        run.log(f"WARNING: {question_summary(bank, q.count, run.screen_file)['shortfall']}")


# 2. Self-generated answers per party (scored for partisanship by the judge).


def answers_done(run: FinetuneRun) -> bool:
    """Every party has every answer to every question (and, when scored, every score)."""
    d, screening = run.config.dataset, run.config.screening
    scored = screening is not None and screening.partisanship
    wanted = {(q.id, k) for q in run.bank for k in range(d.answers_per_question)}
    for party in run.parties:
        rows = [r for r in ds.read_jsonl(run.answers_file(party)) if r.get("party") == party]
        if not wanted <= {(r["question_id"], int(r["k"])) for r in rows}:
            return False
        if scored and any(r.get("usable") and "partisanship" not in r for r in rows):
            return False
    return True


def make_answers(run: FinetuneRun) -> None:
    """Write (or finish) each party's answers, then score them when screening asks to."""
    config, d, screening = run.config, run.config.dataset, run.config.screening
    lm, judge = run.engines()
    bank = run.bank
    for party in run.parties:
        path = run.answers_file(party)
        summary = ds.generate_answers(
            lm,
            bank,
            party,
            path,
            answers_per_question=d.answers_per_question,
            temperature=d.temperature,
            max_tokens=d.max_tokens,
            min_words=d.min_words,
            batch=config.generation_parallel * 4,
        )
        if screening is not None and screening.partisanship:
            summary = ds.score_dataset(judge, path, batch=config.generation_parallel * 8)
        p = summary.get("partisanship") or {}
        run.log(
            f"dataset {party}: {summary['usable']} usable of "
            f"{summary['generated']} (filtered {summary['filtered']})"
            + (
                f"; {p['on_side_share']:.0%} lean {party}, mean lean {p['mean_lean']:+.2f}"
                if p.get("on_side_share") is not None
                else ""
            )
        )


# 3. Screens: the held-out split, the optional on-side filter and the partisanship gate.


def screen_data(run: FinetuneRun) -> None:
    """Check the training data before hours of training; warn when it fails the gate."""
    data = run.training_data
    run.log(
        f"training data: {len(data.own)} {run.config.party} answers, {len(data.own_heldout)} "
        f"held out ({len(data.heldout_ids)} questions), {len(data.other)} {run.other_party}"
    )
    gate = run.gate
    if gate is not None and gate["passed"] is False:
        run.log(
            "WARNING: the training data is not partisan enough: "
            + "; ".join(gate["problems"])
            + ". Training goes on, and the report carries this warning."
        )


# 4. Next-token training: every rank, every seed.


def _trained(rows: list[dict[str, Any]]) -> bool:
    return all(finished_adapter(r["adapters"][-1]) is not None for r in rows)


def nwp_done(run: FinetuneRun) -> bool:
    """Every rank x seed has a finished NWP adapter."""
    return _trained(run.trained("nwp"))


def train_nwp_adapters(run: FinetuneRun) -> None:
    """Train (or resume, or reuse) the NWP adapter of every rank and seed."""
    config, data = run.config, run.training_data
    texts = ds.training_texts(data.own, config.nwp.text_format)
    heldout_texts = ds.training_texts(data.own_heldout, config.nwp.text_format)
    for row in run.trained("nwp"):
        lora = config.nwp.lora.model_copy(update={"r": row["rank"]})
        settings = config.nwp.model_copy(update={"lora": lora})
        result = train_nwp(
            config.model,
            texts,
            row["adapters"][-1].parent,
            settings,
            row["seed"],
            run.allow_network,
            heldout=heldout_texts,
            on_step=run.count_step,
        )
        _log_training(run, row["label"], result)


def _log_training(run: FinetuneRun, label: str, result: TrainResult) -> None:
    run.log(
        f"{label}: {result.steps} steps, loss {result.final_loss}, "
        f"{'reused' if result.skipped else f'{result.seconds:.0f} s'}; {result.verdict}"
    )
    if result.learned is False:
        run.log(f"WARNING: {label} did not learn: {result.verdict}")


# 5. DPO on top of the NWP adapter of dpo_rank (same seed).


def dpo_done(run: FinetuneRun) -> bool:
    """DPO is off, or every seed has a finished DPO adapter."""
    return _trained(run.trained("dpo"))


def train_dpo_adapters(run: FinetuneRun) -> None:
    """Train (or resume, or reuse) the DPO adapter of every seed."""
    config, data, screening = run.config, run.training_data, run.config.screening
    if config.dpo is None:
        return
    other = ds.load_answers(run.answers_file(run.other_party))
    direction = config.party if screening is not None and screening.dpo_direction else None
    pairs = ds.dpo_pairs(
        data.own,
        [r for r in other if r["question_id"] not in data.heldout_ids],
        config.dpo.pairs_per_question,
        direction=direction,
    )
    heldout_pairs: list[dict[str, str]] = []
    with contextlib.suppress(DatasetError):  # no held-out question has a pair
        heldout_pairs = ds.dpo_pairs(
            data.own_heldout,
            [r for r in other if r["question_id"] in data.heldout_ids],
            config.dpo.pairs_per_question,
            direction=direction,
        )
    run.log(f"DPO: {len(pairs)} training pairs, {len(heldout_pairs)} held-out pairs")
    for row in run.trained("dpo"):
        nwp_dir, adapter_dir = row["adapters"]
        result = train_dpo(
            config.model,
            pairs,
            nwp_dir,
            adapter_dir.parent,
            config.dpo,
            row["seed"],
            run.allow_network,
            heldout_pairs=heldout_pairs,
            on_step=run.count_step,
        )
        run.log(f"{row['label']}: {result.steps} steps, loss {result.final_loss}; {result.verdict}")
        if result.learned is False:
            run.log(f"WARNING: {row['label']} did not learn: {result.verdict}")


# 6. Export every adapter to GGUF for the llama.cpp engine.


def export_done(run: FinetuneRun) -> bool:
    """Every adapter has its GGUF file."""
    return all(path.is_file() for row in run.rows for path in row["gguf"])


def export_adapters(run: FinetuneRun) -> None:
    """Convert each adapter not exported yet."""
    base_gguf, base_sha = run.base
    for row in run.rows:
        for adapter, target in zip(row["adapters"], row["gguf"], strict=True):
            if not target.is_file():
                export_lora_gguf(adapter, base_gguf, target, base_sha)


# 7. Debates on base and tuned models: one experiment file with a condition per model,
# run by the ordinary runner (same personas and seeds, resumable, full report).

DEBATES_DONE = "finished.json"
"""Written in ``OUTPUT/debates`` when every debate of a design has run."""


def _debates_record(run: FinetuneRun) -> dict[str, Any] | None:
    path = run.out / "debates" / DEBATES_DONE
    return dict(json.loads(path.read_text())) if path.is_file() else None


def debates_done(run: FinetuneRun) -> bool:
    """Debates are off, or the current design's run finished with no debate failed."""
    if run.config.debates is None:
        return True
    record = _debates_record(run)
    if record is None or record.get("failed") or not export_done(run):
        return False
    folder = RunFolder(Path(record["run"]))
    # The run folder's name carries a digest of the design (models, adapters, settings).
    design = str(debate_experiment(run.config, run.rows)["name"])
    return folder.meta.is_file() and folder.path.name == design


def run_debates(run: FinetuneRun) -> None:
    """Run (or resume) the side-by-side debates and log each model's Default agent."""
    if run.config.debates is None:
        return
    folder, failed = run_debates_side_by_side(
        run.config, run.rows, run.log, progress=run.debate_progress
    )
    attitudes = default_attitudes(RunFolder(folder))
    for row in run.rows:
        att = attitudes.get(str(row["label"]), {})
        run.log(f"{row['label']}: Default agent {att.get('start')} -> {att.get('final')}")
    record = run.out / "debates" / DEBATES_DONE
    record.write_text(json.dumps({"run": str(folder), "failed": failed}, indent=2))


# 8. Capability checks: scores are kept per model and benchmark set, so a rerun reads
# them back.


def _evaluation_cache(run: FinetuneRun, row: dict[str, Any]) -> Path:
    return run.out / "evaluation" / f"{row['label']}.json"


def evaluation_key(run: FinetuneRun, row: dict[str, Any]) -> str:
    """What a model's scores depend on: base, benchmark data and settings, adapters."""
    e = run.config.evaluation
    assert e is not None
    return _digest(
        {
            "base": run.base[1],
            "tasks": list(e.tasks),
            "data": folder_hash(e.data_dir) if e.data_dir is not None else "hub",
            "limit": e.limit,
            "num_fewshot": e.num_fewshot,
            "adapters": [folder_hash(Path(a)) for a in row["adapters"]],
        }
    )


def cached_scores(run: FinetuneRun, row: dict[str, Any]) -> dict[str, Any] | None:
    """A model's benchmark scores when they were computed for the current settings."""
    cache = _evaluation_cache(run, row)
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("key") != evaluation_key(run, row):
        return None
    scores: dict[str, Any] = cached["scores"]
    return scores


def evaluation_done(run: FinetuneRun) -> bool:
    """Evaluation is off, or every model has its scores for the current settings."""
    if run.config.evaluation is None:
        return True
    return all(cached_scores(run, row) is not None for row in run.rows)


def evaluate_models(run: FinetuneRun) -> None:
    """Score every model not scored yet for the current settings."""
    e = run.config.evaluation
    if e is None:
        return
    for row in run.rows:
        scores = cached_scores(run, row)
        if scores is not None:
            run.log(f"{row['label']}: {scores} (reused)")
            continue
        scores = evaluate(
            run.config.model,
            e.tasks,
            e.data_dir,
            adapters=row["adapters"],
            limit=e.limit,
            num_fewshot=e.num_fewshot,
            batch_size=e.batch_size,
            allow_network=e.allow_network,
        )
        cache = _evaluation_cache(run, row)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": evaluation_key(run, row), "scores": scores}))
        tmp.replace(cache)  # a crash mid-write never leaves a half file
        run.log(f"{row['label']}: {scores}")


# 9. Report: results.json and the Table-1 summary, from what the stages left on disk.


def write_results(run: FinetuneRun) -> None:
    """Gather every stage's output into results.json and table.txt."""
    config = run.config
    training: dict[str, Any] = {}
    for row in run.rows[1:]:
        meta = finished_adapter(row["adapters"][-1])
        if meta is not None:
            training[row["label"]] = TrainResult.reused(row["adapters"][-1], meta).summary()
    rows = [dict(row) for row in run.rows]
    record = _debates_record(run) if config.debates is not None else None
    if config.debates is not None:
        attitudes = default_attitudes(RunFolder(Path(record["run"]))) if record else {}
        for row in rows:
            att = attitudes.get(str(row["label"]), {})
            row["attitude_start"] = att.get("start")
            row["attitude"] = att.get("final")
    if config.evaluation is not None:
        for row in rows:
            row.update(cached_scores(run, row) or {})
    run.timings["total_s"] = time.perf_counter() - run.started
    final: dict[str, Any] = {
        "name": config.name,
        "model": config.model,
        "party": config.party,
        "questions": question_summary(run.bank, config.questions.count, run.screen_file),
        "datasets": {
            party: ds.summarize(run.answers_file(party))
            for party in run.parties
            if run.answers_file(party).is_file()
        },
        "screening": screening_record(config, run.training_data.heldout_ids),
        "gate": run.gate,
        "training": training,
        "timings": run.timings,
        "debates_run": record["run"] if record else None,
        "rows": [
            {k: (v if not isinstance(v, list) else [str(x) for x in v]) for k, v in row.items()}
            for row in rows
        ],
    }
    (run.out / "results.json").write_text(json.dumps(final, indent=2, default=str))
    text = table(final)
    (run.out / "table.txt").write_text(text + "\n")
    run.log("\n" + text)
    run.results = final


STAGES: tuple[Stage, ...] = (
    Stage("questions", questions_done, make_questions, engine=True),
    Stage("answers", answers_done, make_answers, engine=True),
    Stage("screens", _never, screen_data),
    Stage("nwp", nwp_done, train_nwp_adapters),
    Stage("dpo", dpo_done, train_dpo_adapters),
    Stage("export", export_done, export_adapters),
    Stage("debates", debates_done, run_debates),
    Stage("evaluation", evaluation_done, evaluate_models),
    Stage("report", _never, write_results),
)
"""The loop, in order. ``screens`` and ``report`` always run: they only read files."""

STAGE_NAMES = tuple(stage.name for stage in STAGES)


def select_stages(only: Sequence[str] | None = None, start: str | None = None) -> list[Stage]:
    """The stages to run: those named in ``only`` (in loop order), or from ``start`` on."""
    for name in [*(only or ()), *([start] if start else [])]:
        if name not in STAGE_NAMES:
            raise ConfigError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    chosen = list(STAGES[STAGE_NAMES.index(start) :] if start else STAGES)
    if only:
        chosen = [stage for stage in chosen if stage.name in only]
    return chosen


def run_stages(
    run: FinetuneRun,
    stages: Sequence[Stage],
    progress: Callable[[Stage], AbstractContextManager[None]] | None = None,
) -> dict[str, str]:
    """Run the stages in order, skipping each whose output is on disk; what each did.
    ``progress`` wraps each stage that runs (progress lines)."""
    did: dict[str, str] = {}
    try:
        for i, stage in enumerate(stages):
            t0 = time.perf_counter()
            if stage.done(run):
                run.log(f"stage {stage.name}: done, skipped")
                did[stage.name] = "skipped"
            else:
                with progress(stage) if progress else contextlib.nullcontext():
                    stage.run(run)
                did[stage.name] = "ran"
            run.timings[f"{stage.name}_s"] = time.perf_counter() - t0
            following = stages[i + 1] if i + 1 < len(stages) else None
            if following is None or not following.engine:
                run.release_engines()
    finally:
        run.release_engines()
    return did


def run_finetune(
    config_file: Path | FinetuneConfig,
    log: Callable[[str], None] = _log,
    *,
    only: Sequence[str] | None = None,
    start: str | None = None,
    estimate: bool = False,
    measure: bool = True,
    dry_run: bool = False,
    max_cost: float | None = None,
    yes: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress_every: float | None = 60.0,
) -> dict[str, Any]:
    """Run the self-fine-tuning loop described by a YAML file (or a config).

    Args:
        config_file: The fine-tuning YAML file, or a config built in Python.
        log: Where progress lines go.
        only: Run just these stages (names from ``STAGE_NAMES``), in loop order.
        start: Run from this stage on (the stages before it are not looked at).
        estimate: Log what the chosen stages still need (requests, tokens, training
            steps, time, cost) before the first model call (``estimate_finetune``).
        measure: Measure the engines (and training) for the estimate's tokens and time.
        dry_run: Log the estimate and stop: nothing is written or trained.
        max_cost: Refuse (or ask ``confirm``) when the estimated cost may exceed this
            many US dollars; meaningful only where a model entry sets a price.
        yes: Run whatever the estimated cost.
        confirm: Asks the person at the terminal whether to go on above ``max_cost``.
        progress_every: Seconds between progress lines while a stage runs, when standard
            output is not a terminal; None: none.

    Returns:
        What ``results.json`` holds when the report stage ran (else nothing of it), and
        ``stages``: for each stage looked at, ``ran`` or ``skipped`` (its output existed),
        or ``estimated`` for a dry run.
    """
    # The estimate builds on the pipeline's stages: imported here, not at the top.
    from stancelab.conversation._tally import check_cost  # noqa: PLC0415
    from stancelab.tuning._estimate import _estimate, stage_progress  # noqa: PLC0415

    config = (
        config_file if isinstance(config_file, FinetuneConfig) else FinetuneConfig.load(config_file)
    )
    stages = select_stages(only, start)
    run = FinetuneRun(config, log)
    set_offline(run.allow_network)
    found = None
    if estimate or dry_run:
        try:
            found = _estimate(run, stages, measure, None, log)
        except BaseException:
            run.release_engines()
            raise
        for line in found.lines():
            log(line)
        if dry_run:
            run.release_engines()
            log("dry run: nothing was written or trained")
            return {"stages": dict.fromkeys((s.name for s in stages), "estimated")}
        check_cost(found, max_cost, yes, confirm)
    lines = None
    if progress_every is not None and not sys.stdout.isatty():
        every = progress_every

        def lines(stage: Stage) -> AbstractContextManager[None]:
            return stage_progress(run, stage, log, every, found)

    run.out.mkdir(parents=True, exist_ok=True)
    did = run_stages(run, stages, lines)
    return {**(run.results or {}), "stages": did}


def heldout_questions(bank: Sequence[Question], share: float) -> set[str]:
    """Ids of the questions whose answers stay out of training (drawn with a fixed seed)."""
    if share <= 0 or len(bank) < 2:
        return set()
    count = min(len(bank) - 1, max(1, round(share * len(bank))))
    return set(random.Random(0).sample(sorted(q.id for q in bank), count))


def question_summary(bank: Sequence[Question], wanted: int, screen_file: Path) -> dict[str, Any]:
    """How the bank was built: seeds, generated, screened candidates and drops."""
    record = json.loads(screen_file.read_text()) if screen_file.is_file() else {}
    checks = record.get("checks", [])
    dropped = record.get("dropped", {})
    summary: dict[str, Any] = {
        "wanted": wanted,
        "questions": len(bank),
        "seed": sum(1 for q in bank if q.source == "seed"),
        "generated": sum(1 for q in bank if q.source == "generated"),
        "screened": bool(record.get("screened")),
        "judge": record.get("judge"),
        "checked": len(checks),
        "kept_share": round(sum(1 for c in checks if c.get("kept")) / len(checks), 4)
        if checks
        else None,
        "dropped": dropped,
        "duplicates": record.get("duplicates"),
        "rounds": record.get("rounds"),
        "shortfall": None,
    }
    if len(bank) < wanted:
        reasons = ", ".join(f"{k} {v}" for k, v in dropped.items()) or "none"
        summary["shortfall"] = (
            f"the question bank has {len(bank)} of the {wanted} questions asked for after "
            f"{record.get('rounds')} rounds: the screen dropped "
            f"{sum(dropped.values())} candidates ({reasons}) "
            f"and {record.get('duplicates')} were near-duplicates; raise questions.max_rounds, "
            "lower screening.min_question_score or use a stronger screening.judge"
        )
    return summary


def screening_record(config: FinetuneConfig, heldout_ids: set[str]) -> dict[str, Any]:
    """Which checks and filters were on, for the results and the report."""
    s = config.screening
    return {
        "on": s is not None,
        "judge": (s.judge or config.model) if s is not None else None,
        "questions": bool(s and s.questions),
        "partisanship": bool(s and s.partisanship),
        "keep_on_side_only": bool(s and s.keep_on_side_only),
        "dpo_direction": bool(s and s.dpo_direction),
        "heldout_questions": sorted(heldout_ids),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def debate_experiment(config: FinetuneConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The experiment file (as data) that runs the same debates on base and tuned models."""

    deb = config.debates
    if deb is None:
        raise ConfigError("the fine-tuning file has no debates section")
    personas_file = deb.personas
    if personas_file is None:
        personas_file = config.output_dir / "debates" / "builtin-personas.yaml"
        personas_file.parent.mkdir(parents=True, exist_ok=True)
        PersonaSet(
            [p for kind in ("republican", "democrat") for p in BUILTIN_PERSONAS[kind]],
            {"source": "stancelab built-in personas"},
        ).save(personas_file)
    here = (config.output_dir / "debates").resolve()
    model = {"name": config.model, "parallel": deb.parallel, "ctx_per_slot": 2048}
    conditions = []
    for row in rows:
        tuned = bool(row["gguf"])
        group = "base" if not tuned else f"r={row['rank']} {str(row['kind']).upper()}"
        condition: dict[str, Any] = {"name": str(row["label"]), "label": group, "tuned": tuned}
        if tuned:
            # Relative to the experiment file, so the output folder can be moved.
            condition["model"] = {
                **model,
                "adapters": [os.path.relpath(Path(p).resolve(), here) for p in row["gguf"]],
            }
        conditions.append(condition)
    design = {
        "model": model,
        "topics": list(deb.topics),
        "setups": [{"name": "-".join(deb.setup), "agents": list(deb.setup)}],
        "repetitions": deb.repetitions,
        "iterations": deb.iterations,
        "seed": deb.seed,
        "personas": {
            "file": os.path.relpath(personas_file.resolve(), here),
            "reuse_across_repetitions": deb.personas is None,
            "check_fidelity": deb.check_fidelity,
        },
        "conditions": conditions,
    }
    # A changed design (another rank, more repetitions, a retrained adapter) gets its own
    # run folder: the runner refuses to mix two designs in one. Files count by content.
    identity = json.loads(json.dumps(design))
    identity["stancelab"] = COMPATIBLE  # a run folder of another version is refused
    identity["personas"]["file"] = content_hash(personas_file)
    for condition in identity["conditions"]:
        for i, adapter in enumerate(condition.get("model", {}).get("adapters", [])):
            condition["model"]["adapters"][i] = content_hash(here / adapter)
    return {"name": f"{config.name}-debates-{_digest(identity)[:8]}", **design}


def run_debates_side_by_side(
    config: FinetuneConfig,
    rows: list[dict[str, Any]],
    log: Callable[[str], None],
    *,
    progress: Progress | None = None,
) -> tuple[Path, int]:
    """Write and run the side-by-side experiment and its report; the run folder, and how
    many debates failed (``progress`` counts the run's steps)."""

    folder = config.output_dir / "debates"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yaml"
    text = (
        "# Written by `stancelab finetune`: the same debates on the base model and every\n"
        "# tuned model (one condition each). Rerun or extend it with `stancelab run`.\n"
        + yaml.safe_dump(debate_experiment(config, rows), sort_keys=False)
    )
    path.write_text(text)
    experiment = load_experiment(path)
    result = run_experiment(experiment, text, folder, progress, log=log)
    report = write_report(result.folder)
    log(f"debates: {result.debates} ({result.failed} failed); report {report}")
    return result.folder.path, result.failed


def default_attitudes(folder: RunFolder) -> dict[str, dict[str, float | None]]:
    """The Default agent's mean first and last survey score per condition of a run."""

    store = Store(folder.db)
    frame = attitude_frame(store, str(folder.read_meta()["run_id"]))
    ok = frame[
        (frame["kind"] == "default")
        & frame["ok"].astype(bool)
        & (frame["question_id"] == "attitude")
    ]
    if ok.empty:
        return {}
    ok = ok[ok["mode"] == ok["mode"].iloc[0]]  # one instrument: the first survey mode
    out: dict[str, dict[str, float | None]] = {}
    for name, part in ok.groupby("condition_name"):
        first = part[part["iteration"] == part.groupby("debate_id")["iteration"].transform("min")]
        last = part[part["iteration"] == part.groupby("debate_id")["iteration"].transform("max")]
        out[str(name)] = {
            "start": round(float(first["score"].mean()), 3),
            "final": round(float(last["score"].mean()), 3),
        }
    return out
