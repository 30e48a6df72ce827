"""Admin hardening: proxy headers only from trusted addresses, one budget of wrong
tokens across every admin path, server-side admin sessions with expiry and logout, and
CSV exports that a spreadsheet cannot run as formulas."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from stancelab.conversation._export import neutralise_cell
from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import ADMIN_COOKIE, create_app
from stancelab.study._exports import export_study
from stancelab.study._server import running_server
from stancelab.study._store import StudyStore

from .conftest import ADMIN_TOKEN, SECRET, AppFactory, Participant, make_config


def _login_form(client: httpx.Client | TestClient) -> str:
    page = client.get("/admin/login")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


@pytest.fixture
def limited_app(store: StudyStore) -> object:
    config = make_config(limits={"admin_failures_per_minute": 3})
    return create_app(config, store, FakeChatModel(), secret=SECRET, admin_token=ADMIN_TOKEN)


def _guess_with_spoofed_addresses(url: str) -> list[int]:
    codes = []
    with httpx.Client(base_url=url) as client:
        csrf = _login_form(client)
        for i in range(5):
            response = client.post(
                "/admin/login",
                data={"csrf": csrf, "token": f"guess-{i}"},
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            )
            codes.append(response.status_code)
    return codes


def test_spoofed_forwarded_for_does_not_reset_the_login_limit(limited_app: object) -> None:
    # a real uvicorn on 127.0.0.1: its own default would trust the header from loopback
    with running_server(limited_app) as url:
        assert _guess_with_spoofed_addresses(url) == [403, 403, 403, 429, 429]


def test_forwarded_for_counts_only_from_a_trusted_proxy(limited_app: object) -> None:
    with running_server(limited_app, forwarded_allow_ips="127.0.0.1") as url:
        # behind a trusted proxy each real client has its own budget
        assert _guess_with_spoofed_addresses(url) == [403] * 5
        with httpx.Client(base_url=url) as client:
            csrf = _login_form(client)
            codes = [
                client.post(
                    "/admin/login",
                    data={"csrf": csrf, "token": "x"},
                    headers={"X-Forwarded-For": "198.51.100.7"},
                ).status_code
                for _ in range(4)
            ]
    assert codes == [403, 403, 403, 429]


def test_header_token_guesses_are_rate_limited_on_every_path(limited_app: object) -> None:
    client = TestClient(limited_app)  # type: ignore[arg-type]
    guesses = [
        {"Authorization": "Bearer wrong-1"},
        {"X-Admin-Token": "wrong-2"},
        {"Authorization": "Bearer wrong-3"},
    ]
    for headers in guesses:
        response = client.get("/admin", headers=headers, follow_redirects=False)
        assert response.status_code == 303
    blocked = client.get("/admin", headers={"X-Admin-Token": "wrong-4"}, follow_redirects=False)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    # while blocked even the right token is not compared: guessing cannot go on
    right = client.get("/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert right.status_code == 429
    csrf = _login_form(client)
    form = client.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN})
    assert form.status_code == 429


def test_admin_session_expires_on_the_server_and_logout_ends_it(
    app_client: AppFactory, store: StudyStore
) -> None:
    client = app_client()
    csrf = _login_form(client)
    client.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN})
    first_cookie = client.cookies.get(ADMIN_COOKIE)
    assert first_cookie and ADMIN_TOKEN not in first_cookie
    assert client.get("/admin", follow_redirects=False).status_code == 200
    store.expire_admin_sessions_now()
    expired = client.get("/admin", follow_redirects=False)
    assert expired.status_code == 303 and expired.headers["location"] == "/admin/login"

    csrf = _login_form(client)
    client.post("/admin/login", data={"csrf": csrf, "token": ADMIN_TOKEN})
    second_cookie = client.cookies.get(ADMIN_COOKIE)
    assert second_cookie and second_cookie != first_cookie  # random, not derived from the token
    page = client.get("/admin")
    logout_csrf = re.search(r'action="/admin/logout".*?name="csrf" value="([^"]+)"', page.text)
    assert logout_csrf
    assert client.post("/admin/logout", data={"csrf": "forged"}).status_code == 403
    out = client.post("/admin/logout", data={"csrf": logout_csrf.group(1)}, follow_redirects=False)
    assert out.status_code == 303
    # the old cookie, replayed after logout, no longer works
    replay = TestClient(client.app, cookies={ADMIN_COOKIE: second_cookie})
    again = replay.get("/admin", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/admin/login"


FORMULAS = [
    '=HYPERLINK("http://x.example","click")',
    "=1+2",
    "+1",
    "-2+3",
    "@SUM(A1)",
    "=cmd|' /C calc'!A0",
]


@pytest.fixture
def injected(app_client: AppFactory, store: StudyStore) -> Iterator[TestClient]:
    client = app_client(turns={"min": 1, "max": 6})
    p = Participant(client)
    p.through_before("P-csv", background=FORMULAS[0])
    for text in FORMULAS[1:]:
        p.say(text)
    yield client


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def test_csv_exports_neutralise_formula_cells(injected: TestClient, store: StudyStore) -> None:
    headers = {"X-Admin-Token": ADMIN_TOKEN}
    messages = injected.get("/admin/export/study_messages.csv", headers=headers).text
    participants = injected.get("/admin/export/study_participants.csv", headers=headers).text
    wide = injected.get("/admin/export/participants_wide.csv", headers=headers).text
    for body in (messages, participants, wide):
        cells = _cells(body)
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], body[:400]
    assert "'=1+2" in _cells(messages) and "'@SUM(A1)" in _cells(messages)
    assert "'" + FORMULAS[0] in _cells(participants)
    frame = pd.read_csv(io.StringIO(wide))
    assert len(frame) == 1 and frame.loc[0, "msg_1"] == "'=1+2"
    assert frame.loc[0, "reply_1"] == "You said: =1+2"
    # Parquet keeps the values exactly as typed (no spreadsheet runs it)
    parquet = injected.get("/admin/export/study_messages.parquet", headers=headers)
    raw = pd.read_parquet(io.BytesIO(parquet.content))
    assert "=1+2" in set(raw["text"])


def test_export_study_writes_wide_and_neutralised_files(
    injected: TestClient, store: StudyStore, tmp_path: Path
) -> None:
    paths = export_study(store, tmp_path / "out", study="pilot")
    names = {p.name for p in paths}
    assert {"participants_wide.csv", "participants_wide.parquet", "study_messages.csv"} <= names
    text = (tmp_path / "out" / "study_messages.csv").read_text()
    assert "'=1+2" in _cells(text) and "=1+2" not in [c for c in _cells(text) if c[:1] == "="]
    wide = pd.read_parquet(tmp_path / "out" / "participants_wide.parquet")
    assert list(wide["pid"]) == ["P-csv"]
    assert [wide.loc[0, f"msg_{k}"] for k in range(1, 6)] == FORMULAS[1:]
    assert wide.loc[0, "llm_stance_0"] == 3.0


def test_progress_summary_counts_started_and_completed(app_client: AppFactory) -> None:
    client = app_client(conditions=["standard", "static"])
    done = Participant(app_client(conditions=["standard", "static"]))
    done.through_before("P-done")
    if done.step == "conversation" and 'data-role="statement"' not in done.html:
        done.say("one")
        done.say("two")
    done.finish()
    Participant(app_client(conditions=["standard", "static"])).get("/?pid=P-started")
    summary = client.get("/admin/progress.json", headers={"X-Admin-Token": ADMIN_TOKEN}).json()
    assert (summary["started"], summary["completed"], summary["in_progress"]) == (2, 1, 1)
    per = summary["per_condition"]
    assert sum(c["started"] for c in per.values()) == 2
    assert sum(c["completed"] for c in per.values()) == 1
    page = client.get("/admin", headers={"X-Admin-Token": ADMIN_TOKEN})
    assert 'id="progress-summary"' in page.text


def test_neutralise_cell_covers_every_formula_start() -> None:
    for start in ("=", "+", "-", "@", "\t", "\r"):
        assert neutralise_cell(f"{start}1") == f"'{start}1"
    assert neutralise_cell("plain -1") == "plain -1" and neutralise_cell(-1) == -1
