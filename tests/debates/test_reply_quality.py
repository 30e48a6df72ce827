"""What counts as a clean reply: no other script, no lines written for someone else."""

from __future__ import annotations

from stancelab.debates._analysis import foreign_script, other_speakers


def test_other_scripts_are_spotted_but_typography_is_not() -> None:
    assert foreign_script("我认为气候变化是一个大问题")
    assert foreign_script("I support특별 accommodations")
    assert not foreign_script("It’s “fine” — café naïve…")


def test_lines_for_other_speakers_are_spotted() -> None:
    assert other_speakers("Jacob: I understand. Samantha: I agree.", "Sam") == {
        "Jacob",
        "Samantha",
    }
    assert other_speakers("I agree.\nTom Smith: we must act", "Sam") == {"Tom Smith"}
    assert other_speakers("Sam: my own name is fine. Note: and so is a note", "Sam") == set()
    assert other_speakers("We need a plan: cleaner energy and jobs.", "Sam") == set()
