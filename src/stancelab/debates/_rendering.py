"""How each agent sees a debate: its prompts as one transcript (the paper's format) or as
chat messages, built append-only from the replies so far.

Every prompt is a fresh copy made from the replies: a survey question or a decide request
is never part of any agent's history.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from stancelab.conversation._templates import BUILTIN, PromptFormat, PromptSet, read_template
from stancelab.engine import ConfigError
from stancelab.engine._base import Message, Prompt


class Said(Protocol):
    """A reply as the prompts show it: who said it and the cleaned text (``Turn`` is one)."""

    @property
    def speaker(self) -> int: ...

    @property
    def text(self) -> str: ...


def header(
    prompts: PromptSet,
    background: str,
    topic: str,
    word_limit: int,
    scenario: str | None = None,
    opinion: str | None = None,
) -> str:
    """The opening of every prompt an agent gets: its story and the topic line (paper
    Fig. 2a), or with a ``scenario`` SAUCE's story, scenario and the agent's opinion."""
    if scenario is None:
        return prompts.debate_context.format(
            background=background.strip(), topic=topic, word_limit=word_limit
        )
    opinion_line = f"{opinion.strip()}\n\n" if opinion else ""
    return f"{background.strip()}\n\n{scenario.strip()}\n\n{opinion_line}"


@functools.cache
def _decide_templates() -> tuple[str, str]:
    fields = {"personality", "use_token", "pass_token"}
    return (
        read_template(BUILTIN, "sauce_decide", fields=fields).strip(),
        read_template(BUILTIN, "sauce_decide_examples", fields=fields).strip(),
    )


def decide_request(personality: str | None, use_token: str, pass_token: str, examples: bool) -> str:
    """SAUCE's question to an asynchronous agent: does it speak now (``use_token``) or
    wait (``pass_token``)? With ``examples`` it carries short worked examples."""
    request, with_examples = _decide_templates()
    fields = {
        "personality": f" {personality.strip()}" if personality else "",
        "use_token": use_token,
        "pass_token": pass_token,
    }
    text = request.format(**fields)
    if examples:
        text += " " + with_examples.format(**fields)
    return text


@dataclass(frozen=True)
class Rendering:
    """Every agent's prompts, in its own format (agents on different models may differ).

    Attributes:
        prompts: the wordings (the chat ones are needed when any agent chats).
        names: the agents' names, as others' replies are labelled.
        headers: per agent, the opening of its every prompt (``header``).
        formats: per agent, transcript or chat.
        word_limit: the reply length the turn request asks for.
    """

    prompts: PromptSet
    names: tuple[str, ...]
    headers: tuple[str, ...]
    formats: tuple[PromptFormat, ...]
    word_limit: int

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.formats) != n:
            raise ConfigError(f"{len(self.formats)} prompt formats for {n} agents")
        if PromptFormat.CHAT in self.formats and not self.prompts.chat_turn:
            raise ConfigError("chat prompts need the chat templates: load_prompts(format='chat')")

    def is_chat(self, agent: int) -> bool:
        """True when this agent's prompts are chat messages rather than one transcript."""
        return self.formats[agent] == PromptFormat.CHAT

    def transcript(self, agent: int, replies: Sequence[Said]) -> str:
        """The agent's view as a transcript: its header, then every reply, its own as "Me"."""
        lines = [self.headers[agent]]
        for reply in replies:
            who = "Me" if reply.speaker == agent else self.names[reply.speaker]
            lines.append(f"{who}: {reply.text}\n")
        return "".join(lines)

    def messages(self, agent: int, replies: Sequence[Said], request: str) -> list[Message]:
        """The agent's view as chat messages, ending with ``request`` from the user.

        The header is the system message, the agent's own replies are assistant messages,
        the others' replies user messages carrying the speaker's name (consecutive ones
        joined into one message, as chat templates expect turns to alternate), and the
        request closes the last user message.
        """
        out: list[Message] = [{"role": "system", "content": self.headers[agent].strip()}]
        pending: list[str] = []
        for reply in replies:
            if reply.speaker == agent:
                if pending:
                    out.append({"role": "user", "content": "\n\n".join(pending)})
                    pending = []
                out.append({"role": "assistant", "content": reply.text})
            else:
                name = self.names[reply.speaker]
                pending.append(self.prompts.chat_other.format(name=name, text=reply.text))
        out.append({"role": "user", "content": "\n\n".join([*pending, request])})
        return out

    def turn_prompt(self, agent: int, replies: Sequence[Said]) -> Prompt:
        """Prompt asking the agent for its next reply (paper Fig. 2b, or its chat form)."""
        if self.is_chat(agent):
            request = self.prompts.chat_turn.format(word_limit=self.word_limit)
            return self.messages(agent, replies, request)
        return self.transcript(agent, replies) + self.prompts.debate_turn

    def survey_prompt(self, agent: int, replies: Sequence[Said], question: str) -> Prompt:
        """Prompt asking a survey question on a copy of the context (Fig. 2c)."""
        if self.is_chat(agent):
            return self.messages(agent, replies, self.prompts.chat_survey.format(question=question))
        return self.transcript(agent, replies) + self.prompts.survey_prompt.format(
            question=question
        )

    def system_prompt(self, agent: int, replies: Sequence[Said], request: str) -> Prompt:
        """Prompt putting a request from the system (SAUCE's decide step) after the
        context: a "System:" line in a transcript, the last user message in a chat."""
        if self.is_chat(agent):
            return self.messages(agent, replies, request)
        return self.transcript(agent, replies) + f"System: {request}\nMe:"
