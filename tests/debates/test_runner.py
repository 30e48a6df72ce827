"""The experiment runner: concurrency, resume without recomputation, bad run folders."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from stancelab.conversation._personas import Persona, PersonaSet
from stancelab.debates._experiment import load_experiment
from stancelab.debates._runner import ModelPool, RunFolder, experiment_status, run_experiment
from stancelab.engine._base import Generation, GenerationRequest, LanguageModel
from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import ModelConfig
from stancelab.engine._fake import ScriptedModel


def scripted_reply(request: GenerationRequest) -> str:
    # Deterministic in the prompt and the seed, like a seeded engine.
    assert isinstance(request.prompt, str)
    return f" Point {(request.seed or 0) % 997} after {request.prompt.count(chr(10))} lines."


def continuations(prompt: str) -> dict[str, float]:
    score = 3 + (len(prompt) % 5)
    return {f" {score}\n": 0.7, " 10\n": 0.3}


def write_experiment(tmp_path: Path, **changes: object) -> Path:
    personas = PersonaSet(
        [Persona(f"R{i}", "republican", f"You are R{i}, a Republican.") for i in range(3)]
        + [Persona(f"D{i}", "democrat", f"You are D{i}, a Democrat.") for i in range(3)],
        {"source": "test"},
    )
    personas.save(tmp_path / "personas.yaml")
    data = {
        "name": "exp",
        "model": "fake",
        "topics": ["climate change", "racism"],
        "setups": ["three-way", "rr"],
        "repetitions": 3,
        "iterations": 4,
        "personas": {"file": "personas.yaml"},
        "workers": 4,
        **changes,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Crash(Exception):
    """Raised by the crashing model to simulate a dying process."""


class CountingModel(ScriptedModel):
    """Counts requests; optionally crashes after a number of generation requests."""

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__(reply=scripted_reply, continuations=continuations)
        self.crash_after = crash_after
        self.turn_requests = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.turn_requests += len(requests)
        if self.crash_after is not None and self.turn_requests > self.crash_after:
            raise Crash("simulated crash")
        return super().generate(requests)


def run(path: Path, out: Path, model: LanguageModel) -> object:
    config = load_experiment(path)
    pool = ModelPool(opener=lambda cfg: model)
    return run_experiment(config, path.read_text(), out, log=lambda m: None, models=pool)


def dump(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    con = sqlite3.connect(db)
    messages = con.execute(
        "select d.key, m.iteration, m.speaker, m.text from messages m join debates d "
        "on d.id = m.debate_id order by d.key, m.iteration"
    ).fetchall()
    surveys = con.execute(
        "select d.key, s.iteration, s.agent_index, s.mode, round(s.score, 9) from "
        "survey_answers s join debates d on d.id = s.debate_id "
        "order by d.key, s.iteration, s.agent_index, s.mode"
    ).fetchall()
    return messages, surveys


def test_full_run_stores_every_turn_and_survey(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    result = run(path, tmp_path / "runs", CountingModel())
    messages, surveys = dump(tmp_path / "runs" / "exp" / "stancelab.db")
    debates = 2 * 2 * 3
    assert result.debates == debates and result.failed == 0  # type: ignore[attr-defined]
    assert len(messages) == debates * 4
    # three-way: surveys at 0 and 3 for 3 agents; rr: at 0, 2, 4 for 2 agents
    assert len(surveys) == 2 * 3 * (2 * 3) + 2 * 3 * (3 * 2)
    status = experiment_status(RunFolder(tmp_path / "runs" / "exp"))
    assert status["status"] == "complete"
    assert all(c["complete"] == 3 for c in status["cells"].values())


def test_resume_after_crash_equals_uninterrupted_run(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    reference = CountingModel()
    run(path, tmp_path / "ref", reference)
    expected = dump(tmp_path / "ref" / "exp" / "stancelab.db")

    with pytest.raises(Crash):
        run(path, tmp_path / "runs", CountingModel(crash_after=20))
    db = tmp_path / "runs" / "exp" / "stancelab.db"
    partial_messages, _ = dump(db)
    assert 0 < len(partial_messages) < len(expected[0])
    con = sqlite3.connect(db)
    assert con.execute("select status from runs").fetchone()[0] == "failed"

    resumed = CountingModel()
    result = run(path, tmp_path / "runs", resumed)
    assert result.resumed  # type: ignore[attr-defined]
    assert dump(db) == expected
    # Nothing finished before the crash was asked again.
    assert resumed.turn_requests == len(expected[0]) - len(partial_messages)
    assert con.execute("select status from runs").fetchone()[0] == "complete"
    # A second resume has nothing left to do.
    again = CountingModel()
    run(path, tmp_path / "runs", again)
    assert again.turn_requests == 0 and dump(db) == expected


def test_changed_experiment_or_foreign_version_is_refused(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    run(path, tmp_path / "runs", CountingModel())
    changed = write_experiment(tmp_path, iterations=6)
    with pytest.raises(ConfigError, match="holds a different version of experiment"):
        run(changed, tmp_path / "runs", CountingModel())
    meta_path = tmp_path / "runs" / "exp" / "run.json"
    meta = json.loads(meta_path.read_text())
    meta["schema_version"] = 0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="rather than mix results"):
        run(path, tmp_path / "runs", CountingModel())


def test_persona_file_with_empty_story_is_refused_before_any_call(tmp_path: Path) -> None:
    path = write_experiment(tmp_path)
    (tmp_path / "personas.yaml").write_text(
        yaml.safe_dump({"personas": [{"name": "A", "kind": "republican", "background": ""}]})
    )
    model = CountingModel()
    with pytest.raises(ConfigError, match="empty background story"):
        run(path, tmp_path / "runs", model)
    assert model.turn_requests == 0 and not model.scored_prompts


def test_fidelity_check_flags_a_model_that_cannot_hold_personas(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, iterations=0)
    logs: list[str] = []
    config = load_experiment(path)
    flat = ScriptedModel(continuations=lambda p: {" 5\n": 0.5, " 6\n": 0.5})
    result = run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs",
        log=logs.append,
        models=ModelPool(opener=lambda cfg: flat),
    )
    assert result.fidelity_ok is False
    assert any("does not hold its personas" in line for line in logs)

    def partisan(prompt: str) -> dict[str, float]:
        if "Republican" in prompt:
            high = "racism" not in prompt and "climate" not in prompt
            return {" 9\n" if high else " 1\n": 1.0}
        if "Democrat" in prompt:
            return {" 9\n": 1.0}
        return {" 6\n": 1.0}

    holding = ScriptedModel(continuations=partisan)
    result = run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs2",
        log=logs.append,
        models=ModelPool(opener=lambda cfg: holding),
    )
    assert result.fidelity_ok is True
    assert all(t.separation == pytest.approx(8.0) for t in result.fidelity)


def test_model_per_agent_kind(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path,
        models={"default": "other"},
        setups=["three-way"],
        repetitions=1,
        topics=["racism"],
    )
    main, other = CountingModel(), CountingModel()

    def opener(cfg: ModelConfig) -> LanguageModel:
        return other if cfg.name == "other" else main

    config = load_experiment(path)
    run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs",
        log=lambda m: None,
        models=ModelPool(opener=opener),
    )
    assert other.turn_requests > 0 and main.turn_requests > 0
    assert all("You are an American." in str(r.prompt) for r in other.generated)
    assert not any("You are an American." in str(r.prompt) for r in main.generated)


class ClosableModel(CountingModel):
    """Counts requests and remembers being closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_conditions_run_one_after_another_on_their_own_models(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path,
        setups=["three-way"],
        topics=["racism"],
        repetitions=2,
        conditions=[{"name": "base"}, {"name": "tuned", "model": "fake-tuned"}],
    )
    engines: dict[str, ClosableModel] = {}
    order: list[str] = []

    def opener(cfg: ModelConfig) -> LanguageModel:
        label = "tuned" if cfg.name == "fake-tuned" else "base"
        assert all(e.closed for k, e in engines.items() if k != label) or label == "base"
        order.append(label)
        engines[label] = ClosableModel()
        return engines[label]

    config = load_experiment(path)
    result = run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs",
        log=lambda m: None,
        models=ModelPool(opener=opener),
    )
    assert result.debates == 4 and result.failed == 0
    assert order == ["base", "tuned"]
    assert engines["base"].closed  # released before the tuned model was opened
    assert engines["base"].turn_requests == engines["tuned"].turn_requests == 2 * 4
    # The released base engine still counts (the fake counts replies and scoring requests).
    assert engines["base"].stats.requests > 8 and engines["tuned"].stats.requests > 8
    assert result.stats["requests"] == sum(e.stats.requests for e in engines.values())
    con = sqlite3.connect(tmp_path / "runs" / "exp" / "stancelab.db")
    rows = con.execute("select condition, count(*) from debates group by condition").fetchall()
    assert sorted(rows) == [("base", 2), ("tuned", 2)]
    status = experiment_status(RunFolder(tmp_path / "runs" / "exp"))
    assert set(status["cells"]) == {"base · racism · three-way", "tuned · racism · three-way"}


def test_resume_in_a_later_condition_recomputes_nothing(tmp_path: Path) -> None:
    path = write_experiment(
        tmp_path,
        setups=["two-way"],
        topics=["racism"],
        repetitions=2,
        conditions=[{"name": "base"}, {"name": "tuned", "model": "fake-tuned"}],
    )
    config = load_experiment(path)
    # Dies in the second condition, after all 8 base turns and 3 tuned ones.
    dying = CountingModel(crash_after=3)
    base = CountingModel()
    with pytest.raises(Crash):
        run_experiment(
            config,
            path.read_text(),
            tmp_path / "runs",
            log=lambda m: None,
            models=ModelPool(opener=lambda c: dying if c.name == "fake-tuned" else base),
        )
    assert base.turn_requests == 8
    fresh_base, fresh_tuned = CountingModel(), CountingModel()
    run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs",
        log=lambda m: None,
        models=ModelPool(opener=lambda c: fresh_tuned if c.name == "fake-tuned" else fresh_base),
    )
    assert fresh_base.turn_requests == 0  # the base condition was finished: nothing redone
    assert fresh_tuned.turn_requests == 8 - 3
