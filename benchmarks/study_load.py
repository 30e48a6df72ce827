"""Many study participants at once against PostgreSQL: latency per page, and a check that
nothing is lost or attached to the wrong participant.

Run: python benchmarks/study_load.py [--participants 100] [--turns 3] [--reply-delay 0.5]
     [--db postgresql+psycopg://...]   (default: starts a throwaway PostgreSQL server)
     [--in-process]                    (server and clients in one process; default: the
                                        server runs in its own process, as in production)
     [--workers 2]                     (that many server processes on the one database,
                                        each participant on one of them and its reply
                                        stream on the next; printed beside a one-process
                                        run of the same load)

The chatbot is the scripted model with a fixed reply delay (a stand-in for the engine, so
the figures are the web app's and the database's, not the model's); it echoes each
message, so a reply names the message it answers. Half the participants send their
messages as plain forms (the POST waits for the reply), half as the page's JavaScript
does (the POST returns at once, the reply comes over the event stream). Every
participant's messages, replies and stances are read back from the database afterwards.
While the participants run, a probe asks ``/healthz`` (answered on the event loop itself)
every 100 ms: its latency shows whether anything blocks the server's event loop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from stancelab.engine import FakeChatModel
from stancelab.study import StudyConfig, StudyStore, create_app, load_study, running_server

SECRET = b"load-benchmark-cookie-secret-0123"
"""One cookie secret for every server process: a session started on one is valid on all."""


@dataclass
class Visit:
    """One simulated participant's requests and what they sent."""

    pid: str
    scripted: bool
    sent: list[str] = field(default_factory=list)
    timings: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def _field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    if match is None:
        raise RuntimeError(f"no field {name!r} on the page")
    return match.group(1)


def _timed(visit: Visit, page: str, call: httpx.Response | None, start: float) -> None:
    visit.timings.append((page, time.perf_counter() - start))
    if call is not None and call.status_code >= 400:
        raise RuntimeError(f"{page}: HTTP {call.status_code}")


def run_participant(
    url: str, visit: Visit, turns: int, barrier: threading.Barrier, stream_url: str | None = None
) -> None:
    """The whole study as one participant (a browser with or without JavaScript); the
    reply streams from ``stream_url`` (another server process) when given."""
    with (
        httpx.Client(base_url=url, follow_redirects=True, timeout=300.0) as client,
        httpx.Client(base_url=stream_url or url, timeout=300.0) as streams,
    ):
        try:
            barrier.wait(timeout=120)
            t = time.perf_counter()
            page = client.get(f"/?PROLIFIC_PID={visit.pid}&STUDY_ID=load&SESSION_ID=s")
            _timed(visit, "entry", page, t)
            t = time.perf_counter()
            page = client.post(
                "/study/consent", data={"csrf": _field(page.text, "csrf"), "agree": "yes"}
            )
            _timed(visit, "consent", page, t)
            about = {
                "csrf": _field(page.text, "csrf"),
                "d_age": "40",
                "d_gender": "Woman",
                "d_education": "Some college",
                "d_politics": "Moderate",
                "background": f"I am participant {visit.pid}.",
            }
            t = time.perf_counter()
            page = client.post("/study/about", data=about)
            _timed(visit, "about", page, t)
            t = time.perf_counter()
            page = client.post(
                "/study/before",
                data={"csrf": _field(page.text, "csrf"), "stance": "6", "reason": "why"},
            )
            _timed(visit, "before", page, t)
            for turn in range(1, turns + 1):
                text = f"{visit.pid} message {turn}"
                form = {
                    "csrf": _field(page.text, "csrf"),
                    "turn": _field(page.text, "turn"),
                    "key": _field(page.text, "key"),
                    "message": text,
                    "stance": "6",
                }
                visit.sent.append(text)
                if visit.scripted:
                    t = time.perf_counter()
                    accepted = client.post(
                        "/study/message", data=form, headers={"X-Study-Async": "1"}
                    )
                    _timed(visit, "message (JS: stored)", accepted, t)
                    t = time.perf_counter()
                    streams.cookies = client.cookies
                    with streams.stream("GET", accepted.json()["stream"]) as events:
                        body = "".join(events.iter_text())
                    _timed(visit, "stream until reply (JS)", None, t)
                    if "event: reply" not in body:
                        raise RuntimeError(f"no reply event for turn {turn}: {body[:200]}")
                    t = time.perf_counter()
                    page = client.get("/study")
                    _timed(visit, "conversation page", page, t)
                else:
                    t = time.perf_counter()
                    page = client.post("/study/message", data=form)
                    _timed(visit, "message (form, with reply)", page, t)
                if f"You said: {text}" not in page.text:
                    raise RuntimeError(f"the reply to {text!r} is not on the page")
            for step, data in (
                ("finish-conversation", {"stance": "same"}),
                ("after", {"stance": "5", "reason": "after"}),
                ("perception", {"perceived_start": "4", "perceived_end": "6"}),
            ):
                t = time.perf_counter()
                page = client.post(
                    f"/study/{step}", data={"csrf": _field(page.text, "csrf"), **data}
                )
                _timed(visit, step, page, t)
            if 'data-step="done"' not in page.text:
                raise RuntimeError("did not reach the end page")
        except Exception as exc:  # recorded and reported, the run goes on
            visit.error = f"{type(exc).__name__}: {exc}"


def check(store: StudyStore, visits: list[Visit], turns: int, study: str) -> list[str]:
    """Everything each participant sent, in order, answered by a reply naming it, once."""
    problems = []
    rows = {r.pid: r for r in store.participants(study)}
    for visit in visits:
        row = rows.get(visit.pid)
        if row is None:
            problems.append(f"{visit.pid}: no participant row")
            continue
        messages = store.messages(row.id)
        users = [m.text for m in messages if m.role == "user"]
        replies = [m.text for m in messages if m.role == "assistant"]
        if users != visit.sent:
            problems.append(f"{visit.pid}: stored {users} but sent {visit.sent}")
        if replies != [f"You said: {t}" for t in visit.sent]:
            problems.append(f"{visit.pid}: replies {replies}")
        stance_turns = sorted(s.turn for s in store.stances(row.id))
        if stance_turns != list(range(turns + 1)):
            problems.append(f"{visit.pid}: stances at turns {stance_turns}")
        twice = [c for c in store.claims(row.id) if c.attempts != 1]
        if twice:
            problems.append(f"{visit.pid}: claimed more than once: {twice}")
        if row.step != "done" or row.platform_study_id != "load":
            problems.append(f"{visit.pid}: step {row.step}")
    return problems


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL server in a temporary folder on a free port (Debian's binaries)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        raise SystemExit("PostgreSQL server binaries missing: run scripts/install-system-deps.sh")
    bin_dir = found[-1].parent
    root = Path(tempfile.mkdtemp(prefix="stancelab-load-pg-"))
    sockets = root / "sock"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run(
        [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-w",
            "-o",
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def _study_config(turns: int, study: str = "load") -> StudyConfig:
    return load_study(
        {
            "study": study,
            "topics": [{"name": "climate change"}, {"name": "gun violence"}],
            "conditions": ["standard", "personalised"],
            "turns": {"min": turns, "max": turns},
            "model": "smollm2-135m",
            "limits": {
                "min_seconds_between_messages": 0,
                "requests_per_minute": 1000,
                "new_sessions_per_minute_per_ip": 10_000,
            },
        }
    )


def serve(db: str, port: int, turns: int, reply_delay_s: float, study: str) -> None:
    """The study server alone (run by ``--serve`` in a child process)."""
    store = StudyStore(db)
    app = create_app(
        _study_config(turns, study), store, FakeChatModel(delay_s=reply_delay_s), secret=SECRET
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", proxy_headers=False)


@contextlib.contextmanager
def server_process(db: str, turns: int, reply_delay_s: float, study: str) -> Iterator[str]:
    """The study server in its own process; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        sys.executable,
        __file__,
        "--serve",
        "--db",
        db,
        "--port",
        str(port),
        "--turns",
        str(turns),
        "--reply-delay",
        str(reply_delay_s),
        "--study",
        study,
    ]
    child = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the study server did not start")
            time.sleep(0.1)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=30)


def _probe_loop(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=30.0) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get("/healthz")
            out.append(time.perf_counter() - t)
            stop.wait(0.1)


def run_load(
    db: str,
    participants: int,
    turns: int,
    reply_delay_s: float,
    in_process: bool = True,
    workers: int = 1,
) -> dict[str, object]:
    """Serve a study on ``db`` (in ``workers`` server processes) and send ``participants``
    at once; timings and problems. Each run is a study of its own in the database."""
    study = f"load-{workers}w-{int(time.time() * 1000)}"
    config = _study_config(turns, study)
    store = StudyStore(db)
    visits = [Visit(f"load-{i:04d}", scripted=i % 2 == 1) for i in range(participants)]
    barrier = threading.Barrier(participants)
    loop_probe: list[float] = []
    try:
        with contextlib.ExitStack() as stack:
            if in_process and workers == 1:
                app = create_app(config, store, FakeChatModel(delay_s=reply_delay_s))
                urls = [stack.enter_context(running_server(app))]
            else:
                urls = [
                    stack.enter_context(server_process(db, turns, reply_delay_s, study))
                    for _ in range(workers)
                ]
            stop = threading.Event()
            probe = threading.Thread(target=_probe_loop, args=(urls[0], stop, loop_probe))
            probe.start()
            start = time.perf_counter()
            threads = [
                threading.Thread(
                    target=run_participant,
                    args=(urls[i % workers], v, turns, barrier, urls[(i + 1) % workers]),
                )
                for i, v in enumerate(visits)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - start
            stop.set()
            probe.join()
        problems = [f"{v.pid}: {v.error}" for v in visits if v.error]
        problems += check(store, [v for v in visits if not v.error], turns, study)
    finally:
        store.close()
    per_page: dict[str, list[float]] = defaultdict(list)
    for visit in visits:
        for page, seconds in visit.timings:
            per_page[page].append(seconds)
    per_page["healthz (event loop probe)"] = loop_probe
    return {"elapsed_s": elapsed, "per_page": dict(per_page), "problems": problems}


def print_table(per_page: dict[str, list[float]]) -> None:
    """Latency percentiles per page."""
    print(f"{'page':28} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for page, values in per_page.items():
        if not values:
            continue
        print(
            f"{page:28} {len(values):5d} {1000 * percentile(values, 0.5):8.0f} "
            f"{1000 * percentile(values, 0.9):8.0f} {1000 * percentile(values, 0.99):8.0f} "
            f"{1000 * max(values):8.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--reply-delay", type=float, default=0.5, help="seconds per reply")
    parser.add_argument("--db", default=None, help="database URL (default: a throwaway PG)")
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--study", default="load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.db, args.port, args.turns, args.reply_delay, args.study)
        return
    if args.workers > 1 and args.in_process:
        raise SystemExit("--workers runs server processes: leave out --in-process")
    problems: list[str] = []
    with contextlib.ExitStack() as stack:
        db = args.db or stack.enter_context(throwaway_postgres())
        for workers in sorted({1, args.workers}):
            result = run_load(
                db,
                args.participants,
                args.turns,
                args.reply_delay,
                in_process=args.in_process,
                workers=workers,
            )
            where = (
                "one process"
                if args.in_process
                else f"{workers} server process{'es' if workers > 1 else ''}"
            )
            print(
                f"\n{args.participants} participants at once, {args.turns} messages each, "
                f"reply delay {args.reply_delay} s, PostgreSQL, {where}; "
                f"all done in {result['elapsed_s']:.1f} s"
            )
            print_table(result["per_page"])  # type: ignore[arg-type]
            found: list[str] = result["problems"]  # type: ignore[assignment]
            print(f"problems: {len(found)}")
            for line in found[:20]:
                print("  " + line)
            problems += found
    if problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
