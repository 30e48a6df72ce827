"""The stancelab command, end to end, as a user runs it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "stancelab.cli"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topic", "racism", "--model", "gpt-17"], "unknown model 'gpt-17'"),
        (["--topic", "racism", "--model", "/nonexistent/m.gguf"], "does not exist"),
        (["--topic", "  "], "topic is empty"),
        (["--topic", "racism", "--agents", ","], "no agents given"),
        (["--topic", "racism", "--agents", "republican,martian"], "unknown agent kind"),
        (["--topic", "racism", "--iterations", "-2"], "iterations must be 0 or more"),
        (["--topic", "racism", "--survey-mode", "vibes"], "unknown survey mode"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run("debate", *args, "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / "runs").glob("debate-*"))


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(
        "debate",
        "--topic",
        "racism",
        "--model",
        "smollm2-135m",
        "--out",
        str(blocker / "runs"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "is not writable" in result.stderr and "Traceback" not in result.stderr


def test_the_same_debate_command_given_again_resumes_its_run(tmp_path: Path) -> None:
    args = ["debate", "--topic", "racism", "--iterations", "2", "--backend", "fake"]
    first = run(*args, "--model", "scripted", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [run_dir] = list((tmp_path / "runs").glob("debate-racism-*"))
    again = run(*args, "--model", "scripted", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resumed: 2 replies" in again.stdout
    assert list((tmp_path / "runs").iterdir()) == [run_dir]
    assert (run_dir / "run.json").is_file()
    db = sqlite3.connect(run_dir / "stancelab.db")
    assert db.execute("select count(*), min(status) from runs").fetchone() == (1, "complete")
    assert db.execute("select count(*) from messages").fetchone()[0] == 2
    status = run("status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 0 and "racism · republican+democrat+default" in status.stdout


@pytest.mark.engine
def test_debate_end_to_end_on_embedded_model(tmp_path: Path) -> None:
    result = run(
        "debate",
        "--topic",
        "gun violence",
        "--agents",
        "republican,democrat",
        "--iterations",
        "4",
        "--model",
        "smollm2-135m",
        "--survey-mode",
        "distribution,generate",
        "--out",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "survey answers (0-10)" in result.stdout
    [run_dir] = list((tmp_path / "runs").glob("debate-*"))
    assert (run_dir / "attitudes.png").stat().st_size > 1000
    db = sqlite3.connect(run_dir / "stancelab.db")
    ((status, versions),) = db.execute("select status, versions from runs").fetchall()
    assert status == "complete"
    assert "b179c9523d0e6a0f" in versions and '"prompts"' in versions
    assert db.execute("select count(*) from messages").fetchone()[0] == 4
    surveys = db.execute("select iteration, mode from survey_answers").fetchall()
    assert sorted({i for i, _ in surveys}) == [0, 2, 4]
    assert len(surveys) == 3 * 2 * 2
    tokens = db.execute("select sum(prompt_tokens), sum(cached_tokens) from messages").fetchone()
    assert tokens[0] > 0 and tokens[1] > 0  # later turns reuse the cached prefix

    export = run(
        "export", str(run_dir / "stancelab.db"), "--out", str(tmp_path / "exp"), cwd=tmp_path
    )
    assert export.returncode == 0, export.stderr
    assert (tmp_path / "exp" / "survey_answers.parquet").is_file()
    assert (tmp_path / "exp" / "messages.csv").read_text().count("\n") >= 5


@pytest.mark.engine
def test_sauce_file_runs_on_embedded_model(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "sauce-debate.json"
    result = run(
        "sauce",
        str(example),
        "--model",
        "smollm2-135m",
        "--out",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = list((tmp_path / "runs").glob("sauce-*"))
    db = sqlite3.connect(run_dir / "stancelab.db")
    assert db.execute("select count(*) from messages").fetchone()[0] == 6
    asked = db.execute(
        "select question_id, iteration, count(*) from survey_answers group by 1, 2 order by 1, 2"
    ).fetchall()
    assert asked == [
        ("attitude", 0, 3),
        ("attitude", 3, 3),
        ("attitude", 6, 3),
        ("conclusion", 6, 3),
    ]
    first = db.execute("select speaker from messages where iteration = 1").fetchone()[0]
    assert first == "Aaron"  # start_person_index 1


def test_experiment_file_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: smollm2-135m\ntopics: [racism]\nsetups: [three-way]\n"
        "repetitions: 0\niterations: 3\npersonas: {generate: 2}\n"
    )
    result = run("run", str(bad), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    assert "repetitions: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
    missing = run("status", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "not a stancelab run folder" in missing.stderr
