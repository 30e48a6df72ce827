"""Real headless Chromium, with and without JavaScript: a double click, two tabs, a reload
while the reply is written, validation that keeps input, the reply stream with a typing
indicator, and the layout at phone widths. The chatbot is the scripted model (these
tests are about the page, not the model; test_browser.py runs the embedded model)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stancelab.engine._base import GenerationRequest
from stancelab.engine._fake import FakeChatModel, last_user_message
from stancelab.study._app import create_app
from stancelab.study._server import running_server
from stancelab.study._store import StudyStore

from .conftest import SECRET, make_config
from .test_browser import CHROMIUM, CHROMIUM_ARGS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run scripts/install-system-deps.sh", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Gate:
    """A scripted chatbot whose replies wait until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()

    def reply(self, request: GenerationRequest) -> str:
        self.open.wait(30)
        return f"You said: {last_user_message(request.prompt)[:80]}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, StudyStore, Gate]]:
    gate = Gate()
    store = StudyStore(tmp_path / "b.db")
    config = make_config(
        turns={"min": 1, "max": 4},
        limits={"min_seconds_between_messages": 30, "max_message_chars": 1000},
    )
    app = create_app(config, store, FakeChatModel(reply=gate.reply), secret=SECRET)
    with running_server(app) as url:
        yield url, store, gate
    store.close()


def _context(browser: Any, js: bool = True, width: int = 390) -> Any:
    return browser.new_context(
        viewport={"width": width, "height": 800}, java_script_enabled=js, is_mobile=True
    )


def _to_conversation(page: Any, url: str, pid: str) -> None:
    page.set_default_timeout(20_000)
    page.goto(f"{url}/?pid={pid}")
    page.check("input[name=agree]")
    with page.expect_navigation():
        page.click("#form-consent button[type=submit]")
    page.fill("#d_age", "37")
    page.select_option("#d_gender", "Woman")
    page.select_option("#d_education", "Graduate degree")
    page.select_option("#d_politics", "Moderate")
    page.fill("#background", "I am a nurse.")
    with page.expect_navigation():
        page.click("#form-about button[type=submit]")
    page.check("input[name=stance][value='8']")
    page.fill("#reason", "Summers are hotter.")
    with page.expect_navigation():
        page.click("#form-before button[type=submit]")
    assert page.locator("main").get_attribute("data-step") == "conversation"


def _users(store: StudyStore) -> list[str]:
    row = store.participants()[0]
    return [m.text for m in store.messages(row.id) if m.role == "user"]


def test_js_streams_the_reply_with_a_typing_indicator_and_send_disabled(
    browser: Any, served: tuple[str, StudyStore, Gate]
) -> None:
    url, store, gate = served
    context = _context(browser)
    page = context.new_page()
    _to_conversation(page, url, "js-1")
    gate.open.clear()
    page.fill("#message", "Is it getting hotter?")
    page.check("#form-message input[name=stance][value='same']")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.pending .typing")
    assert page.locator("#send").is_disabled()
    assert page.locator(".msg.user").last.inner_text().endswith("Is it getting hotter?")
    page.fill("#message", "a draft typed while waiting")
    gate.open.set()
    page.wait_for_selector("body[data-reply-shown='1']", state="attached")
    page.wait_for_load_state()
    page.wait_for_selector(".msg.assistant:not(.pending)")
    assert "You said: Is it getting hotter?" in page.locator(".msg.assistant").last.inner_text()
    page.wait_for_selector("#message")
    assert page.input_value("#message") == "a draft typed while waiting"  # kept across refresh
    assert _users(store) == ["Is it getting hotter?"]
    context.close()


def test_plain_forms_work_without_javascript(
    browser: Any, served: tuple[str, StudyStore, Gate]
) -> None:
    url, store, _ = served
    context = _context(browser, js=False)
    page = context.new_page()
    _to_conversation(page, url, "nojs-1")
    page.fill("#message", "No scripts here.")
    page.check("#form-message input[name=stance][value='same']")
    with page.expect_navigation():
        page.click("#send")
    assert "You said: No scripts here." in page.locator(".msg.assistant").last.inner_text()
    # finishing early is one click away (a details element: no script needed), and its
    # stance, like every stance, starts unselected
    page.click("#finish-early summary")
    assert page.locator("#form-finish input[name=stance]:checked").count() == 0
    page.check("#form-finish input[name=stance][value='4']")
    with page.expect_navigation():
        page.click("#form-finish button[type=submit]")
    assert page.locator("main").get_attribute("data-step") == "after"
    assert _users(store) == ["No scripts here."]
    row = store.participants()[0]
    assert (row.stance_last, row.stance_last_source) == (4, "chosen")
    sent = next(m for m in store.messages(row.id) if m.role == "user")
    # "same as before" is recorded as such, with the previous answer (8, before the chat)
    assert (sent.human_stance, sent.stance_source) == (8, "same")
    context.close()


@pytest.mark.parametrize("js", [False, True], ids=["plain-form", "javascript"])
def test_double_click_stores_once_and_shows_the_reply(
    browser: Any, served: tuple[str, StudyStore, Gate], js: bool
) -> None:
    url, store, gate = served
    context = _context(browser, js=js)
    page = context.new_page()
    _to_conversation(page, url, f"dbl-{js}")
    gate.open.clear()
    page.fill("#message", "Double clicked.")
    page.check("#form-message input[name=stance][value='same']")
    threading.Timer(0.8, gate.open.set).start()
    page.dblclick("#send", delay=150)
    page.wait_for_selector(".msg.assistant:not(.pending)", timeout=20_000)
    page.wait_for_load_state()
    text = page.content()
    assert "going a little fast" not in text
    assert "You said: Double clicked." in text
    assert _users(store) == ["Double clicked."]
    context.close()


def test_second_tab_message_is_kept(browser: Any, served: tuple[str, StudyStore, Gate]) -> None:
    url, store, _ = served
    context = _context(browser, js=False)
    first = context.new_page()
    _to_conversation(first, url, "tabs-1")
    second = context.new_page()
    second.goto(f"{url}/study")
    first.fill("#message", "From tab one.")
    first.check("#form-message input[name=stance][value='same']")
    with first.expect_navigation():
        first.click("#send")
    second.fill("#message", "From tab two.")
    second.check("#form-message input[name=stance][value='same']")
    with second.expect_navigation():
        second.click("#send")
    # within 30 s of the first message: the second one is not lost, it stays in the box
    assert "Please wait" in second.content()
    assert second.input_value("#message") == "From tab two."
    assert _users(store) == ["From tab one."]
    context.close()


def test_reload_while_the_reply_is_written_shows_the_message_then_the_reply(
    browser: Any, served: tuple[str, StudyStore, Gate]
) -> None:
    url, store, gate = served
    context = _context(browser)
    page = context.new_page()
    _to_conversation(page, url, "reload-1")
    gate.open.clear()
    page.fill("#message", "Reload me.")
    page.check("#form-message input[name=stance][value='same']")
    page.click("#send")
    page.wait_for_selector(".msg.assistant.pending")
    page.reload()
    assert page.locator(".msg.user[data-pending]").inner_text().endswith("Reload me.")
    assert page.locator(".msg.assistant.pending .typing").count() == 1
    assert page.locator("#form-message").count() == 0  # nothing to retype
    gate.open.set()
    page.wait_for_selector(".msg.assistant:not(.pending)")
    page.wait_for_load_state()
    page.wait_for_selector("#form-message")
    assert "You said: Reload me." in page.locator(".msg.assistant").last.inner_text()
    assert _users(store) == ["Reload me."]
    context.close()


def test_validation_keeps_input_and_limits_show_before_sending(
    browser: Any, served: tuple[str, StudyStore, Gate]
) -> None:
    url, store, _ = served
    context = _context(browser, js=False)
    page = context.new_page()
    _to_conversation(page, url, "valid-1")
    pasted = "x" * 5000
    page.fill("#message", pasted)
    assert len(page.input_value("#message")) == 5000  # the browser does not cut it
    page.check("input[name=stance][value='3']")
    with page.expect_navigation():
        page.click("#send")
    assert "under 1000 characters (this one has 5000)" in page.content()
    assert len(page.input_value("#message")) == 5000
    assert page.is_checked("input[name=stance][value='3']")
    page.fill("#message", "   ")
    with page.expect_navigation():
        page.click("#send")
    assert "Please write a message first." in page.content()
    assert page.is_checked("input[name=stance][value='3']")
    assert _users(store) == []
    context.close()
    scripted = _context(browser)
    page = scripted.new_page()
    _to_conversation(page, url, "valid-2")
    page.fill("#message", pasted)
    assert page.locator("#message-count").inner_text().startswith("5000 / 1000 characters")
    assert page.locator("#send").is_disabled()
    page.fill("#message", "short")
    assert not page.locator("#send").is_disabled()
    scripted.close()


@pytest.mark.parametrize("width", [390, 360])
def test_scale_fits_one_row_on_a_phone(
    browser: Any, served: tuple[str, StudyStore, Gate], width: int, tmp_path: Path
) -> None:
    url, _, _ = served
    context = _context(browser, width=width)
    page = context.new_page()
    _to_conversation(page, url, f"phone-{width}")
    page.fill("#message", "How does it look?")
    page.check("#form-message input[name=stance][value='same']")
    with page.expect_navigation():
        page.click("#send")
    page.wait_for_selector(".msg.assistant:not(.pending)")
    tops = page.evaluate(
        "Array.from(document.querySelectorAll('#form-message .scale label'))"
        ".map(l => Math.round(l.getBoundingClientRect().top))"
    )
    assert len(tops) == 11 and len(set(tops)) == 1, tops
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(tmp_path / f"chat-{width}.png"), full_page=True)
    context.close()
