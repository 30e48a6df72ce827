"""The study on a real PostgreSQL server that this test run starts itself."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import create_app
from stancelab.study._exports import export_study
from stancelab.study._report import write_report
from stancelab.study._simulate import simulate
from stancelab.study._store import StudyStore

from .conftest import ADMIN_TOKEN, SECRET, Participant, make_config


def test_flow_and_export_on_postgresql(pg_store: StudyStore, tmp_path: Path) -> None:
    assert pg_store.engine.dialect.name == "postgresql"
    config = make_config(conditions=["personalised"])
    app = create_app(config, pg_store, FakeChatModel(), secret=SECRET, admin_token=ADMIN_TOKEN)
    p = Participant(TestClient(app, follow_redirects=True))
    p.through_before("PG-1", stance=2, background="Ünïcode background ✓ <b>")
    p.say("first ✓", stance=3)
    p.say("second", stance=3)
    p.finish(after=4, perceived=(2, 5))
    row = pg_store.participant_by_pid("pilot", "PG-1")
    assert row is not None and row.step == "done" and row.background == "Ünïcode background ✓ <b>"
    assert [m.text for m in pg_store.messages(row.id) if m.role == "user"] == ["first ✓", "second"]
    assert [s.turn for s in pg_store.stances(row.id)] == [0, 1, 2]
    assert pg_store.stances(row.id)[1].distribution == pytest.approx([0.0] * 4 + [1.0] + [0.0] * 6)
    paths = export_study(pg_store, tmp_path / "export")
    assert {p.name for p in paths} >= {"study_messages.csv", "study_participants.parquet"}
    assert "first ✓" in (tmp_path / "export" / "study_messages.csv").read_text()
    report = write_report(pg_store, tmp_path / "report", study="pilot")
    assert (tmp_path / "report" / "index.html") in report


def test_concurrent_participants_on_postgresql(
    pg_store: StudyStore, postgres_url: str, tmp_path: Path
) -> None:
    config = make_config(
        conditions=["standard", "personalised"],
        turns={"min": 2, "max": 2},
        limits={"min_seconds_between_messages": 0},
    )
    counter = iter(range(10_000))
    persona = FakeChatModel(reply=lambda _r: f"pg-{next(counter)}-{uuid.uuid4().hex[:6]}")
    results = simulate(config, 8, db=postgres_url, lm=FakeChatModel(), persona_lm=persona, turns=2)
    assert all(r.completed for r in results), [r.error for r in results]
    users = [m for m in pg_store.all_messages() if m.role == "user"]
    assert sorted(m.text for m in users) == sorted(t for r in results for t in r.sent)
    assert len(users) == 16


def test_missing_server_binaries_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from . import conftest

    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(()))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"run scripts/install-system-deps\.sh"):
        conftest._postgres_bin()


def _load_benchmark() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "study_load.py"
    spec = importlib.util.spec_from_file_location("study_load", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_hundred_participants_at_once_lose_nothing_on_postgresql(
    pg_store: StudyStore, postgres_url: str
) -> None:
    """benchmarks/study_load.py's run at 100 participants: half plain forms, half the
    JavaScript path (event stream); every message, reply and stance read back."""
    bench = _load_benchmark()
    result = bench.run_load(postgres_url, participants=100, turns=2, reply_delay_s=0.1)
    assert result["problems"] == []
    per_page = result["per_page"]
    assert len(per_page["message (form, with reply)"]) == 100  # 50 participants x 2
    assert len(per_page["stream until reply (JS)"]) == 100
    # each benchmark run is a study of its own ("load-1w-<time>")
    assert sum(1 for p in pg_store.participants() if p.study.startswith("load-1w-")) == 100
    assert sum(1 for m in pg_store.all_messages() if m.role == "user") == 200
