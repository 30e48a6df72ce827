"""Load the versioned prompt templates and record which ones a run used."""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stancelab.engine.errors import ConfigError

TEMPLATE_NAMES = ("debate_context", "debate_turn", "survey_question", "survey_prompt")
DEFAULT_VERSION = "v1"
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

    def fingerprint(self) -> str:
        """Short sha256 over all four texts, stored with every run."""
        digest = hashlib.sha256()
        for name in TEMPLATE_NAMES:
            digest.update(getattr(self, name).encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]

    def describe(self) -> dict[str, str]:
        """Version, source and hash for a run's snapshot."""
        return {"version": self.version, "source": self.source, "sha256": self.fingerprint()}

    def with_question(self, question: str | None) -> PromptSet:
        """A copy whose survey question is replaced (None keeps it)."""
        if question is None:
            return self
        _check_fields("survey_question", question, {"topic"})
        return PromptSet(
            self.debate_context,
            self.debate_turn,
            question,
            self.survey_prompt,
            self.source,
            self.version,
        )


_FIELDS = {
    "debate_context": {"background", "topic", "word_limit"},
    "debate_turn": set(),
    "survey_question": {"topic"},
    "survey_prompt": {"question"},
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


def load_prompts(folder: Path | None = None, version: str = DEFAULT_VERSION) -> PromptSet:
    """Read NAME.VERSION.txt for each template from a folder, or the built-in ones."""
    texts = {}
    for name in TEMPLATE_NAMES:
        text = read_template(BUILTIN, name, version=version, folder=folder, fields=_FIELDS[name])
        texts[name] = text.strip() if name == "survey_question" else text
    return PromptSet(**texts, source="builtin" if folder is None else str(folder), version=version)
