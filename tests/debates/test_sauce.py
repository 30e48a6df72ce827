"""Importing SAUCE experiment files and running them on stancelab's engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stancelab.conversation.templates import load_prompts
from stancelab.debates.debate import Debate, run_debates
from stancelab.debates.sauce import load_sauce
from stancelab.engine.errors import ConfigError
from stancelab.engine.fake import ScriptedModel

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sauce-debate.json"


def test_example_imports_and_runs_with_its_schedule() -> None:
    spec = load_sauce(EXAMPLE)
    assert [p.name for p in spec.personas] == ["Abigail", "Aaron", "Sam"]
    assert spec.iterations == 6 and spec.first_speaker == 1
    kinds = {q.id: q.kind for q in spec.questions}
    assert kinds == {"attitude": "scale", "conclusion": "text"}
    model = ScriptedModel(
        reply=lambda r: " My conclusion is balance." if r.temperature == 0 else "A point.",
        continuations=lambda p: {" 8\n": 1.0},
    )
    debate = Debate(spec, load_prompts())
    run_debates(model, [debate])
    assert [t.speaker for t in debate.turns] == [1, 2, 0, 1, 2, 0]
    asked = sorted({(it, qid) for it, _, qid, _ in debate.surveys})
    assert asked == [(0, "attitude"), (3, "attitude"), (6, "attitude"), (6, "conclusion")]
    conclusions = [a for a in debate.surveys.values() if a.question_id == "conclusion"]
    assert len(conclusions) == 3 and all(a.ok and a.raw_text for a in conclusions)
    turn_prompt = debate.turn_prompt(0)
    assert "This is a debate about racism." in turn_prompt  # the scenario line
    assert "conclusion" not in turn_prompt and "On a scale" not in turn_prompt


def test_always_schedule(tmp_path: Path) -> None:
    data = json.loads(EXAMPLE.read_text())
    data["experiment"]["survey_questions"] = [
        {"id": "a", "iterations": "always", "question": "Rate it from 0 to 10."}
    ]
    path = tmp_path / "always.json"
    path.write_text(json.dumps(data))
    debate = Debate(load_sauce(path), load_prompts())
    run_debates(ScriptedModel(), [debate])
    assert sorted({it for it, _, _, _ in debate.surveys}) == list(range(7))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("persons"), "missing 'persons'"),
        (lambda d: d["persons"][0].pop("background_story"), "persons\\[0\\]: missing"),
        (lambda d: d["host"].update({"class": "Random Host"}), "only 'Round Robin Host'"),
        (lambda d: d["host"].update({"skip": 2}), "only skip 1"),
        (lambda d: d["endType"].update({"max_num_msgs": "six"}), "expected int"),
        (
            lambda d: d["experiment"]["survey_questions"][0].update({"iterations": "often"}),
            "use a list of numbers or 'always'",
        ),
        (lambda d: d["host"].update({"start_person_index": 7}), "first speaker 7"),
    ],
)
def test_bad_sauce_files(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(EXAMPLE.read_text())
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        load_sauce(path)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_sauce(path)
