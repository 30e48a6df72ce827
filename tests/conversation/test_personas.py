"""Persona sets: generation with the paper's meta-prompt, files, names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stancelab.conversation.personas import (
    PAPER_TOPICS,
    PersonaSet,
    generate_personas,
    ideology_lines,
    paper_topic,
    persona_names,
)
from stancelab.engine.base import GenerationRequest
from stancelab.engine.errors import ConfigError
from stancelab.engine.fake import ScriptedModel

TOPICS = [paper_topic(t) for t in PAPER_TOPICS]


def test_meta_prompt_is_the_papers() -> None:
    assert ideology_lines("democrat", TOPICS) == (
        "- Believes gun violence is a big problem.\n- Believes racism is a big problem.\n"
        "- Believes climate change is a big problem.\n"
        "- Doesn't believe that illegal immigration is a big problem."
    )
    assert ideology_lines("republican", TOPICS).endswith(
        "- Believes illegal immigration is a big problem."
    )


def story(request: GenerationRequest) -> str:
    assert isinstance(request.prompt, list)
    content = request.prompt[0]["content"]
    assert request.temperature == 1.0
    party = "Democrat" if "passionate Democrat partisan" in content else "Republican"
    return (
        "Sure! Here is a story:\n"
        f"You grew up in a small town and became a passionate {party}. You care about "
        "your community, your family and your country, and you speak up at every town "
        f"hall meeting. Seed {request.seed}."
    )


def test_generation_names_and_round_trip(tmp_path: Path) -> None:
    model = ScriptedModel(reply=story)
    personas = generate_personas(model, 3, TOPICS, seed=4)
    assert [p.kind for p in personas.personas] == ["republican"] * 3 + ["democrat"] * 3
    names = [p.name for p in personas.personas]
    assert len(set(names)) == 6 and "Sam" not in names
    first = personas.personas[0]
    assert first.background.startswith(f"Your name is {first.name}. You grew up")
    assert "Sure!" not in first.background
    assert "Use the second person singular" in model.generated[0].prompt[0]["content"]  # type: ignore[index]
    personas.save(tmp_path / "p.yaml")
    loaded = PersonaSet.load(tmp_path / "p.yaml")
    assert loaded.personas == personas.personas
    assert loaded.meta["seed"] == 4
    assert persona_names(6, 4, {"Sam"}) == names


def test_unusable_stories_are_retried_then_refused() -> None:
    calls = {"n": 0}

    def flaky(request: GenerationRequest) -> str:
        calls["n"] += 1
        return "No." if calls["n"] % 2 else story(request)

    assert len(generate_personas(ScriptedModel(reply=flaky), 2, TOPICS).personas) == 4
    with pytest.raises(ConfigError, match="usable stories"):
        generate_personas(ScriptedModel(reply=lambda r: "No."), 1, TOPICS, max_retries=1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"personas": [{"name": "A", "kind": "republican", "background": "  "}]},
            "empty background story",
        ),
        ({"personas": [{"name": "A", "kind": "republican"}]}, "lacks \\['background'\\]"),
        (
            {
                "personas": [
                    {"name": "A", "kind": "democrat", "background": "x"},
                    {"name": "A", "kind": "democrat", "background": "y"},
                ]
            },
            "repeated: \\['A'\\]",
        ),
        ({"people": []}, "needs a 'personas:' list"),
        ({"format_version": 9, "personas": []}, "format_version 9"),
    ],
)
def test_bad_persona_files(tmp_path: Path, content: dict[str, object], message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        PersonaSet.load(path)
