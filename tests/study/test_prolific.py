"""Prolific's whole flow: study-level codes and the automatic return, screen-out and
no-consent codes, STUDY_ID / SESSION_ID, cap and quotas that count completions (not
abandoned sessions), the closed switch, withdrawal, attention checks, minimum reading
times, timestamps, per-condition consent and debrief, and the progress indicator."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import update

from stancelab.engine._fake import FakeChatModel
from stancelab.study._simulate import simulate
from stancelab.study._store import ParticipantRow, StudyStore

from .conftest import ADMIN_TOKEN, AppFactory, Participant, make_config

PROLIFIC = {
    "completion_code": "C1A2B3C4",
    "completion_url": "https://app.prolific.com/submissions/complete?cc={code}",
    "completion_redirect_seconds": 3,
    "screen_out_code": "SCREEN01",
    "no_consent_code": "NOCONS01",
}


def _refresh_url(html: str) -> str | None:
    match = re.search(r'http-equiv="refresh" content="\d+;url=([^"]+)"', html)
    return match.group(1).replace("&amp;", "&") if match else None


def test_completion_uses_the_study_code_and_returns_to_prolific(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(**PROLIFIC)
    p = Participant(client)
    p.get("/?PROLIFIC_PID=5f1a&STUDY_ID=st-77&SESSION_ID=se-99")
    assert p.step == "consent"
    p.post("/study/consent", {"csrf": p.csrf, "agree": "yes", "decision": "agree"})
    p.client.get("/study")
    p.html = p.client.get("/study").text
    # the remaining pages through the Participant helper
    p.post(
        "/study/about",
        {
            "csrf": p.csrf,
            "d_age": "30",
            "d_gender": "Man",
            "d_education": "Some college",
            "d_politics": "Other",
            "background": "I fix bikes.",
        },
    )
    p.post("/study/before", {"csrf": p.csrf, "stance": "5", "reason": "why"})
    p.say("one")
    p.say("two")
    p.finish()
    assert re.search(r'id="completion-code">C1A2B3C4<', p.html)
    url = "https://app.prolific.com/submissions/complete?cc=C1A2B3C4"
    assert _refresh_url(p.html) == url and f'href="{url}"' in p.html.replace("&amp;", "&")
    row = store.participant_by_pid("pilot", "5f1a")
    assert row is not None
    assert (row.platform_study_id, row.platform_session_id) == ("st-77", "se-99")
    assert row.completion_code == "C1A2B3C4"


def test_no_consent_ends_with_its_code(app_client: AppFactory, store: StudyStore) -> None:
    p = Participant(app_client(**PROLIFIC))
    p.get("/?pid=P-no")
    p.post("/study/consent", {"csrf": p.csrf, "decision": "decline"})
    assert p.step == "no_consent" and 'id="completion-code">NOCONS01<' in p.html
    assert _refresh_url(p.html) == "https://app.prolific.com/submissions/complete?cc=NOCONS01"
    assert store.participants()[0].step == "no_consent"


ATTENTION = [
    {
        "id": "colour",
        "label": "To show you are reading, choose Blue.",
        "choices": ["Red", "Blue", "Green"],
        "answer": "Blue",
    }
]


def _about(p: Participant, colour: str) -> None:
    p.post(
        "/study/about",
        {
            "csrf": p.csrf,
            "d_age": "30",
            "d_gender": "Man",
            "d_education": "Some college",
            "d_politics": "Other",
            "background": "I fix bikes.",
            "a_colour": colour,
        },
    )


def test_failed_attention_check_screens_out_with_its_code(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(attention_checks=ATTENTION, **PROLIFIC)
    failing = Participant(client)
    failing.get("/?pid=P-att-1")
    failing.post("/study/consent", {"csrf": failing.csrf, "agree": "yes"})
    assert "To show you are reading, choose Blue." in failing.html
    _about(failing, "")
    assert failing.status == 400 and "Please answer: To show you are reading" in failing.html
    assert 'value="I fix bikes."' in failing.html or "I fix bikes.</textarea>" in failing.html
    _about(failing, "Red")
    assert failing.step == "screened_out" and 'id="completion-code">SCREEN01<' in failing.html
    passing = Participant(app_client(attention_checks=ATTENTION, **PROLIFIC))
    passing.get("/?pid=P-att-2")
    passing.post("/study/consent", {"csrf": passing.csrf, "agree": "yes"})
    _about(passing, "Blue")
    assert passing.step == "before"
    rows = {r.pid: r for r in store.participants()}
    assert rows["P-att-1"].attention == {"colour": {"answer": "Red", "passed": False}}
    assert rows["P-att-2"].attention == {"colour": {"answer": "Blue", "passed": True}}


def test_cap_counts_places_and_abandoned_sessions_free_theirs(
    app_client: AppFactory, store: StudyStore
) -> None:
    overrides = {"recruitment": {"cap": 2, "abandon_after_minutes": 30}}
    codes = [Participant(app_client(**overrides)).get(f"/?pid=C{i}").status for i in range(3)]
    assert codes == [200, 200, 403]
    _age(store, "C0", minutes=31)  # idle past the window: abandoned
    full = Participant(app_client(**overrides)).get("/?pid=C3")
    assert full.status == 200 and full.step == "consent"


def _age(store: StudyStore, pid: str, minutes: float) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=minutes)
    with store.session() as s:
        s.execute(update(ParticipantRow).where(ParticipantRow.pid == pid).values(updated_at=old))
        s.commit()


def test_balancing_ignores_abandoned_sessions_and_quota_counts_completions(
    app_client: AppFactory, store: StudyStore
) -> None:
    overrides = {
        "conditions": ["standard", "static"],
        "recruitment": {"quota_per_condition": 3, "abandon_after_minutes": 30},
    }
    for i in range(4):
        Participant(app_client(**overrides)).get(f"/?pid=Q{i}")
    rows = store.participants()
    assert Counter(r.condition for r in rows) == {"standard": 2, "static": 2}
    for r in rows:
        if r.condition == "standard":
            _age(store, r.pid, minutes=60)
        else:
            store.update(r.id, step="done")
    for i in range(4, 6):
        Participant(app_client(**overrides)).get(f"/?pid=Q{i}")
    newest = [r for r in store.participants() if r.pid in ("Q4", "Q5")]
    assert [r.condition for r in newest] == ["standard", "standard"]
    # static has 2 completions of its quota of 3: one more place; standard 2 active of 3
    Participant(app_client(**overrides)).get("/?pid=Q6")
    Participant(app_client(**overrides)).get("/?pid=Q7")
    refused = Participant(app_client(**overrides)).get("/?pid=Q8")
    assert refused.status == 403 and "This study is full" in refused.html


def test_closed_switch_in_config_and_live_from_admin(
    app_client: AppFactory, store: StudyStore
) -> None:
    closed = Participant(app_client(recruitment={"closed": True})).get("/?pid=X1")
    assert closed.status == 403 and "closed to new participants" in closed.html
    client = app_client()
    started = Participant(client).through_before("X2")
    headers = {"X-Admin-Token": ADMIN_TOKEN}
    client.post("/admin/closed", data={"closed": "1"}, headers=headers)
    assert client.get("/admin/progress.json", headers=headers).json()["closed"] is True
    refused = Participant(app_client()).get("/?pid=X3")
    assert refused.status == 403
    started.say("still here")  # those who started may finish
    assert started.status == 200 and "You said: still here" in started.html
    client.post("/admin/closed", data={"closed": "0"}, headers=headers)
    assert Participant(app_client()).get("/?pid=X4").status == 200


def test_withdrawal_deletes_the_data_it_says_it_deletes(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(questions={"contact": "study@uni.example"})
    p = Participant(client).through_before("W1", background="private story")
    p.say("private message")
    page = client.get("/study/withdraw")
    assert "everything you answered and wrote in this study is deleted" in page.text
    assert "study@uni.example" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf
    done = client.post("/study/withdraw", data={"csrf": csrf.group(1), "confirm": "yes"})
    assert 'data-step="withdrawn"' in done.text
    row = store.participant_by_pid("pilot", "W1")
    assert row is not None and row.step == "withdrawn"
    assert (row.background, row.demographics, row.stance_before) == (None, None, None)
    assert store.messages(row.id) == [] and store.stances(row.id) == []
    again = client.get("/?pid=W1")
    assert 'data-step="withdrawn"' in again.text  # no second session with the same id


def test_minimum_reading_time_keeps_the_page_and_its_input(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(min_reading_seconds={"consent": 30, "before": 30})
    p = Participant(client)
    p.get("/?pid=R1")
    p.post("/study/consent", {"csrf": p.csrf, "agree": "yes"})
    assert p.status == 400 and "more time to read this page (30 more seconds)" in p.html
    row = store.participants()[0]
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)).isoformat()
    store.update(row.id, page_times={"consent.shown": past})
    p.post("/study/consent", {"csrf": p.csrf, "agree": "yes"})
    assert p.step == "about"
    _about(p, "")
    p.get("/study")
    p.post("/study/before", {"csrf": p.csrf, "stance": "6", "reason": "kept"})
    assert p.status == 400 and 'value="6" checked' in p.html and "kept</textarea>" in p.html


def test_timestamps_for_pages_messages_and_probes(
    app_client: AppFactory, store: StudyStore
) -> None:
    p = Participant(app_client()).through_before("T1")
    p.say("hello")
    p.get("/study")
    row = store.participants()[0]
    times = row.page_times or {}
    for key in ("consent.shown", "consent.submitted", "about.submitted", "before.submitted"):
        assert key in times, times
    user, reply = store.messages(row.id)
    assert user.created_at is not None and reply.shown_at is not None
    assert reply.shown_at >= user.created_at
    stances = {s.turn: s for s in store.stances(row.id)}
    assert stances[1].created_at is not None


def test_consent_and_debrief_per_condition_as_markdown(app_client: AppFactory) -> None:
    questions = {
        "consent": "Chat study. **Read this.** <script>alert(1)</script>",
        "consent_by_condition": {"static": "Reading study. *Statements only.*"},
        "debrief_by_condition": {"standard": "The chatbot was **an AI**."},
        "institution": "Uni of Example",
        "contact": "study@uni.example",
        "ethics_id": "ERB-2026-17",
    }
    chat = Participant(app_client(conditions=["standard"], questions=questions))
    chat.get("/?pid=M1")
    assert "<strong>Read this.</strong>" in chat.html and "<script>alert" not in chat.html
    assert "ERB-2026-17" in chat.html and "Uni of Example" in chat.html
    assert "Step 1 of 6" in chat.html
    chat.post("/study/consent", {"csrf": chat.csrf, "agree": "yes"})
    chat.post(
        "/study/about",
        {
            "csrf": chat.csrf,
            "d_age": "30",
            "d_gender": "Man",
            "d_education": "Some college",
            "d_politics": "Other",
            "background": "x",
        },
    )
    chat.post("/study/before", {"csrf": chat.csrf, "stance": "5", "reason": "r"})
    chat.say("a")
    chat.say("b")
    chat.finish()
    assert "The chatbot was <strong>an AI</strong>." in chat.html
    static = Participant(app_client(conditions=["static"], questions=questions))
    static.get("/?pid=M2")
    assert "<em>Statements only.</em>" in static.html and "Step 1 of 5" in static.html
    static.post("/study/consent", {"csrf": static.csrf, "agree": "yes"})
    static.post(
        "/study/about",
        {
            "csrf": static.csrf,
            "d_age": "30",
            "d_gender": "Man",
            "d_education": "Some college",
            "d_politics": "Other",
            "background": "x",
        },
    )
    static.post("/study/before", {"csrf": static.csrf, "stance": "5", "reason": "r"})
    static.finish()
    assert "statements you read were written for this study" in static.html
    assert "chatbot was an AI language model" not in static.html


def test_other_browser_page_names_the_contact(app_client: AppFactory) -> None:
    Participant(app_client(questions={"contact": "help@uni.example"})).get("/?pid=D1")
    other = TestClient(app_client(questions={"contact": "help@uni.example"}).app)
    response = other.get("/?pid=D1")
    assert response.status_code == 403 and "help@uni.example" in response.text


def test_simulated_participants_wait_out_reading_times_and_pass_attention_checks(
    tmp_path: Path,
) -> None:
    config = make_config(
        min_reading_seconds={"consent": 1},
        attention_checks=ATTENTION,
        **PROLIFIC,
    )
    results = simulate(config, 2, db=tmp_path / "sim.db", lm=FakeChatModel(), turns=2)
    assert [r.completed for r in results] == [True, True], [r.error for r in results]
    assert {r.completion_code for r in results} == {"C1A2B3C4"}
    store = StudyStore(tmp_path / "sim.db")
    try:
        rows = store.participants()
        assert all(r.attention == {"colour": {"answer": "Blue", "passed": True}} for r in rows)
    finally:
        store.close()
