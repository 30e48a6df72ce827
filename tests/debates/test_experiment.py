"""Experiment files: validation with clear messages, and persona assignment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stancelab.conversation._personas import BUILTIN_PERSONAS, Persona
from stancelab.debates._experiment import SETUP_PRESETS, load_experiment, plan_debates
from stancelab.engine._errors import ConfigError

BASE = {
    "name": "t",
    "model": "smollm2-135m",
    "topics": ["climate change", {"name": "housing", "big_problem_for": "democrat"}],
    "setups": ["three-way", "rr", {"name": "custom", "agents": ["democrat", "default"]}],
    "repetitions": 2,
    "iterations": 3,
    "personas": {"file": "p.yaml"},
}


def write(tmp_path: Path, **changes: object) -> Path:
    data = {**BASE, **changes}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_valid_file_and_presets(tmp_path: Path) -> None:
    config = load_experiment(write(tmp_path))
    assert [s.name for s in config.setups] == ["three-way", "rr", "custom"]
    assert config.setups[0].agents == list(SETUP_PRESETS["three-way"])
    assert config.topics[0].big_problem_for == "democrat"  # paper topic
    assert config.model.name == "smollm2-135m"
    assert config.personas.file == tmp_path / "p.yaml"  # relative to the file
    assert config.fingerprint() == load_experiment(write(tmp_path)).fingerprint()
    assert config.fingerprint() != load_experiment(write(tmp_path, seed=5)).fingerprint()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"repetitons": 3}, "repetitons: Extra inputs are not permitted"),
        ({"repetitions": 0}, "repetitions: Input should be greater than or equal to 1"),
        ({"iterations": "many"}, "iterations: Input should be a valid integer"),
        ({"setups": [{"name": "solo", "agents": ["default"]}]}, "at least two agents"),
        ({"setups": ["four-way"]}, "unknown setup 'four-way'"),
        ({"setups": [{"name": "x", "agents": ["republican", "green"]}]}, "unknown agent kind"),
        ({"topics": []}, "give at least one topic"),
        ({"survey": {"modes": ["vibes"]}}, "survey.modes.0"),
        ({"name": "bad name!"}, "name: String should match pattern"),
        ({"personas": {}}, "give personas.file, personas.generate, or both"),
        ({"models": {"green": "smollm2-135m"}}, "unknown agent kind 'green'"),
        ({"personas": {"generate": 1}}, "2 repetitions need 2 distinct republican personas"),
    ],
)
def test_bad_files_name_the_field(tmp_path: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_experiment(write(tmp_path, **changes))
    assert str(info.value).startswith(str(tmp_path / "exp.yaml"))
    assert "\n" not in str(info.value)


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")


def pools(n: int) -> dict[str, list[Persona]]:
    return {
        k: [Persona(f"{k[:3]}{i}", k, f"You are {k} number {i}.") for i in range(n)]
        for k in ("republican", "democrat")
    }


def test_plan_assigns_distinct_personas(tmp_path: Path) -> None:
    config = load_experiment(write(tmp_path, repetitions=4))
    plan = plan_debates(config, pools(4), BUILTIN_PERSONAS["default"][0])
    assert len(plan) == 2 * 3 * 4
    for debate in plan:
        names = [p.name for p in debate.personas]
        assert len(set(names)) == len(names)
    rr = [d for d in plan if d.setup == "rr" and d.topic == "climate change"]
    assert len({d.personas[0].name for d in rr}) == 4  # first slot never repeats
    assert len({d.seed for d in plan}) == len(plan)


def test_impossible_designs_are_refused(tmp_path: Path) -> None:
    config = load_experiment(write(tmp_path, repetitions=5))
    with pytest.raises(ConfigError, match="5 repetitions need 5 distinct republican"):
        plan_debates(config, pools(4), BUILTIN_PERSONAS["default"][0])
    with pytest.raises(ConfigError, match="needs 2 republican personas"):
        plan_debates(
            load_experiment(write(tmp_path, repetitions=1)),
            pools(1),
            BUILTIN_PERSONAS["default"][0],
        )
    reuse = load_experiment(
        write(
            tmp_path, repetitions=5, personas={"file": "p.yaml", "reuse_across_repetitions": True}
        )
    )
    assert len(plan_debates(reuse, pools(4), BUILTIN_PERSONAS["default"][0])) == 30


def test_conditions_validate_and_resolve_adapter_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        conditions=[
            {"name": "base"},
            {
                "name": "r8-s0",
                "label": "r=8",
                "model": {"name": "smollm2-135m", "adapters": ["gguf/a.gguf"]},
            },
            {
                "name": "r8-s1",
                "label": "r=8",
                "models": {
                    "default": {
                        "name": "smollm2-135m",
                        "adapters": [{"path": "/abs/b.gguf", "scale": 0.5}],
                    }
                },
            },
        ],
    )
    config = load_experiment(path)
    tuned = config.condition("r8-s0")
    assert tuned.is_tuned() and tuned.group == "r=8"
    assert not config.condition("base").is_tuned()
    assert config.model_for("democrat", "r8-s0").adapters[0].path == tmp_path / "gguf/a.gguf"
    # Per-kind condition model wins; other kinds fall back to the experiment's model.
    assert config.model_for("default", "r8-s1").adapters[0].scale == 0.5
    assert config.model_for("republican", "r8-s1") == config.model
    assert config.model_for("republican", "base") == config.model

    with pytest.raises(ConfigError, match="conditions: names must be distinct"):
        load_experiment(write(tmp_path, conditions=[{"name": "a"}, {"name": "a"}]))
    with pytest.raises(ConfigError, match="unknown agent kind 'robot'"):
        load_experiment(write(tmp_path, conditions=[{"name": "a", "models": {"robot": "x"}}]))
    with pytest.raises(ConfigError, match=r"conditions\.0\.name"):
        load_experiment(write(tmp_path, conditions=[{"name": "a b"}]))


def test_conditions_share_personas_and_seeds(tmp_path: Path) -> None:
    config = load_experiment(write(tmp_path, conditions=[{"name": "base"}, {"name": "tuned"}]))
    pools = {
        "republican": [Persona(f"R{i}", "republican", "r") for i in range(4)],
        "democrat": [Persona(f"D{i}", "democrat", "d") for i in range(4)],
    }
    plan = plan_debates(config, pools, BUILTIN_PERSONAS["default"][0])
    per_condition = len(config.topics) * len(config.setups) * config.repetitions
    assert len(plan) == 2 * per_condition
    base, tuned = plan[:per_condition], plan[per_condition:]
    assert {p.condition for p in base} == {"base"} and {p.condition for p in tuned} == {"tuned"}
    for b, t in zip(base, tuned, strict=True):
        assert (b.topic, b.setup, b.repetition, b.personas, b.seed) == (
            t.topic,
            t.setup,
            t.repetition,
            t.personas,
            t.seed,
        )
        assert t.key == f"tuned|{b.key.removeprefix('base|')}"


def test_adapters_need_the_llamacpp_backend() -> None:
    from stancelab.engine._factory import ModelConfig, open_model

    config = ModelConfig.model_validate(
        {
            "name": "m",
            "backend": "openai",
            "base_urls": ["http://127.0.0.1:9"],
            "adapters": ["a.gguf"],
        }
    )
    with pytest.raises(ConfigError, match="adapters need backend: llamacpp"):
        open_model(config)


@pytest.mark.parametrize("name", ["quick.yaml", "paper.yaml", "tuned-vs-base.yaml"])
def test_shipped_example_files_are_valid(name: str) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    config = load_experiment(examples / name)
    assert config.repetitions >= 1 and config.topics


def test_fingerprint_follows_adapter_content_not_location(tmp_path: Path) -> None:
    def fingerprint(folder: Path, content: bytes) -> str:
        folder.mkdir(exist_ok=True)
        (folder / "tuned.gguf").write_bytes(content)
        conditions = [
            {"name": "base"},
            {"name": "tuned", "model": {"name": "smollm2-135m", "adapters": ["tuned.gguf"]}},
        ]
        return load_experiment(write(folder, conditions=conditions)).fingerprint()

    here = fingerprint(tmp_path / "a", b"GGUF adapter one")
    assert fingerprint(tmp_path / "moved", b"GGUF adapter one") == here  # moved project
    assert fingerprint(tmp_path / "a", b"GGUF adapter two!") != here  # retrained in place
