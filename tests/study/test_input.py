"""Nothing a participant types is lost: idempotent submissions, a second tab, a reload
while the reply is written, validation that keeps what was typed, the reply stream, and
the hidden probe off the participant's critical path."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from stancelab.engine._base import GenerationRequest, Prompt, TopTokens
from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import create_app
from stancelab.study._store import StudyStore

from .conftest import SECRET, AppFactory, Participant, make_config


def _users(store: StudyStore) -> list[str]:
    row = store.participants()[0]
    return [m.text for m in store.messages(row.id) if m.role == "user"]


def test_repeated_submit_returns_the_same_result_not_a_rate_limit(
    app_client: AppFactory, store: StudyStore
) -> None:
    # 30 s between messages: a second click counted as a new message would get 429
    client = app_client(limits={"min_seconds_between_messages": 30, "requests_per_minute": 1000})
    p = Participant(client)
    p.through_before("P-double")
    form = {
        "csrf": p.csrf,
        "turn": "1",
        "message": "Only once please.",
        "key": p.key,
        "stance": "same",
    }
    first = client.post("/study/message", data=form)
    second = client.post("/study/message", data=form)
    assert first.status_code == second.status_code == 200
    assert "going a little fast" not in second.text
    assert second.text.count("Only once please.") == 2  # the message and its echo
    assert _users(store) == ["Only once please."]


def test_double_click_while_the_reply_is_written_waits_for_the_same_reply(
    store: StudyStore,
) -> None:
    lm = FakeChatModel(delay_s=0.6)
    app = create_app(make_config(), store, lm, secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True))
    p.through_before("P-click")
    form = {
        "csrf": p.csrf,
        "turn": "1",
        "message": "Clicked twice.",
        "key": p.key,
        "stance": "same",
    }
    results: list[tuple[int, str]] = []

    def click() -> None:
        response = p.client.post("/study/message", data=form)
        results.append((response.status_code, response.text))

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.15)  # two clicks ~150 ms apart
    for t in threads:
        t.join()
    assert [code for code, _ in results] == [200, 200]
    assert all("You said: Clicked twice." in text for _, text in results)
    assert _users(store) == ["Clicked twice."]
    assert len(lm.generated) == 1  # one reply generated, not two


def test_second_tab_message_is_added_not_dropped(app_client: AppFactory, store: StudyStore) -> None:
    client = app_client()
    p = Participant(client)
    p.through_before("P-tabs")
    tab_a = Participant(client).get("/study")
    tab_b = Participant(client).get("/study")
    assert tab_a.key != tab_b.key
    tab_a.say("From the first tab.")
    tab_b.say("From the second tab.")  # its form still says turn 1
    assert tab_b.status == 200
    assert _users(store) == ["From the first tab.", "From the second tab."]
    assert "You said: From the second tab." in tab_b.html
    row = store.participants()[0]
    assert [(m.turn, m.role) for m in store.messages(row.id)] == [
        (1, "user"),
        (1, "assistant"),
        (2, "user"),
        (2, "assistant"),
    ]


def test_validation_errors_keep_what_was_typed_and_chosen(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(limits={"max_message_chars": 50, "min_seconds_between_messages": 0})
    p = Participant(client)
    p.get("/?pid=P-valid")
    p.post("/study/consent", {"csrf": p.csrf, "agree": "yes"})
    long_background = "I live by the sea. " * 5
    p.post("/study/about", {"csrf": p.csrf, "d_age": "abc", "background": long_background})
    assert p.status == 400 and "under 50 characters (it has 94)" in p.html
    assert long_background.strip() in p.html and 'value="abc"' in p.html
    assert "maxlength" not in p.html  # no silent browser cut: the limit is shown instead
    assert "At most 50 characters." in p.html
    p.post(
        "/study/about",
        {
            "csrf": p.csrf,
            "d_age": "30",
            "d_gender": "Man",
            "d_education": "Some college",
            "d_politics": "Other",
            "background": "Short.",
        },
    )
    p.post("/study/before", {"csrf": p.csrf, "stance": "4", "reason": ""})
    assert p.status == 400 and 'value="4" checked' in p.html
    p.post("/study/before", {"csrf": p.csrf, "reason": "kept reason"})
    assert p.status == 400 and "kept reason</textarea>" in p.html
    p.post("/study/before", {"csrf": p.csrf, "stance": "4", "reason": "ok"})
    assert p.step == "conversation"
    p.say("   ", stance=9)
    assert p.status == 400 and "Please write a message first." in p.html
    assert 'value="9" checked' in p.html
    too_long = "word " * 20
    p.say(too_long, stance=2)
    assert p.status == 400 and "under 50 characters (this one has 99)" in p.html
    assert f">{too_long}</textarea>" in p.html and 'value="2" checked' in p.html
    assert _users(store) == []


def _events(body: str) -> list[tuple[str, dict[str, object]]]:
    found = re.findall(r"event: (\w+)\ndata: (.*)\n", body)
    return [(name, json.loads(data)) for name, data in found]


def test_async_submit_streams_the_reply_and_reload_shows_it_pending(store: StudyStore) -> None:
    release = threading.Event()

    def slow_reply(request: GenerationRequest) -> str:
        release.wait(10)
        return "A considered reply."

    app = create_app(make_config(), store, FakeChatModel(reply=slow_reply), secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True))
    p.through_before("P-stream")
    sent = p.client.post(
        "/study/message",
        data={
            "csrf": p.csrf,
            "turn": "1",
            "message": "Are you there?",
            "key": p.key,
            "stance": "same",
        },
        headers={"X-Study-Async": "1"},
    )
    assert sent.status_code == 200 and sent.json() == {"turn": 1, "stream": "/study/stream/1"}
    # stored before the model answers; a reload (or another tab) shows it pending
    row = store.participants()[0]
    assert [(m.text, m.status) for m in store.messages(row.id)] == [("Are you there?", "pending")]
    reload = p.get("/study")
    assert 'data-pending="1"' in reload.html and "Are you there?" in reload.html
    assert 'class="typing"' in reload.html and 'http-equiv="refresh"' in reload.html
    # the next message's form is sent hidden (the script shows it, Send disabled, so a
    # draft can be typed while the chatbot writes); without scripts nothing changes
    assert 'id="form-message" hidden data-pending="1"' in reload.html
    assert 'id="form-finish"' not in reload.html
    release.set()
    stream = p.client.get("/study/stream/1")
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert _events(stream.text) == [
        ("pending", {"turn": 1}),
        ("reply", {"turn": 1, "text": "A considered reply."}),
    ]
    messages = store.messages(row.id)
    assert [(m.role, m.status) for m in messages] == [
        ("user", "answered"),
        ("assistant", "answered"),
    ]
    assert messages[1].shown_at is not None
    assert 'data-pending="1"' not in p.get("/study").html


class _SlowProbeModel(FakeChatModel):
    """Replies at once; the stance probe blocks until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.probe_gate = threading.Event()
        self.events: list[str] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list:  # type: ignore[type-arg]
        self.events.append("reply")
        return super().generate(requests)

    def generate_stream(self, request: GenerationRequest, on_text: Any) -> Any:
        self.events.append("reply")  # the study streams replies from engines that can
        return super().generate_stream(request, on_text)

    def next_tokens(self, prompts: Sequence[Prompt], top_k: int) -> list[TopTokens]:
        self.probe_gate.wait(10)
        result = super().next_tokens(prompts, top_k)
        self.events.append("probe")
        return result


def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():  # type: ignore[operator]
        time.sleep(0.02)


def test_probe_runs_after_the_reply_and_is_stored_before_the_next_turn(
    store: StudyStore,
) -> None:
    lm = _SlowProbeModel()
    app = create_app(make_config(), store, lm, secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True))
    p.through_before("P-probe")
    row = store.participants()[0]
    assert store.stance_turns(row.id) == set()  # turn 0 is measured off the page's path
    lm.probe_gate.set()
    _wait_for(lambda: store.stance_turns(row.id) == {0})
    lm.probe_gate.clear()  # from now on every probe hangs until released
    lm.events.clear()
    p.say("First.")
    # the reply is on the page while its probe is still running
    assert "You said: First." in p.html and store.stance_turns(row.id) == {0}
    sent = p.client.post(
        "/study/message",
        data={"csrf": p.csrf, "turn": "2", "message": "Second.", "key": p.key, "stance": "5"},
        headers={"X-Study-Async": "1"},
    )
    assert sent.json()["turn"] == 2
    time.sleep(0.3)
    # the second message is stored, but its reply waits for the first turn's probe
    assert [m.role for m in store.messages(row.id)].count("assistant") == 1
    assert set(lm.events) == {"reply"}
    lm.probe_gate.set()
    stream = p.client.get("/study/stream/2")
    assert ("reply", {"turn": 2, "text": "You said: Second."}) in _events(stream.text)
    _wait_for(lambda: store.stance_turns(row.id) == {0, 1, 2})
    assert store.stance_turns(row.id) == {0, 1, 2}
    collapsed = [e for i, e in enumerate(lm.events) if i == 0 or lm.events[i - 1] != e]
    assert collapsed == ["reply", "probe", "reply", "probe"]


def test_a_database_from_0_2_gains_the_new_columns(tmp_path: Path) -> None:
    from sqlalchemy import Column, MetaData, Table, create_engine, text

    from stancelab.study._store import StudyBase

    added = {
        ("study_messages", "client_key"),
        ("study_messages", "status"),
        ("study_messages", "shown_at"),
        ("study_messages", "cut"),
        ("study_llm_stances", "created_at"),
        ("study_participants", "page_times"),
        ("study_participants", "platform_study_id"),
        ("study_participants", "platform_session_id"),
        ("study_participants", "attention"),
    }
    old = MetaData()
    for table in StudyBase.metadata.sorted_tables:
        if table.name in ("study_admin_sessions", "study_settings"):
            continue
        columns = [
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
            if (table.name, c.name) not in added
        ]
        Table(table.name, old, *columns)
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO study_participants (id, study, pid, condition, topic, step, "
                "session_nonce, simulated, created_at, updated_at, model, template_hash) "
                "VALUES ('p1', 'pilot', 'OLD', 'standard', 'climate change', 'conversation', "
                "'n', 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00', '', '')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO study_messages (participant_id, turn, role, text, created_at, "
                "latency_s) VALUES ('p1', 1, 'user', 'old message', '2026-01-01 00:00:00', 0)"
            )
        )
    engine.dispose()
    store = StudyStore(path)
    try:
        [message] = store.messages("p1")
        assert (message.text, message.status, message.cut) == ("old message", "answered", False)
        store.add_user_message("p1", 2, "new message", 5, "key-0123456789")
        assert store.message_by_key("p1", "key-0123456789") is not None
        store.stamp_page("p1", "conversation.shown")
        row = store.participant("p1")
        assert row is not None and "conversation.shown" in (row.page_times or {})
    finally:
        store.close()


def test_request_rate_limit_on_send_keeps_the_message_in_the_box(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(limits={"requests_per_minute": 12, "min_seconds_between_messages": 0})
    p = Participant(client).through_before("P-rate")  # 7 requests
    while client.get("/study").status_code != 429:
        pass
    p.say("Do not lose me.", stance=4)
    assert p.status == 429 and int(p.client.get("/healthz").status_code) == 200
    assert "Do not lose me.</textarea>" in p.html and 'value="4" checked' in p.html
    assert _users(store) == []
