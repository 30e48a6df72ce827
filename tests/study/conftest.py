"""Fixtures for the study tests: configs, a scripted chat model, and a form-filling client."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import create_app
from stancelab.study._config import StudyConfig, load_study
from stancelab.study._store import StudyStore

ADMIN_TOKEN = "admin-token-7f3c9a1e5b"
SECRET = b"test-secret-0123456789abcdef"


def config_dict(**overrides: Any) -> dict[str, Any]:
    """A small valid study config as a mapping."""
    data: dict[str, Any] = {
        "study": "pilot",
        "topics": [{"name": "climate change", "statements": ["Statement A.", "Statement B."]}],
        "conditions": ["standard"],
        "turns": {"min": 2, "max": 3},
        "model": "smollm2-135m",
        # the app's mechanics are tested on the 0-10 item; the agreement default has its own
        "stance_item": "big_problem",
        "limits": {"min_seconds_between_messages": 0, "requests_per_minute": 1000},
    }
    data.update(overrides)
    return data


def make_config(**overrides: Any) -> StudyConfig:
    """A validated small study config."""
    return load_study(config_dict(**overrides))


class Participant:
    """A TestClient that fills the study's forms like a browser would."""

    def __init__(self, client: TestClient | httpx.Client) -> None:
        self.client = client
        self.html = ""
        self.status = 0

    @property
    def step(self) -> str:
        match = re.search(r'data-step="([a-z_-]*)"', self.html)
        return match.group(1) if match else ""

    @property
    def key(self) -> str:
        """The idempotency key of the page's message form."""
        match = re.search(r'name="key" value="([^"]+)"', self.html)
        assert match, f"no key field on page {self.step!r}"
        return match.group(1)

    @property
    def csrf(self) -> str:
        match = re.search(r'name="csrf" value="([^"]+)"', self.html)
        assert match, f"no csrf field on page {self.step!r}"
        return match.group(1)

    def get(self, url: str) -> Participant:
        response = self.client.get(url)
        self.html, self.status = response.text, response.status_code
        return self

    def post(self, url: str, data: dict[str, str]) -> Participant:
        response = self.client.post(url, data=data)
        self.html, self.status = response.text, response.status_code
        return self

    def through_before(
        self, pid: str, stance: int = 7, background: str = "I teach school."
    ) -> Participant:
        self.get(f"/?pid={pid}")
        assert self.step == "consent", self.html
        self.post("/study/consent", {"csrf": self.csrf, "agree": "yes"})
        self.post(
            "/study/about",
            {
                "csrf": self.csrf,
                "d_age": "41",
                "d_gender": "Woman",
                "d_education": "Some college",
                "d_politics": "Moderate",
                "background": background,
            },
        )
        assert self.step == "before", self.html
        self.post(
            "/study/before", {"csrf": self.csrf, "stance": str(stance), "reason": "my reason"}
        )
        assert self.step == "conversation", self.html
        return self

    def say(self, text: str, stance: int | str | None = "same") -> Participant:
        """Send a message with a per-turn stance (a point, "same", or None: none given)."""
        turn = re.search(r'name="turn" value="(\d+)"', self.html)
        assert turn, self.html
        data = {"csrf": self.csrf, "turn": turn.group(1), "message": text, "key": self.key}
        if stance is not None:
            data["stance"] = str(stance)
        return self.post("/study/message", data)

    def finish(
        self, after: int = 6, perceived: tuple[int, int] = (3, 6), last: int | str = "same"
    ) -> Participant:
        if self.step == "conversation":
            self.post("/study/finish-conversation", {"csrf": self.csrf, "stance": str(last)})
        assert self.step == "after", self.html
        self.post(
            "/study/after", {"csrf": self.csrf, "stance": str(after), "reason": "after reason"}
        )
        if self.step == "perception":
            self.post(
                "/study/perception",
                {
                    "csrf": self.csrf,
                    "perceived_start": str(perceived[0]),
                    "perceived_end": str(perceived[1]),
                },
            )
        assert self.step == "done", self.html
        return self


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StudyStore]:
    """A fresh SQLite study database."""
    s = StudyStore(tmp_path / "study.db")
    yield s
    s.close()


@pytest.fixture
def fake_lm() -> FakeChatModel:
    """The scripted chat model (echo replies, stance 3 rising one point per exchange)."""
    return FakeChatModel()


AppFactory = Callable[..., TestClient]


@pytest.fixture
def app_client(store: StudyStore, fake_lm: FakeChatModel) -> AppFactory:
    """Make TestClients (one per simulated browser) for an app built from config overrides."""
    apps: dict[str, Any] = {}

    def factory(**overrides: Any) -> TestClient:
        key = repr(sorted(overrides.items()))
        if key not in apps:
            apps[key] = create_app(
                make_config(**overrides), store, fake_lm, secret=SECRET, admin_token=ADMIN_TOKEN
            )
        return TestClient(apps[key], follow_redirects=True)

    return factory


# --- a real PostgreSQL server, started by the test run --------------------------------


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        import shutil

        initdb = shutil.which("initdb")
        if initdb is None:
            pytest.fail(
                "PostgreSQL server binaries (initdb, pg_ctl) are missing: run "
                "scripts/install-system-deps.sh (it installs Debian's postgresql)",
                pytrace=False,
            )
        return Path(initdb).parent
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 and a free port; stopped at the end."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    bin_dir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="stancelab-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root but there is no 'postgres' user: run "
                "scripts/install-system-deps.sh",
                pytrace=False,
            )
        for path in (root, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o700)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args: str) -> None:
        result = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            pytest.fail(
                f"{Path(args[0]).name} failed: {result.stderr.strip()[-800:]}", pytrace=False
            )

    run(
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
        "-E",
        "UTF8",
    )
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        "start",
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[StudyStore]:
    """The study tables on the test run's PostgreSQL server, emptied."""
    from sqlalchemy import text

    store = StudyStore(postgres_url)
    with store.engine.begin() as conn:
        for table in (
            "study_admin_sessions",
            "study_settings",
            "study_strategy_labels",
            "study_llm_stances",
            "study_claims",
            "study_rate_counts",
            "study_messages",
            "study_participants",
        ):
            conn.execute(text(f"DELETE FROM {table}"))
    yield store
    store.close()
