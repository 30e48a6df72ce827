"""A light core: ``import stancelab`` and reading a finished run load neither the study's
web app nor an engine, nor the plotting and statistics stacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
IMPORT = "import sys\nimport stancelab\n" + LOADED
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
    assert sl.Experiment.__name__ == "ExperimentConfig"  # exported under its public name
    try:
        sl.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no attribute 'no_such_name'" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
