"""The Python API: the tutorial in docs/python-api.md runs as written, and the API refuses
bad input with one line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import stancelab as sl

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "python-api.md"


def tutorial_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.S)


@pytest.mark.engine
def test_the_tutorial_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "study.yaml", tmp_path / "examples" / "study.yaml")
    monkeypatch.chdir(tmp_path)
    blocks = tutorial_blocks()
    assert len(blocks) >= 8
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(TUTORIAL), "exec"), namespace)
    # What the tutorial promises, checked from outside its own asserts.
    run = sl.open_run(tmp_path / "runs" / "tutorial")
    assert run.status == "complete"
    surveys = run.surveys()
    assert set(surveys["kind"]) == {"republican", "democrat", "default"}
    assert surveys["score"].between(0, 10).all()
    assert (tmp_path / "personas" / "tutorial.yaml").is_file()  # relative to the cwd
    assert (tmp_path / "pilot.db").is_file()


def test_the_api_builds_and_checks_designs_like_files(tmp_path: Path) -> None:
    design = {
        "name": "x",
        "model": "smollm2-135m",
        "topics": ["racism"],
        "setups": ["three-way"],
        "repetitions": 1,
        "iterations": 2,
        "personas": {"file": "p.yaml", "generate": 1},
    }
    built = sl.experiment(design)
    assert built.personas.file == Path.cwd() / "p.yaml"  # relative to the working folder
    file = tmp_path / "x.yaml"
    file.write_text("\n".join(f"{k}: {v!r}" for k, v in design.items()).replace("'", '"'))
    loaded = sl.experiment(file)
    assert loaded.personas.file == tmp_path / "p.yaml"  # relative to the file
    with pytest.raises(sl.ConfigError, match="experiment: repetitions: Input should be"):
        sl.experiment({**design, "repetitions": 0})


def test_a_debate_on_the_fake_backend_returns_its_tables(tmp_path: Path) -> None:
    result = sl.debate(
        "racism",
        ["republican", "democrat", "default"],
        iterations=3,
        model={"name": "scripted", "backend": "fake", "options": {"reply": "No."}},
        out=tmp_path,
    )
    turns, surveys = result.turns(), result.surveys()
    assert list(turns["iteration"]) == [1, 2, 3] and set(turns["text"]) == {"No."}
    assert len(surveys) == 6 and set(surveys["score"]) == {5.0}  # before and after one cycle
    assert result.versions["models"][0]["name"] == "scripted"
    assert result.progress()["status"] == "complete"  # a run folder like any other
    with pytest.raises(sl.ConfigError, match="no agents given"):
        sl.debate("racism", [" "], model={"name": "scripted", "backend": "fake"})
    with pytest.raises(sl.ConfigError, match="no stancelab results"):
        sl.open_run(tmp_path / "absent")


def test_models_by_url_and_unknown_backends_fail_in_one_line() -> None:
    with pytest.raises(sl.ConfigError, match="unknown backend 'vllm'; known: fake, llamacpp"):
        sl.load_model({"name": "m", "backend": "vllm"})
    with pytest.raises(sl.ConfigError, match="fake model 'nobody' does not exist"):
        sl.load_model({"name": "nobody", "backend": "fake"})
    remote = sl.load_model("http://127.0.0.1:9/v1", options={"max_retries": 0})
    assert remote.describe()["base_urls"] == ["http://127.0.0.1:9/v1"]
    with pytest.raises(sl.EngineError, match="connection failed") as info:  # nothing listens
        remote.generate([sl.GenerationRequest("Hello", max_tokens=2)])
    assert "\n" not in str(info.value)
