"""Shared fixtures: the real embedded engine is started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stancelab.engine.llamacpp import LlamaCppEngine, load_engine


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
