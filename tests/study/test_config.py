"""Study config validation and the shipped example."""

from __future__ import annotations

from pathlib import Path

import pytest

from stancelab.engine._errors import ConfigError
from stancelab.study._config import Condition, load_study

from .conftest import config_dict

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "study.yaml"


def test_example_config_loads() -> None:
    config = load_study(EXAMPLE)
    assert set(config.conditions) == {Condition.STANDARD, Condition.PERSONALISED, Condition.STATIC}
    assert all(t.statements for t in config.topics)
    assert config.turns.min <= config.turns.max
    assert config.stance_item.scale().midpoint == 4.0  # the bipolar agreement item
    assert all(t.position for t in config.topics)  # each topic names what is agreed with


def test_bare_model_name_becomes_model_config() -> None:
    assert load_study(config_dict(model="qwen2.5-coder-0.5b")).model.name == "qwen2.5-coder-0.5b"
    assert load_study(config_dict(model={"name": "x.gguf", "parallel": 2})).model.parallel == 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"turns": {"min": 5, "max": 2}}, "turns: Value error, turns.max (2) is below"),
        ({"conditions": ["static"], "topics": [{"name": "x"}]}, "needs statements"),
        ({"conditions": ["standard", "standard"]}, "distinct"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"conditions": ["chatty"]}, "conditions.0"),
        ({"questions": {"stance": "How about {mood}?"}}, "unknown field(s) ['mood']"),
        ({"study": "has spaces"}, "study: String should match pattern"),
    ],
)
def test_invalid_configs_give_one_line_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_study(config_dict(**overrides))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read study config"):
        load_study(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_study(bad)
