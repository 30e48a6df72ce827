"""Hugging Face transformers backend, for models that are not GGUF files.

Loads a local model folder (``save_pretrained`` layout) or, only when the options allow
the network (``allow_download: true``), a hub id. By default every load passes
``local_files_only=True``, so nothing contacts a hub and a missing folder fails at once
with one line. torch and transformers are optional dependencies (extra ``hf``).

``generate`` samples one request at a time with its own seeded generator, so a reply
depends only on its request, not on what else was in the batch. ``next_tokens`` runs
prompts in right-padded batches: with a causal mask the padding after a prompt cannot
change its last position's logits.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.engine._base import (
    Generation,
    GenerationRequest,
    LanguageModel,
    Prompt,
    TopTokens,
)
from stancelab.engine._errors import ConfigError, EngineError, ModelError

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch  # noqa: PLC0415 - lazy: torch is heavy to import
        import transformers  # noqa: PLC0415 - lazy: transformers is heavy to import
    except ImportError as exc:
        raise ConfigError(
            "backend 'transformers' needs torch and transformers: "
            "pip install torch==2.13.0 transformers==5.23.0 (or stancelab[hf])"
        ) from exc
    return torch, transformers


def folder_digest(folder: Path) -> str:
    """sha256 over the config files' contents and every file's name and size.

    Hashing the weights themselves would read gigabytes on every start; names, sizes
    and the exact configuration identify a checkpoint well enough for a run record.
    """
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json" and path.stat().st_size < 50_000_000:
            digest.update(path.read_bytes())
    return digest.hexdigest()


class TransformersModel(LanguageModel):
    """A causal language model run by transformers in this process."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        source: str,
        batch_size: int = 8,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.torch, _ = _import_torch()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.batch_size = max(1, batch_size)
        self.device = next(model.parameters()).device
        self._info = info or {}
        # One forward pass at a time: the model is shared and torch already uses all cores.
        self._lock = threading.Lock()
        eos = model.generation_config.eos_token_id if model.generation_config else None
        if eos is None:
            eos = tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self._pad = tokenizer.pad_token_id
        if self._pad is None:
            self._pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def describe(self) -> dict[str, Any]:
        """Model name, source and digest, and the versions that ran it."""
        import transformers  # noqa: PLC0415 - lazy: transformers is heavy to import

        return {
            "name": self.name,
            "engine": "transformers",
            "source": self.source,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "torch": self.torch.__version__,
            "transformers": transformers.__version__,
            **self._info,
        }

    # ------------------------------------------------------------ capabilities

    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template to render messages with."""
        return bool(self.tokenizer.chat_template)

    def logprobs_cap(self) -> int:
        """The whole next-token softmax is computed: up to the vocabulary."""
        return len(self.tokenizer)

    # ------------------------------------------------------------ tokenising

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a transcript, or of chat messages through the chat template."""
        if isinstance(prompt, str):
            return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
        if not self.has_chat_template():
            raise EngineError(f"{self.name} has no chat template; give a transcript prompt")
        continues = bool(prompt) and prompt[-1]["role"] == "assistant"
        text = self.tokenizer.apply_chat_template(
            list(prompt),
            tokenize=False,
            add_generation_prompt=not continues,
            continue_final_message=continues,
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _token_texts(self, last_id: int | None, ids: Sequence[int]) -> list[str]:
        """Text each candidate adds after the prompt, leading space included.

        SentencePiece tokenizers drop a token's leading space when it is decoded alone,
        so each candidate is decoded after the prompt's last token and that part is cut.
        """
        if last_id is None:
            return [self.tokenizer.decode([i]) for i in ids]
        anchor = self.tokenizer.decode([last_id])
        both = self.tokenizer.batch_decode([[last_id, i] for i in ids])
        return [
            text[len(anchor) :] if text.startswith(anchor) else self.tokenizer.decode([i])
            for i, text in zip(ids, both, strict=True)
        ]

    # ------------------------------------------------------------ generation

    def _generate_one(self, request: GenerationRequest) -> Generation:
        torch = self.torch
        ids = self.encode(request.prompt)
        if not ids:
            raise EngineError("empty prompt")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(request.seed if request.seed is not None else 0)
        start = time.perf_counter()
        out_ids: list[int] = []
        text = ""
        finish = "length"
        with torch.inference_mode():
            input_ids = torch.tensor([ids], device=self.device)
            result = self.model(input_ids=input_ids, use_cache=True)
            for _ in range(request.max_tokens):
                logits = result.logits[0, -1].float()
                if request.temperature <= 0:
                    token = int(torch.argmax(logits))
                else:
                    probs = torch.softmax(logits / request.temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=generator))
                if token in self._eos:
                    finish = "stop"
                    break
                out_ids.append(token)
                text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
                cut = min((text.find(s) for s in request.stop if s and s in text), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    finish = "stop"
                    break
                result = self.model(
                    input_ids=torch.tensor([[token]], device=self.device),
                    past_key_values=result.past_key_values,
                    use_cache=True,
                )
        return Generation(
            text=text,
            prompt_tokens=len(ids),
            completion_tokens=len(out_ids),
            latency_s=time.perf_counter() - start,
            finish_reason=finish,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Sample each request with its own seed (temperature 0: greedy), honouring stops."""
        out = []
        with self._lock:
            for request in requests:
                gen = self._generate_one(request)
                self._account(gen.prompt_tokens, gen.completion_tokens)
                out.append(gen)
        return out

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Top-k of the next-token softmax after each prompt, in right-padded batches."""
        torch = self.torch
        encoded = [self.encode(p) for p in prompts]
        if any(not ids for ids in encoded):
            raise EngineError("empty prompt")
        out: list[TopTokens] = []
        with self._lock, torch.inference_mode():
            for lo in range(0, len(encoded), self.batch_size):
                batch = encoded[lo : lo + self.batch_size]
                start = time.perf_counter()
                width = max(len(ids) for ids in batch)
                input_ids = torch.full((len(batch), width), self._pad, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, ids in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                logits = self.model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).logits
                last = torch.tensor([len(ids) - 1 for ids in batch], device=self.device)
                rows = logits[torch.arange(len(batch), device=self.device), last].float()
                logp = torch.log_softmax(rows, dim=-1)
                values, indices = torch.topk(logp, min(top_k, logp.shape[-1]), dim=-1)
                latency = (time.perf_counter() - start) / len(batch)
                for row, ids in enumerate(batch):
                    texts = self._token_texts(ids[-1], indices[row].tolist())
                    tokens = list(zip(texts, values[row].tolist(), strict=True))
                    out.append(TopTokens(tokens=tokens, prompt_tokens=len(ids), latency_s=latency))
                    self._account(len(ids), 0)
        return out

    def _account(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.stats.requests += 1
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens


def load_transformers(
    name: str,
    parallel: int = 8,
    allow_download: bool = False,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
    batch_size: int | None = None,
) -> TransformersModel:
    """Load a local folder, or a hub id when ``allow_download`` is true."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    folder = Path(name).expanduser()
    local = folder.is_dir()
    if not local and not allow_download:
        raise ModelError(
            f"model folder {folder} does not exist; give a folder saved with save_pretrained, "
            f"or set options.allow_download: true to fetch the hub id {name!r}"
        )
    if local and not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a transformers model folder (no config.json)")
    torch, transformers = _import_torch()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    source = str(folder.resolve()) if local else name
    common: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        # Offline unless the user allowed the network: a local folder never needs it.
        "local_files_only": not allow_download,
    }
    kwargs: dict[str, Any] = dict(common)
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if load_in_8bit:
        # The paper ran Mistral 7B in 8-bit; bitsandbytes needs a CUDA GPU.
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = "auto"
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
        model = transformers.AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"transformers could not load {source}: {first}") from exc
    if not load_in_8bit:
        model = model.to(device)
    model.eval()
    info: dict[str, Any] = {"revision": revision, "allow_download": allow_download}
    if local:
        info["folder_sha256"] = folder_digest(folder)
        config = json.loads((folder / "config.json").read_text())
        info["architectures"] = config.get("architectures")
    else:
        info["commit"] = getattr(model.config, "_commit_hash", None)
    display = folder.name if local else name
    return TransformersModel(
        model, tokenizer, name=display, source=source, batch_size=batch_size or parallel, info=info
    )
