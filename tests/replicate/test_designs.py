"""The paper's designs validate as experiments and run; findings read a real stored run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

import stancelab as sl
from stancelab.conversation._personas import Persona, PersonaSet
from stancelab.debates._experiment import load_experiment
from stancelab.engine._base import GenerationRequest
from stancelab.engine._fake import ScriptedModel
from stancelab.engine._registry import NoOptions
from stancelab.replicate import CLAIMS, SCALES, TUNING_CLAIMS, design, run_findings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = {"name": "planted", "backend": "replicate-planted"}


@pytest.mark.parametrize("scale", sorted(SCALES))
def test_every_scale_validates_as_an_experiment_file(scale: str, tmp_path: Path) -> None:
    experiments = design("taubenfeld2024", scale, "qwen2.5-coder-1.5b", prompt_format="chat")
    paper_keys = list(yaml.safe_load((EXAMPLES / "paper.yaml").read_text()))
    size = SCALES[scale]
    setups: list[str] = []
    for name, mapping in experiments.items():
        assert list(mapping) == paper_keys  # the example's keys, in its order
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(mapping))
        config = load_experiment(path)
        assert config.name == name and config.model.name == "qwen2.5-coder-1.5b"
        assert config.prompt_format == "chat"
        assert [t.name for t in config.topics] == list(size.topics)
        assert config.repetitions == size.repetitions
        three_way = [s.name for s in config.setups] == ["three-way"]
        assert config.iterations == (size.fig3_iterations if three_way else size.iterations)
        setups += [s.name for s in config.setups]
    assert sorted(setups) == sorted(["three-way", "two-way", "rr-default", "rr", "dd-default"])
    # All experiments of a design share one persona file: stories written once.
    assert len({m["personas"]["file"] for m in experiments.values()}) == 1


def test_the_paper_scale_is_the_papers_design() -> None:
    experiments = design("taubenfeld2024", "paper", {"name": "org/Model 7B", "parallel": 8})
    fig3, later = experiments.values()
    assert (fig3["setups"], fig3["iterations"], fig3["repetitions"]) == (["three-way"], 30, 40)
    assert later["iterations"] == 9 and len(fig3["topics"]) == 4
    assert list(experiments) == [
        "taubenfeld2024-paper-Model-7B-fig3",
        "taubenfeld2024-paper-Model-7B-later",
    ]
    assert fig3["model"] == {"name": "org/Model 7B", "parallel": 8}


def test_unknown_paper_or_scale_is_one_line_naming_the_choices() -> None:
    with pytest.raises(
        sl.ConfigError, match="unknown scale 'huge'; choose one of: smoke, quick, paper"
    ):
        design("taubenfeld2024", "huge", "m")
    with pytest.raises(
        sl.ConfigError, match="unknown paper 'jiang2099'; choose one of: taubenfeld2024"
    ):
        design("jiang2099", "smoke", "m")


# A planted model: every persona's pre-debate answer depends on its story, and partisans
# move toward the Default's 6.0 as the debate goes on (more in the first cycle), while the
# Default stays within a fifth of a point.
TURN = "I see it so."
PERSONA = re.compile(r"You are ([RD])(\d+), a")
SPEAKER = re.compile(r"\bR(\d+):")


def planted_score(prompt: str) -> float:
    turns = prompt.count(TURN)
    own = PERSONA.search(prompt)
    if own is None:  # the Default agent
        heard = SPEAKER.search(prompt)
        return 6.0 + (0.02 * int(heard.group(1)) if heard else 0.0)
    party, index = own.group(1), int(own.group(2))
    start = 2.0 + 0.2 * index if party == "R" else 8.5 - 0.1 * index
    decay = 0.45 + 0.02 * index
    return 6.0 + (start - 6.0) * float(decay ** (turns / 3))


def continuations(prompt: str) -> dict[str, float]:
    """The score as a mixture of the two whole answers around it."""
    score = planted_score(prompt)
    low = math.floor(score)
    return {f" {low}\n": 1 - (score - low), f" {low + 1}\n": score - low}


@sl.backend("replicate-planted")
def _open_planted(config: sl.ModelConfig, options: NoOptions) -> ScriptedModel:
    def reply(request: GenerationRequest) -> str:
        return TURN

    return ScriptedModel(reply=reply, continuations=continuations)


def test_findings_of_a_real_run_of_the_smoke_design(tmp_path: Path) -> None:
    personas = PersonaSet(
        [
            Persona(f"{p}{i}", kind, f"You are {p}{i}, a {kind.capitalize()}.")
            for p, kind in (("R", "republican"), ("D", "democrat"))
            for i in range(12)
        ],
        {"source": "test"},
    )
    personas.save(tmp_path / "personas.yaml")
    (experiment,) = design("taubenfeld2024", "smoke", MODEL, prompt_format="transcript").values()
    # The smoke design with enough debates for every test to run: 12 per setup.
    experiment |= {
        "repetitions": 12,
        "iterations": 6,
        "personas": {"file": str(tmp_path / "personas.yaml")},
        "survey": {"modes": ["distribution"]},
    }
    run = sl.run(experiment, out=tmp_path / "runs", log=None)
    assert run.status == "complete"
    table = run_findings(run)
    assert set(table["claim_id"]) == set(CLAIMS) - set(TUNING_CLAIMS)
    assert (table["model"] == "planted").all() and (
        table["topic"].isin(["climate change", "all"])
    ).all()
    wrong = table[table["verdict"] != "reproduced"]
    assert wrong.empty, wrong[["claim_id", "setup", "estimate", "ci_low", "ci_high", "note"]]
    by_claim = table.set_index(["claim_id", "setup"])
    # The planted numbers: the Default gains 0.02 x the Republican's index (0..11) over a
    # debate; the first cycle makes 1 / (1 + decay) of the change, 0.60 to 0.69.
    assert by_claim.loc[("default-stable", "three-way"), "estimate"] == pytest.approx(
        0.11, abs=0.02
    )
    assert 0.6 < by_claim.loc[("first-cycle", "three-way"), "estimate"] < 0.69
    assert by_claim.loc[("no-crossing", "three-way"), "n"] == 12
    held = table[table["claim_id"] == "personas-hold"].iloc[0]
    # Democrats 8.5 - 0.1 i against Republicans 2 + 0.2 i, i = 0..11: 7.95 - 3.1 = 4.85.
    assert held["estimate"] == pytest.approx(4.85, abs=0.01) and held["n"] == 24
