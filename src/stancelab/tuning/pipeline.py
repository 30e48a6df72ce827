"""``run_finetune``: questions -> datasets -> NWP (ranks x seeds) -> DPO -> GGUF export ->
debates on base and tuned models -> benchmarks -> Table-1 summary, from one YAML file.

Every stage writes its output under ``output_dir`` and is skipped when that output
exists, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stancelab.conversation.personas import BUILTIN_PERSONAS, PersonaSet
from stancelab.debates.analysis import attitude_frame
from stancelab.debates.experiment import load_experiment
from stancelab.debates.report import write_report
from stancelab.debates.runner import COMPATIBLE, run_experiment
from stancelab.debates.store import Store
from stancelab.engine.errors import ConfigError
from stancelab.engine.factory import open_model
from stancelab.engine.models import content_hash, folder_hash, model_fingerprint, resolve_model
from stancelab.tuning import datasets as ds
from stancelab.tuning.config import FinetuneConfig
from stancelab.tuning.errors import DatasetError
from stancelab.tuning.evaluate import evaluate
from stancelab.tuning.export import export_lora_gguf
from stancelab.tuning.hf import set_offline
from stancelab.tuning.questions import (
    BankLog,
    Question,
    generate_questions,
    load_questions,
    save_questions,
    seed_questions,
)
from stancelab.tuning.report import table
from stancelab.tuning.screening import calibrate, check_questions, partisanship_gate
from stancelab.tuning.train import train_dpo, train_nwp

if TYPE_CHECKING:
    from stancelab.debates.runner import RunFolder


def _log(message: str) -> None:
    print(f"[finetune {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_finetune(
    config_file: Path | FinetuneConfig, log: Callable[[str], None] = _log
) -> dict[str, Any]:
    """Run the whole self-fine-tuning loop described by a YAML file; returns the results."""

    config = (
        config_file if isinstance(config_file, FinetuneConfig) else FinetuneConfig.load(config_file)
    )
    allow_network = bool(config.evaluation and config.evaluation.allow_network)
    set_offline(allow_network)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    _, base_gguf = resolve_model(config.model)
    base_sha = model_fingerprint(base_gguf)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    # 1-2. Question bank and self-generated answers (the base model writes both; the
    # model itself or a judge model screens them).
    q = config.questions
    screening = config.screening
    qfile = q.file or out / "questions.yaml"
    screen_file = qfile.with_name(qfile.stem + ".screen.json")
    data_dir = out / "data"
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        lm = stack.enter_context(
            open_model(
                {"name": config.model, "parallel": config.generation_parallel, "ctx_per_slot": 1024}
            )
        )
        judge = lm
        if screening is not None and screening.judge not in (None, config.model):
            judge = stack.enter_context(
                open_model(
                    {
                        "name": str(screening.judge),
                        "parallel": config.generation_parallel,
                        "ctx_per_slot": 1024,
                    }
                )
            )
        bank = load_questions(qfile) if qfile.is_file() else seed_questions()
        bank_log = BankLog()
        if len(bank) < q.count:
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
                        (c.kept, c.reason, c.as_dict())
                        for c in check_questions(judge, texts, min_score)
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
                progress=lambda r, n: log(f"questions: round {r}, {n}"),
                screen=screen,
                log=bank_log,
            )
            save_questions(bank, qfile)
            screen_file.write_text(
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
        questions_summary = question_summary(bank, q.count, screen_file)
        log(f"question bank: {len(bank)} questions in {qfile}")
        if len(bank) < q.count:
            log(f"WARNING: {questions_summary['shortfall']}")
        summaries = {}
        for party in sorted(set(config.dataset.parties) | {config.party}):
            d = config.dataset
            path = data_dir / f"{party}.jsonl"
            summaries[party] = ds.generate_answers(
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
                summaries[party] = ds.score_dataset(
                    judge, path, batch=config.generation_parallel * 8
                )
            p = summaries[party].get("partisanship") or {}
            log(
                f"dataset {party}: {summaries[party]['usable']} usable of "
                f"{summaries[party]['generated']} (filtered {summaries[party]['filtered']})"
                + (
                    f"; {p['on_side_share']:.0%} lean {party}, mean lean {p['mean_lean']:+.2f}"
                    if p.get("on_side_share") is not None
                    else ""
                )
            )
    timings["data_s"] = time.perf_counter() - t0

    other_party = "democrat" if config.party == "republican" else "republican"
    own_all = ds.load_answers(data_dir / f"{config.party}.jsonl")
    heldout_ids = heldout_questions(bank, config.dataset.heldout_questions)
    own = [r for r in own_all if r["question_id"] not in heldout_ids]
    own_heldout = [r for r in own_all if r["question_id"] in heldout_ids]
    on_side_only = screening is not None and screening.keep_on_side_only
    if on_side_only:
        kept = ds.keep_on_side(own)
        log(
            f"filter on: {len(kept)} of {len(own)} {config.party} training answers "
            f"lean {config.party}"
        )
        if not kept:
            raise DatasetError(
                f"screening.keep_on_side_only left no {config.party} answer to train on"
            )
        own = kept
    other_all = (
        ds.load_answers(data_dir / f"{other_party}.jsonl")
        if (data_dir / f"{other_party}.jsonl").is_file()
        else []
    )
    gate = None
    if screening is not None and (screening.partisanship or screening.min_distinguishable > 0):
        gate = partisanship_gate(
            own,
            other_all,
            config.party,
            screening.min_on_side,
            screening.min_separation,
            screening.min_distinguishable,
        )
        if gate["passed"] is False:
            log(
                "WARNING: the training data is not partisan enough: "
                + "; ".join(gate["problems"])
                + ". Training goes on, and the report carries this warning."
            )

    # 3. Next-token training: every rank, every seed.
    t0 = time.perf_counter()
    variants: list[dict[str, Any]] = []
    texts = ds.training_texts(own, config.nwp.text_format)
    heldout_texts = ds.training_texts(own_heldout, config.nwp.text_format)
    training: dict[str, dict[str, Any]] = {}
    for rank in config.ranks:
        lora = config.nwp.lora.model_copy(update={"r": rank})
        settings = config.nwp.model_copy(update={"lora": lora})
        for seed in config.seeds:
            label = f"nwp-r{rank}-s{seed}"
            result = train_nwp(
                config.model,
                texts,
                out / "adapters" / label,
                settings,
                seed,
                allow_network,
                heldout=heldout_texts,
            )
            training[label] = result.summary()
            log(
                f"{label}: {result.steps} steps, loss {result.final_loss}, "
                f"{'reused' if result.skipped else f'{result.seconds:.0f} s'}; {result.verdict}"
            )
            if result.learned is False:
                log(f"WARNING: {label} did not learn: {result.verdict}")
            variants.append(
                {
                    "label": label,
                    "kind": "nwp",
                    "rank": rank,
                    "seed": seed,
                    "adapters": [result.adapter_dir],
                }
            )
    timings["nwp_s"] = time.perf_counter() - t0

    # 4. DPO on top of the NWP adapter of dpo_rank (same seed).
    t0 = time.perf_counter()
    if config.dpo is not None:
        other = ds.load_answers(data_dir / f"{other_party}.jsonl")
        direction = config.party if screening is not None and screening.dpo_direction else None
        pairs = ds.dpo_pairs(
            own,
            [r for r in other if r["question_id"] not in heldout_ids],
            config.dpo.pairs_per_question,
            direction=direction,
        )
        heldout_pairs: list[dict[str, str]] = []
        with contextlib.suppress(DatasetError):  # no held-out question has a pair
            heldout_pairs = ds.dpo_pairs(
                own_heldout,
                [r for r in other if r["question_id"] in heldout_ids],
                config.dpo.pairs_per_question,
                direction=direction,
            )
        log(f"DPO: {len(pairs)} training pairs, {len(heldout_pairs)} held-out pairs")
        dpo_rank = config.dpo_rank or config.ranks[0]
        for seed in config.seeds:
            nwp_dir = out / "adapters" / f"nwp-r{dpo_rank}-s{seed}" / "adapter"
            label = f"dpo-r{config.dpo.lora.r}-s{seed}"
            result = train_dpo(
                config.model,
                pairs,
                nwp_dir,
                out / "adapters" / label,
                config.dpo,
                seed,
                allow_network,
                heldout_pairs=heldout_pairs,
            )
            training[label] = result.summary()
            log(f"{label}: {result.steps} steps, loss {result.final_loss}; {result.verdict}")
            if result.learned is False:
                log(f"WARNING: {label} did not learn: {result.verdict}")
            variants.append(
                {
                    "label": label,
                    "kind": "dpo",
                    "rank": config.dpo.lora.r,
                    "seed": seed,
                    "adapters": [nwp_dir, result.adapter_dir],
                }
            )
    timings["dpo_s"] = time.perf_counter() - t0

    # 5. Export every adapter to GGUF for the llama.cpp engine.
    for v in variants:
        v["gguf"] = []
        for adapter in v["adapters"]:
            target = out / "gguf" / f"{adapter.parent.name}.gguf"
            if not target.is_file():
                export_lora_gguf(adapter, base_gguf, target, base_sha)
            v["gguf"].append(target)

    rows: list[dict[str, Any]] = [
        {"label": "base", "kind": "base", "rank": 0, "seed": None, "adapters": [], "gguf": []},
        *variants,
    ]

    # 6. Debates on base and tuned models: one experiment file with a condition per
    # model, run by the ordinary runner (same personas and seeds, resumable, full report).
    t0 = time.perf_counter()
    debates_run: Path | None = None
    if config.debates is not None:
        attitudes, debates_run = run_debates_side_by_side(config, rows, log)
        for row in rows:
            att = attitudes.get(str(row["label"]), {})
            row["attitude_start"] = att.get("start")
            row["attitude"] = att.get("final")
            log(f"{row['label']}: Default agent {att.get('start')} -> {att.get('final')}")
    timings["debates_s"] = time.perf_counter() - t0

    # 7. Capability checks.
    t0 = time.perf_counter()
    if config.evaluation is not None:
        e = config.evaluation
        data_digest = folder_hash(e.data_dir) if e.data_dir is not None else "hub"
        for row in rows:
            # Scores are kept per model and benchmark set: a rerun reads them back.
            key = _digest(
                {
                    "base": base_sha,
                    "tasks": list(e.tasks),
                    "data": data_digest,
                    "limit": e.limit,
                    "num_fewshot": e.num_fewshot,
                    "adapters": [folder_hash(Path(a)) for a in row["adapters"]],
                }
            )
            cache = out / "evaluation" / f"{row['label']}.json"
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
            if cached.get("key") == key:
                scores = cached["scores"]
                log(f"{row['label']}: {scores} (reused)")
            else:
                scores = evaluate(
                    config.model,
                    e.tasks,
                    e.data_dir,
                    adapters=row["adapters"],
                    limit=e.limit,
                    num_fewshot=e.num_fewshot,
                    batch_size=e.batch_size,
                    allow_network=e.allow_network,
                )
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text(json.dumps({"key": key, "scores": scores}))
                tmp.replace(cache)  # a crash mid-write never leaves a half file
                log(f"{row['label']}: {scores}")
            row.update(scores)
    timings["evaluation_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started

    final: dict[str, Any] = {
        "name": config.name,
        "model": config.model,
        "party": config.party,
        "questions": questions_summary,
        "datasets": summaries,
        "screening": screening_record(config, heldout_ids),
        "gate": gate,
        "training": training,
        "timings": timings,
        "debates_run": str(debates_run) if debates_run else None,
        "rows": [
            {k: (v if not isinstance(v, list) else [str(x) for x in v]) for k, v in row.items()}
            for row in rows
        ],
    }
    (out / "results.json").write_text(json.dumps(final, indent=2, default=str))
    text = table(final)
    (out / "table.txt").write_text(text + "\n")
    log("\n" + text)
    return final


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
    config: FinetuneConfig, rows: list[dict[str, Any]], log: Callable[[str], None]
) -> tuple[dict[str, dict[str, float | None]], Path]:
    """Write and run the side-by-side experiment; the Default agent's attitude per row,
    and the run folder."""

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
    result = run_experiment(experiment, text, folder, log=log)
    report = write_report(result.folder)
    log(f"debates: {result.debates} ({result.failed} failed); report {report}")
    return default_attitudes(result.folder), result.folder.path


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
