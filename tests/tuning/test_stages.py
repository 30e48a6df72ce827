"""The fine-tuning loop's stages: each knows when its output is on disk and is then
skipped, a killed run resumes after its last finished stage, and a stage runs alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stancelab.engine._errors import ConfigError
from stancelab.tuning._config import FinetuneConfig
from stancelab.tuning._pipeline import (
    DEBATES_DONE,
    STAGE_NAMES,
    FinetuneRun,
    Stage,
    answers_done,
    debate_experiment,
    debates_done,
    dpo_done,
    evaluation_done,
    evaluation_key,
    export_done,
    nwp_done,
    questions_done,
    run_finetune,
    run_stages,
    select_stages,
)
from stancelab.tuning._questions import save_questions, seed_questions
from stancelab.tuning._train import ADAPTER_META


def make_run(tmp_path: Path, lines: list[str] | None = None, **changes: Any) -> FinetuneRun:
    settings: dict[str, Any] = {
        "output_dir": tmp_path / "out",
        "seeds": [0, 1],
        "ranks": [4],
        "questions": {"count": 10},  # Table 2's ten seeds fill the bank
        "dataset": {"answers_per_question": 2, "heldout_questions": 0.2},
        "dpo": {"lora": {"r": 2}},
        "screening": None,
        **changes,
    }
    log = lines.append if lines is not None else (lambda _: None)
    return FinetuneRun(FinetuneConfig.model_validate(settings), log)


def write_answers(run: FinetuneRun, scored: bool = False, skip: int = 0) -> None:
    """Every party's answers to every bank question (less the last ``skip`` rows)."""
    for party in run.parties:
        rows = []
        for q in run.bank:
            for k in range(run.config.dataset.answers_per_question):
                row: dict[str, Any] = {
                    "id": f"{party}-{q.id}-{k}",
                    "party": party,
                    "question_id": q.id,
                    "question": q.text,
                    "k": k,
                    "text": f"{party} answer {k} to {q.id}: lower taxes and more jobs",
                    "usable": True,
                    "filtered": None,
                }
                if scored:
                    row["partisanship"] = {"lean": 0.5, "republican": 0.7, "democrat": 0.2}
                rows.append(row)
        path = run.answers_file(party)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = rows[: len(rows) - skip]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def finish_adapters(run: FinetuneRun, kind: str) -> None:
    for row in run.trained(kind):
        folder = row["adapters"][-1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / ADAPTER_META).write_text(
            json.dumps({"steps": 2, "final_loss": 1.5, "curve": [], "verdict": "ok"})
        )


def test_stage_names_follow_the_loop() -> None:
    assert STAGE_NAMES == (
        "questions",
        "answers",
        "screens",
        "nwp",
        "dpo",
        "export",
        "debates",
        "evaluation",
        "report",
    )
    assert [s.name for s in select_stages(only=["report", "nwp"])] == ["nwp", "report"]
    assert [s.name for s in select_stages(start="debates")] == ["debates", "evaluation", "report"]
    assert [s.name for s in select_stages(["nwp", "report"], start="dpo")] == ["report"]
    with pytest.raises(ConfigError, match="unknown stage 'train'; stages: questions, answers"):
        select_stages(only=["train"])


def test_questions_are_done_when_the_bank_is_full(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert questions_done(run)  # the seeds alone: nothing to generate
    run = make_run(tmp_path, questions={"count": 12})
    assert not questions_done(run)
    bank = seed_questions()
    save_questions(
        [*bank, *[type(bank[0])(f"g{i}", f"Extra {i}?", "generated") for i in (1, 2)]],
        run.question_file,
    )
    assert questions_done(run)


def test_answers_are_done_when_every_answer_and_score_is_there(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert not answers_done(run)
    write_answers(run, skip=1)  # a run killed before the last answer
    assert not answers_done(run)
    write_answers(run)
    assert answers_done(run)
    scoring = make_run(tmp_path, screening={"questions": False})
    assert not answers_done(scoring)  # answers there, partisanship scores not yet
    write_answers(scoring, scored=True)
    assert answers_done(scoring)


def test_training_and_export_are_done_per_adapter(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    assert not nwp_done(run) and not dpo_done(run) and not export_done(run)
    finish_adapters(run, "nwp")
    assert nwp_done(run) and not dpo_done(run)
    finish_adapters(run, "dpo")
    assert dpo_done(run)
    assert dpo_done(make_run(tmp_path, dpo=None, seeds=[7]))  # DPO off: nothing to train
    gguf = [path for row in run.rows for path in row["gguf"]]
    assert len(gguf) == 2 + 2 * 2  # one per NWP adapter, two per DPO model
    for path in gguf[:-1]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF")
    assert not export_done(run)
    gguf[-1].write_bytes(b"GGUF")
    assert export_done(run)


def test_debates_are_done_only_for_the_current_design(tmp_path: Path) -> None:
    run = make_run(tmp_path, dpo=None, seeds=[0])
    assert debates_done(make_run(tmp_path, debates=None))
    for row in run.rows:
        for path in row["gguf"]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"GGUF adapter")
    assert not debates_done(run)
    folder = run.out / "debates" / str(debate_experiment(run.config, run.rows)["name"])
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    record = run.out / "debates" / DEBATES_DONE
    record.write_text(json.dumps({"run": str(folder), "failed": 1}))
    assert not debates_done(run)  # a failed debate is tried again
    record.write_text(json.dumps({"run": str(folder), "failed": 0}))
    assert debates_done(run)
    other = make_run(tmp_path, dpo=None, seeds=[0], debates={"repetitions": 5})
    assert not debates_done(other)  # another design runs in its own folder
    # A retrained adapter is another design, though its file has the same name.
    run.rows[1]["gguf"][0].write_bytes(b"GGUF retrained")
    assert not debates_done(make_run(tmp_path, dpo=None, seeds=[0]))


def test_evaluation_is_done_when_every_score_has_the_current_key(tmp_path: Path) -> None:
    run = make_run(tmp_path, dpo=None, seeds=[0], evaluation={"tasks": ["mmlu"], "limit": 2})
    assert evaluation_done(make_run(tmp_path, evaluation=None))
    run.__dict__["base"] = (tmp_path / "base.gguf", "0" * 64)  # no model file needed
    finish_adapters(run, "nwp")
    assert not evaluation_done(run)
    for row in run.rows:
        cache = run.out / "evaluation" / f"{row['label']}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"key": evaluation_key(run, row), "scores": {"mmlu": 0.5}}))
    assert evaluation_done(run)
    cache.write_text(json.dumps({"key": "other settings", "scores": {"mmlu": 0.5}}))
    assert not evaluation_done(run)


def recording_stages(tmp_path: Path, ran: list[str], fail: str | None = None) -> list[Stage]:
    """Three stages that each write one file; ``fail`` is killed before writing its file."""

    def stage(name: str) -> Stage:
        output = tmp_path / f"{name}.txt"

        def run(_: FinetuneRun) -> None:
            ran.append(name)
            if name == fail:
                raise KeyboardInterrupt
            output.write_text(name)

        return Stage(name, lambda _: output.is_file(), run)

    return [stage("first"), stage("second"), stage("third")]


def test_a_killed_run_resumes_after_its_last_finished_stage(tmp_path: Path) -> None:
    ran: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_stages(make_run(tmp_path), recording_stages(tmp_path, ran, fail="second"))
    assert ran == ["first", "second"]
    ran.clear()
    lines: list[str] = []
    did = run_stages(make_run(tmp_path, lines), recording_stages(tmp_path, ran))
    assert ran == ["second", "third"]
    assert did == {"first": "skipped", "second": "ran", "third": "ran"}
    assert lines == ["stage first: done, skipped"]
    ran.clear()
    run = make_run(tmp_path)
    assert set(run_stages(run, recording_stages(tmp_path, ran)).values()) == {"skipped"}
    assert ran == [] and set(run.timings) == {"first_s", "second_s", "third_s"}


def test_the_report_runs_alone_from_the_files_on_disk(tmp_path: Path) -> None:
    lines: list[str] = []
    run = make_run(tmp_path, lines, dpo=None, debates=None, evaluation=None)
    write_answers(run)
    finish_adapters(run, "nwp")
    result = run_finetune(run.config, log=lines.append, only=["report"])
    assert result["stages"] == {"report": "ran"}
    assert [r["label"] for r in result["rows"]] == ["base", "nwp-r4-s0", "nwp-r4-s1"]
    assert result["training"]["nwp-r4-s0"]["final_loss"] == 1.5
    assert result["datasets"]["republican"]["usable"] == 20
    assert result["questions"]["questions"] == 10
    assert len(result["screening"]["heldout_questions"]) == 2
    written = json.loads((run.out / "results.json").read_text())
    assert written["rows"] == result["rows"]
    assert (run.out / "table.txt").read_text().strip() in lines[-1]


def test_done_stages_never_open_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path)
    write_answers(run)

    def no_engine(self: FinetuneRun, model: str) -> None:
        raise AssertionError(f"the engine was opened for {model}")

    monkeypatch.setattr(FinetuneRun, "_open", no_engine)
    lines: list[str] = []
    result = run_finetune(run.config, log=lines.append, only=["questions", "answers"])
    assert result == {"stages": {"questions": "skipped", "answers": "skipped"}}
    assert lines == ["stage questions: done, skipped", "stage answers: done, skipped"]


@pytest.mark.engine
def test_the_answers_stage_runs_alone_on_the_real_engine(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        generation_parallel=4,
        dataset={"answers_per_question": 1, "max_tokens": 16},
    )
    lines: list[str] = []
    result = run_finetune(run.config, log=lines.append, only=["answers"])
    assert result["stages"] == {"answers": "ran"}
    assert answers_done(run)
    for party in ("democrat", "republican"):
        rows = [json.loads(line) for line in run.answers_file(party).read_text().splitlines()]
        assert len(rows) == 10 and all(r["party"] == party for r in rows)
        assert any(line.startswith(f"dataset {party}: ") for line in lines)
    again = run_finetune(run.config, log=lines.append, only=["answers"])
    assert again["stages"] == {"answers": "skipped"}
