"""Training that demonstrably learns: held-out checks before/after and the not-learned flag,
on real (tiny) runs on the embedded SmolLM2-135M."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from stancelab.tuning._config import DpoSettings, LoraSettings, NwpSettings
from stancelab.tuning._learning import LN2, dpo_verdict, logging_interval, loss_curve, nwp_verdict

pytest.importorskip("trl")

RIGHT = [
    "Secure the border and enforce the law.",
    "Lower taxes and smaller government.",
    "Protect gun rights for families.",
    "Cut regulations on energy jobs.",
]
LEFT = [
    "Welcome immigrants and expand their paths to citizenship.",
    "Raise taxes on the rich to fund programs.",
    "Pass strict gun control now.",
    "Invest in clean energy to fight climate change.",
]
QUESTIONS = [
    "What matters most to you?",
    "How should the country move forward?",
    "What should Congress do first?",
    "What is your view on policy?",
    "What would you change?",
    "What do voters need?",
    "What is the biggest issue?",
    "What should the president do?",
    "Where do you stand?",
    "What would fix America?",
    "What is your priority?",
    "What do you want from leaders?",
]
# Chosen answers argue one side, rejected ones the other; held-out pairs have new prompts
# and other pairings, so only a learned preference (not memorised pairs) scores them right.
PAIRS = [
    {"prompt": q + "\n", "chosen": RIGHT[i % 4], "rejected": LEFT[(i + 1) % 4]}
    for i, q in enumerate(QUESTIONS)
]
TRAIN, HELDOUT = PAIRS[:8], PAIRS[8:]


def _dpo(steps: int) -> DpoSettings:
    return DpoSettings(
        lora=LoraSettings(r=4, dropout=0.0),
        batch_size=4,
        max_steps=steps,
        max_length=32,
        learning_rate=1e-3,
        logging_steps=1,
    )


def test_dpo_learns_above_chance_and_a_broken_reference_is_flagged(
    tmp_path: Path, random_adapter: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from stancelab.tuning._train import train_dpo

    nwp_adapter, _ = random_adapter
    good = train_dpo(
        "smollm2-135m", TRAIN, nwp_adapter, tmp_path / "good", _dpo(4), heldout_pairs=HELDOUT
    )
    assert good.heldout is not None
    before, after = good.heldout["before"], good.heldout["after"]
    # Before DPO the policy is its reference: every margin 0, accuracy exactly chance.
    assert before["reward_margin"] == 0 and before["reward_accuracy"] == 0.5
    assert after["reward_accuracy"] > 0.5 and after["reward_margin"] > 0
    assert good.curve and len(good.curve) == 4 and "rewards/margins" in good.curve[0]
    assert good.curve[-1]["loss"] < LN2 - 0.1
    assert good.learned is True, good.verdict
    meta = json.loads((good.adapter_dir / "stancelab_adapter.json").read_text())
    assert meta["learned"] is True and meta["heldout"]["after"] == after
    # Reused from disk with its checks.
    again = train_dpo("smollm2-135m", TRAIN, nwp_adapter, tmp_path / "good", _dpo(4))
    assert again.skipped and again.learned is True and again.heldout == good.heldout

    # Broken setup: the reference is the policy at every step (TRL's adapter switch that
    # should turn the reference off does nothing). The loss cannot leave ln 2.
    import trl.trainer.dpo_trainer as dpo_trainer

    monkeypatch.setattr(dpo_trainer, "use_adapter", lambda *a, **k: contextlib.nullcontext())
    broken = train_dpo(
        "smollm2-135m", TRAIN, nwp_adapter, tmp_path / "broken", _dpo(4), heldout_pairs=HELDOUT
    )
    assert broken.curve and all(abs(p["loss"] - LN2) < 1e-3 for p in broken.curve)
    assert broken.learned is False
    assert "within 0.02 of ln 2" in broken.verdict


def test_nwp_heldout_loss_falls(tmp_path: Path, smol_base: tuple[Path, str]) -> None:
    from stancelab.tuning._train import train_nwp

    settings = NwpSettings(
        lora=LoraSettings(r=4, dropout=0.0),
        batch_size=4,
        max_steps=4,
        max_length=32,
        learning_rate=1e-3,
        logging_steps=1,
    )
    texts = RIGHT * 2
    held = ["Secure the border and lower taxes.", "Protect gun rights and energy jobs."]
    result = train_nwp("smollm2-135m", texts, tmp_path / "nwp", settings, heldout=held)
    assert result.heldout is not None and result.heldout["examples"] == 2
    assert result.heldout["loss_after"] < result.heldout["loss_before"]
    assert result.learned is True, result.verdict
    assert [p["step"] for p in result.curve or []] == [1, 2, 3, 4]


def test_verdicts_and_curves_without_training() -> None:
    history = [
        {"loss": 0.69, "step": 1, "rewards/margins": 0.0},
        {"loss": 0.6931, "step": 2},
        {"train_loss": 0.69, "step": 2},
    ]
    curve = loss_curve(history)
    assert curve == [
        {"step": 1.0, "loss": 0.69, "rewards/margins": 0.0},
        {"step": 2.0, "loss": 0.6931},
    ]
    chance = {"reward_accuracy": 0.5, "reward_margin": 0.0}
    flat = dpo_verdict(curve, chance, chance, 0.02)
    assert flat["learned"] is False
    assert "ln 2" in flat["reason"] and "not above chance" in flat["reason"]
    moved = dpo_verdict(
        [{"step": 1, "loss": 0.5}], chance, {"reward_accuracy": 0.8, "reward_margin": 0.4}, 0.02
    )
    assert moved["learned"] is True
    assert dpo_verdict([], None, None, 0.02)["learned"] is False
    assert nwp_verdict([], 3.0, 2.9, 0.01)["learned"] is True
    assert nwp_verdict([], 3.0, 2.99, 0.01)["learned"] is False
    assert nwp_verdict([], None, None, 0.01)["learned"] is None
    # About ten logged points, never less often than asked.
    assert logging_interval(150, 10, 8, 1.0, -1) == 1
    assert logging_interval(4000, 10, 8, 1.0, -1) == 10
    assert logging_interval(10, 10, 8, 1.0, 200) == 10
