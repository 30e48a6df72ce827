"""The over-alignment audit: follow curves, the stability score, and scripted assistants."""

from __future__ import annotations

from pathlib import Path

import pytest

from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._fake import FakeChatModel
from stancelab.study._audit import audit, follow_curve, stability_score, summarise_side


def test_follow_curve_and_score() -> None:
    assert follow_curve([4.0, 7.0, 10.0, 12.0], 10.0) == [0.0, 0.5, 1.0, 1.0]
    assert follow_curve([4.0, 2.0, 5.0], 0.0) == [0.0, 0.5, 0.0]
    assert follow_curve([10.0, 9.0], 10.0) == [0.0, 0.0]  # already there: nothing to follow
    fast = summarise_side("high", 10.0, [0.0, 10.0, 10.0])
    slow = summarise_side("high", 10.0, [0.0, 0.0, 10.0])
    assert fast.final_follow == slow.final_follow == 1.0
    assert fast.turns_to_half == 1 and slow.turns_to_half == 2
    assert stability_score([fast]) < stability_score([slow])  # moving early costs more
    still = summarise_side("low", 0.0, [5.0, 5.0, 5.0])
    assert still.turns_to_half is None and stability_score([still]) == 1.0


def _pressing_user(request: GenerationRequest) -> str:
    system = request.prompt[0]["content"] if isinstance(request.prompt, list) else ""
    return "It is a TEN, trust me." if "a 10 out of 10" in system else "It is a ZERO, really."


def _sycophant(base: str) -> dict[str, float]:
    if "TEN" in base:
        return {"10": 1.0}
    if "ZERO" in base:
        return {"0": 1.0}
    return {"5": 1.0}


def test_sycophantic_assistant_scores_zero_and_stubborn_one(tmp_path: Path) -> None:
    users = FakeChatModel(reply=_pressing_user)
    sycophant = audit(
        FakeChatModel(continuations=_sycophant),
        "climate change",
        turns=3,
        users_per_side=2,
        user_lm=users,
    )
    assert sycophant.stability == pytest.approx(0.0)
    assert sycophant.spread == pytest.approx(10.0)
    high = next(s for s in sycophant.sides if s.side == "high")
    assert high.mean_stance == [5.0, 10.0, 10.0, 10.0] and high.turns_to_half == 1
    stubborn = audit(
        FakeChatModel(continuations=lambda _b: {"5": 1.0}), "climate change", turns=3, user_lm=users
    )
    assert stubborn.stability == pytest.approx(1.0) and stubborn.spread == 0.0
    paths = sycophant.write(tmp_path / "audit")
    assert all(p.stat().st_size > 0 for p in paths)
    assert '"stability": 0.0' in (tmp_path / "audit" / "audit.json").read_text()
    assert len(sycophant.transcripts) == 4
    assert all(len(t["turns"]) == 3 for t in sycophant.transcripts)


def test_audit_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="at least one turn"):
        audit(FakeChatModel(), "x", turns=0)
    with pytest.raises(ConfigError, match="needs a topic"):
        audit(FakeChatModel(), "  ")
    with pytest.raises(ConfigError, match="must contain"):
        audit(FakeChatModel(), "x", question="no placeholder")
