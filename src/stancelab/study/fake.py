"""A scripted chat model for tests, load tests and dry runs of a study (no engine needed)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from stancelab.engine.base import Generation, GenerationRequest, Prompt
from stancelab.engine.fake import ScriptedModel


def last_user_message(prompt: Prompt) -> str:
    """The content of the last user message of a chat prompt (or the whole transcript)."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message["role"] == "user":
            return message["content"]
    return ""


def _echo(request: GenerationRequest) -> str:
    return f"You said: {last_user_message(request.prompt)[:80]}"


def _drifting_stance(base: str) -> dict[str, float]:
    """Stance 3 before the chat, one point higher per exchange, at most 10."""
    exchanges = base.count("\nassistant: ")
    value = min(10, 3 + exchanges)
    return {str(value): 1.0}


@dataclass
class FakeChatModel(ScriptedModel):
    """ScriptedModel for chat prompts: echoes the last user message (so a reply names the
    message it answers) and scores a stance that rises one point per exchange."""

    delay_s: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.name = "fake-chat"
        defaults = ScriptedModel.__dataclass_fields__
        if self.reply is defaults["reply"].default:
            self.reply = _echo
        if self.continuations is defaults["continuations"].default:
            self.continuations = _drifting_stance

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Scripted replies after an optional delay (to imitate a real engine's latency)."""
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().generate(requests)

    @staticmethod
    def _split(text: str) -> tuple[str, str]:
        """Separate a trailing assistant prefix (what scoring has emitted) from the prompt."""
        marker = text.rfind("\nassistant: ")
        if marker < 0 or "\nuser: " in text[marker:]:
            return text, ""
        return text[:marker], text[marker + len("\nassistant: ") :]
