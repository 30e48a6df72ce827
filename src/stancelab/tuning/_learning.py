"""Did a training run learn? Loss curves, held-out checks before and after, and a verdict.

Next-token training: the mean per-token loss of held-out answers under the model before
training (the base) and after (base + adapter). DPO: on held-out pairs, the implicit reward
``beta * (log pi/pi_ref(chosen) - log pi/pi_ref(rejected))`` against the DPO reference (the
merged NWP model). Before training the policy is the reference, so every margin is 0 and the
preference accuracy is chance (ties count half); a run that learned has a positive mean
margin and an accuracy above one half. A DPO loss that stays within a small band of ln 2
(the value of a policy equal to its reference) means the step did not move the model.

Torch is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

LN2 = math.log(2)
CURVE_KEYS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/chosen",
    "rewards/rejected",
)


def loss_curve(history: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
    """The logged training points (step, loss, and DPO reward statistics) of a Trainer."""
    curve = []
    for entry in history:
        if "loss" not in entry or "step" not in entry:
            continue
        point = {"step": float(entry["step"])}
        for key in CURVE_KEYS:
            if key in entry and entry[key] is not None:
                point[key] = round(float(entry[key]), 6)
        curve.append(point)
    return curve


def logging_interval(
    examples: int, settings_logging: int, batch: int, epochs: float, max_steps: int
) -> int:
    """Log often enough for a curve of about ten points, never less often than asked."""
    steps = max_steps if max_steps > 0 else math.ceil(examples / max(1, batch) * epochs)
    return max(1, min(settings_logging, steps // 10 or 1))


def completion_logps(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """Summed log-probability and token count of each completion after its prompt.

    Tokenised like TRL: prompt + completion in one piece, the completion starting where
    the tokens of the prompt alone stop matching; cut to ``max_length`` tokens.
    """
    import torch  # noqa: PLC0415 - lazy: torch is heavy to import

    rows: list[tuple[list[int], int]] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        full = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"][:max_length]
        start = 0
        while start < min(len(prompt_ids), len(full)) and prompt_ids[start] == full[start]:
            start += 1
        rows.append((full, max(1, start)))  # the first token has no prediction
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for begin in range(0, len(rows), batch_size):
                chunk = rows[begin : begin + batch_size]
                width = max(len(ids) for ids, _ in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, (seq, _) in enumerate(chunk):
                    ids[i, : len(seq)] = torch.tensor(seq)
                    mask[i, : len(seq)] = 1
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                for i, (seq, start) in enumerate(chunk):
                    # position j predicts token j+1: the completion tokens start..len-1
                    part = token_logp[i, start - 1 : len(seq) - 1]
                    out.append((float(part.sum()), int(part.numel())))
    finally:
        model.train(was_training)
    return out


def heldout_nwp_loss(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int) -> float:
    """Mean per-token negative log-likelihood of held-out texts (the NWP training loss)."""
    scored = completion_logps(model, tokenizer, [""] * len(texts), list(texts), max_length)
    tokens = sum(n for _, n in scored)
    return round(-sum(lp for lp, _ in scored) / max(1, tokens), 5)


def dpo_pair_scores(
    policy: Any,
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    beta: float,
    max_length: int,
    reference: Sequence[tuple[float, float]] | None = None,
) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Held-out DPO statistics of ``policy`` against reference log-probs.

    Returns (statistics, the policy's (chosen, rejected) log-probs); with ``reference``
    None the policy is its own reference (the state before DPO).
    """
    eos = tokenizer.eos_token or ""
    prompts = [p["prompt"] for p in pairs]

    def ends(text: str) -> str:
        return text if text.endswith(eos) else text + eos

    chosen = completion_logps(
        policy, tokenizer, prompts, [ends(p["chosen"]) for p in pairs], max_length
    )
    rejected = completion_logps(
        policy, tokenizer, prompts, [ends(p["rejected"]) for p in pairs], max_length
    )
    logps = [(c, r) for (c, _), (r, _) in zip(chosen, rejected, strict=True)]
    ref = reference if reference is not None else logps
    margins = [beta * ((c - rc) - (r - rr)) for (c, r), (rc, rr) in zip(logps, ref, strict=True)]
    accuracy = statistics.fmean(
        1.0 if m > 1e-6 else 0.5 if abs(m) <= 1e-6 else 0.0 for m in margins
    )
    per_token = [
        (c / max(1, nc)) > (r / max(1, nr))
        for (c, nc), (r, nr) in zip(chosen, rejected, strict=True)
    ]
    stats = {
        "pairs": float(len(pairs)),
        "reward_accuracy": round(accuracy, 4),
        "reward_margin": round(statistics.fmean(margins), 5),
        "likelihood_preference": round(statistics.fmean(per_token), 4),
        "loss": round(statistics.fmean(_neg_logsigmoid(m) for m in margins), 5),
    }
    return stats, logps


def _neg_logsigmoid(x: float) -> float:
    return math.log1p(math.exp(-x)) if x > -30 else -x


def _tail_loss(curve: Sequence[dict[str, float]]) -> float | None:
    """Mean of the last quarter of the logged losses (at least the last point)."""
    losses = [p["loss"] for p in curve if "loss" in p]
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 4) :]
    return statistics.fmean(tail)


def nwp_verdict(
    curve: Sequence[dict[str, float]], before: float | None, after: float | None, min_gain: float
) -> dict[str, Any]:
    """Learned when the held-out loss fell by at least ``min_gain`` (relative)."""
    if before is None or after is None:
        return {"learned": None, "reason": "no held-out answers: learning not checked"}
    gain = (before - after) / before if before > 0 else 0.0
    if gain < min_gain:
        return {
            "learned": False,
            "reason": f"held-out loss {before:.3f} -> {after:.3f} "
            f"({-gain:+.2%}, needs a fall of {min_gain:.0%}): the adapter did not learn",
        }
    return {"learned": True, "reason": f"held-out loss {before:.3f} -> {after:.3f} ({-gain:+.2%})"}


def dpo_verdict(
    curve: Sequence[dict[str, float]],
    before: dict[str, float] | None,
    after: dict[str, float] | None,
    ln2_band: float,
) -> dict[str, Any]:
    """Learned when the training loss left the ln 2 band and held-out pairs improved."""
    reasons = []
    tail = _tail_loss(curve)
    if tail is None:
        reasons.append("no training loss was logged")
    elif abs(tail - LN2) <= ln2_band:
        reasons.append(
            f"training loss ended at {tail:.4f}, within {ln2_band} of ln 2 = {LN2:.4f} "
            "(the policy did not move away from its reference)"
        )
    if before is None or after is None:
        reasons.append("no held-out pairs")
    elif not (after["reward_accuracy"] > 0.5 and after["reward_margin"] > 0):
        pairs = f" on {int(after['pairs'])} pairs" if after.get("pairs") else ""
        reasons.append(
            f"held-out preference accuracy {after['reward_accuracy']:.2f} and reward margin "
            f"{after['reward_margin']:+.3f}{pairs} are not above chance"
        )
    if reasons:
        return {"learned": False, "reason": "; ".join(reasons)}
    assert after is not None and tail is not None
    return {
        "learned": True,
        "reason": f"loss {tail:.3f} < ln 2; held-out accuracy "
        f"{before['reward_accuracy'] if before else 0.5:.2f} -> {after['reward_accuracy']:.2f}, "
        f"margin {after['reward_margin']:+.3f}",
    }
