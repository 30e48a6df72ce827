"""The paper's designs as experiment mappings, at three scales.

A design is one or more experiments in the shape of ``examples/paper.yaml`` (what
``stancelab.experiment`` / ``load_experiment`` validate), with the model and the prompt
format filled in. The ``paper`` scale is the paper's own: 4 topics x 40 repetitions,
30 iterations for the three-way debates of Fig. 3 and 9 for the later figures (two
experiments, since an experiment has one iteration count); ``quick`` and ``smoke`` are
smaller, documented in `SCALES` and docs/replicate.md. Every experiment of one design
shares one persona file, so the stories are written once per model and scale.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stancelab.conversation import PAPER_TOPICS
from stancelab.engine import ConfigError
from stancelab.replicate._findings import paper_claims

FIG3_SETUPS = ("three-way",)
"""Fig. 3: Republican + Democrat + Default."""
LATER_SETUPS = ("two-way", "rr-default", "rr", "dd-default")
"""Fig. 4 (two-way, the Default's pre-debate score as reference) and the echo chambers of
Figs. 5, 8 and 9."""


@dataclass(frozen=True)
class Scale:
    """How big a design is.

    Attributes:
        topics: the Pew topics debated.
        repetitions: debates per topic and setup, each with its own personas.
        fig3_iterations: replies in the three-way debates (Fig. 3).
        iterations: replies in the later setups.
        purpose: what the scale is for, in one line.
    """

    topics: tuple[str, ...]
    repetitions: int
    fig3_iterations: int
    iterations: int
    purpose: str


SCALES: dict[str, Scale] = {
    "smoke": Scale(
        ("climate change",),
        2,
        3,
        3,
        "a pipeline check in minutes: every setup runs, no claim can be tested (2 debates)",
    ),
    "quick": Scale(
        ("climate change", "illegal immigration"),
        5,
        6,
        6,
        "a first look: 5 debates per topic (the fewest a per-topic test takes), two cycles "
        "of the three-way debate",
    ),
    "paper": Scale(
        tuple(PAPER_TOPICS),
        40,
        30,
        9,
        "the paper's own design: 4 topics x 40 repetitions, 30 iterations for Fig. 3, 9 after",
    ),
}
"""The scales of every design, by name."""


def _slug(model: str | dict[str, Any]) -> str:
    """The model's name as a run-folder-safe word."""
    name = str(model.get("name", "model")) if isinstance(model, dict) else str(model)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.rsplit("/", 1)[-1]).strip("-.") or "model"


def design(
    paper: str,
    scale: str,
    model: str | dict[str, Any],
    prompt_format: str = "auto",
) -> dict[str, dict[str, Any]]:
    """The experiments that replicate a paper at a scale, by experiment name.

    Each value is an experiment mapping in the shape of ``examples/paper.yaml``, ready
    for ``stancelab.run``: the paper's topics, setups, repetitions and iterations at this
    scale, the model for every agent (it writes the personas too, at temperature 1.0, as
    in the paper), replies at temperature 1.0 under 50 words, and both survey modes.
    Names (and so run folders) carry the paper, scale and model, so models run side by
    side do not share a folder.

    Args:
        paper: the paper (``taubenfeld2024``).
        scale: ``smoke``, ``quick`` or ``paper`` (`SCALES`).
        model: a model entry: a name or a mapping (``{name: ..., backend: ...}``).
        prompt_format: ``auto``, ``transcript`` (the paper's Figure 2) or ``chat``.

    Raises:
        ConfigError: an unknown paper or scale (one line naming the choices).
    """
    paper_claims(paper)  # an unknown paper fails here, naming the known ones
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)}")
    size = SCALES[scale]
    stem = f"{paper}-{scale}-{_slug(model)}"
    if size.fig3_iterations == size.iterations:
        parts = {stem: ([*FIG3_SETUPS, *LATER_SETUPS], size.iterations)}
    else:
        parts = {
            f"{stem}-fig3": (list(FIG3_SETUPS), size.fig3_iterations),
            f"{stem}-later": (list(LATER_SETUPS), size.iterations),
        }
    # The keys and their order are examples/paper.yaml's (a test holds them to it).
    return {
        name: {
            "name": name,
            "model": dict(model) if isinstance(model, dict) else model,
            "topics": list(size.topics),
            "setups": setups,
            "repetitions": size.repetitions,
            "iterations": iterations,
            "seed": 0,
            "prompt_format": prompt_format,
            # One file for every experiment of the design: stories written once.
            "personas": {"generate": size.repetitions, "file": f"personas/{stem}.yaml"},
            "survey": {"modes": ["distribution", "generate"]},
            "reply": {"temperature": 1.0, "word_limit": 50},
        }
        for name, (setups, iterations) in parts.items()
    }
