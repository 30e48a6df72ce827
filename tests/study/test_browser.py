"""A real headless Chromium completes a session against the app on the embedded model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stancelab.engine._llamacpp import LlamaCppEngine, load_engine
from stancelab.study._app import create_app
from stancelab.study._server import running_server
from stancelab.study._store import StudyStore

from .conftest import ADMIN_TOKEN, SECRET, make_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def study_engine() -> Iterator[LlamaCppEngine]:
    """SmolLM2-135M on ONE thread: on a shared 2-core machine, llama.cpp's two spinning
    threads slow down by about 100x when other processes hold the cores (measured here:
    24 tokens in 0.3 s with one thread, 114 s with two)."""
    engine = load_engine("smollm2-135m", n_parallel=4, ctx_per_slot=2048, threads=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            "Chromium is missing: run scripts/install-system-deps.sh (it installs "
            "Debian's chromium)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def test_participant_completes_session_in_chromium(
    browser: Any, study_engine: LlamaCppEngine, tmp_path: Path
) -> None:
    config = make_config(
        conditions=["personalised"],
        turns={"min": 2, "max": 2},
        chatbot={"max_tokens": 24, "temperature": 0.0},
        limits={"min_seconds_between_messages": 0},
    )
    store = StudyStore(tmp_path / "browser.db")
    app = create_app(config, store, study_engine, secret=SECRET, admin_token=ADMIN_TOKEN)
    dialogs: list[str] = []
    with running_server(app) as url:
        context = browser.new_context(
            viewport={"width": 390, "height": 844},  # a phone
            is_mobile=True,
            has_touch=True,
        )
        page = context.new_page()
        page.set_default_timeout(120_000)

        def on_dialog(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.dismiss()

        page.on("dialog", on_dialog)
        streams: list[str] = []
        page.on("request", lambda r: streams.append(r.url) if "/study/stream/" in r.url else None)

        def submit(form: str) -> None:
            """Click a form's button and wait for the answer page (the LLM may be slow)."""
            with page.expect_navigation(wait_until="load", timeout=240_000):
                page.click(f"{form} button[type=submit]")

        def send(turn: int) -> None:
            """Send the message form: the reply arrives in place (no page load) and the
            page swaps in what comes next, the next form or Finish."""
            page.click("#send")
            page.wait_for_selector(
                f".msg.assistant[data-turn='{turn}']:not(.pending)", timeout=240_000
            )
            page.wait_for_selector("#form-message:not([data-busy]), #form-finish")

        def step() -> str:
            return str(page.locator("main").get_attribute("data-step"))

        page.goto(f"{url}/?pid=browser-1")
        assert step() == "consent"
        page.check("input[name=agree]")
        submit("#form-consent")
        assert step() == "about"
        page.fill("#d_age", "37")
        page.select_option("#d_gender", "Woman")
        page.select_option("#d_education", "Graduate degree")
        page.select_option("#d_politics", "Moderate")
        page.fill("#background", "I am a nurse in Denver <b>bold</b> and I cycle to work.")
        submit("#form-about")
        assert step() == "before"
        page.check("input[name=stance][value='8']")
        page.fill("#reason", "Summers are getting hotter.")
        submit("#form-before")
        assert step() == "conversation"
        no_overflow = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert no_overflow, "the chat page scrolls sideways on a phone"

        # the per-turn stance starts unselected: nothing is assumed for the participant
        assert page.locator("#form-message input[name=stance]:checked").count() == 0
        page.fill("#message", "<img src=x onerror=alert(1)> Heat waves hurt my patients.")
        page.check("#form-message input[name=stance][value='7']")
        send(1)
        assert step() == "conversation"
        assert page.locator(".msg.assistant").count() == 1
        assert page.locator("#transcript img").count() == 0  # shown as text, not markup
        assert "<img src=x" in page.locator(".msg.user").first.inner_text()

        page.reload()  # reload resumes where the participant was
        assert step() == "conversation" and page.locator(".msg.user").count() == 1

        assert page.locator("#form-message input[name=stance]:checked").count() == 0
        page.fill("#message", "What would change your mind?")
        page.check("#form-message input[name=stance][value='same']")
        send(2)
        assert page.locator(".msg.assistant").count() == 2
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert page.locator("#form-message").count() == 0  # max turns reached
        # with JavaScript the replies came over the event stream, one per message
        assert [u.rsplit("/", 1)[1] for u in streams] == ["1", "2"]
        page.check("#form-finish input[name=stance][value='6']")
        submit("#form-finish")
        assert step() == "after"
        page.check("input[name=stance][value='7']")
        page.fill("#reason", "Still worried.")
        submit("#form-after")
        assert step() == "perception"
        # perception asks about the replies the participant read, not a hidden moment
        assert "FIRST reply" in page.inner_text("#perception-first")
        assert "LAST reply" in page.inner_text("#perception-last")
        assert page.locator("input[name=perceived_start]:checked").count() == 0
        page.check("input[name=perceived_start][value='5']")
        page.check("input[name=perceived_end][value='7']")
        submit("#form-perception")
        assert step() == "done"
        code = page.locator("#completion-code").inner_text().strip()
        assert re.fullmatch(r"[0-9A-F]{8}", code)
        context.close()
    assert dialogs == []
    row = store.participant_by_pid("pilot", "browser-1")
    assert row is not None and row.step == "done" and row.completion_code == code
    assert row.background is not None and "<b>bold</b>" in row.background
    assert (row.stance_before, row.stance_after, row.perceived_end) == (8, 7, 7)
    messages = store.messages(row.id)
    assert [(m.turn, m.role) for m in messages] == [
        (1, "user"),
        (1, "assistant"),
        (2, "user"),
        (2, "assistant"),
    ]
    assert all(m.text.strip() for m in messages)
    users = [m for m in messages if m.role == "user"]
    assert [(m.human_stance, m.stance_source) for m in users] == [(7, "chosen"), (7, "same")]
    assert all(m.stance_seconds is not None and m.stance_seconds >= 0 for m in users)
    assert (row.stance_last, row.stance_last_source) == (6, "chosen")
    stances = store.stances(row.id)
    assert [s.turn for s in stances] == [0, 1, 2]
    for s in stances:  # a real distribution over 0..10 from the embedded model
        assert s.ok and s.score is not None and 0.0 <= s.score <= 10.0
        assert s.distribution is not None and sum(s.distribution) == pytest.approx(1.0)
    store.close()


def test_simulated_participant_on_the_embedded_model(
    study_engine: LlamaCppEngine, tmp_path: Path
) -> None:
    from stancelab.study._simulate import simulate

    # SmolLM2-135M puts a few percent of its probability on the scale: the pilot would be
    # refused at the default minimum coverage, so this plumbing test lowers it (the
    # report then flags every probe-based number)
    config = make_config(
        conditions=["standard"],
        turns={"min": 1, "max": 1},
        chatbot={"max_tokens": 24, "min_probe_coverage": 0.0},
    )
    results = simulate(config, 1, db=tmp_path / "sim.db", lm=study_engine, turns=1, max_tokens=24)
    assert results[0].completed, results[0].error
    assert len(results[0].sent) == 1 and results[0].sent[0].strip()
    store = StudyStore(tmp_path / "sim.db")
    row = store.participants()[0]
    assert row.simulated and row.step == "done"
    assert row.stance_after is not None and 0 <= row.stance_after <= 10
    assert [s.turn for s in store.stances(row.id)] == [0, 1]
    store.close()


def test_probe_coverage_gate_refuses_a_model_that_cannot_answer_the_scale(
    study_engine: LlamaCppEngine,
) -> None:
    """SmolLM2-135M's probe puts a few percent of its probability on the item's points: a
    study (and its pilot) must not start on it at the default minimum."""
    from stancelab.engine._errors import ConfigError
    from stancelab.study._replies import check_probe_coverage, probe_coverage

    config = make_config(conditions=["standard"], stance_item="agreement")
    coverage = probe_coverage(config, study_engine)
    assert set(coverage) == {"climate change"} and 0.0 <= coverage["climate change"] < 0.5
    with pytest.raises(ConfigError, match=r"chatbot\.min_probe_coverage") as caught:
        check_probe_coverage(config, study_engine)
    assert "\n" not in str(caught.value) and "'climate change'" in str(caught.value)
    relaxed = make_config(conditions=["standard"], chatbot={"min_probe_coverage": 0.0})
    assert check_probe_coverage(relaxed, study_engine)["climate change"] >= 0.0
