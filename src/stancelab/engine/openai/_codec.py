"""OpenAI-shaped payloads: built and read in one place for every backend that speaks them.

The in-process llama.cpp engine passes these dicts to llama.cpp's handlers directly; the
HTTP backend posts them. Answers come in two log-probability shapes, and both are read:
``logprobs.content[i].top_logprobs`` (chat completions, and llama.cpp for both routes)
and the legacy ``logprobs.tokens[i]`` / ``logprobs.top_logprobs[i]`` mapping (OpenAI and
vLLM text completions). A streamed answer (``stream: true``) arrives in chunks that
``StreamedAnswer`` folds back into the whole answer's shape, so one reader serves both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from stancelab.engine._types import (
    Generation,
    GenerationRequest,
    PathRequest,
    Prompt,
    TokenPath,
    TopTokens,
)

COMPLETIONS = "/completions"
CHAT = "/chat/completions"
PREFER_BIAS = 100.0
"""Logit bias for a path's preferred texts: enough to win the greedy choice, and the
engines report log-probabilities before any bias (llama.cpp; vLLM's raw mode)."""


def prompt_payload(
    prompt: Prompt, continue_final_message: bool = False
) -> tuple[str, dict[str, Any], bool]:
    """The route, the prompt fields and whether it is a chat request."""
    if isinstance(prompt, str):
        return COMPLETIONS, {"prompt": prompt}, False
    payload: dict[str, Any] = {"messages": list(prompt)}
    if continue_final_message and prompt and prompt[-1]["role"] == "assistant":
        payload.update(continue_final_message=True, add_generation_prompt=False)
    return CHAT, payload, True


def generation_payload(
    request: GenerationRequest, max_stop: int | None = None, continue_final_message: bool = False
) -> tuple[str, dict[str, Any], bool]:
    """Payload of one generation request (sampler defaults are the caller's to add)."""
    path, payload, chat = prompt_payload(request.prompt, continue_final_message)
    payload.update(temperature=request.temperature, max_tokens=request.max_tokens)
    stop = list(request.stop)
    if max_stop is not None:
        stop = stop[:max_stop]
    if stop:
        payload["stop"] = stop
    if request.seed is not None:
        payload["seed"] = request.seed
    return path, payload, chat


STREAM_FIELDS: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}}
"""Ask for the answer in chunks as it is generated, with the token counts in the last one
(``include_usage``: OpenAI, vLLM, SGLang and llama.cpp send them; without it a stream
carries no counts)."""


class StreamedAnswer:
    """The chunks of a streamed answer folded into the answer the server would have sent
    whole, so ``parse_generation`` and ``usage`` read it as they read that one.

    Chat chunks carry ``choices[0].delta.content``, text completions ``choices[0].text``;
    the finish reason comes with the last piece of text, the token counts (``usage``, and
    llama.cpp's ``timings``) in the last chunk, which may have no choices at all.
    """

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.text = ""
        """The text so far: every piece, in order."""
        self.finish_reason: str | None = None
        self._counts: dict[str, Any] = {}

    def add(self, chunk: dict[str, Any]) -> bool:
        """Fold in one chunk; returns whether it added text."""
        for key in ("usage", "timings"):
            if isinstance(chunk.get(key), dict):
                self._counts[key] = chunk[key]
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return False
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
        if self.chat:
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else None
        else:
            piece = choice.get("text")
        if not piece:
            return False
        self.text += str(piece)
        return True

    def answer(self) -> dict[str, Any]:
        """The whole answer, in the shape of one that was not streamed."""
        choice: dict[str, Any] = {"finish_reason": self.finish_reason}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": self.text}
        else:
            choice["text"] = self.text
        return {"choices": [choice], **self._counts}


def logprobs_fields(chat: bool, top_k: int) -> dict[str, Any]:
    """Ask for the top-k log-probabilities at every generated position."""
    if chat:
        return {"logprobs": True, "top_logprobs": top_k}
    return {"logprobs": top_k}


def path_payload(
    request: PathRequest,
    max_logprobs: int | None = None,
    bias_by_text: bool = False,
    continue_final_message: bool = False,
) -> tuple[str, dict[str, Any], bool]:
    """Payload of a greedy path request; ``bias_by_text`` sends the preferred texts as
    llama.cpp's ``[[text, bias], ...]`` logit bias (OpenAI-style servers want token ids,
    so they get none and follow the plain greedy path)."""
    path, payload, chat = prompt_payload(request.prompt, continue_final_message)
    top_k = request.top_k if max_logprobs is None else min(request.top_k, max_logprobs)
    payload.update(max_tokens=request.max_tokens, temperature=0.0, **logprobs_fields(chat, top_k))
    if bias_by_text and request.prefer and request.max_tokens > 1:
        payload["logit_bias"] = [[text, PREFER_BIAS] for text in request.prefer]
    return path, payload, chat


def _entries(values: Any) -> list[tuple[str, float]] | None:
    if isinstance(values, dict):  # legacy: {token: logprob}
        return [(str(t), float(lp)) for t, lp in values.items()] or None
    if isinstance(values, list) and values:
        return [(str(e["token"]), float(e["logprob"])) for e in values]
    return None


def parse_positions(choice: dict[str, Any]) -> list[tuple[str, list[tuple[str, float]]]] | None:
    """(emitted token, top tokens before it) for every generated position, from either
    answer shape, best first; None if the answer holds no log-probabilities."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    out: list[tuple[str, list[tuple[str, float]]]] = []
    try:
        content = logprobs.get("content")
        if isinstance(content, list):  # chat completions; llama.cpp for both routes
            for entry in content:
                tops = _entries(entry.get("top_logprobs"))
                if tops is None:
                    break
                out.append((str(entry.get("token", "")), tops))
        else:
            tokens = logprobs.get("tokens")
            tops_list = logprobs.get("top_logprobs")
            if not isinstance(tops_list, list):
                return None
            for i, values in enumerate(tops_list):
                tops = _entries(values)
                if tops is None:
                    break
                token = tokens[i] if isinstance(tokens, list) and i < len(tokens) else ""
                out.append((str(token), tops))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    for _, tops in out:
        tops.sort(key=lambda t: -t[1])
    return out or None


def parse_top_logprobs(choice: dict[str, Any]) -> list[tuple[str, float]] | None:
    """Top tokens of the first generated position, from either shape; None if absent."""
    positions = parse_positions(choice)
    return positions[0][1] if positions else None


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer: sent, served from the prefix cache, recomputed, made."""

    prompt_tokens: int
    cached_tokens: int
    recomputed_tokens: int
    completion_tokens: int


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def usage(data: dict[str, Any]) -> Usage:
    """Counts from ``usage`` (OpenAI, vLLM) or llama.cpp's ``timings``."""
    counts = data.get("usage") or {}
    timings = data.get("timings") or {}
    prompt = _int(counts.get("prompt_tokens"))
    details = counts.get("prompt_tokens_details")
    cached_value = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = _int(timings.get("cache_n") if cached_value is None else cached_value)
    # llama.cpp says how many it evaluated; elsewhere, what the cache did not serve.
    recomputed = _int(timings["prompt_n"]) if "prompt_n" in timings else max(0, prompt - cached)
    return Usage(prompt, cached, recomputed, _int(counts.get("completion_tokens")))


def first_choice(data: dict[str, Any]) -> dict[str, Any]:
    """The first choice of an answer, or ValueError naming what is missing."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("answer has no choices")
    return choices[0]


def parse_generation(data: dict[str, Any], chat: bool, started: float) -> Generation:
    """The Generation in an answer; ``started`` is the perf_counter time it was sent."""
    choice = first_choice(data)
    if chat:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    else:
        text = choice.get("text")
    counts = usage(data)
    return Generation(
        text=str(text or ""),
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        cached_tokens=counts.cached_tokens,
        latency_s=time.perf_counter() - started,
        finish_reason=str(choice.get("finish_reason") or "stop"),
    )


def parse_token_path(data: dict[str, Any], started: float) -> TokenPath | None:
    """The TokenPath in an answer to a path request; None if it has no log-probabilities.
    Its ``prompt_tokens`` are those the engine computed (not served from its cache)."""
    positions = parse_positions(first_choice(data))
    if positions is None:
        return None
    latency = time.perf_counter() - started
    recomputed = usage(data).recomputed_tokens
    return TokenPath(
        tops=[TopTokens(tops) for _, tops in positions],
        tokens=[token for token, _ in positions],
        prompt_tokens=recomputed,
        latency_s=latency,
    )
