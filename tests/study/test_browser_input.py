"""Real headless Chromium, with and without JavaScript: a double click, two tabs, a reload
while the reply is written, validation that keeps input, the reply stream with a typing
indicator, and the layout at phone widths. The chatbot is the scripted model (these
tests are about the page, not the model; test_browser.py runs the embedded model)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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

    def __init__(self, tail: str = "") -> None:
        self.open = threading.Event()
        self.open.set()
        self.tail = tail

    def reply(self, request: GenerationRequest) -> str:
        self.open.wait(30)
        return f"You said: {last_user_message(request.prompt)[:80]}{self.tail}"


Served = tuple[str, StudyStore, Gate]


@contextmanager
def _serve(tmp_path: Path, gate: Gate, **overrides: Any) -> Iterator[Served]:
    store = StudyStore(tmp_path / "b.db")
    settings: dict[str, Any] = {
        "turns": {"min": 1, "max": 4},
        "limits": {"min_seconds_between_messages": 30, "max_message_chars": 1000},
    }
    app = create_app(
        make_config(**{**settings, **overrides}),
        store,
        FakeChatModel(reply=gate.reply),
        secret=SECRET,
    )
    with running_server(app) as url:
        yield url, store, gate
    store.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with _serve(tmp_path, Gate()) as running:
        yield running


LONG_TAIL = (
    " Heat waves have grown longer and more frequent over the last decades, and the nights"
    " stay warm, which is what hurts the old and the sick most. Cities can plant trees,"
    " open cooling centres and check on people who live alone; hospitals can plan staff"
    " for the hot weeks. None of this stops the warming, but it saves lives while the"
    " emissions come down. What would you most like your own town to do first?"
)


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[Served]:
    """Two messages at most, none of the 30 s wait between them, and replies long enough
    to fill most of a phone's screen (so "in view" is not true by accident)."""
    with _serve(
        tmp_path,
        Gate(LONG_TAIL),
        turns={"min": 1, "max": 2},
        limits={"min_seconds_between_messages": 0, "max_message_chars": 1000},
    ) as running:
        yield running


def _context(browser: Any, js: bool = True, width: int = 390) -> Any:
    return browser.new_context(
        viewport={"width": width, "height": 800}, java_script_enabled=js, is_mobile=width < 600
    )


def _to_conversation(page: Any, url: str, pid: str, shots: Path | None = None) -> None:
    page.set_default_timeout(20_000)
    page.goto(f"{url}/?pid={pid}")
    if shots is not None:
        page.screenshot(path=str(shots / "consent.png"), full_page=True)
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


def _until(page: Any, expression: str, timeout_s: float = 20.0) -> None:
    """Wait until a JavaScript expression is true (``wait_for_function`` evaluates its
    predicate with eval, which the pages' Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_s:.0f} s: {expression}")
        page.wait_for_timeout(50)


def _users(store: StudyStore) -> list[str]:
    row = store.participants()[0]
    return [m.text for m in store.messages(row.id) if m.role == "user"]


def test_js_streams_the_reply_with_a_typing_indicator_and_send_disabled(
    browser: Any, served: Served
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


def test_plain_forms_work_without_javascript(browser: Any, served: Served) -> None:
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
    browser: Any, served: Served, js: bool
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


def test_second_tab_message_is_kept(browser: Any, served: Served) -> None:
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
    browser: Any, served: Served
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
    # the sent message is not offered again; the next one's form waits with Send disabled
    # (changed: it used to be absent until the reply, so nothing could be drafted)
    assert page.input_value("#message") == "" and page.is_disabled("#send")
    draft = "A draft for the next turn."
    page.type("#message", draft)
    page.reload()  # the draft survives, and so does its count
    assert page.input_value("#message") == draft
    assert page.inner_text("#message-count").startswith(f"{len(draft)} / 1000 characters")
    gate.open.set()
    page.wait_for_selector(".msg.assistant:not(.pending)")
    _until(page, "!document.querySelector('#send').disabled")
    assert "You said: Reload me." in page.locator(".msg.assistant").last.inner_text()
    assert page.input_value("#message") == draft
    assert _users(store) == ["Reload me."]
    context.close()


def test_validation_keeps_input_and_limits_show_before_sending(
    browser: Any, served: Served
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
    browser: Any, served: Served, width: int, tmp_path: Path
) -> None:
    url, _, _ = served
    context = _context(browser, width=width)
    page = context.new_page()
    _to_conversation(page, url, f"phone-{width}")
    page.fill("#message", "How does it look?")
    page.check("#form-message input[name=stance][value='same']")
    page.click("#send")  # the reply and the next form arrive in place
    page.wait_for_selector(".msg.assistant:not(.pending)")
    page.wait_for_selector("#form-message:not([data-busy])")
    tops = page.evaluate(
        "Array.from(document.querySelectorAll('#form-message .scale label'))"
        ".map(l => Math.round(l.getBoundingClientRect().top))"
    )
    assert len(tops) == 11 and len(set(tops)) == 1, tops
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.screenshot(path=str(tmp_path / f"chat-{width}.png"), full_page=True)
    context.close()


NAVIGATIONS = "performance.getEntriesByType('navigation').length"
NEWEST_REPLY_IN_VIEW = """() => {
  const replies = document.querySelectorAll('.msg.assistant:not(.pending)');
  const box = replies[replies.length - 1].getBoundingClientRect();
  return box.top >= 0 && box.bottom <= window.innerHeight;
}"""


def _in_view(page: Any, selector: str) -> bool:
    return bool(
        page.evaluate(
            "s => { const b = document.querySelector(s).getBoundingClientRect();"
            " return b.top >= 0 && b.bottom <= window.innerHeight; }",
            selector,
        )
    )


def test_consent_refusal_keeps_the_box_ticked(browser: Any, tmp_path: Path) -> None:
    with _serve(tmp_path, Gate(), min_reading_seconds={"consent": 30}) as (url, store, _):
        context = _context(browser)
        page = context.new_page()
        page.goto(f"{url}/?pid=consent-1")
        page.check("input[name=agree]")
        with page.expect_navigation():
            page.click("#form-consent button[type=submit]")
        assert "take a little more time" in page.inner_text(".error")
        assert page.is_checked("input[name=agree]")  # it used to come back unticked
        assert store.participants()[0].step == "consent"
        context.close()


@pytest.mark.parametrize("width", [360, 390, 1280])
def test_replies_arrive_in_place_and_the_newest_stays_in_view(
    browser: Any, quick: Served, width: int, tmp_path: Path
) -> None:
    """Two messages without a page load: each reply shows where it can be read whole,
    the form comes back for the next turn (a new key and turn from the server, the stance
    asked afresh), and after the last message Finish is in view. Screenshots go to
    $STANCELAB_SCREENSHOTS when set (checked by eye), else to the test's folder."""
    url, store, _ = quick
    shots = Path(os.environ.get("STANCELAB_SCREENSHOTS") or tmp_path) / str(width)
    shots.mkdir(parents=True, exist_ok=True)
    context = _context(browser, width=width)
    page = context.new_page()
    _to_conversation(page, url, f"inplace-{width}", shots)
    page.evaluate("window.sameDocument = true")
    keys = []
    for turn, text in ((1, "Is it getting hotter where I live?"), (2, "What can my town do?")):
        assert page.input_value("#form-message input[name=turn]") == str(turn)
        keys.append(page.input_value("#form-message input[name=key]"))
        assert page.locator("#form-message input[name=stance]:checked").count() == 0
        page.fill("#message", text)
        page.check("#form-message input[name=stance][value='same']")
        page.click("#send")
        _until(
            page,
            f"document.querySelectorAll('.msg.assistant:not(.pending)').length === {turn}"
            f" && document.querySelector('#transcript').dataset.version.startsWith('{turn}.0.')",
        )
        reply = page.locator(".msg.assistant").last.inner_text()
        assert f"You said: {text}" in reply and "What would you most like" in reply
        assert page.evaluate(NEWEST_REPLY_IN_VIEW), f"reply {turn} out of view at {width} px"
        assert page.evaluate(NAVIGATIONS) == 1 and page.evaluate("window.sameDocument")
    # the form came back once, for turn 2, with the server's new key; now it is gone
    assert keys[0] != keys[1] and len(set(keys)) == 2
    page.screenshot(path=str(shots / "after-two-replies.png"), full_page=False)
    assert page.locator("#form-message").count() == 0
    # Finish comes into view below the reply's start: whole where both fit (1280 px),
    # else it starts on screen (a phone scrolls a little to its button, not 6,900 px)
    finish_top, finish_bottom, height = page.evaluate(
        "(() => { const b = document.querySelector('#form-finish').getBoundingClientRect();"
        " return [b.top, b.bottom, window.innerHeight]; })()"
    )
    assert 0 <= finish_top < height, f"Finish out of view at {width} px"
    if width >= 1280:
        assert finish_bottom <= height
    assert page.locator("#form-finish input[name=stance]:checked").count() == 0
    page.screenshot(path=str(shots / "finish-full.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    page.check("#form-finish input[name=stance][value='5']")
    with page.expect_navigation():
        page.click("#form-finish button[type=submit]")
    assert page.locator("main").get_attribute("data-step") == "after"
    assert _users(store) == ["Is it getting hotter where I live?", "What can my town do?"]
    row = store.participants()[0]
    sent = [m for m in store.messages(row.id) if m.role == "user"]
    assert [m.client_key for m in sent] == keys  # each message kept the key its form had
    context.close()


def test_a_draft_survives_a_reload_until_it_is_sent(browser: Any, quick: Served) -> None:
    url, store, _ = quick
    context = _context(browser)
    page = context.new_page()
    _to_conversation(page, url, "draft-1")
    page.type("#message", "Half a thought")
    page.reload()
    assert page.input_value("#message") == "Half a thought"
    assert page.inner_text("#message-count").startswith("14 / 1000 characters")  # not 0
    page.check("#form-message input[name=stance][value='same']")
    page.click("#send")
    _until(page, "document.querySelector('#transcript').dataset.version === '1.0.2.0'")
    page.reload()  # stored: the draft is forgotten, the box is empty for the next message
    assert page.input_value("#message") == ""
    assert page.inner_text("#message-count").startswith("0 / 1000 characters")
    assert _users(store) == ["Half a thought"]
    context.close()


def test_other_tabs_show_the_conversation_live(browser: Any, served: Served) -> None:
    """One tab sends; a second (told over a BroadcastChannel) and a third without the
    channel (it polls /study/state) show the message, the typing indicator and then the
    reply, without a page load."""
    url, store, gate = served
    context = _context(browser)
    first = context.new_page()
    _to_conversation(first, url, "live-1")
    second = context.new_page()
    third = context.new_page()
    third.add_init_script("delete window.BroadcastChannel")
    for tab in (second, third):
        tab.set_default_timeout(20_000)
        tab.goto(f"{url}/study")
        tab.type("#message", "typed in another tab")
        tab.evaluate("window.sameDocument = true")
    gate.open.clear()
    first.fill("#message", "From tab one.")
    first.check("#form-message input[name=stance][value='same']")
    first.click("#send")
    for tab in (second, third):
        tab.wait_for_selector(".msg.user[data-turn='1']")
        assert tab.inner_text(".msg.user[data-turn='1']").endswith("From tab one.")
        tab.wait_for_selector(".msg.assistant.pending .typing")
        assert tab.is_disabled("#send")
    gate.open.set()
    for tab in (second, third):
        tab.wait_for_selector(".msg.assistant[data-turn='1']:not(.pending)")
        assert "You said: From tab one." in tab.inner_text(".msg.assistant[data-turn='1']")
        _until(tab, "document.querySelector('#form-message input[name=turn]').value === '2'")
        assert tab.input_value("#message") == "typed in another tab"  # its own text stays
        assert tab.evaluate(NAVIGATIONS) == 1 and tab.evaluate("window.sameDocument")
    assert _users(store) == ["From tab one."]
    context.close()


def test_partial_events_grow_the_reply_before_the_final_text(browser: Any, served: Served) -> None:
    """The stream's `partial` events (the whole text so far) replace the bubble's text as
    they come; `reply` sets the final text. The stream is answered by the test (the server
    sends partial events once the engine streams), then by the server again."""
    url, store, gate = served
    context = _context(browser)
    page = context.new_page()
    _to_conversation(page, url, "partial-1")
    growing = ["The heat", "The heat is rising", "The heat is rising where you live"]
    final = "The heat is rising where you live, faster than the average."
    events: list[tuple[str, dict[str, object]]] = [("pending", {"turn": 1})]
    events += [("partial", {"turn": 1, "text": text}) for text in growing]
    events += [("reply", {"turn": 1, "text": final})]
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    answered: list[str] = []

    def scripted_stream(route: Any) -> None:
        if answered:  # only the first stream is scripted
            route.continue_()
            return
        answered.append(route.request.url)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/study/stream/*", scripted_stream)
    page.evaluate(
        """() => { window.seen = [];
        new MutationObserver(() => {
          const node = document.querySelector(".msg.assistant[data-turn='1']");
          const text = node && node.querySelector(".text");
          if (!text) return;
          const last = window.seen[window.seen.length - 1];
          if (!last || last[0] !== text.textContent) {
            window.seen.push([text.textContent, node.classList.contains("pending")]);
          }
        }).observe(document.body, {subtree: true, childList: true, characterData: true}); }"""
    )
    gate.open.clear()
    page.fill("#message", "Is it getting hotter?")
    page.check("#form-message input[name=stance][value='same']")
    page.click("#send")
    page.wait_for_selector("body[data-reply-shown='1']", state="attached")
    seen = [tuple(s) for s in page.evaluate("window.seen") if s[0]]
    shown = [text for text, _ in seen]
    assert shown[: len(growing) + 1] == [*growing, final], seen
    assert all(pending for _, pending in seen[: len(growing)])  # still being written
    assert not seen[len(growing)][1]  # the final text ends the wait
    gate.open.set()  # the server's own reply reaches the page over the real stream
    _until(
        page,
        """document.querySelector(".msg.assistant[data-turn='1']")"""
        ".innerText.includes('You said: Is it getting hotter?')",
    )
    assert len(answered) == 1 and page.evaluate(NAVIGATIONS) == 1
    assert _users(store) == ["Is it getting hotter?"]
    context.close()


def test_the_study_report_fits_a_1280_px_window(browser: Any, tmp_path: Path) -> None:
    """Wide tables scroll inside their own box and figures shrink to the page: the page
    itself never scrolls sideways."""
    from stancelab.study._report import write_report
    from stancelab.study._simulate import simulate

    config = make_config(conditions=["standard", "static"], turns={"min": 2, "max": 3})
    simulate(config, 4, db=tmp_path / "sim.db", lm=FakeChatModel(), turns=3)
    store = StudyStore(tmp_path / "sim.db")
    write_report(store, tmp_path / "report", config=config)
    store.close()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto((tmp_path / "report" / "index.html").as_uri())
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    boxes = page.evaluate(
        "[...document.querySelectorAll('.scroll')].map(b => [b.scrollWidth, b.clientWidth])"
    )
    assert all(shown <= 1280 for _, shown in boxes)
    assert any(whole > shown for whole, shown in boxes), "no table wide enough to scroll"
    figures = page.evaluate(
        "[...document.images].map(i => [i.naturalWidth, i.getBoundingClientRect().right])"
    )
    assert figures and all(right <= 1280 for _, right in figures)
    context.close()


def test_a_streamed_reply_grows_on_the_page_before_it_is_complete(
    browser: Any, tmp_path: Path
) -> None:
    """End to end: the fake engine streams word by word (the whole reply over 2.5 s),
    the server publishes the text so far through the database, the page shows it grow,
    and the finished bubble holds the reply exactly as stored."""
    reply = "Warm nights hurt the old and the sick most, so cities open cooling centres."
    store = StudyStore(tmp_path / "stream.db")
    config = make_config(
        turns={"min": 1, "max": 2},
        limits={"min_seconds_between_messages": 0, "max_message_chars": 1000},
    )
    app = create_app(
        config, store, FakeChatModel(reply=lambda _r: reply, delay_s=2.5), secret=SECRET
    )
    with running_server(app) as url:
        context = _context(browser)
        page = context.new_page()
        _to_conversation(page, url, "stream-1")
        page.fill("#message", "Tell me about heat.")
        page.check("#form-message input[name=stance][value='same']")
        page.click("#send")
        seen: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            bubble = page.locator(".msg.assistant").last
            text = bubble.locator(".text").inner_text() if bubble.count() else ""
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if text == reply and "pending" not in (bubble.get_attribute("class") or ""):
                break
            page.wait_for_timeout(40)
        context.close()
    stored = [m.text for m in store.messages(store.participants()[0].id) if m.role == "assistant"]
    store.close()
    assert stored == [reply] and seen and seen[-1] == reply
    growing = [t for t in seen if t != reply]
    assert growing, f"the reply appeared in one piece: {seen}"
    assert all(reply.startswith(t) for t in growing)
