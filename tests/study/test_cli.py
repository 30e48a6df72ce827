"""The study commands as the main CLI will register them."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from stancelab.study._cli import audit_command, study_app
from stancelab.study._store import StudyStore

from .conftest import AppFactory, Participant

app = typer.Typer()
app.add_typer(study_app, name="study")
app.command("audit")(audit_command)
runner = CliRunner()


def test_report_command(app_client: AppFactory, store: StudyStore, tmp_path: Path) -> None:
    p = Participant(app_client())
    p.through_before("CLI-1")
    p.say("one")
    p.say("two")
    p.finish()
    out = tmp_path / "rep"
    result = runner.invoke(
        app, ["study", "report", store.url.removeprefix("sqlite:///"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and (out / "stance_per_turn.png").is_file()


def test_commands_fail_with_one_line_errors(tmp_path: Path) -> None:
    result = runner.invoke(app, ["study", "report", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no database at" in result.output
    result = runner.invoke(app, ["study", "simulate", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read study config" in result.output
    result = runner.invoke(app, ["study", "serve", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "cannot read study config" in result.output
    result = runner.invoke(app, ["audit", "--model", "no-such-model", "--turns", "1"])
    assert result.exit_code == 2 and "error" in result.output


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["study", "--help"])
    assert result.exit_code == 0
    for name in ("serve", "simulate", "report"):
        assert name in result.output
