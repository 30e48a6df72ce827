"""The chatbot side of a conversation: system prompt, replies, and the hidden stance probe.

The probe is the debate survey (``stancelab.conversation._survey.ask``) asked on a COPY of the
conversation with one extra user message; neither the question nor the answer is ever
added to the history the chatbot sees.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stancelab.conversation import (
    ZERO_TO_TEN,
    Scale,
    SurveyAnswer,
    SurveyItem,
    SurveyMode,
    ask,
)
from stancelab.conversation._templates import read_template
from stancelab.engine import ConfigError
from stancelab.engine._base import GenerationRequest, LanguageModel, Message

WORD_LIMIT = 60
PROMPTS = "stancelab.study.prompts"
"""The package that holds the study's wordings."""

_FIELDS = {
    "chatbot_standard": {"topic", "word_limit"},
    "chatbot_personalised": {"topic", "word_limit", "profile"},
    "stance_probe": {"question"},
    "participant_persona": {"topic", "background", "stance"},
    "judge": {"topic", "speaker", "message", "codebook", "label", "definition"},
    "audit_user": {"topic", "position"},
    "reply_stance": {"topic", "reply", "question"},
}


def load_template(name: str, version: str = "v1") -> str:
    """Read a built-in study template NAME.VERSION.txt and check its fields."""
    if name not in _FIELDS:
        raise ConfigError(f"unknown study template {name!r}")
    return read_template(PROMPTS, name, version=version, fields=_FIELDS[name]).strip()


def template_hash(*texts: str) -> str:
    """Short sha256 over template texts, stored with every session."""
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def clean_reply(text: str) -> str:
    """Strip whitespace and any role label the model invented ('User:', 'Assistant:')."""
    text = text.strip()
    text = re.sub(r"^(assistant|chatbot|ai)\s*:\s*", "", text, flags=re.IGNORECASE)
    cut = re.search(r"\n\s*(user|human|participant|assistant)\s*:", text, flags=re.IGNORECASE)
    if cut:
        text = text[: cut.start()]
    return text.strip()


_SENTENCE_END = re.compile(r"""[.!?…]["')\]]*(?=\s|$)""")


def trim_to_sentence(text: str) -> tuple[str, bool]:
    """A reply cut by the token limit, back to its last full sentence; (text, whether cut).
    A reply with no full sentence at all is kept as it is, with an ellipsis."""
    text = text.rstrip()
    ends = list(_SENTENCE_END.finditer(text))
    if ends and ends[-1].end() == len(text):
        return text, False
    if ends:
        return text[: ends[-1].end()].rstrip(), True
    return (text + "…", True) if text else (text, False)


def format_profile(
    demographics: dict[str, str], background: str, labels: dict[str, str] | None = None
) -> str:
    """The participant's answers about themselves as lines for the personalised prompt."""
    labels = labels or {}
    lines = [f"- {labels.get(k, k)}: {v}" for k, v in demographics.items() if str(v).strip()]
    if background.strip():
        lines.append(f"- In their own words: {background.strip()}")
    return "\n".join(lines) or "- (nothing given)"


@dataclass(frozen=True)
class ChatTurn:
    """One exchange: what the person said and what the chatbot answered."""

    user: str
    assistant: str


@dataclass(frozen=True)
class Chatbot:
    """A configured chatbot: system prompt plus generation and probe settings."""

    system_prompt: str
    question: str
    """The stance item as the model is asked it (topic and scale filled in)."""
    temperature: float = 0.7
    max_tokens: int = 160
    modes: tuple[SurveyMode, ...] = (SurveyMode.DISTRIBUTION,)
    probe_template: str = "{question}"
    scale: Scale = ZERO_TO_TEN
    """The points the hidden probe is scored on."""

    @classmethod
    def build(
        cls,
        topic: str,
        question: str,
        personal_profile: str | None = None,
        version: str = "v1",
        temperature: float = 0.7,
        max_tokens: int = 160,
        modes: Sequence[str] = ("distribution",),
        scale: Scale = ZERO_TO_TEN,
    ) -> Chatbot:
        """A standard chatbot, or a personalised one when a profile is given."""
        if personal_profile is None:
            system = load_template("chatbot_standard", version).format(
                topic=topic, word_limit=WORD_LIMIT
            )
        else:
            system = load_template("chatbot_personalised", version).format(
                topic=topic, word_limit=WORD_LIMIT, profile=personal_profile
            )
        return cls(
            system_prompt=system,
            question=question,
            temperature=temperature,
            max_tokens=max_tokens,
            modes=tuple(SurveyMode(m) for m in modes),
            probe_template=load_template("stance_probe", version),
            scale=scale,
        )

    def messages(
        self, history: Sequence[ChatTurn], pending_user: str | None = None
    ) -> list[Message]:
        """The chat the model sees: system prompt, the turns, and a new user message."""
        out: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for turn in history:
            out.append({"role": "user", "content": turn.user})
            out.append({"role": "assistant", "content": turn.assistant})
        if pending_user is not None:
            out.append({"role": "user", "content": pending_user})
        return out

    def reply_requests(
        self, items: Sequence[tuple[Sequence[ChatTurn], str]], seed: int | None = None
    ) -> list[GenerationRequest]:
        """Generation requests for many conversations at once."""
        return [
            GenerationRequest(
                self.messages(history, user),
                temperature=self.temperature,
                max_tokens=self.max_tokens,
                seed=seed,
            )
            for history, user in items
        ]

    def reply(
        self, lm: LanguageModel, history: Sequence[ChatTurn], user: str, seed: int | None = None
    ) -> str:
        """The chatbot's next reply (an empty answer becomes a short placeholder)."""
        text = clean_reply(lm.generate(self.reply_requests([(history, user)], seed))[0].text)
        return text or "I see. Could you tell me more about your view?"

    def reply_checked(
        self,
        lm: LanguageModel,
        history: Sequence[ChatTurn],
        user: str,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> tuple[str, bool]:
        """The next reply and whether it hit max_tokens (then it ends at its last full
        sentence instead of mid-word). With ``on_text``, an engine that streams hands it
        the cleaned text so far as it grows; the reply returned is the same either way."""
        [request] = self.reply_requests([(history, user)], seed)
        if on_text is not None and lm.supports_streaming():
            generation = lm.generate_stream(request, lambda raw: on_text(clean_reply(raw)))
        else:
            generation = lm.generate([request])[0]
        text = clean_reply(generation.text)
        cut = False
        if generation.finish_reason == "length":
            text, cut = trim_to_sentence(text)
        return text or "I see. Could you tell me more about your view?", cut

    def probe_prompt(self, history: Sequence[ChatTurn]) -> list[Message]:
        """A copy of the conversation with the hidden stance question appended."""
        return self.messages(history, self.probe_template.format(question=self.question))

    def stances(
        self,
        lm: LanguageModel,
        histories: Sequence[Sequence[ChatTurn]],
        turns: Sequence[int] | None = None,
    ) -> list[SurveyAnswer]:
        """The LLM's stance on the item after each history (one answer per history and mode)."""
        turns = turns if turns is not None else [len(h) for h in histories]
        items = [
            SurveyItem(iteration=t, agent_index=0, prompt=self.probe_prompt(h), scale=self.scale)
            for h, t in zip(histories, turns, strict=True)
        ]
        return ask(lm, items, self.modes)
