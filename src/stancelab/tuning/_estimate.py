"""What ``stancelab finetune`` will take before it starts, and how far a stage has got.

``estimate_finetune`` counts, from a ``FinetuneConfig`` and what its output folder
already holds, what every chosen stage still needs: question-writing requests (an
expectation: rounds are random), answer requests and their prompt / generated tokens,
the judge's scoring requests, per adapter the training examples, optimiser steps and
tokens, the adapters to export, the debates on the base and every tuned model (the
debates' own estimate), and the benchmark items per model. A stage whose output is on
disk counts nothing; a partly written answer file counts only what is missing.

Tokens and time come from a few seconds of the real engine on the run's own first
requests (``conversation._tally.measure_engine``), training time from two timed
forward / backward steps of the base checkpoint; what was not measured is said to be
not estimated. Cost needs a ``price_per_million`` in a model entry: the fine-tuning
file has none (it runs local engines), so only the debates' entries could carry one.

``StageProgress`` prints a line at a fixed interval while a stage runs, for output that
is not a terminal: done / total requests, steps or adapters, tokens, elapsed, ETA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stancelab.conversation._tally import (
    CHARS_PER_TOKEN,
    PATH_REQUESTS_PER_POINT,
    Measurement,
    PeriodicLines,
    RequestCounter,
    Tally,
    Usage,
    duration,
    eta,
    filler,
    measure_engine,
    seconds_for,
)
from stancelab.conversation._templates import read_template
from stancelab.debates._estimate import Estimate, estimate_run
from stancelab.debates._experiment import load_experiment
from stancelab.debates._runner import ModelPool, Progress, plan_experiment
from stancelab.engine._base import ChoiceRequest, GenerationRequest
from stancelab.engine._scoring import path_plan
from stancelab.tuning import _datasets as ds
from stancelab.tuning._config import FinetuneConfig, TrainSettings
from stancelab.tuning._errors import DatasetError
from stancelab.tuning._evaluate import CHOICES, item_count
from stancelab.tuning._pipeline import (
    FinetuneRun,
    Stage,
    answers_done,
    cached_scores,
    debate_experiment,
    export_done,
    heldout_questions,
    select_stages,
)
from stancelab.tuning._questions import PROMPTS, Question, seed_questions
from stancelab.tuning._screening import party_check_requests, question_check_requests
from stancelab.tuning._train import checkpoint_step, finished_adapter

NEW_QUESTIONS_PER_REQUEST = 36 / 64
"""Distinct new questions a question-writing request yields before the screen, when no
earlier attempt of this bank measured it: docs/finetuning.md's quick run (SmolLM2-135M,
10 asked per request) got 36 from 8 rounds of 8 requests (7 more were near-duplicates)."""
SCREEN_KEEP_SHARE = 10 / 36
"""Share of those the question screen keeps, same run (judge Qwen2.5-Coder-0.5B)."""
DPO_COST = 4 / 3
"""Work of a DPO token against an NWP token: the same forward and backward pass, plus
the reference model's forward pass (a third of it)."""
TIMED_STEPS = 2
"""Forward / backward steps timed on the base checkpoint; the first warms up."""


@dataclass
class AdapterCount:
    """What training one adapter still needs."""

    label: str
    kind: str
    """nwp or dpo."""
    examples: int
    """Training texts (NWP) or pairs (DPO)."""
    steps: int
    """Optimiser steps still to take (a resumed run: after its last checkpoint)."""
    tokens: float
    """Tokens the steps still to take read (a DPO pair counts both answers)."""
    from_data: bool
    """Counted on the answers on disk (else expected from the settings)."""


@dataclass
class FinetuneEstimate(Usage):
    """What a fine-tuning run still needs: counts per stage, time and cost."""

    name: str
    stages: dict[str, Tally]
    """Requests to the generation engines (and the debates'), by what they are for."""
    models: dict[str, Tally]
    chosen: list[str]
    """Stages the estimate covers (``--stage`` / ``--from``)."""
    done: list[str]
    """Chosen stages with nothing to do: their output is on disk, or they are off (no
    benchmarks, no debates, no DPO); they count nothing."""
    questions_left: int
    question_rounds: float
    """Expected rounds of question writing (an expectation: rounds are random)."""
    answers_left: int
    adapters: list[AdapterCount]
    exports: int
    debates: Estimate | None
    evaluation: dict[str, int]
    """Benchmark items still to score, per model label (all tasks together)."""
    token_method: str
    seconds: float | None
    time_basis: str
    cost: float | None
    cost_bound: float | None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Estimated seconds per pipeline stage, where they were estimated."""
    notes: list[str] = field(default_factory=list)

    def steps(self, kind: str) -> int:
        """Optimiser steps still to take by the adapters of one kind (nwp or dpo)."""
        return sum(a.steps for a in self.adapters if a.kind == kind)

    def lines(self) -> list[str]:
        """The estimate as a few lines for a terminal or a log."""
        todo = [s for s in self.chosen if s not in self.done]
        out = [
            f"estimate for finetune {self.name}: stages to run {', '.join(todo) or 'none'}"
            + (f" (done or off: {', '.join(self.done)})" if self.done else "")
        ]
        if self.questions_left:
            out.append(
                f"  questions: {self.questions_left} to write, expected "
                f"{self.question_rounds:.1f} rounds (an expectation: how many a round keeps "
                "is random)"
            )
        if self.answers_left:
            out.append(f"  answers: {self.answers_left} to write")
        for a in self.adapters:
            source = "from the answers on disk" if a.from_data else "expected"
            unit = "pairs" if a.kind == "dpo" else "examples"
            out.append(
                f"  training {a.label}: {a.examples:,} {unit} ({source}) · {a.steps:,} steps "
                f"· {a.tokens:,.0f} tokens"
            )
        if self.exports:
            out.append(f"  export: {self.exports} adapters to GGUF")
        if self.debates is not None:
            out.append("  " + self.debates.lines()[0])
        if self.evaluation:
            items = sum(self.evaluation.values())
            out.append(
                f"  evaluation: {items:,} benchmark items on {len(self.evaluation)} models "
                f"({items * CHOICES:,} scored choices)"
            )
        return out + self.usage_lines()


def optimiser_steps(examples: int, settings: TrainSettings) -> int:
    """Steps a trainer takes over ``examples``: ``max_steps`` when set, else
    ceil(epochs x ceil(batches / gradient accumulation)), as transformers counts them."""
    if examples <= 0:
        return 0
    if settings.max_steps > 0:
        return settings.max_steps
    micro = settings.micro_batch_size or settings.batch_size
    accumulation = max(1, settings.batch_size // micro)
    per_epoch = max(1, math.ceil(math.ceil(examples / micro) / accumulation))
    return math.ceil(settings.epochs * per_epoch)


def _read_tokens(texts: Sequence[str], per_char: float, max_length: int) -> float:
    """Mean tokens of training texts, each cut at ``max_length`` (an end token added)."""
    if not texts:
        return 0.0
    return statistics.fmean(min(max_length, len(t) * per_char + 1) for t in texts)


@dataclass
class _Inputs:
    """What the counting knows of the data before and after it is written."""

    bank: list[Question]
    """The bank as the answers stage will see it (stand-ins for questions not written)."""
    reply_fraction: float
    """Generated tokens of an answer as a share of ``dataset.max_tokens``."""
    usable: float
    """Share of answers the filters keep (empty, too short, refused)."""
    per_char: float
    """Tokens per character of the written model."""
    stand_in: str
    """An answer for prompts that will carry one (the judge's, DPO's)."""


def _writer_requests(run: FinetuneRun, bank: Sequence[Question]) -> list[GenerationRequest]:
    """The answer requests the answers stage still sends, in its order."""
    d = run.config.dataset
    out = []
    for party in run.parties:
        path = run.answers_file(party)
        done = {
            (r["question_id"], int(r["k"])) for r in ds.read_jsonl(path) if r.get("party") == party
        }
        out += [
            GenerationRequest(
                ds.answer_prompt(party, q.text),
                temperature=d.temperature,
                max_tokens=d.max_tokens,
                seed=ds.answer_seed(0, party, q.id, k),
            )
            for q in bank
            for k in range(d.answers_per_question)
            if (q.id, k) not in done
        ]
    return out


def _question_request(run: FinetuneRun) -> GenerationRequest:
    """A question-writing request as ``generate_questions`` sends it (a seed as example)."""
    q = run.config.questions
    template = read_template(PROMPTS, "question_generation").strip()
    prompt = template.format(count=q.per_request, question=seed_questions()[0].text)
    return GenerationRequest(
        [{"role": "user", "content": prompt}], temperature=q.temperature, max_tokens=q.max_tokens
    )


def _question_yield(run: FinetuneRun) -> tuple[float, float, str]:
    """New questions per request before the screen, the screen's keep share, and where
    they come from: an earlier attempt's record beside the bank, else the quick run."""
    record = _screen_record(run)
    requests = int(record.get("rounds") or 0) * run.config.generation_parallel
    checks = record.get("checks") or []
    if requests and checks:
        kept = sum(1 for c in checks if c.get("kept"))
        return (
            len(checks) / requests,
            kept / len(checks) if checks else 1.0,
            f"measured on this bank's last attempt ({len(checks)} candidates from "
            f"{requests} requests, {kept} kept)",
        )
    return NEW_QUESTIONS_PER_REQUEST, SCREEN_KEEP_SHARE, "docs/finetuning.md's quick run"


def _screen_record(run: FinetuneRun) -> dict[str, Any]:
    import json  # noqa: PLC0415 - only here

    path = run.screen_file
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def estimate_finetune(
    config: FinetuneConfig | Path,
    *,
    only: Sequence[str] | None = None,
    start: str | None = None,
    run: FinetuneRun | None = None,
    measure: bool = False,
    measure_training: bool | None = None,
    log: Callable[[str], None] = print,
    measured: dict[str, Measurement] | None = None,
) -> FinetuneEstimate:
    """Count what a fine-tuning run still needs for the chosen stages.

    Reads the output folder, writes nothing there, and calls no model unless
    ``measure``.

    Args:
        config: the fine-tuning file or config.
        only: just these stages (``run_finetune``'s ``only``).
        start: from this stage on (``run_finetune``'s ``start``).
        run: the run whose generation engines are measured (they stay open for it);
            None with ``measure`` opens them here and closes them after.
        measure: send the run's first answer (or question) requests to the model and
            time them, and open the debates' model to measure it; False counts
            characters / 4 and gives no time.
        measure_training: time two forward / backward steps of the base checkpoint
            (None: when ``measure`` and an adapter is still to train).
        log: where a measuring message goes.
        measured: the debates' models already measured (by model key), not measured
            again; the ones measured here are added (one dict for the directions of one
            model, say).
    """
    cfg = config if isinstance(config, FinetuneConfig) else FinetuneConfig.load(config)
    own_run = run is None
    run = run if run is not None else FinetuneRun(cfg, lambda _: None)
    try:
        stages = select_stages(only, start)
        return _estimate(run, stages, measure, measure_training, log, measured)
    finally:
        if own_run:
            run.release_engines()


def _estimate(
    run: FinetuneRun,
    stages: list[Stage],
    measure: bool,
    measure_training: bool | None,
    log: Callable[[str], None],
    debates_measured: dict[str, Measurement] | None = None,
) -> FinetuneEstimate:
    config = run.config
    chosen = [s.name for s in stages]
    done = [s.name for s in stages if s.done(run)]
    todo = set(chosen) - set(done)
    notes: list[str] = []
    writer = config.model
    screening = config.screening
    judge = judge_key(config)
    q, d = config.questions, config.dataset

    # The bank the answers will be written for: on disk, or the seeds and stand-ins.
    bank = run.bank
    questions_left = max(0, q.count - len(bank)) if "questions" in todo else 0
    if len(bank) < q.count:
        seeds = seed_questions()
        bank = bank + [
            Question(f"expected{k}", seeds[k % len(seeds)].text, "expected")
            for k in range(q.count - len(bank))
        ]
    answer_requests = _writer_requests(run, bank) if "answers" in todo else []

    measured: dict[str, Measurement] = {}
    if measure and (questions_left or answer_requests):
        measured = _measure_writers(run, answer_requests, questions_left > 0, log)
    m = measured.get(writer)
    per_char = m.tokens_per_char if m else 1 / CHARS_PER_TOKEN
    fraction = m.reply_fraction if m and answer_requests else 1.0
    usable = 1.0
    if m and answer_requests:
        usable = statistics.fmean(ds.classify_answer(t, d.min_words) is None for t in m.replies)
    stand_in = next(
        (t for t in (m.replies if m else []) if ds.classify_answer(t, d.min_words) is None),
        filler(round(0.75 * fraction * d.max_tokens)),
    )
    inputs = _Inputs(bank, fraction, usable, per_char, stand_in)
    counter = RequestCounter(measured, {})

    # 1. Questions: whole rounds of ``generation_parallel`` requests until the bank is full.
    rounds = 0.0
    if questions_left:
        fresh, keep, basis = _question_yield(run)
        screened = screening is not None and screening.questions
        per_round = config.generation_parallel * fresh * (keep if screened else 1.0)
        rounds = min(float(q.max_rounds), math.ceil(questions_left / max(per_round, 1e-9)))
        request = _question_request(run)
        expected = (m.reply_fraction if m and not answer_requests else 1.0) * q.max_tokens
        counter.request(
            "questions",
            writer,
            request.prompt,
            expected,
            q.max_tokens,
            count=rounds * config.generation_parallel,
        )
        notes.append(
            f"question writing is an expectation: {fresh:.2f} new questions a request"
            + (f", {keep:.0%} kept by the screen" if screened else "")
            + f" ({basis}); at most {q.max_rounds} rounds"
        )
        if screened and screening is not None:
            calibration = len(seed_questions()) if screening.min_question_score is None else 0
            candidates = min(questions_left / keep, rounds * config.generation_parallel * fresh)
            check = question_check_requests([bank[0].text])
            _score(counter, "question screen", judge, check, candidates + calibration)

    # 2. Answers: every missing (question, k) of every party, then the judge's scores.
    for request in answer_requests:
        counter.request("answers", writer, request.prompt, fraction * d.max_tokens, d.max_tokens)
    if answer_requests and screening is not None and screening.partisanship:
        unscored = [
            r
            for party in run.parties
            for r in ds.read_jsonl(run.answers_file(party))
            if r.get("usable") and "partisanship" not in r
        ]
        _score(counter, "answer scoring", judge, party_check_requests(unscored), 1.0)
        written = party_check_requests([{"question": bank[0].text, "text": stand_in}])
        _score(counter, "answer scoring", judge, written, len(answer_requests) * usable)

    # 3-4. Training: per adapter, examples, optimiser steps and tokens.
    adapters = _training(run, todo, inputs, questions_left > 0 or bool(answer_requests), notes)
    exports = (
        len({path for row in run.rows for path in row["gguf"] if not path.is_file()})
        if "export" in todo
        else 0
    )

    # 5. Debates on base and tuned models: the debates' own estimate.
    debates = None
    if "debates" in todo and config.debates is not None:
        debates = _debates(run, measure, log, notes, debates_measured)
        for stage, tally in debates.stages.items():
            name = stage if stage == "debates" else f"debate {stage}"
            counter.stages.setdefault(name, Tally()).add(tally)
        for key, tally in debates.models.items():
            counter.models.setdefault(f"debates: {key}", Tally()).add(tally)

    # 6. Benchmarks: items per model still without scores for the current settings.
    evaluation: dict[str, int] = {}
    e = config.evaluation
    if "evaluation" in todo and e is not None:
        per_model = 0
        for task in e.tasks:
            items = item_count(task, e.data_dir)
            per_model += min(items, e.limit) if e.limit else items
        evaluation = {
            str(row["label"]): int(per_model) for row in run.rows if cached_scores(run, row) is None
        }

    # Time: generation at the measured speeds, training from its timed steps, the
    # debates from their estimate; evaluation and export are not estimated.
    stage_seconds: dict[str, float] = {}
    parts: list[str] = []
    missing: list[str] = []
    for tally_name, stage, key in (
        ("questions", "questions", writer),
        ("question screen", "questions", judge),
        ("answers", "answers", writer),
        ("answer scoring", "answers", judge),
    ):
        part = counter.stages.get(tally_name)
        if part is None:
            continue
        seconds, basis = seconds_for({key: part}, measured)
        if seconds is None:
            missing.append(f"{tally_name} (no model was opened)")
        else:
            stage_seconds[stage] = stage_seconds.get(stage, 0.0) + seconds
            if basis not in parts:
                parts.append(basis)
    if adapters:
        timing = measure_training if measure_training is not None else measure
        per_token = _training_speed(run, log) if timing else None
        if per_token is None:
            missing.append("training (not measured)")
        else:
            for kind in ("nwp", "dpo"):
                tokens = sum(a.tokens for a in adapters if a.kind == kind)
                if tokens:
                    stage_seconds[kind] = tokens * per_token[0] * (DPO_COST if kind == "dpo" else 1)
            parts.append(per_token[1])
    if debates is not None:
        if debates.seconds is None:
            missing.append("debates")
        else:
            stage_seconds["debates"] = debates.seconds
    if evaluation:
        missing.append("evaluation (lm-eval's speed is not measured)")
    if exports:
        missing.append("export")
    total_seconds = sum(stage_seconds.values()) if stage_seconds else None
    basis = "; ".join(parts) or "nothing was measured"
    if missing:
        basis += "; not estimated: " + ", ".join(missing)
    method = (
        f"the model's own counts on this run's first requests ({per_char:.3f} tokens/char "
        f"for {writer})"
        if m
        else f"characters / {CHARS_PER_TOKEN:g} (no model opened to count them)"
    )
    cost = debates.cost if debates is not None else None
    bound = debates.cost_bound if debates is not None else None
    if debates is not None and debates.notes:
        notes += [f"debates: {n}" for n in debates.notes]
    return FinetuneEstimate(
        config.name,
        counter.stages,
        counter.models,
        chosen,
        done,
        questions_left,
        rounds,
        len(answer_requests),
        adapters,
        exports,
        debates,
        evaluation,
        method,
        total_seconds,
        basis,
        cost,
        bound,
        stage_seconds,
        notes,
    )


def _score(
    counter: RequestCounter,
    stage: str,
    key: str,
    requests: Sequence[ChoiceRequest],
    count: float,
) -> None:
    """Count ``count`` x ``requests`` scored by ``key``: each takes the measured number
    of engine requests (else the greedy-path engines' documented 1.2), each decoding a
    short path."""
    m = counter.measured.get(key)
    rate = m.requests_per_point if m and m.requests_per_point else PATH_REQUESTS_PER_POINT
    for request in requests:
        bound = path_plan(request)[0]
        expected: float = bound
        if m and m.tokens_per_scoring is not None:
            expected = min(bound, m.tokens_per_scoring)
        counter.request(stage, key, request.prompt, expected, bound, None, count * rate)


def _measure_writers(
    run: FinetuneRun,
    answer_requests: Sequence[GenerationRequest],
    questions: bool,
    log: Callable[[str], None],
) -> dict[str, Measurement]:
    """The writer (and the judge, when it is another model) on the run's first requests:
    its first answer requests, else question-writing requests; the judge's scoring on
    checks like the ones it will make."""
    config, screening = run.config, run.config.screening
    slots = config.generation_parallel
    requests = list(answer_requests[:slots]) or [
        dataclasses.replace(_question_request(run), seed=k) for k in range(slots)
    ]
    bank = seed_questions()
    checks: list[ChoiceRequest] = []
    if screening is not None and screening.partisanship and answer_requests:
        stand_in = filler(round(0.75 * config.dataset.max_tokens))
        checks = party_check_requests([{"question": q.text, "text": stand_in} for q in bank[:4]])
    elif screening is not None and screening.questions and questions:
        checks = question_check_requests([q.text for q in bank[:4]])
    lm, judge = run.engines()
    key = judge_key(run.config)
    log(f"measuring {config.model}{' and ' + key if checks else ''} for the estimate…")
    # Apart, even on one engine: a judge's prompts and speed are not the writer's.
    measured = {config.model: measure_engine(lm, [], requests, None, slots, config.model)}
    if checks:
        probe = [GenerationRequest(checks[0].prompt, temperature=0.0, max_tokens=4)]
        measured[key] = measure_engine(judge, checks, probe, None, 1, key)
    return measured


def judge_key(config: FinetuneConfig) -> str:
    """What the judge's requests are counted under (the judge model, as judge)."""
    screening = config.screening
    return f"{(screening.judge if screening else None) or config.model} as judge"


def _training(
    run: FinetuneRun,
    todo: set[str],
    inputs: _Inputs,
    data_pending: bool,
    notes: list[str],
) -> list[AdapterCount]:
    """Examples, steps left and tokens of every adapter still to train."""
    config = run.config
    kinds = [k for k in ("nwp", "dpo") if k in todo and (k == "nwp" or config.dpo is not None)]
    if not kinds:
        return []
    own: list[str] | None = None
    pairs: list[dict[str, str]] | None = None
    if not data_pending and answers_done(run):
        try:
            data = run.training_data
            own = ds.training_texts(data.own, config.nwp.text_format)
            if config.dpo is not None:
                screening = config.screening
                direction = config.party if screening and screening.dpo_direction else None
                other = [r for r in data.other if r["question_id"] not in data.heldout_ids]
                pairs = ds.dpo_pairs(
                    data.own, other, config.dpo.pairs_per_question, direction=direction
                )
        except DatasetError as exc:
            notes.append(f"training not counted: {exc}")
            return []
    from_data = own is not None
    if own is None:
        # Expected from the settings: the answers are not all written yet.
        d = config.dataset
        heldout = len(heldout_questions(inputs.bank, d.heldout_questions))
        questions = len(inputs.bank) - heldout
        per_question = d.answers_per_question * inputs.usable
        answer = inputs.stand_in
        question = inputs.bank[0].text
        nwp_format = config.nwp.text_format
        own = [answer if nwp_format == "answer" else f"{question}\n{answer}"] * round(
            questions * per_question
        )
        if config.dpo is not None:
            per = min(per_question, config.dpo.pairs_per_question)
            pairs = [{"prompt": question + "\n", "chosen": answer, "rejected": answer}] * round(
                questions * per
            )
        if config.screening is not None and config.screening.keep_on_side_only:
            notes.append("keep_on_side_only: training examples counted before the filter")
    out = []
    for row in run.rows[1:]:
        kind = str(row["kind"])
        if kind not in kinds or finished_adapter(row["adapters"][-1]) is not None:
            continue
        settings: TrainSettings = config.nwp if kind == "nwp" else config.dpo  # type: ignore[assignment]
        if kind == "nwp":
            examples = len(own)
            per_example = _read_tokens(own, inputs.per_char, settings.max_length)
        else:
            examples = len(pairs or [])
            per_example = 2 * _read_tokens(
                [p["prompt"] + p["chosen"] for p in pairs or []]
                + [p["prompt"] + p["rejected"] for p in pairs or []],
                inputs.per_char,
                settings.max_length,
            )
        steps = optimiser_steps(examples, settings)
        left = max(0, steps - checkpoint_step(row["adapters"][-1].parent / "checkpoints"))
        # Examples the steps left read: a batch each with max_steps, else the epochs'.
        seen = (
            left * settings.batch_size
            if settings.max_steps > 0
            else examples * settings.epochs * left / max(steps, 1)
        )
        out.append(
            AdapterCount(str(row["label"]), kind, examples, left, seen * per_example, from_data)
        )
    return out


_TRAINING_SPEEDS: dict[str, tuple[float, str]] = {}
"""Training speeds timed in this process, by what they depend on: a second run of the same
model and settings (the other direction of a replication) is not timed again."""


def _training_speed(run: FinetuneRun, log: Callable[[str], None]) -> tuple[float, str] | None:
    """Seconds per training token: two forward / backward steps of the base checkpoint
    with the NWP LoRA on one text of ``nwp.max_length`` tokens, the second timed (once
    per model and settings in a process). None when the training libraries are not
    installed."""
    key = json.dumps([run.config.model, run.config.nwp.model_dump(mode="json")], sort_keys=True)
    if key in _TRAINING_SPEEDS:
        return _TRAINING_SPEEDS[key]
    try:
        import torch  # noqa: PLC0415 - lazy: torch is heavy to import
        from peft import get_peft_model  # noqa: PLC0415 - lazy: peft is heavy to import
    except ImportError:
        return None
    from stancelab.tuning._hf import base_checkpoint  # noqa: PLC0415 - lazy: loads transformers
    from stancelab.tuning._train import (  # noqa: PLC0415 - lazy: loads transformers
        load_for_training,
        lora_config,
        resolve_quantization,
        set_threads,
    )

    config = run.config
    settings = config.nwp
    log(f"timing {TIMED_STEPS} training steps of {config.model} for the estimate…")
    set_threads(settings.threads)
    checkpoint, _ = base_checkpoint(config.model, run.allow_network)
    model = get_peft_model(
        load_for_training(checkpoint, resolve_quantization(settings)), lora_config(settings.lora)
    )
    device = next(model.parameters()).device
    ids = torch.randint(100, 1000, (1, settings.max_length), device=device)
    seconds = 0.0
    for _ in range(TIMED_STEPS):
        started = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad()
        seconds = time.perf_counter() - started
    del model
    per_token = seconds / settings.max_length
    _TRAINING_SPEEDS[key] = (
        per_token,
        (
            f"training: {1 / per_token:,.0f} tokens/s, one forward / backward step of "
            f"{settings.max_length} tokens timed on {device.type}"
        ),
    )
    return _TRAINING_SPEEDS[key]


def _debates(
    run: FinetuneRun,
    measure: bool,
    log: Callable[[str], None],
    notes: list[str],
    measured: dict[str, Measurement] | None,
) -> Estimate:
    """The side-by-side debates' own estimate. Before the adapters exist every condition
    is counted as the base model's design (the same prompts: tuned replies may differ
    in length); a persona file the run writes first is written to a scratch folder."""
    config = run.config
    tuned = export_done(run)
    rows = run.rows if tuned else [{**row, "gguf": []} for row in run.rows]
    if not tuned:
        notes.append(
            "the tuned models do not exist yet: their debates are counted as the base "
            "model's design, once per condition"
        )
    with tempfile.TemporaryDirectory(prefix="stancelab-estimate-") as scratch:
        design_config = config
        assert config.debates is not None
        builtin = config.output_dir / "debates" / "builtin-personas.yaml"
        if config.debates.personas is None and not builtin.is_file():
            design_config = config.model_copy(update={"output_dir": Path(scratch)})
        design = debate_experiment(design_config, rows)
        here = design_config.output_dir / "debates"
        design["personas"]["file"] = str((here / design["personas"]["file"]).resolve())
        for condition in design["conditions"]:
            if "model" in condition:
                adapters = condition["model"]["adapters"]
                condition["model"]["adapters"] = [str((here / a).resolve()) for a in adapters]
        plan = plan_experiment(load_experiment(design), yaml.safe_dump(design))
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(ModelPool()) if measure else None
            return estimate_run(plan, run.out / "debates", pool, log, measured)


class StageProgress(PeriodicLines):
    """A progress line every ``interval_s`` seconds while one stage runs: done / total
    (requests, steps, adapters or models), tokens where an engine counts them, elapsed
    time and ETA."""

    def __init__(
        self,
        stage: str,
        unit: str,
        total: float | Callable[[], float],
        done: Callable[[], float],
        tokens: Callable[[], int] | None = None,
        estimated_s: float | None = None,
        log: Callable[[str], None] = print,
        interval_s: float = 60.0,
    ) -> None:
        """``total``: what the stage has to do (or reads it, once it is known);
        ``done`` and ``tokens`` read the counts now: both are shown from where they stood
        when the stage began."""
        super().__init__(log, interval_s)
        self.stage, self.unit, self.total = stage, unit, total
        self._done, self._tokens = done, tokens
        self.estimated_s = estimated_s
        self._base = (0.0, 0)

    def start(self) -> None:
        """Counts are shown from here."""
        self._base = (self._done(), self._tokens() if self._tokens else 0)

    def line(self) -> str:
        """The progress now."""
        done = self._done() - self._base[0]
        total = self.total() if callable(self.total) else self.total
        elapsed = self.elapsed
        tokens = f" · {self._tokens() - self._base[1]:,} tokens" if self._tokens else ""
        return (
            f"progress: {self.stage} {done:,.0f}/{total:,.0f} {self.unit}{tokens} · "
            f"{duration(elapsed)} elapsed · ETA {eta(done, total, elapsed, self.estimated_s)}"
        )


@contextlib.contextmanager
def stage_progress(
    run: FinetuneRun,
    stage: Stage,
    log: Callable[[str], None],
    interval_s: float,
    found: FinetuneEstimate | None = None,
) -> Iterator[None]:
    """Progress lines around one stage's run (see ``StageProgress``). Its totals are
    counted afresh as the stage begins (the stages before it have written their files);
    its ETA before the first unit comes from ``found``, the estimate printed before
    the run."""
    counted = _estimate(run, [stage], False, False, lambda _: None)
    estimated = found.stage_seconds.get(stage.name) if found else None
    name = stage.name
    lines: StageProgress | None = None
    if name in ("questions", "answers"):
        total = counted.total.requests
        lines = StageProgress(
            name,
            "requests",
            total,
            lambda: run.engine_stats()["requests"],
            lambda: run.engine_stats()["tokens"],
            estimated,
            log,
            interval_s,
        )
    elif name in ("nwp", "dpo"):
        lines = StageProgress(
            name,
            "steps",
            counted.steps(name),
            lambda: run.steps_done,
            None,
            estimated,
            log,
            interval_s,
        )
    elif name == "export":
        paths = {p for row in run.rows for p in row["gguf"]}
        lines = StageProgress(
            name,
            "adapters",
            counted.exports,
            lambda: sum(p.is_file() for p in paths),
            None,
            estimated,
            log,
            interval_s,
        )
    elif name == "debates" and counted.debates is not None:
        before: dict[str, int] = {}  # steps already done when the run planned its debates
        progress = Progress(on_cell=lambda cell, _total, done: before.__setitem__(cell, done))
        run.debate_progress = progress
        lines = StageProgress(
            name,
            "replies and surveys",
            lambda: sum(progress.total.values()) - sum(before.values()),
            lambda: sum(progress.done.values()) - sum(before.values()),
            None,
            estimated,
            log,
            interval_s,
        )
    elif name == "evaluation" and counted.evaluation:
        lines = StageProgress(
            name,
            "models",
            len(counted.evaluation),
            lambda: (
                len(counted.evaluation) - sum(cached_scores(run, row) is None for row in run.rows)
            ),
            None,
            estimated,
            log,
            interval_s,
        )
    if lines is None:
        yield
        return
    with lines:
        yield
