"""The participant flow, assignment, resume, and the security properties of the web app."""

from __future__ import annotations

import logging
import re
from collections import Counter

import pytest

from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import SESSION_COOKIE
from stancelab.study._store import StudyStore

from .conftest import ADMIN_TOKEN, AppFactory, Participant


def test_full_chat_flow_stores_both_sides(app_client: AppFactory, store: StudyStore) -> None:
    p = Participant(app_client(conditions=["personalised"]))
    p.through_before("P-1", stance=8, background="I farm wheat in Kansas.")
    p.say("Droughts ruin my harvests.", stance=8)
    assert p.step == "conversation"
    assert "You said: Droughts ruin my harvests." in p.html
    assert 'id="form-finish"' not in p.html  # min turns (2) not reached yet
    p.say("I saw it myself.", stance=9)
    assert 'id="form-finish"' in p.html
    p.say("Third message.", stance=9)
    # max turns (3): the last reply is shown, the message form is gone, only "finish" left
    assert p.step == "conversation" and "You said: Third message." in p.html
    assert 'id="form-message"' not in p.html and 'id="form-finish"' in p.html
    extra = p.client.post(
        "/study/message", data={"csrf": p.csrf, "turn": "4", "message": "one too many"}
    )
    assert extra.status_code == 200 and "one too many" not in extra.text
    p.finish(after=9, perceived=(4, 7))
    code = re.search(r'id="completion-code">([^<]+)<', p.html)
    assert code is not None
    row = store.participants()[0]
    assert (row.pid, row.condition, row.step) == ("P-1", "personalised", "done")
    assert (row.stance_before, row.stance_after) == (8, 9)
    assert (row.perceived_start, row.perceived_end) == (4, 7)
    assert row.completion_code == code.group(1)
    assert row.demographics == {
        "age": "41",
        "gender": "Woman",
        "education": "Some college",
        "politics": "Moderate",
    }
    messages = store.messages(row.id)
    assert [(m.turn, m.role) for m in messages] == [
        (1, "user"),
        (1, "assistant"),
        (2, "user"),
        (2, "assistant"),
        (3, "user"),
        (3, "assistant"),
    ]
    assert [m.human_stance for m in messages if m.role == "user"] == [8, 9, 9]
    # the hidden survey ran before the chat and after every exchange
    stances = store.stances(row.id)
    assert [(s.turn, s.score) for s in stances] == [(0, 3.0), (1, 4.0), (2, 5.0), (3, 6.0)]


def test_probe_is_asked_on_a_copy_never_kept_in_history(
    app_client: AppFactory, fake_lm: FakeChatModel
) -> None:
    p = Participant(app_client(conditions=["personalised"]))
    p.through_before("P-copy", background="I drive a truck in Ohio.")
    p.say("First.")
    p.say("Second.")
    replies = [r.prompt for r in fake_lm.generated if isinstance(r.prompt, list)]
    assert len(replies) == len(fake_lm.generated) == 2, "the chatbot gets chat messages"
    for prompt in replies:
        text = " ".join(m["content"] for m in prompt)
        assert "Answer with a single number from 0 to 10" not in text
    # the personalised system prompt carries what the participant said about themselves
    assert "I drive a truck in Ohio." in replies[-1][0]["content"]
    assert [m["role"] for m in replies[-1]] == ["system", "user", "assistant", "user"]
    assert any("Answer with a single number" in s for s in fake_lm.scored_prompts)


def test_standard_chatbot_does_not_see_the_profile(
    app_client: AppFactory, fake_lm: FakeChatModel
) -> None:
    p = Participant(app_client(conditions=["standard"]))
    p.through_before("P-std", background="Unique-background-marker")
    p.say("Hello.")
    prompts = [r.prompt for r in fake_lm.generated if isinstance(r.prompt, list)]
    assert len(prompts) == 1
    assert all("Unique-background-marker" not in m["content"] for m in prompts[0])


def test_static_condition_shows_statements_and_skips_perception(
    app_client: AppFactory, store: StudyStore
) -> None:
    p = Participant(app_client(conditions=["static"]))
    p.through_before("P-static")
    assert "Statement A." in p.html and "Statement B." in p.html
    p.finish(after=5)
    row = store.participants()[0]
    assert row.step == "done" and row.perceived_start is None
    assert [m.role for m in store.messages(row.id)] == ["statement", "statement"]
    assert store.stances(row.id) == []


def test_cannot_finish_before_min_turns(app_client: AppFactory) -> None:
    p = Participant(app_client())
    p.through_before("P-min")
    p.say("Only one.")
    p.post("/study/finish-conversation", {"csrf": p.csrf})
    assert p.status == 400 and p.step == "conversation"
    assert "at least 2 messages" in p.html


def test_reload_resumes_and_resubmission_is_not_duplicated(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client()
    p = Participant(client)
    p.through_before("P-reload")
    p.say("Once only.")
    csrf = p.csrf
    # the same form again (double click, back button): turn 1 is already stored
    again = client.post("/study/message", data={"csrf": csrf, "turn": "1", "message": "Once only."})
    assert again.status_code == 200
    p.get("/study")
    assert p.step == "conversation" and p.html.count("Once only.") == 2  # user + echo
    p.get("/?pid=P-reload")  # the link again resumes too
    assert p.step == "conversation"
    row = store.participant_by_pid("pilot", "P-reload")
    assert row is not None
    assert len([m for m in store.messages(row.id) if m.role == "user"]) == 1


def test_balanced_assignment(app_client: AppFactory, store: StudyStore) -> None:
    for i in range(12):
        Participant(
            app_client(
                conditions=["standard", "personalised", "static"],
                topics=[{"name": "a", "statements": ["s"]}, {"name": "b", "statements": ["t"]}],
            )
        ).get(f"/?pid=B{i}")
    counts = Counter(r.condition for r in store.participants())
    assert counts == {"standard": 4, "personalised": 4, "static": 4}
    cells = Counter((r.condition, r.topic) for r in store.participants())
    assert set(cells.values()) == {2}


# --- security -----------------------------------------------------------------------

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def test_untrusted_text_is_escaped_for_participant_and_admin(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client()
    p = Participant(client)
    p.through_before("P-xss", background=XSS)
    p.say(XSS)
    assert "<script>alert" not in p.html and "<img src=x" not in p.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in p.html
    row = store.participants()[0]
    admin = client.get(f"/admin/session/{row.id}", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert admin.status_code == 200
    assert "<script>alert" not in admin.text and "&lt;script&gt;" in admin.text
    assert "default-src 'none'" in admin.headers["content-security-policy"]
    # the raw text is stored as typed (escaping is the renderer's job)
    assert store.messages(row.id)[0].text == XSS


def test_invalid_pid_rejected(app_client: AppFactory) -> None:
    response = app_client().get("/?pid=<script>")
    assert response.status_code == 400 and "<script>" not in response.text


def test_csrf_is_required(app_client: AppFactory, store: StudyStore) -> None:
    a = Participant(app_client())
    a.get("/?pid=A1")
    b = Participant(app_client())
    b.get("/?pid=B1")
    assert a.client.post("/study/consent", data={"agree": "yes"}).status_code == 403
    stolen = a.client.post("/study/consent", data={"agree": "yes", "csrf": b.csrf})
    assert stolen.status_code == 403
    assert all(r.step == "consent" for r in store.participants())
    ok = a.client.post("/study/consent", data={"agree": "yes", "csrf": a.csrf})
    assert ok.status_code == 200 and 'data-step="about"' in ok.text


def test_admin_login_form_needs_csrf_and_right_token(
    app_client: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = app_client()
    assert client.post("/admin/login", data={"token": ADMIN_TOKEN}).status_code == 403
    page = client.get("/admin/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    wrong = client.post("/admin/login", data={"token": "nope", "csrf": csrf.group(1)})
    assert wrong.status_code == 403
    right = client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": csrf.group(1)})
    assert right.status_code == 200 and 'data-step="admin"' in right.text
    assert ADMIN_TOKEN not in right.text
    assert all(ADMIN_TOKEN not in c for c in client.cookies.values())
    assert ADMIN_TOKEN not in caplog.text
    csv = client.get("/admin/export/study_participants.csv")
    assert csv.status_code == 200 and "session_nonce" not in csv.text


def test_admin_pages_need_the_token(app_client: AppFactory) -> None:
    client = app_client()
    for url in ("/admin", "/admin/export/study_messages.csv", "/admin/session/abc"):
        response = client.get(url, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/admin/login"
    assert (
        client.get(
            "/admin", headers={"Authorization": "Bearer wrong"}, follow_redirects=False
        ).status_code
        == 303
    )
    parquet = client.get(
        "/admin/export/study_messages.parquet", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert parquet.status_code == 200 and parquet.content[:4] == b"PAR1"


def test_another_participants_session_is_unreachable(
    app_client: AppFactory, store: StudyStore
) -> None:
    a = Participant(app_client())
    a.through_before("VICTIM", background="victim-secret-background")
    a.say("victim message")
    victim = store.participant_by_pid("pilot", "VICTIM")
    assert victim is not None
    b = Participant(app_client())
    b.get("/?pid=ATTACKER")
    # knowing the victim's platform id is not enough
    response = b.client.get("/?pid=VICTIM")
    assert response.status_code == 403 and "victim message" not in response.text
    # a cookie naming the victim without a valid signature is rejected
    for forged in (f"{victim.id}.{'0' * 64}", victim.id, f"{victim.id}.{victim.session_nonce}"):
        b.client.cookies.clear()
        b.client.cookies.set(SESSION_COOKIE, forged)
        page = b.client.get("/study")
        assert page.status_code == 403 and "victim message" not in page.text
        post = b.client.post("/study/message", data={"turn": "2", "message": "hijack"})
        assert post.status_code == 403
    assert [m.text for m in store.messages(victim.id) if m.role == "user"] == ["victim message"]
    assert all(r.background != "hijack" for r in store.participants())


def test_rate_limit_answers_429_not_500(app_client: AppFactory, store: StudyStore) -> None:
    client = app_client(limits={"min_seconds_between_messages": 30, "requests_per_minute": 1000})
    p = Participant(client)
    p.through_before("P-fast")
    p.say("first")
    assert p.status == 200
    p.say("second, too soon")
    assert p.status == 429
    assert "wait" in p.html
    response = client.post("/study/message", data={"csrf": "x", "turn": "2", "message": "x"})
    assert response.status_code in (403, 429)
    row = store.participants()[0]
    assert [m.text for m in store.messages(row.id) if m.role == "user"] == ["first"]


def test_request_rate_limit_sets_retry_after(app_client: AppFactory) -> None:
    client = app_client(limits={"requests_per_minute": 5})
    client.get("/?pid=P-burst")
    codes = [client.get("/study").status_code for _ in range(8)]
    assert codes.count(429) >= 3 and 500 not in codes
    limited = client.get("/study")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_message_length_and_body_limits(app_client: AppFactory, store: StudyStore) -> None:
    client = app_client(limits={"max_message_chars": 50, "min_seconds_between_messages": 0})
    p = Participant(client)
    p.through_before("P-long")
    p.say("x" * 51)
    assert p.status == 400 and "under 50 characters" in p.html
    huge = client.post(
        "/study/message", data={"csrf": p.csrf, "turn": "1", "message": "y" * 100_000}
    )
    assert huge.status_code == 413
    assert store.messages(store.participants()[0].id) == []


def test_engine_failure_is_a_retryable_page_not_a_crash(store: StudyStore) -> None:
    from fastapi.testclient import TestClient

    from stancelab.engine._base import GenerationRequest
    from stancelab.engine._errors import EngineError
    from stancelab.study._app import create_app

    from .conftest import SECRET, make_config

    broken = {"on": False}

    def reply(request: GenerationRequest) -> str:
        if broken["on"]:
            raise EngineError("llama.cpp rejected a request: out of memory")
        return "fine"

    app = create_app(make_config(), store, FakeChatModel(reply=reply), secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True))
    p.through_before("P-broken")
    broken["on"] = True
    p.say("hello?")
    assert p.status == 503 and "send your message again" in p.html
    # the message was stored before the model was asked, and is offered again as typed
    kept = store.messages(store.participants()[0].id)
    assert [(m.text, m.status) for m in kept] == [("hello?", "failed")]
    assert ">hello?</textarea>" in p.html
    broken["on"] = False
    p.say("hello again")
    assert p.status == 200
    assert [m.text for m in store.messages(store.participants()[0].id)] == ["hello again", "fine"]


def test_new_sessions_per_address_are_limited(app_client: AppFactory) -> None:
    client = app_client(limits={"new_sessions_per_minute_per_ip": 3})
    codes = [
        app_client(limits={"new_sessions_per_minute_per_ip": 3}).get(f"/?pid=N{i}").status_code
        for i in range(5)
    ]
    assert codes == [200, 200, 200, 429, 429]
    assert client.get("/?pid=N0").status_code == 403  # exists, other browser: refused
