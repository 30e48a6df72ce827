"""Test backends for the replicate command: models whose survey answers move.

``replicate-moving`` writes its own persona stories (each names its party) and answers
the survey by party: a Republican starts near 2, a Democrat near 8, the Default at 6,
and partisans move halfway to 6 with every round-robin cycle they hear. It is a local
backend; ``replicate-remote`` is the same model on a "remote" backend (it takes
``base_urls``, which only the reachability check reads), so models side by side run at
once. ``CALLS`` counts generations and ``CRASH_AFTER`` kills the model after that many,
as a dying process would.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence

import stancelab as sl
from stancelab.engine._base import Generation, GenerationRequest
from stancelab.engine._fake import ScriptedModel
from stancelab.engine._registry import NoOptions

TURN = "I see it so."
START = {"republican": 2.0, "democrat": 8.0}
CALLS: dict[str, int] = {"n": 0}
STORIES: dict[str, int] = {}
"""Persona stories written, per model."""
CRASH_AFTER: dict[str, int | None] = {"n": None}
TIMES: list[tuple[str, float]] = []
"""(model name, time) of every generation: whether two models ran at once."""
LOCK = threading.Lock()


class Killed(Exception):
    """The model's process died."""


def reply(request: GenerationRequest) -> str:
    prompt = str(request.prompt)
    if "background story" in prompt:
        party = "Democrat" if "Democrat partisan" in prompt else "Republican"
        return (
            f"You grew up in a small town and became a passionate {party}. You care about "
            "your family and your country and speak at every town hall about guns, racism, "
            f"the climate and immigration. Draw {request.seed}."
        )
    return TURN


def score(prompt: str) -> float:
    """The planted answer: by party, a jitter per persona name, and the cycles heard."""
    kind = next((k for k in START if f"passionate {k.capitalize()}" in prompt), None)
    if kind is None:
        return 6.0
    name = prompt.split("Your name is ", 1)[-1].split(".", 1)[0]
    start = START[kind] + (zlib.crc32(name.encode()) % 7 - 3) * 0.1
    cycles = prompt.count(TURN) / 3
    return 6.0 + (start - 6.0) * float(0.5**cycles)


def continuations(prompt: str) -> dict[str, float]:
    """The score as a mixture of the two whole answers around it."""
    value = score(prompt)
    low = int(value)
    return {f" {low}\n": 1 - (value - low), f" {low + 1}\n": value - low}


class MovingModel(ScriptedModel):
    """The planted model, counting (and, when told, failing) its generations."""

    def __init__(self, name: str) -> None:
        super().__init__(reply=reply, continuations=continuations)
        self.label = name

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        with LOCK:
            CALLS["n"] += 1
            TIMES.append((self.label, time.monotonic()))
            stories = sum("background story" in str(r.prompt) for r in requests)
            STORIES[self.label] = STORIES.get(self.label, 0) + stories
            limit = CRASH_AFTER["n"]
            if limit is not None and CALLS["n"] > limit:
                raise Killed(f"killed after {limit} generations")
        time.sleep(0.002)  # a little latency, so models run at once can overlap
        return super().generate(requests)


@sl.backend("replicate-moving")
def _open_moving(config: sl.ModelConfig, options: NoOptions) -> MovingModel:
    return MovingModel(config.name)


@sl.backend("replicate-remote", remote=True)
def _open_remote(config: sl.ModelConfig, options: NoOptions) -> MovingModel:
    return MovingModel(config.name)
