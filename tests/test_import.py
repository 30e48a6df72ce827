"""A light core: ``import stancelab`` and reading a finished run load neither the study's
web app nor an engine, nor the plotting and statistics stacks."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import stancelab as sl

HEAVY = (
    "fastapi",
    "uvicorn",
    "matplotlib",
    "scipy",
    "statsmodels",
    "xllamacpp",
    "torch",
    "transformers",
)

LOADED = f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
PACKAGES = (
    "stancelab.engine",
    "stancelab.engine.openai",
    "stancelab.conversation",
    "stancelab.debates",
    "stancelab.tuning",
    "stancelab.study",
)
IMPORT = "import sys\nimport stancelab\n" + "".join(f"import {p}\n" for p in PACKAGES) + LOADED
READ_A_RUN = (
    "import sys\nimport stancelab\nrun = stancelab.open_run(sys.argv[1])\n"
    "assert len(run.means()) > 0 and len(run.turns()) > 0\n" + LOADED
)


def loaded_after(code: str, *args: str) -> str:
    """The heavy packages a fresh interpreter holds after running ``code``, importing
    this stancelab (the one under test, wherever the working folder is)."""
    source = str(Path(sl.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_and_reading_a_run_load_no_heavy_package(tmp_path: Path) -> None:
    run = sl.debate(
        "racism",
        ["republican", "default"],
        iterations=2,
        model={"name": "scripted", "backend": "fake"},
        out=tmp_path,
    )
    assert run.folder is not None
    assert loaded_after(IMPORT) == "[]"
    assert loaded_after(READ_A_RUN, str(run.folder)) == "[]"


def test_every_public_name_resolves_and_is_listed() -> None:
    for name in sl.__all__:
        assert getattr(sl, name) is not None
    assert set(sl.__all__) <= set(dir(sl))
    # Classes go under their own names, so tracebacks and docs name one thing.
    assert sl.ExperimentConfig.__name__ == "ExperimentConfig"
    assert sl.StudyConfig.__name__ == "StudyConfig"
    try:
        sl.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_name'" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_exports_its_listed_names_from_private_modules(package: str) -> None:
    module = importlib.import_module(package)
    sources = vars(module)["_SOURCES"]
    assert sorted(module.__all__) == sorted(sources)  # kept in step with the sources
    for name in module.__all__:
        origin, attribute = sources[name]
        assert origin.rpartition(".")[2].startswith("_"), f"{package}.{name} from {origin}"
        assert getattr(module, name) is getattr(importlib.import_module(origin), attribute)
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'nothing'"):
        _ = module.nothing


@pytest.mark.parametrize("old", sorted(vars(sl)["_DEPRECATED"]))
def test_deprecated_top_level_names_warn_once_and_still_work(old: str) -> None:
    module, attribute, instead = vars(sl)["_DEPRECATED"][old]
    vars(sl).pop(old, None)  # as if never used in this process
    with pytest.warns(DeprecationWarning, match=f"stancelab.{old} is deprecated.*use {instead}"):
        value = getattr(sl, old)
    assert value is getattr(importlib.import_module(module), attribute)
    assert old not in sl.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(sl, old) is value  # once


# Module paths the 0.3 docs, READMEs and CHANGELOG sent users to, and a name each held.
OLD_PATHS = [
    ("stancelab.study.exports", "export_study", "stancelab.study"),
    ("stancelab.study.simulate", "simulate", "stancelab.study"),
    ("stancelab.study.reply_stance", "reply_stance_frame", "stancelab.study"),
    ("stancelab.study.config", "StudyConfig", "stancelab.study"),
    ("stancelab.engine.factory", "open_model", "stancelab.engine"),
    ("stancelab.engine.errors", "ConfigError", "stancelab.engine"),
    ("stancelab.engine.openai_compat", "NoLogprobsError", "stancelab.engine"),
    ("stancelab.engine.fake", "ScriptedModel", "stancelab.engine"),
    ("stancelab.conversation.survey", "ask", "stancelab.conversation"),
    ("stancelab.conversation.personas", "Persona", "stancelab.conversation"),
    ("stancelab.debates.store", "Store", "stancelab.debates"),
    ("stancelab.debates.analysis", "attitude_frame", "stancelab.debates"),
    ("stancelab.debates.runner", "run_experiment", "stancelab.debates"),
    ("stancelab.debates.experiment", "load_experiment", "stancelab.debates"),
    ("stancelab.tuning.pipeline", "run_finetune", "stancelab.tuning"),
    ("stancelab.tuning.config", "FinetuneConfig", "stancelab.tuning"),
    ("stancelab.tuning.learning", "loss_curve", "stancelab.tuning"),
    ("stancelab.tuning.labelled", "labelled_rows", "stancelab.tuning"),
]


@pytest.mark.parametrize(("old", "name", "package"), OLD_PATHS)
def test_old_module_paths_warn_and_give_the_same_objects(old: str, name: str, package: str) -> None:
    sys.modules.pop(old, None)  # as if never imported in this process
    try:
        with pytest.warns(DeprecationWarning, match=f"{old} is private since 0.4; import .*{name}"):
            module = importlib.import_module(old)
        private = importlib.import_module(f"{package}._{old.rpartition('.')[2]}")
        assert module is private  # the same module: same objects, same patch targets
        assert getattr(module, name) is getattr(importlib.import_module(package), name)
    finally:
        sys.modules.pop(old, None)


def test_a_module_that_never_existed_is_still_missing() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("stancelab.study.no_such_module")
