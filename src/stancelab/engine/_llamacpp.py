"""In-process llama.cpp engine through xllamacpp: parallel slots, prefix cache, logprobs,
streamed replies."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from stancelab.engine._adapters import check_adapter_gguf
from stancelab.engine._base import (
    EngineStats,
    Generation,
    GenerationRequest,
    LanguageModel,
    PathRequest,
    Prompt,
    TokenPath,
    TopTokens,
)
from stancelab.engine._errors import ConfigError, EngineError
from stancelab.engine._models import gguf_metadata, model_fingerprint, resolve_model, sha256_file
from stancelab.engine.openai import _codec as codec


def _threads_from_env() -> int:
    value = os.environ.get("STANCELAB_THREADS", "")
    if not value:
        return 0
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"STANCELAB_THREADS must be a positive whole number, got {value!r}")
    return int(value)


# The protocol's "temperature 1.0" is the model's whole distribution, as the paper's
# completion API sampled it; llama.cpp would otherwise cut it to top_k 40, top_p 0.95,
# min_p 0.05 without saying so.
PROTOCOL_SAMPLING: dict[str, float] = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}
SAMPLING_KEYS = frozenset(
    {
        "top_k",
        "top_p",
        "min_p",
        "typical_p",
        "top_n_sigma",
        "repeat_penalty",
        "repeat_last_n",
        "presence_penalty",
        "frequency_penalty",
        "xtc_probability",
        "xtc_threshold",
        "dry_multiplier",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "dynatemp_range",
        "dynatemp_exponent",
    }
)


def sampling_settings(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The sampler settings sent with every generation request, checked by name and type."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - SAMPLING_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown llama.cpp sampling setting(s) {unknown}; known: {sorted(SAMPLING_KEYS)}"
        )
    for key, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"llama.cpp sampling setting {key} must be a number, got {value!r}")
    return {**PROTOCOL_SAMPLING, **overrides}


def idle_cores(sample_s: float = 0.2) -> int:
    """Cores no process is using right now (CPU use sampled for ``sample_s``), at least one.

    llama.cpp's threads meet at a barrier after every graph step, so one thread that
    another process pushes off its core stalls the rest: beside two spinning processes on
    two cores a debate on two threads ran 5.0x slower than alone, where a fair share of
    the CPU costs 2x (benchmarks/throughput.py --busy). Threads only for the idle cores
    keep a busy machine's share fair; on an idle machine this is every core.
    """
    import psutil  # noqa: PLC0415 - lazy: only engines that pick their own threads

    cores = os.cpu_count() or 1
    busy = float(psutil.cpu_percent(interval=sample_s)) / 100
    return max(1, min(cores, round(cores * (1 - busy))))


def engine_params(
    model_path: Path,
    n_parallel: int,
    ctx_per_slot: int,
    threads: int | None,
    cache_ram_mib: int,
    lora_adapters: Sequence[tuple[Path, float]] = (),
    backend_sampling: bool = False,
    poll: int = 0,
) -> Any:
    """llama.cpp settings stancelab uses everywhere: slots, prefix and RAM prompt cache."""
    import xllamacpp  # noqa: PLC0415 - lazy: the llama.cpp engine is heavy to import

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    if lora_adapters:
        # Applied to every request: a tuned model is the base weights plus these deltas.
        params.lora_adapters = [
            xllamacpp.CommonAdapterLoraInfo(str(path), float(scale))
            for path, scale in lora_adapters
        ]
    params.n_parallel = n_parallel
    params.n_ctx = ctx_per_slot * n_parallel
    n_threads = threads or _threads_from_env() or idle_cores()
    params.cpuparams.n_threads = n_threads
    params.cpuparams_batch.n_threads = n_threads
    # llama.cpp's worker threads busy-wait between graph steps (poll 50 of 100 by
    # default); 0 makes them sleep, which measured no worse alone and less bad beside
    # other processes (the thread count above is what makes a busy machine fair).
    if not 0 <= poll <= 100:
        raise ConfigError(f"llama.cpp poll must be 0..100, got {poll}")
    params.cpuparams.poll = poll
    params.cpuparams_batch.poll = poll
    params.cache_ram_mib = cache_ram_mib
    # On a GPU build the server otherwise samples every slot on one CPU thread over the
    # whole vocabulary, which caps batched decoding (requests asking for pre-sampling
    # log-probabilities still sample on the CPU).
    params.sampling.backend_sampling = backend_sampling
    # Server-side defaults too, for clients of the HTTP server that send only temperature.
    params.sampling.top_k = int(PROTOCOL_SAMPLING["top_k"])
    params.sampling.top_p = PROTOCOL_SAMPLING["top_p"]
    params.sampling.min_p = PROTOCOL_SAMPLING["min_p"]
    params.cache_prompt = True
    params.cont_batching = True
    params.warmup = False
    params.verbosity = -1
    return params


class LlamaCppEngine(LanguageModel):
    """llama.cpp's server running inside this process (continuous batching over slots)."""

    def __init__(
        self,
        model_path: Path,
        name: str | None = None,
        n_parallel: int = 4,
        ctx_per_slot: int = 4096,
        threads: int | None = None,
        cache_ram_mib: int = 8192,
        fingerprint: str | None = None,
        lora_adapters: Sequence[tuple[Path, float]] = (),
        backend_sampling: bool = False,
        sampling: dict[str, Any] | None = None,
        poll: int = 0,
    ) -> None:
        self.stats = EngineStats()  # before the worker threads that count into it
        self.sampling = sampling_settings(sampling)
        import xllamacpp  # noqa: PLC0415 - lazy: the llama.cpp engine is heavy to import

        self.name = name or model_path.stem
        self.model_path = model_path
        self.n_parallel = n_parallel
        self.fingerprint = fingerprint
        self.lora_adapters = [(Path(p), float(s)) for p, s in lora_adapters]
        self._gguf = gguf_metadata(model_path)
        params = engine_params(
            model_path,
            n_parallel,
            ctx_per_slot,
            threads,
            cache_ram_mib,
            self.lora_adapters,
            backend_sampling,
            poll,
        )
        n_threads = params.cpuparams.n_threads
        self._settings = {
            "n_parallel": n_parallel,
            "ctx_per_slot": ctx_per_slot,
            "threads": n_threads,
            "cache_ram_mib": cache_ram_mib,
            "backend_sampling": backend_sampling,
            "poll": poll,
            "sampling": self.sampling,
            "xllamacpp": getattr(xllamacpp, "__version__", "unknown"),
        }
        try:
            self._server = xllamacpp.Server(params)
        except Exception as exc:  # the binding raises plain RuntimeError on a bad file
            with_adapters = (
                f" with LoRA adapters {[str(p) for p, _ in self.lora_adapters]}"
                if self.lora_adapters
                else ""
            )
            raise EngineError(
                f"llama.cpp could not load {model_path}{with_adapters}: {exc}"
            ) from exc
        self._stats_lock = threading.Lock()
        # More workers than slots keeps the queue full while a slot finishes.
        self._pool = ThreadPoolExecutor(max_workers=n_parallel * 2, thread_name_prefix="llama")

    def describe(self) -> dict[str, Any]:
        """Model name, file and hash, the LoRA adapters applied, and the engine settings."""

        info: dict[str, Any] = {
            "name": self.name,
            "engine": "llama.cpp (xllamacpp)",
            "path": str(self.model_path),
            "sha256": self.fingerprint,
            **self._settings,
        }
        if self.lora_adapters:
            info["lora_adapters"] = [
                {"path": str(p), "scale": s, "sha256": sha256_file(p)}
                for p, s in self.lora_adapters
            ]
        return info

    def _checked(self, response: Any) -> dict[str, Any]:
        """A handler's answer (or one chunk of a streamed one), its error raised."""
        if not isinstance(response, dict):
            raise EngineError(f"llama.cpp returned an unexpected answer: {str(response)[:200]}")
        if "error" in response:
            error = response["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise EngineError(f"llama.cpp rejected a request: {message}")
        return response

    def _counted(self, response: dict[str, Any]) -> dict[str, Any]:
        """Count one whole answer into ``stats``."""
        counts = codec.usage(response)
        with self._stats_lock:  # many worker threads count into one total
            self.stats.requests += 1
            self.stats.prompt_tokens += counts.prompt_tokens
            self.stats.completion_tokens += counts.completion_tokens
            self.stats.cached_tokens += counts.cached_tokens
        return response

    def _handler(self, chat: bool) -> Any:
        return self._server.handle_chat_completions if chat else self._server.handle_completions

    def _call(self, payload: dict[str, Any], chat: bool) -> dict[str, Any]:
        return self._counted(self._checked(self._handler(chat)(payload)))

    def _generation_payload(self, request: GenerationRequest) -> tuple[dict[str, Any], bool]:
        _, payload, chat = codec.generation_payload(request)
        payload.update(cache_prompt=True, **self.sampling)
        return payload, chat

    def _generate_one(self, request: GenerationRequest) -> Generation:
        payload, chat = self._generation_payload(request)
        started = time.perf_counter()
        return codec.parse_generation(self._call(payload, chat), chat, started)

    def generate_stream(
        self, request: GenerationRequest, on_text: Callable[[str], None]
    ) -> Generation:
        """One reply, its text handed to ``on_text`` token by token as llama.cpp samples it
        (the binding's stream callback, on the caller's thread); the same request as
        ``generate`` sends, so the same reply. An exception from ``on_text`` cancels the
        request in llama.cpp (its slot is freed) and is raised here."""
        payload, chat = self._generation_payload(request)
        payload.update(codec.STREAM_FIELDS)
        streamed = codec.StreamedAnswer(chat)
        failure: list[BaseException] = []

        def on_chunk(chunk: Any) -> bool:
            # True cancels the request. The binding would read an exception raised here
            # as a silent cancel, so it is kept and raised once the handler returns.
            try:
                if streamed.add(self._checked(chunk)):
                    on_text(streamed.text)
            except BaseException as exc:
                failure.append(exc)
                return True
            return False

        started = time.perf_counter()
        self._handler(chat)(payload, on_chunk)
        if failure:
            raise failure[0]
        return codec.parse_generation(self._counted(streamed.answer()), chat, started)

    def _path_one(self, request: PathRequest) -> TokenPath:
        _, payload, chat = codec.path_payload(request, bias_by_text=True)
        payload["cache_prompt"] = True
        started = time.perf_counter()
        path = codec.parse_token_path(self._call(payload, chat), started)
        if path is None:
            raise EngineError("llama.cpp returned no log-probabilities")
        return path

    def _next_one(self, prompt: Prompt, top_k: int) -> TopTokens:
        path = self._path_one(PathRequest(prompt, top_k))
        top = path.tops[0]
        return TopTokens(top.tokens, prompt_tokens=path.prompt_tokens, latency_s=path.latency_s)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Run all requests concurrently over the engine's slots."""
        return list(self._pool.map(self._generate_one, requests))

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """Top-k next tokens for every prompt, concurrently."""
        return list(self._pool.map(lambda p: self._next_one(p, top_k), prompts))

    def next_token_paths(self, requests: Sequence[PathRequest]) -> list[TokenPath]:
        """Greedy paths with the top-k tokens at every position, concurrently; the
        preferred texts go as llama.cpp's text logit bias, and the log-probabilities it
        reports are those before the bias."""
        return list(self._pool.map(self._path_one, requests))

    def has_chat_template(self) -> bool:
        """Whether the GGUF carries a chat template (llama.cpp renders messages with it)."""
        return self._gguf.chat_template is not None

    def logprobs_cap(self) -> int:
        """llama.cpp returns as many top tokens as asked, up to the vocabulary."""
        return self._gguf.vocab_size

    def has_token_paths(self) -> bool:
        """Greedy paths with log-probabilities at every position, one request each."""
        return True

    def supports_adapters(self) -> bool:
        """GGUF LoRA adapters on the base weights (``lora_adapters``)."""
        return True

    def supports_streaming(self) -> bool:
        """Token by token, through the binding's stream callback."""
        return True

    def close(self) -> None:
        """Stop the worker threads; the server is freed with the object."""
        self._pool.shutdown(wait=True)


def load_engine(
    model: str, adapters: Sequence[tuple[Path, float]] = (), **kwargs: Any
) -> LlamaCppEngine:
    """Resolve a model name or GGUF path and start the in-process engine on it.

    ``adapters`` are GGUF LoRA files (with scales) checked against this base model first,
    so a tuned model runs on the same engine, at the same speed, as its base.
    """

    name, path = resolve_model(model)
    sha = model_fingerprint(path)
    if adapters:
        for adapter, _ in adapters:
            check_adapter_gguf(Path(adapter), path, sha)
        name = f"{name}+" + "+".join(Path(p).stem for p, _ in adapters)
    return LlamaCppEngine(path, name=name, fingerprint=sha, lora_adapters=adapters, **kwargs)
