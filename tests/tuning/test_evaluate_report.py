"""lm-evaluation-harness on local fixture files, bad benchmark files, the Table-1 summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stancelab.engine._errors import ConfigError
from stancelab.tuning._config import FinetuneConfig
from stancelab.tuning._errors import BenchmarkError
from stancelab.tuning._report import summarize_rows, table


def test_evaluate_on_fixture_files(tmp_path: Path, smol_base: tuple[Path, str]) -> None:
    pytest.importorskip("lm_eval")
    from stancelab.tuning._evaluate import evaluate

    from .conftest import write_fixture

    data = write_fixture(tmp_path / "bench")
    rows = [json.loads(x) for x in (data / "mmlu" / "test.jsonl").read_text().splitlines()]
    assert set(rows[0]) == {"question", "subject", "choices", "answer"}
    scores = evaluate("smollm2-135m", ["mmlu", "hellaswag"], data, batch_size=4)
    assert set(scores) == {"mmlu", "hellaswag"}
    # 5 MMLU items and 4 HellaSwag items: accuracies are multiples of 20 and 25 percent.
    assert scores["mmlu"] in {0.0, 20.0, 40.0, 60.0, 80.0, 100.0}
    assert scores["hellaswag"] in {0.0, 25.0, 50.0, 75.0, 100.0}
    # The easy made-up endings are within reach of even a 135M model.
    assert scores["hellaswag"] >= 50.0


def test_benchmark_files_in_the_wrong_format(tmp_path: Path) -> None:
    from stancelab.tuning._evaluate import evaluate, local_task

    from .conftest import write_fixture

    data = write_fixture(tmp_path / "bench")
    (data / "mmlu" / "test.jsonl").write_text(json.dumps({"prompt": "x", "label": 1}) + "\n")
    with pytest.raises(BenchmarkError, match="not in MMLU format"):
        local_task("mmlu", data, tmp_path)
    (data / "hellaswag" / "validation.jsonl").write_text("[1, 2\n")
    with pytest.raises(BenchmarkError, match="not valid JSON"):
        local_task("hellaswag", data, tmp_path)
    (data / "mmlu" / "bad_test.csv").write_text("only,three,columns\n")
    (data / "mmlu" / "test.jsonl").unlink()
    with pytest.raises(BenchmarkError, match="not an MMLU CSV row"):
        local_task("mmlu", data, tmp_path)
    with pytest.raises(BenchmarkError, match="does not exist"):
        local_task("hellaswag", tmp_path / "nowhere", tmp_path)
    with pytest.raises(BenchmarkError, match="no benchmark data folder"):
        evaluate("smollm2-135m", ["mmlu"], None)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        evaluate("smollm2-135m", ["arc"], data)


def test_hendrycks_csv_is_accepted(tmp_path: Path) -> None:
    from stancelab.tuning._evaluate import local_task

    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "astronomy_test.csv").write_text(
        '"Which planet is largest?",Mars,Jupiter,Venus,Earth,B\n'
    )
    config = local_task("mmlu", tmp_path, tmp_path)
    row = json.loads(Path(config["dataset_kwargs"]["data_files"]["test"]).read_text())
    assert row == {
        "question": "Which planet is largest?",
        "subject": "astronomy",
        "choices": ["Mars", "Jupiter", "Venus", "Earth"],
        "answer": 1,
    }


def test_table_averages_seeds_per_rank(tmp_path: Path) -> None:
    rows = [
        {"kind": "base", "rank": 0, "hellaswag": 40.0, "mmlu": 25.0, "attitude": 8.0},
        {"kind": "nwp", "rank": 16, "seed": 0, "hellaswag": 38.0, "mmlu": 24.0, "attitude": 5.0},
        {"kind": "nwp", "rank": 16, "seed": 1, "hellaswag": 36.0, "mmlu": 22.0, "attitude": 4.0},
        {"kind": "dpo", "rank": 8, "seed": 0, "hellaswag": 37.0, "mmlu": None, "attitude": 1.0},
    ]
    summary = summarize_rows(rows)
    assert [s["model"] for s in summary] == ["base", "r=16 NWP", "r=8 DPO"]
    assert summary[1] == {
        "model": "r=16 NWP",
        "seeds": 2,
        "hellaswag": 37.0,
        "mmlu": 23.0,
        "attitude": 4.5,
    }
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    text = table(tmp_path)
    assert "r=16 NWP" in text and "37.0" in text and "4.5" in text
    assert text.splitlines()[3].split()[-2] == "-"  # DPO has no MMLU score
    with pytest.raises(ConfigError, match="no results file"):
        table(tmp_path / "missing")


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "ft.yaml"
    path.write_text(
        "model: smollm2-135m\nranks: [8, 16]\nnwp: {batch_size: 4}\nevaluation: {data_dir: bench}\n"
    )
    config = FinetuneConfig.load(path)
    assert config.ranks == [8, 16] and config.nwp.batch_size == 4
    assert config.nwp.lora.r == 256  # paper default unless set
    assert config.evaluation is not None and config.evaluation.data_dir == tmp_path / "bench"
    path.write_text("nwp: {batch_sise: 4}\n")
    with pytest.raises(ConfigError, match=r"nwp\.batch_sise"):
        FinetuneConfig.load(path)
    example = Path(__file__).parents[2] / "examples" / "finetune-quick.yaml"
    assert FinetuneConfig.load(example).model == "smollm2-135m"


def test_cli_table_and_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stancelab.tuning._cli import app

    rows = [{"kind": "base", "rank": 0, "hellaswag": 40.0, "mmlu": 25.0, "attitude": 8.0}]
    (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
    runner = CliRunner()
    result = runner.invoke(app, ["table", str(tmp_path)])
    assert result.exit_code == 0 and "base" in result.output and "8.0" in result.output
    result = runner.invoke(app, ["finetune", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output
