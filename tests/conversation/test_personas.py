"""Persona sets: generation with the paper's meta-prompt, files, names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stancelab.conversation._personas import (
    PAPER_TOPICS,
    PersonaSet,
    StoryDraft,
    generate_personas,
    ideology_lines,
    name_story,
    paper_topic,
    persona_names,
    reads_as_story,
    write_story,
)
from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._fake import ScriptedModel

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
        "hall meeting on guns, racism, the climate and immigration. "
        f"Seed {request.seed}."
    )


@pytest.mark.parametrize(
    ("draft", "usable"),
    [
        (
            "You grew up in Texas. You think guns keep families safe, racism is a thing of "
            "the past and the climate has always changed.",
            True,
        ),
        (
            "I'll be happy to craft a background story about a passionate Democrat partisan "
            "that aligns with your beliefs. How would you like to proceed?",
            False,
        ),
        (
            '{"name": "Tom", "political_affiliation": "Republican", "racism": "false", '
            '"climate_change": "false", "gun_violence": "false"}',
            False,
        ),
        (
            "You grew up on a farm in Ohio and you love your family, your church, your dog "
            "and the county fair every single summer.",
            False,
        ),
        ("You believe racism and gun violence are big problems.", False),
    ],
)
def test_only_prose_on_the_ideology_counts_as_a_story(draft: str, usable: bool) -> None:
    assert reads_as_story(draft, TOPICS) is usable


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


@pytest.mark.parametrize(
    ("story", "expected"),
    [
        # The seen failure: a second name and a foreign protagonist.
        (
            "Your name is Jacob. Throughout the years, Brett has grown up reading pamphlets.",
            None,
        ),
        (
            "Your name is Jacob. You grew up in Texas, and Jacob loves guns.",
            "You grew up in Texas, and Aaron loves guns.",
        ),
        (
            "You are Jacob, a rancher from Ohio. You love guns.",
            "You are Aaron, a rancher from Ohio. You love guns.",
        ),
        ("You grew up in Ohio. Your wife Sarah is a teacher.", None),
        (
            "You grew up in Ohio. America and the Second Amendment matter to you.",
            "You grew up in Ohio. America and the Second Amendment matter to you.",
        ),
    ],
)
def test_the_agents_name_is_the_storys_only_name(story: str, expected: str | None) -> None:
    assert name_story(story, "Aaron") == expected


def test_stories_naming_others_are_redrawn_then_trimmed() -> None:
    drafts = iter(
        [
            "You are Jacob's neighbour. Brett has grown up next to you and Brett votes often.",
            "You grew up in Ohio and love your town. Your wife Sarah teaches at the school. "
            "You believe the border must be secured and you speak at every meeting in town.",
        ]
    )
    model = ScriptedModel(reply=lambda r: next(drafts))
    story, attempts = write_story(model, "Write a story.", "Aaron", [1, 2], 64)
    assert attempts == 2
    assert story is not None and "Sarah" not in story and story.startswith("You grew up")


def test_stories_are_handed_over_one_by_one_and_finished_ones_are_not_rewritten() -> None:
    seen: list[StoryDraft] = []
    model = ScriptedModel(reply=story)
    first = generate_personas(model, 2, TOPICS, seed=1, on_story=seen.append, prompt_format="chat")
    assert len(seen) == 4 and len(model.generated) == 4
    again = ScriptedModel(reply=story)
    second = generate_personas(again, 2, TOPICS, seed=1, done=seen[:3], prompt_format="chat")
    assert len(again.generated) == 1
    assert [p.name for p in second.personas] == [p.name for p in first.personas]


def test_transcript_format_sends_the_meta_prompt_as_text() -> None:
    model = ScriptedModel(reply=lambda r: story(_as_chat(r)))
    generate_personas(model, 1, TOPICS, prompt_format="transcript")
    prompt = model.generated[0].prompt
    assert isinstance(prompt, str) and prompt.startswith("Create a background story")
    assert prompt.endswith("ideology.\n\n")


def _as_chat(request: GenerationRequest) -> GenerationRequest:
    assert isinstance(request.prompt, str)
    return GenerationRequest(
        [{"role": "user", "content": request.prompt}], request.temperature, seed=request.seed
    )


def test_second_person_stories_are_preferred_but_not_required() -> None:
    first_person = (
        "I grew up in a small town in Ohio and I became a passionate partisan. My family "
        "and my church shaped what I believe about my country."
    )
    second = (
        "You grew up in a small town in Ohio and you became a passionate partisan. Your "
        "family and your church shaped what you believe about your country."
    )
    drafts = iter([first_person, second])
    story, attempts = write_story(
        ScriptedModel(reply=lambda r: next(drafts)), "Write.", "Aaron", [1, 2, 3], 64
    )
    assert (story, attempts) == (second, 2)
    stubborn = ScriptedModel(reply=lambda r: first_person)
    assert write_story(stubborn, "Write.", "Aaron", [1, 2], 64) == (first_person, 2)


@pytest.mark.engine
def test_the_embedded_model_writes_one_story_per_party() -> None:
    """The paper's Figure 1 on a real engine: one request in flight at a time (one slot,
    one worker), so the seeded draws come out the same on every run."""
    import stancelab as sl
    from stancelab.conversation import generate_personas

    with sl.load_model({"name": "smollm2-135m", "parallel": 1}) as lm:
        written = generate_personas(lm, 1, seed=0, workers=1)
    kinds = sorted(p.kind for p in written.personas)
    assert kinds == ["democrat", "republican"]
    for persona in written.personas:
        assert persona.name in persona.background and len(persona.background.split()) >= 20
