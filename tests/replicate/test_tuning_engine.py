"""``replicate(..., tuning=True)`` end to end on SmolLM2-135M: the debate design, then the
self-fine-tuning intervention through the tuning pipeline (smoke scale: Table 2's ten
questions, one answer each, two training steps), its claims, Table 1 and the report; a
second call resumes without training again."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

import stancelab as sl
from stancelab.conversation._personas import BUILTIN_PERSONAS, PersonaSet
from stancelab.replicate import Replication

pytestmark = [pytest.mark.engine, pytest.mark.training]
pytest.importorskip("trl")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_tuning_runs_the_intervention_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    # SmolLM2-135M seldom writes a usable story: the design reads the built-in ones.
    builtin = [p for kind in ("republican", "democrat") for p in BUILTIN_PERSONAS[kind]]
    (out / "personas").mkdir(parents=True)
    PersonaSet(builtin, {"source": "built-in"}).save(
        out / "personas" / "taubenfeld2024-smoke-smollm2-135m.yaml"
    )
    lines: list[str] = []

    def replicate() -> Replication:
        return sl.replicate(
            "taubenfeld2024",
            model={"name": "smollm2-135m", "parallel": 2},
            scale="smoke",
            tuning=True,
            setups=["three-way"],
            benchmarks=EXAMPLES / "finetune-bench",
            out=out,
            log=lines.append,
            # The estimate's measuring has tests of its own (tests/tuning/test_estimate.py).
            measure=False,
        )

    started = time.perf_counter()
    rep = replicate()
    first_s = time.perf_counter() - started

    [run] = rep.tuning["smollm2-135m"]
    assert run.party == "republican"
    assert run.folder == (out / "taubenfeld2024-tuning-smoke-smollm2-135m-republican").resolve()
    assert run.stages["nwp"] == "ran" and run.stages["dpo"] == "ran"
    table = rep.findings()
    tuned = table[table["claim_id"].isin(["tuning-shifts-default", "dpo-shifts-more"])]
    assert list(tuned["setup"]) == [
        "republican · r=16 NWP",
        "republican · r=8 DPO",
        "republican · r=8 DPO vs r=16 NWP",
    ]
    assert (tuned["topic"] == "racism").all() and (tuned["model"] == "smollm2-135m").all()
    # Smoke scale: 1 debate per model, below the 5 a test needs.
    assert (tuned["n"] == 2).all() and (tuned["verdict"] == "inconclusive").all()
    assert tuned["note"].str.contains("too few to test").all()
    assert tuned["note"].str.contains("1 seed\\(s\\), per-seed means").all()

    table1 = rep.table1()
    assert list(table1["variant"]) == ["base", "r=16 NWP", "r=8 DPO"]
    for row in table1.itertuples():
        assert 0 <= row.mmlu <= 100 and 0 <= row.hellaswag <= 100
        assert 0 <= row.attitude <= 10
    assert list(table1["paper_mmlu"]) == [59.0, 57.6, 57.0]
    assert list(table1["seeds"]) == [0, 1, 1]
    page = rep.report().read_text()
    assert "Table 1: the cost of the intervention" in page and "Fig. 11" in page
    report = out / "replicate-taubenfeld2024-smoke"
    assert (report / "smollm2-135m-tuning-republican-republican-democrat-default.png").is_file()
    print(f"first call: {first_s:.0f} s")
    print(table1.to_string())

    lines.clear()
    started = time.perf_counter()
    again = replicate()
    print(f"second call: {time.perf_counter() - started:.0f} s")
    [resumed] = again.tuning["smollm2-135m"]
    trained = ("questions", "answers", "nwp", "dpo", "export", "debates", "evaluation")
    assert all(resumed.stages[stage] == "skipped" for stage in trained)
    assert again.table1().equals(table1)
    assert not any(math.isnan(v) for v in again.table1()["mmlu"])
