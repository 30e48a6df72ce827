"""Kill -9 in the middle of a real run, then resume it with the same command."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from stancelab.conversation._personas import Persona, PersonaSet

pytestmark = pytest.mark.engine


def experiment(tmp_path: Path, name: str) -> Path:
    PersonaSet(
        [
            Persona("Ann", "republican", "You are Ann, a Republican from Ohio."),
            Persona("Bob", "republican", "You are Bob, a Republican from Texas."),
            Persona("Cat", "democrat", "You are Cat, a Democrat from Oregon."),
            Persona("Dan", "democrat", "You are Dan, a Democrat from Maine."),
        ],
        {},
    ).save(tmp_path / "p.yaml")
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "model": {"name": "smollm2-135m", "parallel": 1},
                "workers": 1,
                "topics": ["racism"],
                "setups": ["two-way"],
                "repetitions": 2,
                "iterations": 6,
                "personas": {"file": "p.yaml", "check_fidelity": False},
                "reply": {"max_tokens": 48},
            }
        )
    )
    return path


def command(path: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stancelab.cli",
        "run",
        str(path),
        "--out",
        str(out),
        "--no-report",
    ]


def rows(db: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    con = sqlite3.connect(db)
    messages = con.execute(
        "select d.key, m.iteration, m.text from messages m join debates d "
        "on d.id = m.debate_id order by 1, 2"
    ).fetchall()
    surveys = con.execute(
        "select d.key, s.iteration, s.agent_index, s.score from "
        "survey_answers s join debates d on d.id = s.debate_id "
        "order by 1, 2, 3"
    ).fetchall()
    con.close()
    return messages, surveys


def test_kill_9_then_resume(tmp_path: Path) -> None:
    path = experiment(tmp_path, "killme")
    out = tmp_path / "runs"
    db = out / "killme" / "stancelab.db"
    proc = subprocess.Popen(
        command(path, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if db.is_file():
            try:
                if len(rows(db)[0]) >= 4:
                    break
            except sqlite3.Error:
                pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before_messages, before_surveys = rows(db)
    assert 4 <= len(before_messages) < 12, "the run finished before it could be killed"

    resumed = subprocess.run(command(path, out), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed killme" in resumed.stdout
    messages, surveys = rows(db)
    assert len(messages) == 12 and len(surveys) == 2 * 2 * 4
    assert len(set((k, i) for k, i, _ in messages)) == 12  # nothing duplicated
    assert set(before_messages) <= set(messages)  # finished turns were kept as they were
    assert set(before_surveys) <= set(surveys)
    con = sqlite3.connect(db)
    assert con.execute("select status from runs").fetchone()[0] == "complete"

    # Note: the turns generated after the restart are not compared with an uninterrupted
    # run: llama.cpp's logits depend on how much of a prompt came from its cache, so
    # sampled text can differ from there on (seen at the first turn after a restart).
    # Equality with an uninterrupted run is tested on a deterministic model in
    # tests/test_runner.py.
