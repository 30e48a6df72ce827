"""The attitude survey: parsing, and both modes on the real embedded engine."""

from __future__ import annotations

import pytest

from stancelab.conversation._survey import SurveyItem, SurveyMode, ask, parse_modes, parse_rating
from stancelab.engine._errors import ConfigError
from stancelab.engine._llamacpp import LlamaCppEngine


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" 8", 8),
        ("10/10", 10),
        ("About 7.", 7),
        ("I'd say 3 out of 10", 3),
        (" 0\n", 0),
        ("none", None),
        ("", None),
        (" 12", None),
        ("7.5", 7.5),
        ("10.5", None),
        ("3.", 3),
    ],
)
def test_parse_rating(text: str, expected: int | None) -> None:
    assert parse_rating(text) == expected


def test_parse_modes() -> None:
    assert parse_modes("distribution,generate") == (SurveyMode.DISTRIBUTION, SurveyMode.GENERATE)
    with pytest.raises(ConfigError, match="unknown survey mode 'vibes'"):
        parse_modes("vibes")


@pytest.mark.engine
def test_both_modes_on_real_engine(small_engine: LlamaCppEngine) -> None:
    prompt = (
        "You are an American.\n\nThis is a debate about gun violence. Complete your next "
        "reply. Keep your reply shorter than 50 words.\n\nSystem: On a scale of 0 to 10, "
        "how much do you think that gun violence is a big problem?\nMe:"
    )
    answers = ask(
        small_engine, [SurveyItem(0, 0, prompt)], (SurveyMode.DISTRIBUTION, SurveyMode.GENERATE)
    )
    dist, gen = answers
    assert dist.mode == SurveyMode.DISTRIBUTION and dist.ok
    assert dist.distribution is not None and sum(dist.distribution) == pytest.approx(1.0)
    assert dist.score is not None and 0.0 <= dist.score <= 10.0
    assert dist.most_likely == max(range(11), key=lambda i: dist.distribution[i])  # type: ignore[index]
    assert gen.mode == SurveyMode.GENERATE and gen.raw_text is not None
    # generate mode reports exactly what it parsed, or a failure
    assert gen.score == (parse_rating(gen.raw_text) if gen.ok else None)
