"""Base and tuned models side by side in one experiment file, on the real llama.cpp engine."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from stancelab.engine._errors import StancelabError

pytestmark = pytest.mark.engine
pytest.importorskip("peft")


def _experiment(tmp_path: Path, adapter: str) -> Path:
    from stancelab.conversation._personas import Persona, PersonaSet

    PersonaSet(
        [
            Persona("Rita", "republican", "You are Rita, a Republican rancher."),
            Persona("Dan", "democrat", "You are Dan, a Democrat teacher."),
        ],
        {},
    ).save(tmp_path / "personas.yaml")
    path = tmp_path / "tuned.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "side-by-side",
                "model": {"name": "smollm2-135m", "parallel": 2, "ctx_per_slot": 1024},
                "topics": ["racism"],
                "setups": ["two-way"],
                "repetitions": 1,
                "iterations": 2,
                "personas": {"file": "personas.yaml", "check_fidelity": False},
                "reply": {"max_tokens": 32},
                "conditions": [
                    {"name": "base"},
                    {
                        "name": "tuned-s0",
                        "label": "tuned",
                        "model": {
                            "name": "smollm2-135m",
                            "parallel": 2,
                            "ctx_per_slot": 1024,
                            "adapters": [adapter],
                        },
                    },
                ],
            }
        )
    )
    return path


def test_one_experiment_file_runs_base_and_tuned_models(
    tmp_path: Path, random_adapter: tuple[Path, Any]
) -> None:
    from stancelab.debates._experiment import load_experiment
    from stancelab.debates._report import write_report
    from stancelab.debates._runner import RunFolder, run_experiment
    from stancelab.debates._store import Store
    from stancelab.engine._models import resolve_model
    from stancelab.tuning._export import export_lora_gguf

    adapter_dir, _ = random_adapter
    _, base_gguf = resolve_model("smollm2-135m")
    export_lora_gguf(adapter_dir, base_gguf, tmp_path / "adapters" / "r8.gguf")
    path = _experiment(tmp_path, "adapters/r8.gguf")  # relative to the experiment file
    config = load_experiment(path)
    result = run_experiment(config, path.read_text(), tmp_path / "runs", log=lambda m: None)
    assert result.debates == 2 and result.failed == 0

    db = tmp_path / "runs" / "side-by-side" / "stancelab.db"
    con = sqlite3.connect(db)
    rows = con.execute(
        "select d.condition, d.seed, m.iteration, m.text from messages m join "
        "debates d on d.id = m.debate_id order by m.iteration"
    ).fetchall()
    base = {it: (seed, text) for cond, seed, it, text in rows if cond == "base"}
    tuned = {it: (seed, text) for cond, seed, it, text in rows if cond == "tuned-s0"}
    assert set(base) == set(tuned) == {1, 2}
    assert base[1][0] == tuned[1][0]  # same seeds: only the model differs
    assert base[1][1] != tuned[1][1]  # the adapter really changes what the model writes
    surveys = con.execute(
        "select d.condition, s.distribution from survey_answers s join "
        "debates d on d.id = s.debate_id where s.iteration = 0 and "
        "s.agent_index = 0"
    ).fetchall()
    by_condition = dict(surveys)
    assert by_condition["base"] != by_condition["tuned-s0"]

    run = Store(db).get_run(RunFolder(db.parent).read_meta()["run_id"])
    (tuned_engine,) = run.versions["models[tuned-s0]"]
    assert tuned_engine["lora_adapters"][0]["path"] == str(tmp_path / "adapters" / "r8.gguf")
    html = write_report(RunFolder(db.parent)).read_text()
    assert "Tuned against base models" in html


def test_adapter_for_the_wrong_model_fails_before_any_debate(tmp_path: Path) -> None:
    from stancelab.debates._experiment import load_experiment
    from stancelab.debates._runner import run_experiment

    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "junk.gguf").write_bytes(b"not a gguf")
    path = _experiment(tmp_path, "adapters/junk.gguf")
    config = load_experiment(path)  # the bad adapter is in the second condition
    with pytest.raises(StancelabError, match=r"junk\.gguf is not a GGUF file"):
        run_experiment(config, path.read_text(), tmp_path / "runs", log=lambda m: None)
    assert not (tmp_path / "runs" / "side-by-side").exists()
