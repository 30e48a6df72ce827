"""Reply cleaning alone: where a reply ends, what of it is kept, what is usable."""

from __future__ import annotations

from stancelab.debates._cleaning import clean_reply, is_usable, speaker_line, stop_strings

NAMES = ("Jacob", "Mary Ann")
LINE = speaker_line(NAMES)


def clean(raw: str, own: str = "Jacob", limit: int = 50) -> str:
    return clean_reply(raw, own, LINE, limit)[0]


def test_a_reply_ends_where_someone_elses_line_begins() -> None:
    assert clean(" I agree.\nMary Ann: No.") == "I agree."
    assert clean(" I agree.\n  Moderator : next") == "I agree."  # any name-like label
    assert clean(" I agree. Mary Ann: No.") == "I agree."  # a debater after a sentence
    assert clean(' "I agree." Me: again') == "I agree."
    assert clean(" I agree! System: score") == "I agree!"
    # A name that is no debater's, inside a line, is text; so is a debater named mid-sentence.
    assert clean(" The rule is simple. Note: read it.") == "The rule is simple. Note: read it."
    assert clean(" I told Mary Ann: listen.") == "I told Mary Ann: listen."
    # The search starts after the leading newline: an opening label is an echo, not a cut.
    assert clean("Jacob: Mine.\nJacob: more") == "Mine."


def test_echoed_labels_quotes_and_whitespace_are_removed() -> None:
    assert clean("Me: Jacob: Me:  Fine then.") == "Fine then."
    assert clean(" 'Quoted  reply\r here.' ") == "Quoted reply here."
    assert clean(' "Only an opening quote') == '"Only an opening quote'
    assert clean("Mary Ann: not my label", own="Mary Ann") == "not my label"


def test_the_word_limit_keeps_fewer_words_ending_at_a_late_sentence() -> None:
    text, truncated = clean_reply(" ".join(["w"] * 9), "Jacob", LINE, 10)
    assert (text, truncated) == (" ".join(["w"] * 9), False)
    text, truncated = clean_reply(" ".join(f"w{i}" for i in range(12)), "Jacob", LINE, 10)
    assert truncated and text == " ".join(f"w{i}" for i in range(9))
    # A sentence ending in the second half of the cut: the reply ends there.
    text, _ = clean_reply("a b c d e. f g h i j k", "Jacob", LINE, 10)
    assert text == "a b c d e."
    # One ending in the first half is too early: the cut stays at the limit.
    text, _ = clean_reply("a. b c d e f g h i j k", "Jacob", LINE, 10)
    assert text == "a. b c d e f g h i"


def test_stop_strings_open_a_debaters_me_or_system_line() -> None:
    assert stop_strings(NAMES) == ("\nMe:", "\nSystem:", "\nJacob:", "\nMary Ann:")


def test_a_usable_reply_has_a_word_of_two_letters() -> None:
    assert is_usable("Ok")
    assert is_usable("Ça va")
    assert not is_usable("")
    assert not is_usable("a 1 2 3 ... !!")
    assert not is_usable("42 __ 7")
