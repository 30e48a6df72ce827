"""The estimate before a run against what the run then sent, dry runs, cost and progress."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from stancelab.cli import app
from stancelab.conversation._personas import Persona, PersonaSet
from stancelab.conversation._tally import check_cost
from stancelab.debates._estimate import Estimate, ProgressLines, estimate_run
from stancelab.debates._experiment import load_experiment
from stancelab.debates._runner import ModelPool, Plan, RunFolder, execute, plan_experiment
from stancelab.engine._base import Generation, GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import ModelConfig, open_model
from stancelab.engine._fake import ScriptedModel

REPLY = (
    "I hear you, but the families in my town need practical answers on this, not slogans, "
    "and we should start with what works."
)
FAKE = {"name": "scripted", "backend": "fake", "options": {"reply": REPLY}}


def write_experiment(tmp_path: Path, model: dict[str, Any], **changes: object) -> Path:
    stories = {
        "republican": "You grew up on a ranch in Texas, run a hardware store and distrust "
        "Washington; you think taxes and regulation hurt small businesses.",
        "democrat": "You teach science in Ohio, volunteer at a food bank and worry about "
        "the planet your students will inherit; you believe in public action.",
    }
    PersonaSet(
        [
            Persona(f"{kind[0].upper()}{i}", kind, f"Your name is {kind}{i}. {story}")
            for kind, story in stories.items()
            for i in range(3)
        ],
        {"source": "test"},
    ).save(tmp_path / "personas.yaml")
    data = {
        "name": "exp",
        "model": model,
        "topics": ["climate change", "racism"],
        "setups": ["three-way", "rr"],
        "repetitions": 2,
        "iterations": 4,
        "personas": {"file": "personas.yaml"},
        **changes,
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def plan_of(path: Path) -> Plan:
    return plan_experiment(load_experiment(path), path.read_text())


def assert_close(found: Estimate, sent: dict[str, int], within: float = 0.10) -> None:
    total = found.total
    pairs = {
        "requests": total.requests,
        "prompt_tokens": total.prompt_tokens,
        "completion_tokens": total.completion_tokens,
    }
    for key, estimated in pairs.items():
        assert sent[key] > 0
        assert abs(estimated - sent[key]) <= within * sent[key], (key, estimated, sent[key])
    assert sent["completion_tokens"] <= total.completion_bound


def run_counted(plan: Plan, out: Path, pool: ModelPool) -> dict[str, int]:
    """What the run sent after the estimate's own measurement."""
    before = pool.stats()
    execute(plan, out, log=lambda m: None, models=pool)
    after = pool.stats()
    return {k: after[k] - before[k] for k in after}


def test_the_estimate_matches_a_finished_runs_counts(tmp_path: Path) -> None:
    plan = plan_of(write_experiment(tmp_path, FAKE))
    with ModelPool() as pool:
        found = estimate_run(plan, tmp_path / "runs", pool, log=lambda m: None)
        assert found.debates_total == found.debates_left == 8
        assert found.replies_left == 8 * 4
        # Surveys after iterations 0 and 3 (three agents) or 0, 2, 4 (two agents).
        assert found.points_left == 4 * (2 * 3) + 4 * (3 * 2)
        sent = run_counted(plan, tmp_path / "runs", pool)
    assert_close(found, sent)
    assert "the model's own counts" in found.token_method


class Crash(Exception):
    """A process dying mid-run."""


class CrashingModel(ScriptedModel):
    def __init__(self, after: int) -> None:
        super().__init__(reply=lambda r: REPLY)
        self.after = after

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.after -= len(requests)
        if self.after < 0:
            raise Crash("killed")
        return super().generate(requests)


def test_a_resumed_run_is_estimated_for_what_is_left(tmp_path: Path) -> None:
    plan = plan_of(write_experiment(tmp_path, FAKE, workers=2))
    out = tmp_path / "runs"
    crashing = CrashingModel(after=12)
    with pytest.raises(Crash):
        execute(plan, out, log=lambda m: None, models=ModelPool(opener=lambda c: crashing))
    with ModelPool() as pool:
        found = estimate_run(plan, out, pool, log=lambda m: None)
        assert 0 < found.debates_left < found.debates_total
        assert found.replies_left < 8 * 4
        assert "fidelity" not in found.stages  # checked before the crash
        sent = run_counted(plan, out, pool)
    assert_close(found, sent)


def test_price_per_million_gives_the_cost_and_a_limit_refuses(tmp_path: Path) -> None:
    priced = {**FAKE, "price_per_million": {"input": 2.5, "output": 10.0}}
    plan = plan_of(write_experiment(tmp_path, priced))
    found = estimate_run(plan, tmp_path / "runs", None)
    total = found.total
    assert found.cost == pytest.approx(
        (total.prompt_tokens * 2.5 + total.completion_tokens * 10) / 1e6
    )
    # Not measured: every reply is counted at max_tokens, so the bound is the estimate.
    assert found.cost is not None and found.cost_bound is not None
    assert found.cost_bound >= found.cost
    assert any(line.startswith("  cost: about $") for line in found.lines())
    assert "characters / 4" in found.token_method and found.seconds is None
    check_cost(found, found.cost_bound, yes=False, ask=None)  # at the limit: runs
    with pytest.raises(ConfigError, match=r"above --max-cost \$.*pass --yes"):
        check_cost(found, found.cost_bound / 2, yes=False, ask=None)
    check_cost(found, found.cost_bound / 2, yes=True, ask=None)
    with pytest.raises(ConfigError, match="not run"):
        check_cost(found, found.cost_bound / 2, yes=False, ask=lambda q: False)
    unpriced = estimate_run(plan_of(write_experiment(tmp_path, FAKE)), tmp_path / "runs", None)
    assert unpriced.cost is None
    assert any(line.startswith("  cost: no price") for line in unpriced.lines())


def test_a_bad_price_is_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = {**FAKE, "price_per_million": {"input": -1, "output": 2}}
    with pytest.raises(ConfigError, match=r"price_per_million\.input"):
        load_experiment(write_experiment(tmp_path, bad))
    with pytest.raises(ConfigError, match=r"price_per_1k_prompt.*moved.*price_per_million"):
        open_model(
            ModelConfig(
                name="m",
                backend="openai",
                base_urls=["http://127.0.0.1:9/v1"],
                options={"price_per_1k_prompt": 0.5},
            )
        )


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_dry_run_prints_the_estimate_and_runs_no_debate(tmp_path: Path) -> None:
    path = write_experiment(tmp_path, FAKE)
    result = cli("run", str(path), "--out", str(tmp_path / "runs"), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "estimate for exp: 8 of 8 debates" in result.output
    assert "dry run: no debate was run (models were opened" in result.output
    assert not (tmp_path / "runs" / "exp").exists()  # no folder, no store, no turn


def test_a_run_above_the_cost_limit_is_refused_without_a_terminal(tmp_path: Path) -> None:
    priced = {**FAKE, "price_per_million": {"input": 2.5, "output": 10.0}}
    path = write_experiment(tmp_path, priced)
    out = tmp_path / "runs"
    refused = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--max-cost", "0"])
    assert refused.exit_code != 0
    assert "pass --yes to run it anyway" in refused.output
    assert not (out / "exp").exists()
    ran = cli("run", str(path), "--out", str(out), "--max-cost", "0", "--yes", "--no-report")
    assert ran.exit_code == 0, ran.output
    assert (
        RunFolder(out / "exp")
        .open_store()
        .debates(str(RunFolder(out / "exp").read_meta()["run_id"]))
    )


def test_progress_lines_appear_when_output_is_not_a_terminal(tmp_path: Path) -> None:
    slow = {**FAKE, "options": {"reply": REPLY, "delay_s": 0.15}}
    path = write_experiment(tmp_path, slow, topics=["racism"], setups=["rr"], workers=1)
    result = cli(
        "run", str(path), "--out", str(tmp_path / "runs"), "--progress-every", "1", "--no-report"
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("progress: ")]
    assert lines, result.output
    assert all("/2 debates" in line and "ETA" in line and "elapsed" in line for line in lines)
    assert all("/8 replies" in line and "tokens" in line for line in lines)


def test_progress_lines_count_what_the_run_did(tmp_path: Path) -> None:
    plan = plan_of(write_experiment(tmp_path, FAKE))
    printed: list[str] = []
    with ModelPool() as pool:
        found = estimate_run(plan, tmp_path / "runs", None)
        with ProgressLines(found, pool.stats, printed.append, interval_s=30) as lines:
            execute(plan, tmp_path / "runs", log=lambda m: None, models=pool, events=lines.events())
            final = lines.line()
    assert final.startswith("progress: 8/8 debates · 32/32 replies · 48/48 survey points")
    with pytest.raises(ConfigError, match="above 0 s"):
        ProgressLines(found, pool.stats, printed.append, interval_s=0)


@pytest.mark.engine
def test_the_estimate_matches_a_real_engine_run(tmp_path: Path) -> None:
    """SmolLM2 135M, one two-agent debate of two replies; greedy replies, so the reply the
    measurement sees is the one the run writes (sampled replies of a two-reply debate
    vary in length by more than 10%: see docs/experiments.md)."""
    model = {"name": "smollm2-135m", "parallel": 2}
    path = write_experiment(
        tmp_path,
        model,
        topics=["climate change"],
        setups=["two-way"],
        repetitions=1,
        iterations=2,
        reply={"temperature": 0.0},
    )
    plan = plan_of(path)
    with ModelPool() as pool:
        found = estimate_run(plan, tmp_path / "runs", pool, log=lambda m: None)
        sent = run_counted(plan, tmp_path / "runs", pool)
    assert found.seconds is not None and "measured" in found.time_basis
    assert_close(found, sent)


def _part(name: str, requests: float, seconds: float | None, cost: float | None) -> Estimate:
    from stancelab.debates._estimate import Tally

    tally = Tally(requests, 10 * requests, 5 * requests, 2 * requests, 3 * requests)
    return Estimate(
        name,
        {"debates": tally},
        {name: tally},
        2,
        2,
        4,
        6,
        "counted",
        seconds,
        f"{name} measured",
        cost,
        None if cost is None else 2 * cost,
        [f"note {name}"],
    )


def test_estimates_add_up_and_models_at_once_take_the_longest() -> None:
    from stancelab.debates._estimate import combine_estimates

    a, b = _part("a", 10, 30.0, 1.0), _part("b", 20, 50.0, None)
    one_after_another = combine_estimates("both", [a, b])
    assert one_after_another.total.requests == 30
    assert one_after_another.stages["debates"].prompt_tokens == 300
    assert set(one_after_another.models) == {"a", "b"}
    assert (one_after_another.debates_left, one_after_another.points_left) == (4, 12)
    assert one_after_another.seconds == 80.0
    assert (one_after_another.cost, one_after_another.cost_bound) == (1.0, 2.0)
    assert one_after_another.notes == ["note a", "note b"]
    assert combine_estimates("both", [a, b], at_once=True).seconds == 50.0
    # A part with work left and no time measured leaves the whole without a time; a
    # finished part (no requests) does not.
    assert combine_estimates("x", [a, _part("c", 5, None, None)]).seconds is None
    assert combine_estimates("x", [a, _part("done", 0, None, None)]).seconds == 30.0
