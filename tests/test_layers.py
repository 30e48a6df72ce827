"""The layers stay layers: each package imports only the ones below it, and nothing
imports a module that does not exist (mypy would not see a lazy one) or an old public
path that only the deprecation finder still answers."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from stancelab._lazy import is_moved

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "stancelab"

# What each part may import from stancelab (besides itself and the leaves _version and
# _lazy, the lazy-name helper every package __init__ uses).
ALLOWED = {
    "engine": {"engine"},
    "conversation": {"engine", "conversation"},
    "debates": {"engine", "conversation", "debates"},
    # The intervention re-runs the debates on the tuned model.
    "tuning": {"engine", "conversation", "debates", "tuning"},
    "study": {"engine", "conversation", "study"},
    # A paper's replication runs its debates and reads its study's claims; only the
    # top (cli.py, _api.py, __init__.py) imports it. It runs the paper's self-fine-tuning
    # intervention through the tuning pipeline (--tuning), hence tuning.
    "replicate": {"engine", "conversation", "debates", "study", "tuning", "replicate"},
}


def stancelab_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] == "stancelab"]
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below(part: str) -> None:
    wrong = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for line, name in stancelab_imports(path):
            target = name.split(".")[1] if "." in name else ""
            if target not in ALLOWED[part] | {"_version", "_lazy"}:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_every_stancelab_import_names_a_module_that_exists() -> None:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, name in stancelab_imports(path):
            if importlib.util.find_spec(name) is None or is_moved(name):
                missing.append(f"{path.relative_to(PACKAGE)}:{line} imports {name}")
    assert not missing, "\n".join(missing)
