"""A pilot's estimate: counted from the study without a model, and against the requests a
finished pilot really sent on the fake backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from stancelab.engine._factory import open_model
from stancelab.replicate import jiang2025
from stancelab.study import estimate_pilot, measure_pilot, simulate
from stancelab.study._estimate import PilotProgress, expected_assignment
from stancelab.study._store import StudyStore

FAKE = {"name": "echo", "backend": "fake"}


def test_conditions_fill_as_the_app_assigns_them() -> None:
    assert expected_assignment({"a": 0, "b": 0, "c": 0}, 6) == {"a": 2, "b": 2, "c": 2}
    # the least-filled first; the last round's ties split evenly
    got = expected_assignment({"a": 3, "b": 1, "c": 0}, 4)
    assert got == pytest.approx({"a": 0, "b": 1.5, "c": 2.5})  # b, c to 2, then one to 3
    assert expected_assignment({"a": 1}, 0) == {"a": 0.0}


def test_counts_without_a_model_follow_the_design(tmp_path: Path) -> None:
    study = jiang2025.pilot_study(FAKE, "count", None)
    fixed = estimate_pilot(study, 6, db=tmp_path / "none.db", turns=4)
    # 2 chat participants per chat condition, 2 static, 4 messages each:
    # chatbot: 4 replies, 5 probes; persona: 4 messages, 5 + 1 + 2 ratings; static: 1 rating
    assert fixed.stages["replies"].requests == 4 * 4
    assert fixed.stages["messages"].requests == 4 * 4
    rate = 1.2  # scoring requests per point on a path engine, unmeasured
    assert fixed.stages["probes"].requests == pytest.approx(4 * 5 * rate)
    assert fixed.stages["ratings"].requests == pytest.approx((4 * 8 + 2) * rate)
    assert fixed.stages["checks"].requests == pytest.approx(2 * rate)  # one probe per topic
    assert not (tmp_path / "none.db").exists()  # counting writes nothing
    # Prompts grow with the conversation: a longer chat costs more than in proportion.
    longer = estimate_pilot(study, 6, turns=8)
    assert longer.stages["replies"].prompt_tokens > 2.2 * fixed.stages["replies"].prompt_tokens
    drawn = estimate_pilot(study, 6)
    assert drawn.turns == (5.5, 8)
    assert drawn.stages["replies"].requests == pytest.approx(4 * 5.5)
    assert drawn.bound.requests == pytest.approx(longer.total.requests)
    assert drawn.cost is None and drawn.seconds is None
    text = "\n".join(drawn.lines())
    assert "6 of 6 simulated participants to run" in text
    assert "characters / 4" in text and "no price" in text


def test_a_priced_model_has_a_cost_and_a_bound() -> None:
    priced = {**FAKE, "price_per_million": {"input": 2.0, "output": 8.0}}
    found = estimate_pilot(jiang2025.pilot_study(priced, "priced", None), 6)
    total = found.total
    assert found.cost == pytest.approx(
        (2.0 * total.prompt_tokens + 8.0 * total.completion_tokens) / 1e6
    )
    assert found.cost is not None and found.cost_bound is not None
    assert found.cost_bound > found.cost
    assert "cost: about $" in "\n".join(found.lines())


def test_the_estimate_matches_a_finished_pilot(tmp_path: Path) -> None:
    """On the fake backend, the same number of messages for everyone: the requests the
    estimate counts are the requests the pilot sends; then a resumed pilot counts none."""
    study = jiang2025.pilot_study(FAKE, "match", None)
    lm = open_model(study.model)
    try:
        measured = measure_pilot(lm, study)
        found = estimate_pilot(study, 6, turns=5, measured=measured, lm=lm, db=tmp_path / "s.db")
        before = lm.stats.requests, lm.stats.prompt_tokens, lm.stats.completion_tokens
        lines: list[str] = []
        with PilotProgress(tmp_path / "s.db", study.study, 6, lines.append, 0.05) as progress:
            results = simulate(study, 6, db=tmp_path / "s.db", lm=lm, turns=5)
        sent = lm.stats.requests - before[0]
        prompt = lm.stats.prompt_tokens - before[1]
        generated = lm.stats.completion_tokens - before[2]
    finally:
        lm.close()
    assert all(r.completed for r in results)
    total = found.total
    assert total.requests == pytest.approx(sent, rel=0.10)
    assert total.prompt_tokens == pytest.approx(prompt, rel=0.15)
    assert generated <= total.completion_bound
    store = StudyStore(tmp_path / "s.db")
    try:
        replies = [m for m in store.all_messages() if m.role == "assistant"]
    finally:
        store.close()
    assert len(replies) == found.stages["replies"].requests
    # Progress lines came while it ran; at the end they count what the database holds.
    assert lines and all(line.startswith("progress: ") for line in lines)
    assert progress.line().startswith(f"progress: 6/6 participants · {len(replies)} replies · ")
    again = estimate_pilot(study, 6, db=tmp_path / "s.db")
    assert again.participants_left == 0 and again.total.requests == 0
