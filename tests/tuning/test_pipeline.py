"""`stancelab finetune FILE` end to end on SmolLM2, scaled down to a couple of minutes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.engine
pytest.importorskip("trl")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_whole_loop_from_one_file(
    tmp_path: Path, smol_base: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stancelab.tuning._pipeline import run_finetune

    monkeypatch.chdir(tmp_path)  # a relative file path, as users type it
    small = {"batch_size": 2, "max_steps": 2, "max_length": 48, "save_steps": 1, "logging_steps": 1}
    path = Path("ft.yaml")
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "model": "smollm2-135m",
                "party": "republican",
                "output_dir": "out",
                "seeds": [0, 1],
                "ranks": [4],
                "generation_parallel": 4,
                "questions": {"count": 10},  # the ten seed questions of Table 2: no generation
                "dataset": {"answers_per_question": 1, "max_tokens": 24},
                "nwp": {**small, "lora": {"r": 4, "dropout": 0.0}},
                "dpo": {
                    **small,
                    "max_steps": 1,
                    "lora": {"r": 2, "dropout": 0.0},
                    "pairs_per_question": 1,
                },
                "debates": {
                    "topics": ["racism"],
                    "repetitions": 1,
                    "iterations": 3,
                    "parallel": 2,
                    "check_fidelity": False,
                },
                "evaluation": {
                    "tasks": ["mmlu"],
                    "data_dir": str(EXAMPLES / "finetune-bench"),
                    "limit": 2,
                    "batch_size": 2,
                },
            }
        )
    )
    lines: list[str] = []
    result = run_finetune(path, log=lines.append)

    labels = [row["label"] for row in result["rows"]]
    assert labels == ["base", "nwp-r4-s0", "nwp-r4-s1", "dpo-r2-s0", "dpo-r2-s1"]
    for row in result["rows"]:
        assert row["attitude"] is not None and 0 <= row["attitude"] <= 10
        assert row["mmlu"] is not None
    out = tmp_path / "out"
    # The debates ran as one ordinary experiment with a condition per model.
    experiment = yaml.safe_load((out / "debates" / "experiment.yaml").read_text())
    assert [c["name"] for c in experiment["conditions"]] == labels
    assert [c["label"] for c in experiment["conditions"]] == [
        "base",
        "r=4 NWP",
        "r=4 NWP",
        "r=2 DPO",
        "r=2 DPO",
    ]
    run_folder = Path(result["debates_run"])
    assert run_folder.parent == (out / "debates").resolve()
    assert run_folder.name.startswith("tiny-debates-")
    report = run_folder / "report"
    assert (report / "index.html").is_file() and (report / "tuning_effect.csv").is_file()
    table = (out / "table.txt").read_text()
    assert "r=4 NWP" in table and "r=2 DPO" in table
    # The data and training checks ran and are in the report (judge: the model itself).
    assert result["questions"]["questions"] == 10 and not result["questions"]["screened"]
    for party in ("republican", "democrat"):
        assert result["datasets"][party]["partisanship"]["scored"] > 0
    assert result["screening"]["heldout_questions"] and result["gate"]["passed"] is not None
    assert set(result["training"]) == set(labels[1:])
    for label in labels[1:]:
        assert result["training"][label]["heldout"] and result["training"][label]["curve"]
        assert result["training"][label]["learned"] is not None
    assert "lean republican" in table and "held-out" in table
    if not result["gate"]["passed"]:
        assert "not partisan enough" in table.splitlines()[1]
    assert json.loads((out / "results.json").read_text())["rows"][0]["label"] == "base"

    # Everything is on disk: a second call skips every stage that makes something (no
    # engine, no training) and gives the same table from the files.
    lines.clear()
    again = run_finetune(path, log=lines.append)
    assert [name for name, did in again["stages"].items() if did == "ran"] == [
        "screens",
        "report",
    ]
    assert "stage evaluation: done, skipped" in lines
    assert [r["attitude"] for r in again["rows"]] == [r["attitude"] for r in result["rows"]]
    assert again["timings"]["debates_s"] < result["timings"]["debates_s"]
    assert [r["mmlu"] for r in again["rows"]] == [r["mmlu"] for r in result["rows"]]
    assert again["training"] == result["training"]
    # Scores kept under another key (other data, limit or adapter) are computed afresh.
    cache = out / "evaluation" / "base.json"
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "key": "other"}))
    third: list[str] = []
    run_finetune(path, log=third.append)
    assert sum("(reused)" in line for line in third) == len(labels) - 1
    assert json.loads(cache.read_text())["key"] != "other"
