"""Persona writing in a run: each story saved as written, a killed run keeps them, the
optional screen re-draws stories on the wrong side and the run records it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from stancelab.debates._experiment import load_experiment
from stancelab.debates._runner import ModelPool, RunFolder, run_experiment
from stancelab.debates._store import Store
from stancelab.engine._base import GenerationRequest
from stancelab.engine._fake import ScriptedModel


class Crash(Exception):
    """A dying process."""


def story_or_reply(request: GenerationRequest) -> str:
    prompt = str(request.prompt)
    if "background story" in prompt:
        party = "Democrat" if "Democrat partisan" in prompt else "Republican"
        return (
            f"You grew up in a small town and became a passionate {party}. You care about "
            "your family and your country and speak at every town hall about guns, racism, "
            f"the climate and immigration. Draw {request.seed}."
        )
    return " A fair point about the topic."


class StoryModel(ScriptedModel):
    """Writes stories; crashes at the n-th story when asked to."""

    def __init__(self, crash_at: int | None = None, **kwargs: object) -> None:
        super().__init__(reply=story_or_reply, **kwargs)  # type: ignore[arg-type]
        self.crash_at = crash_at
        self.stories = 0
        self.lock = threading.Lock()

    def generate(self, requests):  # type: ignore[no-untyped-def]
        for r in requests:
            if "background story" in str(r.prompt):
                with self.lock:
                    self.stories += 1
                    if self.crash_at is not None and self.stories >= self.crash_at:
                        raise Crash("killed while writing personas")
        return super().generate(requests)


def write_experiment(tmp_path: Path, **changes: object) -> Path:
    data = {
        "name": "gen",
        "model": {"name": "fake", "parallel": 1},
        "topics": ["climate change"],
        "setups": ["two-way"],
        "repetitions": 2,
        "iterations": 0,
        "personas": {"generate": 2},
        **changes,
    }
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, out: Path, model: ScriptedModel) -> object:
    config = load_experiment(path)
    pool = ModelPool(opener=lambda cfg: model)
    return run_experiment(config, path.read_text(), out, log=lambda m: None, models=pool)


def test_a_run_killed_while_writing_personas_keeps_the_finished_stories(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    with pytest.raises(Crash):
        run(path, tmp_path / "runs", StoryModel(crash_at=3))
    folder = RunFolder(tmp_path / "runs" / "gen")
    kept = yaml.safe_load(folder.partial_personas.read_text())
    assert len(kept) == 2 and all(d["story"].startswith("You grew up") for d in kept)
    again = StoryModel()
    run(path, tmp_path / "runs", again)
    assert again.stories == 2  # only the two unfinished stories are written
    assert not folder.partial_personas.exists()
    personas = yaml.safe_load(folder.personas.read_text())
    assert len(personas["personas"]) == 4
    assert {d["name"] for d in kept} <= {p["name"] for p in personas["personas"]}
    for p in personas["personas"]:
        assert p["background"].startswith(f"Your name is {p['name']}. You grew up")
    # Every story covers the four Pew topics, whatever the experiment debates.
    meta = personas["meta_prompt"]["republican"]
    assert all(t in meta for t in ("gun violence", "racism", "climate change", "immigration"))


def test_the_optional_screen_redraws_stories_on_the_wrong_side(tmp_path: Path) -> None:
    drawn = {"n": 0}

    def reply(request: GenerationRequest) -> str:
        prompt = str(request.prompt)
        if "Republican partisan" in prompt:
            drawn["n"] += 1
            if drawn["n"] == 1:  # the first Republican story reads like a Democrat's
                return (
                    "You grew up reading pamphlets on environmentalism and you fight for "
                    "the climate, against guns and against racism every day, marching with "
                    "your friends downtown."
                )
        return story_or_reply(request)

    def scores(prompt: str) -> dict[str, float]:
        if "environmentalism" in prompt or "Democrat" in prompt:
            return {" 9\n": 1.0}
        if "Republican" in prompt:
            return {" 2\n": 1.0}
        return {" 6\n": 1.0}

    path = write_experiment(tmp_path, personas={"generate": 2, "screen": True})
    model = ScriptedModel(reply=reply, continuations=scores)
    result = run(path, tmp_path / "runs", model)
    personas = yaml.safe_load(RunFolder(tmp_path / "runs" / "gen").personas.read_text())
    assert not any("environmentalism" in p["background"] for p in personas["personas"])
    assert personas["screen"]["redrawn"] == 1 and personas["screen"]["still_wrong"] == 0
    store = Store(RunFolder(tmp_path / "runs" / "gen").db)
    versions = store.get_run(result.run_id).versions  # type: ignore[attr-defined]
    assert versions["persona_screen"]["on"] is True
    assert versions["persona_screen"]["redrawn"] == 1
    assert result.fidelity_ok is True  # type: ignore[attr-defined]


def test_the_screen_is_off_by_default(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    result = run(path, tmp_path / "runs", StoryModel())
    store = Store(RunFolder(tmp_path / "runs" / "gen").db)
    versions = store.get_run(result.run_id).versions  # type: ignore[attr-defined]
    assert versions["persona_screen"] == {"on": False}
    assert versions["prompt_formats"]["republican"] == "transcript"
