"""Two study server processes on one PostgreSQL database, sharing no memory: every
decision they must agree on (assignment, who generates a reply, rate limits) is taken in
the database. The servers are real uvicorn processes on two loopback ports; the model is
the fake backend with a reply delay, so generation is slow enough to race and to kill."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

import stancelab
from stancelab.study._cli import study_app
from stancelab.study._server import APP_FACTORY, ENV_CONFIG, ENV_DB
from stancelab.study._store import ChatMessageRow, StudyStore

from .conftest import ADMIN_TOKEN, SECRET, Participant

pytestmark = pytest.mark.postgres

CAP = 6
STUDY: dict[str, Any] = {
    "study": "workers",
    "topics": [{"name": "climate change"}],
    "conditions": ["standard"],
    "turns": {"min": 1, "max": 3},
    "stance_item": "big_problem",
    # 1 s per reply: long enough to race two servers on it, and to kill one mid-reply
    "model": {"name": "echo", "backend": "fake", "options": {"delay_s": 1.0}},
    "chatbot": {"claim_seconds": 2},
    "recruitment": {"cap": CAP},
    "limits": {
        "min_seconds_between_messages": 0,
        "requests_per_minute": 1000,
        "new_sessions_per_minute_per_ip": 1000,
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One uvicorn process running the study app from the environment."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        command = [sys.executable, "-m", "uvicorn", "--factory", APP_FACTORY]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_up(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(self.log.name).read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"the server on {self.url} did not start")

    def owns(self, owner: str) -> bool:
        """Whether a claim's owner names this process."""
        return f":{self.process.pid}:" in owner

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


@pytest.fixture
def study_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


@pytest.fixture
def servers(
    pg_store: StudyStore, postgres_url: str, study_file: Path, tmp_path: Path
) -> Iterator[tuple[Server, Server]]:
    """Two server processes (A, B) on the test's PostgreSQL database."""
    env = dict(os.environ)
    env.update(
        {
            ENV_CONFIG: str(study_file),
            ENV_DB: postgres_url,
            "STANCELAB_STUDY_SECRET": SECRET.decode(),
            "STANCELAB_ADMIN_TOKEN": ADMIN_TOKEN,
            # the child imports this checkout's stancelab, whatever is installed
            "PYTHONPATH": str(Path(stancelab.__file__).parents[1]),
        }
    )
    pair = (Server(env, tmp_path / "a.log"), Server(env, tmp_path / "b.log"))
    try:
        for server in pair:
            server.wait_up()
        yield pair
    finally:
        for server in pair:
            server.stop()


def browser(server: Server, like: Participant | None = None) -> Participant:
    """A participant's browser talking to one server; ``like``: the same participant's
    browser on another server (its cookies, so the same session)."""
    cookies = dict(like.client.cookies) if like is not None else None
    return Participant(
        httpx.Client(base_url=server.url, follow_redirects=True, timeout=60, cookies=cookies)
    )


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released together; their results in order."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def message_form(p: Participant, text: str) -> dict[str, str]:
    turn = re.search(r'name="turn" value="(\d+)"', p.html)
    assert turn, p.html
    return {"csrf": p.csrf, "turn": turn.group(1), "message": text, "key": p.key, "stance": "5"}


def stream(p: Participant, turn: int) -> str:
    with p.client.stream("GET", f"/study/stream/{turn}") as events:
        return "".join(events.iter_text())


def exchanges(store: StudyStore, pid: str) -> list[ChatMessageRow]:
    row = store.participant_by_pid("workers", pid)
    assert row is not None
    return store.messages(row.id)


def test_two_servers_on_one_database(servers: tuple[Server, Server], pg_store: StudyStore) -> None:
    a, b = servers
    # --- a double submit: the same form sent to both servers at once ----------------
    p1 = browser(a).through_before("W-1")
    form = message_form(p1, "double")
    p1_on_b = browser(b, p1)
    pages = at_once(
        lambda: p1.client.post("/study/message", data=form),
        lambda: p1_on_b.client.post("/study/message", data=form),
    )
    assert [page.status_code for page in pages] == [200, 200]
    assert all("You said: double" in page.text for page in pages)
    # --- two tabs on two servers, each sending its own message at once --------------
    p2 = browser(b).through_before("W-2")
    p2_on_a = browser(a, p2).get("/study")
    tab_a, tab_b = message_form(p2_on_a, "from tab A"), message_form(p2, "from tab B")
    tabs = at_once(
        lambda: p2_on_a.client.post("/study/message", data=tab_a),
        lambda: p2.client.post("/study/message", data=tab_b),
    )
    assert [t.status_code for t in tabs] == [200, 200], [t.text[-3000:] for t in tabs]
    # --- the page's JavaScript: stored on A, the reply streamed from B ---------------
    p3 = browser(a).through_before("W-3")
    accepted = p3.client.post(
        "/study/message", data=message_form(p3, "streamed"), headers={"X-Study-Async": "1"}
    )
    assert accepted.json() == {"turn": 1, "stream": "/study/stream/1"}
    events = stream(browser(b, p3), 1)
    assert 'event: reply\ndata: {"turn": 1, "text": "You said: streamed"}' in events
    assert events.count("event: reply") == 1

    # nothing lost, nothing twice: every message stored once and answered once
    m1 = exchanges(pg_store, "W-1")
    assert [(m.role, m.turn, m.text) for m in m1] == [
        ("user", 1, "double"),
        ("assistant", 1, "You said: double"),
    ]
    m2 = exchanges(pg_store, "W-2")
    users = sorted(m.text for m in m2 if m.role == "user")
    assert users == ["from tab A", "from tab B"]
    for turn in (1, 2):  # each turn's reply answers that turn's message
        user = next(m for m in m2 if m.role == "user" and m.turn == turn)
        reply = next(m for m in m2 if m.role == "assistant" and m.turn == turn)
        assert reply.text == f"You said: {user.text}" and user.status == "answered"
    # every reply and probe generated by one process, once: one claim, taken once
    time.sleep(0.5)  # the last probes run after their reply is stored
    claims = pg_store.claims()
    replies = [c for c in claims if c.kind == "reply"]
    assert len(replies) == 4 and all(c.attempts == 1 and c.finished for c in replies)
    assert {c.owner for c in replies} & {c.owner for c in claims} and all(
        a.owns(c.owner) or b.owns(c.owner) for c in claims
    )
    for pid, turns in (("W-1", [0, 1]), ("W-2", [0, 1, 2]), ("W-3", [0, 1])):
        row = pg_store.participant_by_pid("workers", pid)
        assert row is not None
        assert sorted(s.turn for s in pg_store.stances(row.id)) == turns
        probes = [c for c in claims if c.kind == "probe" and c.participant_id == row.id]
        assert sorted(c.turn for c in probes) == turns and all(c.attempts == 1 for c in probes)

    # --- the last place, taken by two participants at once on the two servers --------
    p5 = browser(a).through_before("W-5")  # holds a place; answered in the kill test below
    for i in range(CAP - 5):
        browser(b).get(f"/?pid=W-fill-{i}")
    assert len(pg_store.participants("workers")) == CAP - 1
    entries = at_once(
        lambda: httpx.get(f"{a.url}/?pid=W-last-A", follow_redirects=True),
        lambda: httpx.get(f"{b.url}/?pid=W-last-B", follow_redirects=True),
    )
    assert sorted(e.status_code for e in entries) == [200, 403]
    assert any("This study is full" in e.text for e in entries)
    assert len(pg_store.participants("workers")) == CAP

    # --- a server killed while it generates: its claim expires, the other answers -----
    accepted = p5.client.post(
        "/study/message", data=message_form(p5, "survive"), headers={"X-Study-Async": "1"}
    )
    row5 = pg_store.participant_by_pid("workers", "W-5")
    assert accepted.status_code == 200 and row5 is not None
    deadline = time.monotonic() + 10
    while not any(c.kind == "reply" for c in pg_store.claims(row5.id)):
        assert time.monotonic() < deadline, "server A never claimed the reply"
        time.sleep(0.02)
    time.sleep(0.3)  # into the 1 s generation
    a.process.send_signal(signal.SIGKILL)
    a.process.wait()
    assert not any(m.role == "assistant" for m in pg_store.messages(row5.id))
    started = time.monotonic()
    events = stream(browser(b, p5), 1)
    assert 'event: reply\ndata: {"turn": 1, "text": "You said: survive"}' in events
    assert time.monotonic() - started >= 1.0  # it waited for the claim to expire
    claim = next(c for c in pg_store.claims(row5.id) if c.kind == "reply")
    assert claim.attempts == 2 and b.owns(claim.owner) and claim.finished
    replies5 = [m for m in pg_store.messages(row5.id) if m.role == "assistant"]
    assert [m.text for m in replies5] == ["You said: survive"]


def test_rate_limits_count_across_servers(
    servers: tuple[Server, Server], pg_store: StudyStore, study_file: Path
) -> None:
    """Wrong admin tokens are counted in the database: the budget is the study's, not
    each process's (default 10 a minute: the 11th wrong guess is refused on either)."""
    a, b = servers
    codes = []
    for i in range(12):
        server = (a, b)[i % 2]
        response = httpx.get(f"{server.url}/admin", headers={"X-Admin-Token": "wrong"})
        codes.append(response.status_code)
    assert codes[:10] == [303] * 10 and codes[10:] == [429, 429]  # 303: to the login
    limited = httpx.get(f"{a.url}/admin", headers={"X-Admin-Token": "wrong"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1


def test_sqlite_with_several_workers_is_refused_in_one_line(
    study_file: Path, tmp_path: Path
) -> None:
    import typer

    app = typer.Typer()
    app.add_typer(study_app, name="study")
    db = tmp_path / "study.db"
    result = CliRunner().invoke(
        app, ["study", "serve", str(study_file), "--db", str(db), "--workers", "2"]
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: SQLite allows one server process; use PostgreSQL for --workers N"
    )
    assert not db.exists()  # refused before anything was opened


def test_stream_sends_the_text_another_process_publishes(pg_store: StudyStore) -> None:
    """The event stream protocol: `partial` with the whole text so far each time it grew,
    then `reply` once, read from the database while another process (here: a thread
    writing as owner 'other-process') generates."""
    from fastapi.testclient import TestClient

    from stancelab.engine._fake import FakeChatModel
    from stancelab.study._app import create_app

    from .conftest import make_config

    app = create_app(make_config(), pg_store, FakeChatModel(), secret=SECRET)
    p = Participant(TestClient(app, follow_redirects=True)).through_before("S-1")
    row = pg_store.participant_by_pid("pilot", "S-1")
    assert row is not None
    assert pg_store.claim(row.id, 1, "reply", "other-process", 30)  # before the message
    accepted = p.client.post(
        "/study/message", data=message_form(p, "hi"), headers={"X-Study-Async": "1"}
    )
    assert accepted.status_code == 200

    def other_process() -> None:
        for text in ("You", "You said", "You said", "You said: hi"):
            time.sleep(0.35)
            pg_store.set_partial(row.id, 1, "other-process", text)
        time.sleep(0.35)
        pg_store.add_reply(row.id, 1, "You said: hi", 1.4)

    writer = threading.Thread(target=other_process)
    writer.start()
    body = stream(p, 1)
    writer.join()
    events = re.findall(r"event: (\w+)\ndata: (.*)\n", body)
    assert events[0] == ("pending", '{"turn": 1}')
    assert events[1:] == [
        ("partial", '{"turn": 1, "text": "You"}'),
        ("partial", '{"turn": 1, "text": "You said"}'),  # sent once: it did not change
        ("partial", '{"turn": 1, "text": "You said: hi"}'),
        ("reply", '{"turn": 1, "text": "You said: hi"}'),
    ]
    claim = next(c for c in pg_store.claims(row.id) if c.kind == "reply")
    assert claim.owner == "other-process" and claim.finished and claim.partial_text is None
