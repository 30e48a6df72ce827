"""A scripted, deterministic model for unit tests of orchestration logic (no engine)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stancelab.engine.base import (
    Generation,
    GenerationRequest,
    LanguageModel,
    Prompt,
    TopTokens,
)


def _as_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@dataclass
class ScriptedModel(LanguageModel):
    """Replies come from a function of the request; next-token probabilities come from a
    distribution over whole continuations, split into one-character tokens.

    ``continuations(prompt)`` returns e.g. ``{" 7\\n": 0.6, " 10\\n": 0.4}``; the model then
    offers " " first, then "7" or "1", and so on, so the real scoring code is exercised.
    """

    reply: Callable[[GenerationRequest], str] = lambda request: "I have an opinion."
    continuations: Callable[[str], dict[str, float]] = lambda prompt: {" 5\n": 1.0}
    generated: list[GenerationRequest] = field(default_factory=list)
    scored_prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        self.name = "scripted"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Answer each request with the scripted reply, cut at the first stop string."""
        out = []
        for request in requests:
            self.generated.append(request)
            text = self.reply(request)
            for stop in request.stop:
                if stop in text:
                    text = text[: text.index(stop)]
            tokens = len(_as_text(request.prompt).split())
            out.append(
                Generation(text=text, prompt_tokens=tokens, completion_tokens=len(text.split()))
            )
        return out

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        """One-character tokens with probabilities implied by the continuations."""
        out = []
        for prompt in prompts:
            text = _as_text(prompt)
            # Find which part of the prompt is the continuation emitted so far.
            base, emitted = self._split(text)
            self.scored_prompts.append(base)
            dist = self.continuations(base)
            mass: dict[str, float] = {}
            for continuation, p in dist.items():
                if continuation.startswith(emitted) and len(continuation) > len(emitted):
                    nxt = continuation[len(emitted)]
                    mass[nxt] = mass.get(nxt, 0.0) + p
            total = sum(mass.values())
            ranked = sorted(mass.items(), key=lambda kv: -kv[1])[:top_k]
            out.append(TopTokens([(t, math.log(p / total)) for t, p in ranked if p > 0]))
        return out

    @staticmethod
    def _split(text: str) -> tuple[str, str]:
        marker = text.rfind("Me:")
        if marker < 0:
            return text, ""
        return text[: marker + 3], text[marker + 3 :]
