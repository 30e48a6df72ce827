"""Pages a participant (and an admin) never fights: every refusal keeps what was typed and
ticked, the small state endpoint other tabs poll, admin views without codes that do not
exist yet or "None", and the wide export in a reader's order."""

from __future__ import annotations

import datetime as dt
import io
import re

import pandas as pd

from stancelab.study._exports import reader_order, wide_participants
from stancelab.study._store import StudyStore

from .conftest import ADMIN_TOKEN, AppFactory, Participant

ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
READING = {p: 30 for p in ("consent", "about", "before", "after", "perception")}
CHECKS = [
    {"id": "colour", "label": "Choose Blue.", "choices": ["Red", "Blue"], "answer": "Blue"},
    {
        "id": "shape",
        "label": "Choose Square.",
        "choices": ["Round", "Square"],
        "answer": "Square",
        "page": "after",
    },
]


def _past_reading(store: StudyStore, step: str) -> None:
    """Let the participant's current page have been open long enough."""
    row = store.participants()[0]
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=31)).isoformat()
    store.update(row.id, page_times={**(row.page_times or {}), f"{step}.shown": past})


def _checked(html: str, name: str) -> list[str]:
    return re.findall(rf'name="{name}" value="([^"]+)" checked', html)


def test_every_refusal_keeps_what_was_typed_and_ticked(
    app_client: AppFactory, store: StudyStore
) -> None:
    p = Participant(app_client(min_reading_seconds=READING, attention_checks=CHECKS))
    p.get("/?pid=keep-1")
    p.post("/study/consent", {"csrf": p.csrf, "agree": "yes", "decision": "agree"})
    assert p.status == 400 and "more time to read" in p.html
    assert 'name="agree" value="yes" checked' in p.html  # it used to come back unticked
    p.post("/study/consent", {"csrf": p.csrf, "decision": "agree"})  # no tick: none shown
    assert p.status == 400 and 'value="yes" checked' not in p.html
    _past_reading(store, "consent")
    p.post("/study/consent", {"csrf": p.csrf, "agree": "yes", "decision": "agree"})
    assert p.step == "about"

    about = {
        "csrf": p.csrf,
        "d_age": "41",
        "d_gender": "Woman",
        "d_education": "Some college",
        "d_politics": "Moderate",
        "background": "I teach <b>school</b>.",
        "a_colour": "Blue",
    }
    p.post("/study/about", about)
    assert p.status == 400 and "more time to read" in p.html
    assert 'value="41"' in p.html and "I teach &lt;b&gt;school&lt;/b&gt;.</textarea>" in p.html
    for value in ("Woman", "Some college", "Moderate", "Blue"):
        assert f'<option value="{value}" selected>' in p.html, value
    _past_reading(store, "about")
    p.post("/study/about", about)
    assert p.step == "before"

    p.post("/study/before", {"csrf": p.csrf, "stance": "6", "reason": "kept"})
    assert p.status == 400 and _checked(p.html, "stance") == ["6"] and "kept</textarea>" in p.html
    _past_reading(store, "before")
    p.post("/study/before", {"csrf": p.csrf, "stance": "6", "reason": "kept"})
    p.say("Hello there.", stance=5)
    p.say("And again.", stance=4)
    p.post("/study/finish-conversation", {"csrf": p.csrf, "stance": "same"})
    assert p.step == "after"

    after = {"csrf": p.csrf, "stance": "3", "reason": "changed", "a_shape": "Square"}
    p.post("/study/after", after)
    assert p.status == 400 and _checked(p.html, "stance") == ["3"]
    assert "changed</textarea>" in p.html and '<option value="Square" selected>' in p.html
    _past_reading(store, "after")
    p.post("/study/after", after)
    assert p.step == "perception"

    seen = {"csrf": p.csrf, "perceived_start": "2", "perceived_end": "9"}
    p.post("/study/perception", seen)
    assert p.status == 400 and "more time to read" in p.html
    assert _checked(p.html, "perceived_start") == ["2"] and _checked(p.html, "perceived_end") == [
        "9"
    ]


def test_a_finish_refused_keeps_its_stance_and_the_message_form_keeps_its_text(
    app_client: AppFactory,
) -> None:
    p = Participant(app_client()).through_before("keep-2")
    p.say("One.", stance=5)
    # too early to finish (min 2): the finish stance chosen comes back chosen
    p.post("/study/finish-conversation", {"csrf": p.csrf, "stance": "7"})
    assert p.status == 400 and "at least 2 messages" in p.html
    p.say("", stance=8)  # an empty message: refused, the stance stays
    assert p.status == 400 and "Please write a message first." in p.html
    assert _checked(p.html, "stance") == ["8"]


def test_state_names_the_step_and_changes_with_the_conversation(
    app_client: AppFactory,
) -> None:
    p = Participant(app_client(turns={"min": 1, "max": 3})).through_before("state-1")
    first = p.client.get("/study/state").json()
    assert first == {"step": "conversation", "version": "0.0.1.0"}
    page_version = re.search(r'data-version="([^"]+)"', p.html)
    assert page_version and page_version.group(1) == first["version"]
    p.say("Hello.")
    assert p.client.get("/study/state").json()["version"] == "1.0.2.0"
    p.finish()
    assert p.client.get("/study/state").json() == {"step": "done", "version": "done"}
    p.client.cookies.clear()
    assert p.client.get("/study/state").status_code == 403


def test_admin_shows_no_code_before_the_end_no_none_and_statements_for_static(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(conditions=["static"])
    p = Participant(client)
    p.through_before("static-1")
    row = store.participants()[0]
    assert row.completion_code  # drawn at the start, but not the admin's to show yet
    listing = client.get("/admin", headers=ADMIN).text
    session = client.get(f"/admin/session/{row.id}", headers=ADMIN).text
    for html in (listing, session):
        assert "None" not in html and row.completion_code not in html
        assert ">statements<" in html and ">conversation<" not in html
    assert 'id="admin-code">— (not finished)<' in session
    assert 'id="perceived">—<' in session
    p.finish()
    session = client.get(f"/admin/session/{row.id}", headers=ADMIN).text
    assert f'id="admin-code">{row.completion_code}<' in session and "None" not in session
    fresh = Participant(client)
    fresh.get("/?pid=fresh-1")  # at consent: nothing answered yet
    fresh_row = store.participant_by_pid("pilot", "fresh-1")
    assert fresh_row is not None and fresh_row.completion_code
    html = client.get(f"/admin/session/{fresh_row.id}", headers=ADMIN).text
    assert "None" not in html and fresh_row.completion_code not in html


def test_wide_export_runs_turn_by_turn_in_a_readers_order(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client(turns={"min": 1, "max": 3})
    short = Participant(client).through_before("wide-1")
    short.say("Only one.")
    short.finish()
    full = Participant(client).through_before("wide-2")
    for text in ("One.", "Two.", "Three."):
        full.say(text)
    full.finish()
    frame = wide_participants(store, "pilot")
    columns = list(frame.columns)
    turn_columns = [c for c in columns if re.search(r"_\d+$", c) and c in reader_order(columns)]
    expected = ["llm_stance_0", "probe_done_at_0"]
    for k in (1, 2, 3):
        expected += [
            f"msg_{k}",
            f"human_stance_{k}",
            f"human_stance_source_{k}",
            f"msg_sent_at_{k}",
            f"reply_{k}",
            f"reply_shown_at_{k}",
            f"reply_cut_{k}",
            f"llm_stance_{k}",
            f"probe_done_at_{k}",
        ]
    assert turn_columns == expected
    assert columns.index("n_messages") < columns.index("llm_stance_0")
    assert columns[0] == "id"  # the participant's own columns first, as stored
    by_pid = frame.set_index("pid")
    assert by_pid.loc["wide-2", "msg_3"] == "Three." and pd.isna(by_pid.loc["wide-1", "msg_2"])
    download = client.get("/admin/export/participants_wide.csv", headers=ADMIN)
    assert list(pd.read_csv(io.StringIO(download.text)).columns) == columns


def test_reader_order_leaves_other_columns_alone() -> None:
    scrambled = ["id", "reply_2", "msg_10", "msg_2", "llm_stance_0", "stance_after", "msg_1"]
    assert reader_order(scrambled) == [
        "id",
        "stance_after",
        "llm_stance_0",
        "msg_1",
        "msg_2",
        "reply_2",
        "msg_10",
    ]
