"""Importing SAUCE experiment files and running them on stancelab's engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stancelab.conversation._templates import load_prompts
from stancelab.debates._debate import Debate, run_debates
from stancelab.debates._sauce import load_sauce
from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._fake import ScriptedModel

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
        (lambda d: d["host"].update({"class": "Random Host"}), "unknown SAUCE host"),
        (lambda d: d["host"].update({"skip": 0}), "host.skip: expected a whole number"),
        (lambda d: d["host"].update({"speed": 2}), r"host\.speed: not supported"),
        (lambda d: d.update({"logger": {}}), r"\.logger: not supported"),
        (lambda d: d["persons"][0].update({"mood": "calm"}), r"persons\[0\]\.mood: not supported"),
        (
            lambda d: d["persons"][0].update({"generation_model_name": "phi"}),
            r"persons\[0\]\.generation_model_name: not supported \(the model is",
        ),
        (lambda d: d["persons"][1].update({"class": "human"}), r"persons\[1\]\.class: 'human'"),
        (lambda d: d["persons"][1].update({"class": "robot"}), "unknown SAUCE person class"),
        (
            lambda d: d["persons"][0].update({"pass_turn_token": "<p>"}),
            r"persons\[0\]\.pass_turn_token: not supported",
        ),
        (lambda d: d["endType"].update({"start_iteration": 2}), "start_iteration: only 0"),
        (
            lambda d: d["experiment"]["survey_questions"][0].update({"weight": 1}),
            r"survey_questions\[0\]\.weight: not supported",
        ),
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


def sauce_file(tmp_path: Path, persons: list[dict[str, object]], **experiment: object) -> Path:
    data = {
        "persons": persons,
        "host": {"class": "Round Robin Host", "start_person_index": 0, "skip": 1},
        "endType": {"class": "iteration", "max_num_msgs": 4},
        "experiment": {"scenario": "You discuss the trolley problem.", **experiment},
    }
    path = tmp_path / "sauce.json"
    path.write_text(json.dumps(data))
    return path


TROLLEY: list[dict[str, object]] = [
    {
        "class": "async_group_discussant",
        "name": "Amanda",
        "background_story": "You are an attorney.",
        "opinion": "You are strongly in favour of pulling the lever.",
        "speaking_personality": "You are outgoing and speak up.",
        "in_context_learning": True,
    },
    {
        "class": "async_group_discussant",
        "name": "Jennifer",
        "background_story": "You are an accountant.",
        "opinion": "You feel ambivalent.",
        "speaking_personality": "You are quiet and rarely speak.",
    },
    {
        "class": "person_openai_completion",
        "name": "Robert",
        "background_story": "You are a doctor.",
        "opinion": "You are against pulling the lever.",
    },
]


def test_persons_with_opinions_and_asynchronous_persons(tmp_path: Path) -> None:
    spec = load_sauce(sauce_file(tmp_path, TROLLEY))
    assert [s.asynchronous for s in spec.speaking] == [True, True, False]
    assert spec.questions == () and not spec.ask_attitude
    debate = Debate(spec, load_prompts())
    assert debate.survey_iterations == []  # the file asks nothing: no survey at all
    # Opinion follows the scenario in the person's own context, nobody else's.
    first = debate.turn_prompt(0)
    assert isinstance(first, str)  # the paper's transcript format
    assert first.startswith(
        "You are an attorney.\n\nYou discuss the trolley problem.\n\n"
        "You are strongly in favour of pulling the lever.\n\n"
    )
    assert "in favour" not in debate.turn_prompt(1)
    decide = debate.decide_prompt(1)
    assert isinstance(decide, str)
    assert "You are quiet and rarely speak." in decide and "<wait>" in decide
    assert "For example" not in decide and "For example" in str(debate.decide_prompt(0))

    def reply(request: GenerationRequest) -> str:
        prompt = str(request.prompt)
        if request.temperature == 0:  # a decision: Jennifer (quiet) always waits
            return "<wait>" if "rarely speak" in prompt else "<speak>"
        return "Here is what I think."

    model = ScriptedModel(reply=reply)
    run_debates(model, [debate])
    # Chances go round robin; Jennifer passes each time, costing no message.
    assert [t.speaker for t in debate.turns] == [0, 2, 0, 2]
    assert debate.passes == 2
    speaks = [debate.decisions[c].speaks for c in sorted(debate.decisions)]
    assert speaks == [True, False, True, False]
    # Decisions are asked on a copy: no turn prompt ever carries one.
    for request in model.generated:
        if request.temperature != 0:
            assert "<wait>" not in str(request.prompt) and "Reply only" not in str(request.prompt)


def test_a_room_where_nobody_speaks_ends_with_a_clear_reason(tmp_path: Path) -> None:
    persons = [dict(p, **{"class": "async_group_discussant"}) for p in TROLLEY]
    debate = Debate(load_sauce(sauce_file(tmp_path, persons)), load_prompts())
    run_debates(ScriptedModel(reply=lambda r: "<wait>"), [debate])
    assert debate.failed is not None and "nobody chose to speak in 9 chances" in debate.failed
    assert debate.turns == []


def test_topic_adds_the_attitude_survey_and_random_host(tmp_path: Path) -> None:
    path = sauce_file(tmp_path, [*TROLLEY[2:], dict(TROLLEY[2], name="Sam")])
    data = json.loads(path.read_text())
    data["host"] = {"class": "random", "start_person_index": 1}
    path.write_text(json.dumps(data))
    spec = load_sauce(path, topic="the trolley problem")
    debate = Debate(spec, load_prompts())
    assert debate.survey_iterations == [0, 2, 4]
    assert "the trolley problem is a big problem" in str(debate.survey_prompt(0))
    run_debates(ScriptedModel(), [debate])
    speakers = [t.speaker for t in debate.turns]
    assert speakers[0] == 1 and len(speakers) == 4
    again = Debate(load_sauce(path, topic="the trolley problem"), load_prompts())
    run_debates(ScriptedModel(), [again])
    assert [t.speaker for t in again.turns] == speakers  # the seed fixes the host's draws
