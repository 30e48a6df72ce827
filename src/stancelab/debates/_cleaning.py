"""Where a reply ends and what of it is kept: stop strings, the speaker-line pattern, the
cleaning of a raw completion and the test of a usable reply."""

from __future__ import annotations

import re
from collections.abc import Sequence

_GENERIC_SPEAKER = r"[A-Z][A-Za-z .'\-]{0,30}"


def speaker_line(names: Sequence[str]) -> re.Pattern[str]:
    """The pattern that starts someone else's line in a reply, for debaters ``names``.

    A reply ends where a speaker line begins: on a new line (any name-like label), or after
    a sentence for a debater's own label ("... on it. Samantha: Yes, ...": the model writing
    Samantha's lines inside the reply).
    """
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(
        rf"\n\s*(?:Me|System|{alternatives}|{_GENERIC_SPEAKER})\s*:"
        rf"|(?<=[.!?\"])[ \t]+(?:Me|System|{alternatives})\s*:",
        re.MULTILINE,
    )


def stop_strings(names: Sequence[str]) -> tuple[str, ...]:
    """Stop strings for the engine: a new line opening a debater's, "Me" or "System" line."""
    return ("\nMe:", "\nSystem:", *(f"\n{name}:" for name in names))


def clean_reply(
    raw: str, own_name: str, speaker_line: re.Pattern[str], word_limit: int
) -> tuple[str, bool]:
    """Return (cleaned reply, truncated?) for a raw completion.

    Cut at the next speaker line, strip echoed own labels ("Me:", the agent's name) and
    enclosing quotes, join whitespace, and keep fewer than ``word_limit`` words (ending at a
    sentence when one ends in the second half).

    Args:
        raw: the model's completion as generated.
        own_name: the replying agent's name (its echoed label is stripped).
        speaker_line: where someone else's line starts (``speaker_line(names)``).
        word_limit: the prompt's "shorter than N words".
    """
    text = "\n" + raw.replace("\r", "")
    match = speaker_line.search(text, 1)
    if match:
        text = text[: match.start()]
    text = text.strip()
    echo = re.compile(rf"^(?:Me|{re.escape(own_name)})\s*:\s*")
    while echo.match(text):
        text = echo.sub("", text, count=1)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    words = text.split()
    # The prompt asks for a reply "shorter than N words": at most N-1 words.
    limit = word_limit - 1
    if len(words) <= limit:
        return text, False
    cut = " ".join(words[:limit])
    sentence_end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if cut[-1:] in ".!?":
        sentence_end = len(cut) - 1
    if sentence_end >= len(cut) // 2:
        cut = cut[: sentence_end + 1]
    return cut, True


def is_usable(text: str) -> bool:
    """A reply is usable if it holds at least one word of two or more letters."""
    return re.search(r"[^\W\d_]{2,}", text) is not None
