"""The tuning claims (``tuning-shifts-default``, ``dpo-shifts-more``) on attitude frames
shaped like the tuning pipeline's debates run, every verdict worked out from planted
trajectories; Table 1's layout; and ``--tuning`` refused in one line before anything
runs where it cannot work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import stancelab as sl
from stancelab.cli import app
from stancelab.conversation import Topic
from stancelab.replicate import CLAIMS
from stancelab.replicate._findings import tuning_findings
from stancelab.replicate._tuning import TUNING_SCALES, finetune_config

from . import moving
from .test_command import MOVING, closed_port

SEEDS = (0, 1, 2)
SURVEYS = (0, 3, 6)


def variant_rows(
    finals: Mapping[str, float],
    topic: str = "racism",
    debates: int = 6,
    seeds: Sequence[int] = SEEDS,
    noise: float = 0.3,
    seed_offsets: Mapping[int, float] | None = None,
    rng_seed: int = 0,
) -> pd.DataFrame:
    """The three-way debates of a tuning run in attitude_frame's shape: per variant group
    (``base``, ``r=256 NWP``, ``r=8 DPO``; tuned groups once per training seed, named as
    the pipeline names its conditions), ``debates`` debates whose Default agent moves from
    the base's start to the group's planted final score (with noise per debate)."""
    rng = np.random.default_rng(rng_seed)
    start = finals["base"]
    rows: list[dict[str, object]] = []
    debate_id = 0
    for group, final in finals.items():
        tuned = group != "base"
        rank, kind = group.split(" ") if tuned else ("", "base")
        label = f"{kind.lower()}-{rank.replace('=', '')}"  # nwp-r256, as the pipeline names
        names = [f"{label}-s{s}" for s in seeds] if tuned else ["base"]
        for s, name in zip(seeds, names, strict=False):
            shift = (seed_offsets or {}).get(s, 0.0) if tuned else 0.0
            for repetition in range(debates):
                debate_id += 1
                end = final + shift + rng.normal(0, noise)
                for index, agent in enumerate(("republican", "democrat", "default")):
                    for k, iteration in enumerate(SURVEYS):
                        at = {"republican": 2.0, "democrat": 8.0}.get(agent)
                        score = at if at is not None else start + (end - start) * k / 2
                        rows.append(
                            {
                                "debate_id": debate_id,
                                "condition_name": name,
                                "condition": group,
                                "tuned": tuned,
                                "topic": topic,
                                "setup": "republican-democrat-default",
                                "repetition": repetition,
                                "iteration": iteration,
                                "agent_index": index,
                                "name": f"{agent}{index}",
                                "kind": agent,
                                "question_id": "attitude",
                                "mode": "distribution",
                                "ok": True,
                                "score": float(np.clip(score, 0, 10)),
                            }
                        )
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    return {(r.claim_id, r.setup, r.topic): r.verdict for r in table.itertuples(index=False)}


def test_the_paper_pattern_is_reproduced() -> None:
    """Table 1's pattern: base Default at 8.4 on racism, NWP lower, DPO lowest (toward
    Republican is down on racism)."""
    frame = variant_rows({"base": 8.4, "r=256 NWP": 5.0, "r=8 DPO": 1.0})
    table = tuning_findings(frame, model="m", party="republican")
    assert verdicts(table) == {
        ("tuning-shifts-default", "republican · r=256 NWP", "racism"): "reproduced",
        ("tuning-shifts-default", "republican · r=8 DPO", "racism"): "reproduced",
        ("dpo-shifts-more", "republican · r=8 DPO vs r=256 NWP", "racism"): "reproduced",
    }
    shift = table.set_index("setup")["estimate"]
    # Signed toward the Republican side: lower on racism is positive.
    assert shift["republican · r=256 NWP"] == pytest.approx(3.4, abs=0.3)
    assert shift["republican · r=8 DPO vs r=256 NWP"] == pytest.approx(4.0, abs=0.3)
    # Each planted shift lies inside its row's 95% CI.
    planted = {"republican · r=256 NWP": 3.4, "republican · r=8 DPO": 7.4}
    planted["republican · r=8 DPO vs r=256 NWP"] = 4.0
    for row in table.itertuples(index=False):
        assert row.ci_low <= planted[row.setup] <= row.ci_high, row.setup
    # Seeds pooled, the debate is the unit: 3 seeds x 6 debates against 6 base debates.
    assert list(table["n"]) == [24, 24, 36]
    assert table["test"].eq("Welch t").all()
    assert table["note"].str.contains("debates as units, seeds pooled").all()
    assert list(table.columns) == [
        "paper", "claim_id", "claim", "model", "setup", "topic", "mode", "estimate",
        "ci_low", "ci_high", "threshold", "verdict", "n", "test", "note",
    ]  # fmt: skip


def test_a_shift_away_from_the_tuned_party_is_not_reproduced() -> None:
    """Tuned toward Democrat on illegal immigration (the Democrat's side is down), but the
    Default moved up; DPO moved less than NWP."""
    frame = variant_rows(
        {"base": 5.0, "r=256 NWP": 8.0, "r=8 DPO": 6.5}, topic="illegal immigration"
    )
    table = tuning_findings(frame, model="m", party="democrat")
    assert verdicts(table) == {
        ("tuning-shifts-default", "democrat · r=256 NWP", "illegal immigration"): "not reproduced",
        ("tuning-shifts-default", "democrat · r=8 DPO", "illegal immigration"): "not reproduced",
        ("dpo-shifts-more", "democrat · r=8 DPO vs r=256 NWP", "illegal immigration"): (
            "reproduced"  # DPO's 6.5 is less far up than NWP's 8: further toward Democrat
        ),
    }
    assert (table["estimate"].iloc[:2] < 0).all()


def test_no_move_and_too_few_debates_are_inconclusive() -> None:
    noisy = variant_rows({"base": 6.0, "r=256 NWP": 6.0, "r=8 DPO": 6.0}, noise=1.5)
    table = tuning_findings(noisy, model="m", party="republican")
    assert set(table["verdict"]) == {"inconclusive"}
    assert (table["ci_low"] < 0).all() and (table["ci_high"] > 0).all()
    few = variant_rows({"base": 8.4, "r=256 NWP": 2.0, "r=8 DPO": 0.5}, debates=2, seeds=[0])
    table = tuning_findings(few, model="m", party="republican")
    assert set(table["verdict"]) == {"inconclusive"}
    assert table["estimate"].isna().all()
    assert table["note"].str.contains("too few to test: n=2 < 5").all()


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # the base has no spread
def test_the_seed_spread_is_in_the_note() -> None:
    frame = variant_rows(
        {"base": 8.0, "r=256 NWP": 5.0}, noise=0.0, seed_offsets={0: -1.0, 1: 0.0, 2: 1.0}
    )
    [row] = tuning_findings(frame, model="m", party="republican").itertuples(index=False)
    # Signed toward Republican (down on racism): seeds at 4, 5, 6 are +4, +3, +2 from 8.
    assert "r=256 NWP: 3 seed(s), per-seed means +2.00 to +4.00" in row.note
    assert row.estimate == pytest.approx(3.0) and row.verdict == "reproduced"


def test_identical_debates_give_the_exact_difference() -> None:
    frame = variant_rows({"base": 8.0, "r=8 DPO": 1.0}, noise=0.0)
    [row] = tuning_findings(frame, model="m", party="republican").itertuples(index=False)
    assert (row.estimate, row.ci_low, row.ci_high) == (7.0, 7.0, 7.0)
    assert row.verdict == "reproduced" and "the CI is 7" in row.note


def test_topics_without_a_party_position_and_chosen_claims() -> None:
    frame = variant_rows({"base": 8.0, "r=256 NWP": 4.0, "r=8 DPO": 2.0}, topic="taxes")
    assert tuning_findings(frame, model="m", party="republican").empty
    positioned = [Topic("taxes", "republican")]
    table = tuning_findings(
        frame, model="m", party="republican", topics=positioned, claims=["dpo-shifts-more"]
    )
    # Taxes a big problem for Republicans: up is their side, so lower is away from it.
    assert list(table["claim_id"]) == ["dpo-shifts-more"]
    assert list(table["verdict"]) == ["not reproduced"]


def test_the_tuning_claims_are_the_papers_and_documented() -> None:
    for claim_id in ("tuning-shifts-default", "dpo-shifts-more"):
        claim = CLAIMS[claim_id]
        assert claim.paper == "taubenfeld2024" and claim.threshold == 0 and claim.side == "above"
        assert "seeds" in claim.definition
    docs = (Path(__file__).resolve().parents[2] / "docs" / "replicate.md").read_text()
    assert "`tuning-shifts-default`" in docs and "`dpo-shifts-more`" in docs


def test_the_scales_follow_the_paper(tmp_path: Path) -> None:
    paper = finetune_config("paper", "smollm2-135m", "republican", tmp_path)
    assert paper.ranks == [16, 64, 128, 256] and paper.seeds == [0, 1, 2]
    assert paper.questions.count == 100 and paper.dataset.answers_per_question == 20
    assert paper.dpo is not None and paper.dpo.lora.r == 8 and paper.dpo_rank == 256
    assert paper.debates is not None and paper.debates.iterations == 9
    assert paper.debates.repetitions == 40 and len(paper.debates.topics) == 4
    assert paper.evaluation is None  # no benchmark files, no network: not measured
    assert set(TUNING_SCALES["paper"].parties) == {"republican", "democrat"}
    smoke = finetune_config(
        "smoke", "smollm2-135m", "republican", tmp_path, tasks=["mmlu"], benchmarks=tmp_path
    )
    assert smoke.questions.count == 10 and smoke.dataset.answers_per_question == 1
    assert smoke.seeds == [0] and smoke.nwp.max_steps == 2
    assert smoke.evaluation is not None and smoke.evaluation.data_dir == tmp_path.resolve()
    # Both directions of a model share one question bank, as in the paper.
    democrat = finetune_config("paper", "smollm2-135m", "democrat", tmp_path)
    assert democrat.questions.file == paper.questions.file


@pytest.fixture(autouse=True)
def _no_calls() -> None:
    moving.CALLS["n"] = 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", "{name: gpt, backend: openai, base_urls: ['http://127.0.0.1:PORT/v1']}"],
            "model 'gpt': --tuning trains LoRA adapters on local weights and backend 'openai' "
            "serves a remote model; give an embedded model name or a GGUF path",
        ),
        (["--model", MOVING], "backend 'replicate-moving' takes no LoRA adapters"),
        (
            ["--model", "smollm2-135m", "--benchmarks", "nowhere"],
            "--benchmarks nowhere: no such folder",
        ),
        (
            ["--model", "smollm2-135m", "--claims", "tuning-shifts-default,dpo-shifts-less"],
            "unknown claim id 'dpo-shifts-less' for taubenfeld2024",
        ),
    ],
)
def test_tuning_bad_input_is_one_line_and_runs_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "runs"
    args = [a.replace("PORT", str(closed_port())) for a in args]
    command = ["replicate", "taubenfeld2024", "--tuning", *args, "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert result.output.count("error:") == 1
    assert not out.exists() and moving.CALLS["n"] == 0


def test_tuning_is_only_for_the_debate_paper(tmp_path: Path) -> None:
    with pytest.raises(sl.ConfigError, match="--tuning is for taubenfeld2024, not jiang2025"):
        sl.replicate("jiang2025", model="smollm2-135m", tuning=True, out=tmp_path, log=None)


def test_without_tuning_the_report_says_to_pass_it(tmp_path: Path) -> None:
    rep = sl.replicate(
        "taubenfeld2024",
        model={"name": "alpha", "backend": "replicate-moving"},
        setups=["three-way"],
        claims=["tuning-shifts-default"],
        out=tmp_path,
        log=None,
    )
    assert list(rep.findings()["claim_id"]) == ["personas-hold"]  # no tuning ran
    assert rep.table1().empty
    assert "pass --tuning" in rep.report().read_text()


def test_a_dry_run_counts_the_intervention_too_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    bench = Path(__file__).resolve().parents[2] / "examples" / "finetune-bench"
    command = ["replicate", "taubenfeld2024", "--model", "smollm2-135m", "--tuning"]
    options = ["--setups", "three-way", "--benchmarks", str(bench), "--out", str(out)]
    result = CliRunner().invoke(app, [*command, *options, "--dry-run", "--no-measure"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # the console may wrap long lines
    assert "estimate for taubenfeld2024 at smoke scale: 2 of 2 debates to run" in text
    name = "taubenfeld2024-tuning-smoke-smollm2-135m-republican"
    assert f"estimate for finetune {name}" in text
    # Smoke: Table 2's 10 questions x 1 answer x 2 parties; r=16 NWP and r=8 DPO, 1 seed;
    # 1 debate on the base model and on each tuned one.
    assert "answers: 20 to write" in text
    assert "training nwp-r16-s0" in text and "training dpo-r8-s0" in text
    assert "3 of 3 debates to run" in text
    assert "dry run: no debate was run and nothing was trained" in text
    assert not out.exists()


def test_both_directions_share_the_questions_and_answers_counted_once(tmp_path: Path) -> None:
    from stancelab.engine._factory import model_config
    from stancelab.replicate._tuning import estimate_tuning, tuning_configs

    configs = tuning_configs(model_config("smollm2-135m"), "quick", tmp_path)
    assert [c.party for c in configs] == ["republican", "democrat"]
    republican, democrat = configs
    assert republican.questions.file == democrat.questions.file
    assert republican.dataset.folder == democrat.dataset.folder is not None
    assert republican.output_dir != democrat.output_dir
    first, second = estimate_tuning(configs, measure=False, log=lambda _: None)
    # 30 questions x 5 answers x 2 parties, written once for both directions.
    assert first.answers_left == 300 and "answers" in first.stages
    assert second.answers_left == 0 and "answers" not in second.stages
    assert "questions" not in second.chosen and "nwp" in second.chosen
    assert any("shared with the republican run" in note for note in second.notes)
    assert second.adapters  # its own training is counted
    assert not tmp_path.joinpath("runs").exists() and not any(tmp_path.iterdir())
