"""The one config base: one-line errors for files and fields, one rule for relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import Field

from stancelab.conversation._config import (
    RelativePath,
    StrictModel,
    load_config,
    load_yaml_mapping,
    resolve_path,
)
from stancelab.debates._experiment import load_experiment
from stancelab.engine._errors import ConfigError
from stancelab.tuning._config import FinetuneConfig


class Section(StrictModel):
    count: int = Field(ge=1)


class Settings(StrictModel):
    name: str
    section: Section
    data: RelativePath | None = None


def test_file_problems_are_one_line_naming_the_file(tmp_path: Path) -> None:
    cases = {
        tmp_path / "missing.yaml": "cannot read thing {path}: it does not exist",
        tmp_path: "cannot read thing {path}: Is a directory",
        tmp_path / "list.yaml": "thing {path} must be a mapping of settings",
        tmp_path / "bad.yaml": "thing {path} is not valid YAML: expected ',' or ']', but got "
        "'<stream end>' (line 2, column 1)",
    }
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    for path, message in cases.items():
        with pytest.raises(ConfigError) as info:
            load_yaml_mapping(path, "thing")
        assert str(info.value) == message.format(path=path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml_mapping(empty, "thing") == ({}, tmp_path.resolve())
    assert load_yaml_mapping({"a": 1}, "thing") == ({"a": 1}, None)


def test_field_problems_name_the_file_or_the_config(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "section": {"count": 0}, "extra": 1}))
    with pytest.raises(ConfigError) as info:
        load_config(Settings, path, "settings")
    assert str(info.value) == (
        f"{path}: section.count: Input should be greater than or equal to 1 (and 1 more)"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Settings, {"name": "x"}, "settings")
    assert str(info.value) == "settings: section: Field required"


def test_relative_paths_resolve_against_the_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project" / "configs"
    project.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # run from another folder, naming the file relatively
    path = project / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "section": {"count": 1}, "data": "d.csv"}))
    relative = Path("..") / "project" / "configs" / "s.yaml"
    assert load_config(Settings, relative, "settings").data == project / "d.csv"
    # Built in Python: relative to the working folder.
    built = load_config(Settings, {"name": "x", "section": {"count": 1}, "data": "d.csv"}, "s")
    assert built.data == elsewhere / "d.csv"
    assert resolve_path("d.csv", project) == project / "d.csv"
    assert resolve_path(tmp_path / "abs.csv", project) == tmp_path / "abs.csv"
    assert resolve_path("~/x", None) == Path.home() / "x"


def test_every_config_follows_the_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    (sub / "ft.yaml").write_text(
        yaml.safe_dump(
            {
                "output_dir": "runs",
                "questions": {"file": "bank.yaml"},
                "debates": {"personas": "people.yaml"},
                "evaluation": {"data_dir": "bench"},
            }
        )
    )
    tuned = FinetuneConfig.load(Path("sub/ft.yaml"))
    assert tuned.output_dir == sub / "runs"
    assert tuned.questions.file == sub / "bank.yaml"
    assert tuned.debates is not None and tuned.debates.personas == sub / "people.yaml"
    assert tuned.evaluation is not None and tuned.evaluation.data_dir == sub / "bench"
    # Built in Python, the default output folder is in the working folder.
    assert FinetuneConfig().output_dir == tmp_path / "finetune-runs"
    experiment = {
        "name": "t",
        "model": {"name": "smollm2-135m", "adapters": ["tuned.gguf"]},
        "topics": ["racism"],
        "setups": ["two-way"],
        "repetitions": 1,
        "iterations": 1,
        "personas": {"file": "p.yaml"},
        "prompts": {"folder": "prompts"},
    }
    (sub / "exp.yaml").write_text(yaml.safe_dump(experiment))
    config = load_experiment(Path("sub/exp.yaml"))
    assert config.personas.file == sub / "p.yaml"
    assert config.prompts.folder == sub / "prompts"
    assert config.model.adapters[0].path == sub / "tuned.gguf"
    assert load_experiment(experiment).personas.file == tmp_path / "p.yaml"
    with pytest.raises(ConfigError, match=r"^experiment: repetitions: Input should be"):
        load_experiment({**experiment, "repetitions": 0})
