"""Shared fixtures: the real embedded engine is started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stancelab.engine._llamacpp import LlamaCppEngine, load_engine


@pytest.fixture(scope="session")
def small_engine() -> Iterator[LlamaCppEngine]:
    """SmolLM2-135M in the in-process llama.cpp engine (installed from PyPI)."""
    engine = load_engine("smollm2-135m", n_parallel=4, ctx_per_slot=2048)
    yield engine
    engine.close()


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep tests from writing outside their temp folders, except the shared model cache."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


# Fixtures that bring a slow real part with them, and the marker each one implies, so
# `make test-fast` (-m "not engine and not training and not postgres and not browser")
# leaves them out without every test file having to say so.
SLOW_FIXTURES = {
    "small_engine": "engine",
    "smol_base": "training",
    "random_adapter": "training",
    "postgres_url": "postgres",
    "browser": "browser",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = SLOW_FIXTURES.get(fixture)
            if marker is not None:
                item.add_marker(marker)
