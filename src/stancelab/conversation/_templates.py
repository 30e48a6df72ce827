"""Load the versioned prompt templates and record which ones a run used."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, replace
from enum import StrEnum
from importlib import resources
from pathlib import Path

from stancelab.engine import ConfigError

TEMPLATE_NAMES = ("debate_context", "debate_turn", "survey_question", "survey_prompt")
CHAT_TEMPLATE_NAMES = ("chat_other", "chat_turn", "chat_survey")
"""Read only for the chat format, so a transcript-only prompt folder keeps working."""
DEFAULT_VERSION = "v1"


class PromptFormat(StrEnum):
    """How a conversation is put to the model."""

    TRANSCRIPT = "transcript"
    """One text to complete, the paper's Figure 2 (a completion endpoint)."""
    CHAT = "chat"
    """Messages: the story and topic line as system, own replies as assistant, the others'
    as user messages carrying the speaker's name, then the request (a chat endpoint)."""


def parse_format(value: str | PromptFormat) -> PromptFormat:
    """'transcript' or 'chat'; anything else is one ConfigError line."""
    try:
        return PromptFormat(str(value).strip().lower())
    except ValueError:
        raise ConfigError(f"unknown prompt format {value!r}; use transcript or chat") from None


BUILTIN = "stancelab.conversation.prompts"
"""The package that holds the built-in debate, survey and persona wordings."""


@dataclass(frozen=True)
class PromptSet:
    """The four wordings of a debate, with where they came from."""

    debate_context: str
    debate_turn: str
    survey_question: str
    survey_prompt: str
    source: str = "builtin"
    version: str = DEFAULT_VERSION
    format: PromptFormat = PromptFormat.TRANSCRIPT
    chat_other: str = ""
    chat_turn: str = ""
    chat_survey: str = ""

    def names(self) -> tuple[str, ...]:
        """The templates this format sends."""
        if self.format == PromptFormat.CHAT:
            return TEMPLATE_NAMES + CHAT_TEMPLATE_NAMES
        return TEMPLATE_NAMES

    def fingerprint(self) -> str:
        """Short sha256 over every text this format uses, stored with every run.

        The transcript format hashes the same four texts as before chat existed, so its
        hash is unchanged.
        """
        digest = hashlib.sha256()
        for name in self.names():
            digest.update(getattr(self, name).encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, str]:
        """Format, version, source and hash for a run's snapshot."""
        return {
            "format": str(self.format),
            "version": self.version,
            "source": self.source,
            "sha256": self.fingerprint(),
        }

    def with_question(self, question: str | None) -> PromptSet:
        """A copy whose survey question is replaced (None keeps it)."""
        if question is None:
            return self
        _check_fields("survey_question", question, {"topic"})
        return replace(self, survey_question=question)


_FIELDS = {
    "debate_context": {"background", "topic", "word_limit"},
    "debate_turn": set(),
    "survey_question": {"topic"},
    "survey_prompt": {"question"},
    "chat_other": {"name", "text"},
    "chat_turn": {"word_limit"},
    "chat_survey": {"question"},
}


def template_fields(name: str, text: str) -> set[str]:
    """The ``{field}`` names a template uses; a malformed brace is a ConfigError."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ConfigError(f"prompt template {name}: {exc}") from exc


def _check_fields(name: str, text: str, allowed: set[str]) -> None:
    unknown = template_fields(name, text) - allowed
    if unknown:
        raise ConfigError(
            f"prompt template {name} uses unknown field(s) {sorted(unknown)}; "
            f"allowed: {sorted(allowed) or 'none'}"
        )


def read_template(
    package: str,
    name: str,
    *,
    version: str = DEFAULT_VERSION,
    folder: Path | None = None,
    fields: set[str] | None = None,
) -> str:
    """Text of ``NAME.VERSION.txt``: from a user's folder if given, else built into ``package``.

    The one loader of every wording stancelab sends. A folder that lacks the file is an
    error, never a silent fall-back to the built-in text, so a run's record cannot claim a
    wording it did not use. With ``fields``, any other ``{field}`` in the text is refused.
    """
    file_name = f"{name}.{version}.txt"
    if folder is not None:
        path = folder / file_name
        if not path.is_file():
            raise ConfigError(f"prompt folder {folder} lacks {file_name}")
        text = path.read_text(encoding="utf-8")
    else:
        resource = resources.files(package).joinpath(file_name)
        if not resource.is_file():
            raise ConfigError(f"no built-in prompt template {file_name} in {package}")
        text = resource.read_text(encoding="utf-8")
    if fields is not None:
        _check_fields(name, text, fields)
    return text


def load_prompts(
    folder: Path | None = None,
    version: str = DEFAULT_VERSION,
    format: PromptFormat | str = PromptFormat.TRANSCRIPT,
) -> PromptSet:
    """Read NAME.VERSION.txt for each template the format uses, from a folder or built in."""
    chosen = parse_format(format)
    names = TEMPLATE_NAMES + (CHAT_TEMPLATE_NAMES if chosen == PromptFormat.CHAT else ())
    texts = {}
    for name in names:
        text = read_template(BUILTIN, name, version=version, folder=folder, fields=_FIELDS[name])
        strip = name == "survey_question" or name in CHAT_TEMPLATE_NAMES
        texts[name] = text.strip() if strip else text
    return PromptSet(
        **texts,
        source="builtin" if folder is None else str(folder),
        version=version,
        format=chosen,
    )
