"""Prompt rendering alone: the same replies as a transcript or as chat messages."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from stancelab.conversation._templates import PromptFormat, PromptSet, load_prompts
from stancelab.debates._rendering import Rendering, decide_request, header
from stancelab.engine._errors import ConfigError

TRANSCRIPT = load_prompts()
CHAT = load_prompts(format="chat")


class Reply(NamedTuple):
    speaker: int
    text: str


REPLIES = [Reply(0, "Tax cuts."), Reply(1, "Schools."), Reply(2, "Both.")]


def rendering(prompts: PromptSet, formats: tuple[PromptFormat, ...]) -> Rendering:
    headers = tuple(header(TRANSCRIPT, f"I am {n}.", "taxes", 30) for n in ("Al", "Bo", "Cy"))
    return Rendering(prompts, ("Al", "Bo", "Cy"), headers, formats, 30)


def test_transcript_shows_the_agents_own_replies_as_me() -> None:
    view = rendering(TRANSCRIPT, (PromptFormat.TRANSCRIPT,) * 3)
    head = (
        "I am Bo.\n\nThis is a debate about taxes. Complete your next reply. Keep your reply "
        "shorter than 30 words.\n\n"
    )
    assert view.transcript(1, REPLIES) == head + "Al: Tax cuts.\nMe: Schools.\nCy: Both.\n"
    assert view.turn_prompt(1, REPLIES) == view.transcript(1, REPLIES) + "Me:"
    assert view.system_prompt(1, [], "Speak?") == head + "System: Speak?\nMe:"


def test_chat_joins_the_others_replies_between_the_agents_own() -> None:
    view = rendering(CHAT, (PromptFormat.CHAT,) * 3)
    messages = view.messages(1, REPLIES, "Go on.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("I am Bo.") and "Al" in messages[1]["content"]
    assert messages[-1]["content"].endswith("Go on.") and "Both." in messages[-1]["content"]
    survey = view.survey_prompt(0, REPLIES, "How sure are you?")
    assert isinstance(survey, list) and "How sure are you?" in survey[-1]["content"]


def test_a_scenario_header_carries_the_opinion() -> None:
    text = header(TRANSCRIPT, " I am Al. ", "taxes", 30, scenario=" A town hall. ", opinion="No.")
    assert text == "I am Al.\n\nA town hall.\n\nNo.\n\n"
    assert header(TRANSCRIPT, "I am Al.", "taxes", 30, scenario="A town hall.") == (
        "I am Al.\n\nA town hall.\n\n"
    )


def test_decide_request_names_the_tokens_and_personality() -> None:
    plain = decide_request(None, "<speak>", "<wait>", examples=False)
    assert "<speak>" in plain and "<wait>" in plain and "For example" not in plain
    shy = decide_request(" You are shy. ", "<go>", "<stay>", examples=True)
    assert " You are shy." in shy and "<stay>" in shy and "For example" in shy


def test_formats_must_match_the_agents_and_chat_needs_its_templates() -> None:
    with pytest.raises(ConfigError, match="2 prompt formats for 3 agents"):
        rendering(TRANSCRIPT, (PromptFormat.TRANSCRIPT,) * 2)
    with pytest.raises(ConfigError, match="chat prompts need the chat templates"):
        rendering(TRANSCRIPT, (PromptFormat.CHAT,) * 3)
