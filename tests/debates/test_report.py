"""Reports: statistics that can be checked by hand, figures, escaped HTML."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from stancelab.conversation._personas import Persona, PersonaSet
from stancelab.debates._experiment import load_experiment
from stancelab.debates._report import change_statistics, default_gap, write_report
from stancelab.debates._runner import ModelPool, RunFolder, run_experiment
from stancelab.engine._base import GenerationRequest
from stancelab.engine._fake import ScriptedModel


def frame_with(changes: list[tuple[float, float]]) -> pd.DataFrame:
    rows = []
    for k, (first, last) in enumerate(changes):
        for iteration, score in ((0, first), (3, last)):
            rows.append(
                {
                    "debate_id": k,
                    "topic": "t",
                    "setup": "s",
                    "repetition": k,
                    "iteration": iteration,
                    "agent_index": 0,
                    "name": f"A{k}",
                    "kind": "republican",
                    "question_id": "attitude",
                    "mode": "distribution",
                    "ok": True,
                    "score": score,
                }
            )
    return pd.DataFrame(rows)


def test_change_statistics_by_hand() -> None:
    # Five debates: the fewest the tests take (statistics.MIN_N).
    stats = change_statistics(frame_with([(2, 4), (3, 6), (4, 5), (1, 4), (5, 7)]))
    [row] = stats.to_dict("records")
    diffs = [2, 3, 1, 3, 2]
    mean = sum(diffs) / 5
    sd = (sum((d - mean) ** 2 for d in diffs) / 4) ** 0.5
    assert row["n"] == 5 and row["mean_change"] == pytest.approx(mean)
    assert row["cohens_dz"] == pytest.approx(mean / sd)
    assert row["t_test_p"] < 0.05
    assert 0 < row["wilcoxon_p"] <= 1


def test_default_gap_and_crossing() -> None:
    table = pd.DataFrame(
        [
            {
                "topic": "t",
                "setup": "s",
                "mode": "m",
                "kind": "republican",
                "iteration": 0,
                "mean": 2.0,
            },
            {
                "topic": "t",
                "setup": "s",
                "mode": "m",
                "kind": "republican",
                "iteration": 3,
                "mean": 7.0,
            },
            {
                "topic": "t",
                "setup": "s",
                "mode": "m",
                "kind": "democrat",
                "iteration": 0,
                "mean": 9.0,
            },
            {
                "topic": "t",
                "setup": "s",
                "mode": "m",
                "kind": "democrat",
                "iteration": 3,
                "mean": 7.0,
            },
        ]
    )
    gaps = default_gap(table, {"t": 6.0}).set_index("kind")
    assert gaps.loc["republican", "crosses_default"]
    assert gaps.loc["republican", "gap_first"] == pytest.approx(-4.0)
    assert not gaps.loc["democrat", "crosses_default"]
    assert gaps.loc["democrat", "default_source"] == "pre-debate"


def test_html_report_of_a_run(tmp_path: Path) -> None:
    PersonaSet(
        [Persona("R0", "republican", "You are R0."), Persona("D0", "democrat", "You are D0.")], {}
    ).save(tmp_path / "p.yaml")
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "rep",
                "model": "fake",
                "topics": ["racism"],
                "setups": ["two-way"],
                "repetitions": 1,
                "iterations": 4,
                "personas": {"file": "p.yaml"},
            }
        )
    )

    def reply(request: GenerationRequest) -> str:
        return "<script>alert(1)</script> fair point"

    model = ScriptedModel(reply=reply, continuations=lambda p: {" 4\n": 0.5, " 8\n": 0.5})
    config = load_experiment(path)
    run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs",
        log=lambda m: None,
        models=ModelPool(opener=lambda cfg: model),
    )
    index = write_report(RunFolder(tmp_path / "runs" / "rep"))
    html = index.read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert (index.parent / "two-way-distribution.png").stat().st_size > 1000
    assert "does not hold its personas" in html  # every persona answered 6
    means = pd.read_csv(index.parent / "attitude_means.csv")
    assert set(means["iteration"]) == {0, 2, 4}
    assert (means["mean"] == 6.0).all()


def test_tuned_conditions_are_averaged_over_seeds_and_drawn_dotted(tmp_path: Path) -> None:
    from stancelab.debates._analysis import attitude_frame, mean_attitudes
    from stancelab.debates._report import setup_figure, tuning_effects
    from stancelab.debates._store import Store
    from stancelab.engine._factory import ModelConfig

    PersonaSet(
        [Persona(f"R{i}", "republican", f"You are R{i}.") for i in range(2)]
        + [Persona(f"D{i}", "democrat", f"You are D{i}.") for i in range(2)],
        {},
    ).save(tmp_path / "p.yaml")
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "ft",
                "model": "fake",
                "topics": ["racism"],
                "setups": ["three-way"],
                "repetitions": 2,
                "iterations": 3,
                "personas": {"file": "p.yaml"},
                "conditions": [
                    {"name": "base"},
                    {"name": "r8-s0", "label": "r=8", "model": "fake-s0", "tuned": True},
                    {"name": "r8-s1", "label": "r=8", "model": "fake-s1", "tuned": True},
                ],
            }
        )
    )
    # Every agent answers 5 on the base model, 6 and 8 on the two seeds of the tuned one.
    scores = {"fake": " 5\n", "fake-s0": " 6\n", "fake-s1": " 8\n"}

    def opener(cfg: ModelConfig) -> ScriptedModel:
        answer = scores[cfg.name]
        return ScriptedModel(reply=lambda r: "fine words", continuations=lambda p: {answer: 1.0})

    config = load_experiment(path)
    run_experiment(
        config,
        path.read_text(),
        tmp_path / "runs",
        log=lambda m: None,
        models=ModelPool(opener=opener),
    )
    folder = RunFolder(tmp_path / "runs" / "ft")
    store = Store(folder.db)
    frame = attitude_frame(store, folder.read_meta()["run_id"])
    assert set(frame["condition"]) == {"base", "r=8"}
    table = mean_attitudes(frame)
    tuned = table[table["condition"] == "r=8"]
    assert (tuned["mean"] == 7.0).all() and (tuned["n"] == 4).all()  # 2 seeds x 2 reps
    assert (table[table["condition"] == "base"]["mean"] == 5.0).all()

    effects = tuning_effects(frame)
    assert set(effects["condition"]) == {"r=8"} and (effects["difference"] == 2.0).all()
    assert (effects["n"] == 2).all()  # paired by repetition, seeds averaged first

    fig = setup_figure(table, "three-way", "distribution", {})
    styles = {bars.get_label(): bars.lines[0].get_linestyle() for bars in fig.axes[0].containers}
    assert styles == {
        "republican (base)": "-",
        "democrat (base)": "-",
        "default (base)": "-",
        "republican (r=8)": ":",
        "democrat (r=8)": ":",
        "default (r=8)": ":",
    }

    index = write_report(folder)
    html = index.read_text()
    assert "Tuned against base models" in html
    saved = pd.read_csv(index.parent / "tuning_effect.csv")
    assert saved["difference"].tolist() == [2.0, 2.0, 2.0]
