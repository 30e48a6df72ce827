"""The fine-tuning estimate: counts from a config and its output folder, against what a
finished run did, resumed runs, ``finetune --dry-run`` and progress lines."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stancelab.cli import app
from stancelab.tuning._config import FinetuneConfig, TrainSettings
from stancelab.tuning._datasets import read_jsonl
from stancelab.tuning._estimate import StageProgress, estimate_finetune, optimiser_steps
from stancelab.tuning._questions import seed_questions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def tiny(tmp_path: Path, **changes: Any) -> Path:
    """A scaled-down fine-tuning file (the ten seed questions: no question writing)."""
    data: dict[str, Any] = {
        "name": "tiny",
        "model": "smollm2-135m",
        "party": "republican",
        "output_dir": "out",
        "seeds": [0, 1],
        "ranks": [4],
        "generation_parallel": 4,
        "questions": {"count": 10},
        "dataset": {"answers_per_question": 2, "max_tokens": 24},
        "nwp": {"batch_size": 2, "max_length": 48, "lora": {"r": 4, "dropout": 0.0}},
        "dpo": {"batch_size": 2, "max_steps": 1, "max_length": 48, "lora": {"r": 2}},
        "debates": {
            "topics": ["racism"],
            "repetitions": 1,
            "iterations": 3,
            "parallel": 2,
            "check_fidelity": False,
        },
        "evaluation": {
            "tasks": ["mmlu", "hellaswag"],
            "data_dir": str(EXAMPLES / "finetune-bench"),
            "limit": 2,
        },
        **changes,
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_answers(out: Path, party: str, ks: range, questions: int = 10) -> None:
    """Answer rows as the answers stage writes them (scored, so the stage is done)."""
    path = out / "data" / f"{party}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        for q in seed_questions()[:questions]:
            for k in ks:
                row = {
                    "id": f"{party}-{q.id}-{k}",
                    "party": party,
                    "question_id": q.id,
                    "question": q.text,
                    "k": k,
                    "text": f"We should keep the rules simple and fair, answer {k}.",
                    "usable": True,
                    "partisanship": {"lean": 0.1, "coverage": 1.0},
                }
                handle.write(json.dumps(row) + "\n")


def test_optimiser_steps_follow_the_trainer() -> None:
    # transformers: ceil(epochs x ceil(ceil(examples / micro) / accumulation)).
    assert optimiser_steps(9, TrainSettings(batch_size=2)) == 5
    assert optimiser_steps(9, TrainSettings(batch_size=2, epochs=2.5)) == 13
    assert optimiser_steps(100, TrainSettings(batch_size=32, micro_batch_size=8)) == 4
    assert optimiser_steps(9, TrainSettings(batch_size=2, max_steps=7)) == 7
    assert optimiser_steps(0, TrainSettings()) == 0


def test_counts_a_config_without_opening_a_model(tmp_path: Path) -> None:
    found = estimate_finetune(tiny(tmp_path))
    out = tmp_path / "out"
    assert not out.exists()  # counting writes nothing
    assert found.done == ["questions"]  # the ten seeds fill the bank
    assert found.questions_left == 0 and "questions" not in found.stages
    # Two parties x 10 questions x 2 answers, each prompt the real one.
    assert found.answers_left == 40
    assert found.stages["answers"].requests == 40
    assert found.stages["answers"].completion_bound == 40 * 24
    # The judge scores each answer with the options in both orders.
    assert found.stages["answer scoring"].requests == pytest.approx(2 * 40 * 1.2)
    # One question of ten is held out: 9 x 2 training answers, batch 2 -> 9 steps.
    nwp = [a for a in found.adapters if a.kind == "nwp"]
    assert [a.label for a in nwp] == ["nwp-r4-s0", "nwp-r4-s1"]
    assert all(a.examples == 18 and a.steps == 9 and not a.from_data for a in nwp)
    assert all(a.tokens <= 18 * 48 for a in nwp)
    assert found.steps("dpo") == 2  # max_steps 1, two seeds
    assert found.exports == 4  # two NWP and two DPO adapters
    # Debates: three agents, three iterations, on the base and four tuned models.
    assert found.debates is not None and found.debates.debates_left == 5
    assert found.debates.replies_left == 5 * 3
    assert found.evaluation == dict.fromkeys(
        ["base", "nwp-r4-s0", "nwp-r4-s1", "dpo-r2-s0", "dpo-r2-s1"], 4
    )
    text = "\n".join(found.lines())
    assert "answers: 40 to write" in text and "training nwp-r4-s0: 18 examples" in text
    assert "time: not estimated" in text and "counted as the base model's design" in text
    # --stage / --from: only the chosen stages.
    only = estimate_finetune(tiny(tmp_path), only=["nwp"])
    assert set(only.stages) == set() and only.steps("nwp") == 18 and not only.debates
    later = estimate_finetune(tiny(tmp_path), start="evaluation")
    assert later.answers_left == 0 and not later.adapters and sum(later.evaluation.values()) == 20


def test_questions_to_write_are_an_expectation(tmp_path: Path) -> None:
    found = estimate_finetune(tiny(tmp_path, questions={"count": 30, "max_rounds": 50}))
    assert found.questions_left == 20
    rounds = math.ceil(20 / (4 * 36 / 64 * 10 / 36))
    assert found.question_rounds == rounds
    assert found.stages["questions"].requests == 4 * rounds
    assert "question screen" in found.stages
    assert any("an expectation" in note for note in found.notes)
    # The answers are counted for the bank that will exist.
    assert found.answers_left == 2 * 30 * 2


def test_a_resumed_run_counts_only_what_is_missing(tmp_path: Path) -> None:
    path = tiny(tmp_path)
    out = tmp_path / "out"
    write_answers(out, "republican", range(2))
    write_answers(out, "democrat", range(1))  # half of the democrat answers
    found = estimate_finetune(path)
    assert found.answers_left == 10 and found.stages["answers"].requests == 10
    write_answers(out, "democrat", range(1, 2))
    found = estimate_finetune(path)
    assert "answers" in found.done and found.answers_left == 0
    assert "answers" not in found.stages and "answer scoring" not in found.stages
    # Training is counted on the answers on disk: 9 training questions x 2.
    nwp = found.adapters[0]
    assert nwp.from_data and nwp.examples == 18 and nwp.steps == 9
    # An adapter whose training stopped at a checkpoint has only the rest to do.
    (out / "adapters" / "nwp-r4-s0" / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    assert estimate_finetune(path).adapters[0].steps == 5


def test_dry_run_prints_the_estimate_and_trains_nothing(tmp_path: Path) -> None:
    path = tiny(tmp_path)
    result = CliRunner().invoke(app, ["finetune", str(path), "--dry-run", "--no-measure"])
    assert result.exit_code == 0, result.output
    assert "estimate for finetune tiny" in result.output
    assert "answers: 40 to write" in result.output and "dry run" in result.output
    assert not (tmp_path / "out").exists()
    # --stage narrows the estimate like the run.
    result = CliRunner().invoke(
        app, ["finetune", str(path), "--dry-run", "--no-measure", "--stage", "nwp"]
    )
    assert result.exit_code == 0 and "answers:" not in result.output
    assert "training nwp-r4-s0" in result.output


def test_progress_lines_appear_at_the_interval() -> None:
    done = [0]
    lines: list[str] = []
    with StageProgress(
        "answers", "requests", 10, lambda: done[0], lambda: 50 * done[0], None, lines.append, 0.02
    ):
        done[0] = 4
        time.sleep(0.2)
    assert lines and lines[-1].startswith("progress: answers 4/10 requests · 200 tokens")
    assert "elapsed · ETA" in lines[-1]


@pytest.mark.engine
def test_the_estimate_matches_a_finished_run(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    from stancelab.tuning._pipeline import run_finetune

    path = tiny(tmp_path, seeds=[0])
    stages = ["questions", "answers", "screens", "nwp", "dpo"]
    found = estimate_finetune(path, only=stages, measure=True, measure_training=True)
    lines: list[str] = []
    run_finetune(path, log=lines.append, only=stages, progress_every=0.05)

    out = tmp_path / "out"
    rows = [r for p in ("republican", "democrat") for r in read_jsonl(out / "data" / f"{p}.jsonl")]
    answers = found.stages["answers"]
    actual = {
        "requests": len(rows),
        "prompt tokens": sum(r["prompt_tokens"] for r in rows),
        "generated tokens": sum(r["completion_tokens"] for r in rows),
    }
    estimated = {
        "requests": answers.requests,
        "prompt tokens": answers.prompt_tokens,
        "generated tokens": answers.completion_tokens,
    }
    steps = {
        a.label: json.loads(
            (out / "adapters" / a.label / "adapter" / "stancelab_adapter.json").read_text()
        )["steps"]
        for a in found.adapters
    }
    print({"estimated": estimated, "actual": actual, "steps": steps, "adapters": found.adapters})
    for key, value in actual.items():
        assert estimated[key] == pytest.approx(value, rel=0.10), key
    for adapter in found.adapters:
        assert adapter.steps == pytest.approx(steps[adapter.label], rel=0.10), adapter.label
    assert found.seconds is not None and "training:" in found.time_basis
    assert any(line.startswith("progress: answers ") for line in lines)
    assert any(line.startswith("progress: nwp ") for line in lines)
    # Finished: the same stages estimate nothing left.
    again = estimate_finetune(path, only=stages)
    assert again.done == ["questions", "answers", "nwp", "dpo"] and not again.stages
    assert not again.adapters
    assert FinetuneConfig.load(path).output_dir == out
