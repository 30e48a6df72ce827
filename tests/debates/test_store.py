"""Results store: a real SQLite database, export to CSV and Parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from stancelab.conversation._personas import personas_for
from stancelab.conversation._survey import SurveyMode
from stancelab.conversation._templates import load_prompts
from stancelab.debates._analysis import attitude_frame, mean_attitudes, plot_attitudes
from stancelab.debates._debate import Debate, DebateEvents, DebateSpec, run_debates
from stancelab.debates._store import Store, export_tables
from stancelab.engine._errors import StoreError
from stancelab.engine._fake import ScriptedModel


def stored_run(tmp_path: Path) -> tuple[Store, str]:
    store = Store(tmp_path / "results.db")
    spec = DebateSpec(
        "racism",
        tuple(personas_for(["republican", "democrat"])),
        4,
        seed=1,
        survey_modes=(SurveyMode.DISTRIBUTION, SurveyMode.GENERATE),
    )
    debate = Debate(spec, load_prompts())
    run_id = store.start_run({"topic": "racism"}, {"stancelab": "test"})
    debate_id = store.add_debate(run_id, debate, key="0")
    events = DebateEvents(
        on_turn=lambda d, t: store.add_turn(debate_id, d, t),
        on_survey=lambda d, a: store.add_surveys(debate_id, a),
    )
    model = ScriptedModel(
        reply=lambda r: " 6" if r.temperature == 0 else "A fine point.",
        continuations=lambda p: {" 3\n": 0.5, " 9\n": 0.5},
    )
    run_debates(model, [debate], events)
    store.finish_debate(debate_id)
    store.finish_run(run_id)
    return store, run_id


def test_runs_messages_and_surveys_are_stored(tmp_path: Path) -> None:
    store, run_id = stored_run(tmp_path)
    frame = attitude_frame(store, run_id)
    assert len(frame) == 3 * 2 * 2  # iterations 0,2,4 x 2 agents x 2 modes
    dist = frame[frame["mode"] == "distribution"]
    assert (dist["score"] == 6.0).all() and (dist["entropy_bits"] == 1.0).all()
    gen = frame[frame["mode"] == "generate"]
    assert (gen["score"] == 6.0).all()
    table = mean_attitudes(frame)
    assert set(table["iteration"]) == {0, 2, 4}
    assert [r.status for r in store.runs()] == ["complete"]
    png = plot_attitudes(frame, tmp_path / "a.png")
    assert png.stat().st_size > 1000


def test_export_csv_and_parquet(tmp_path: Path) -> None:
    store, _ = stored_run(tmp_path)
    written = export_tables(store, tmp_path / "out")
    names = sorted(p.name for p in written)
    assert "messages.csv" in names and "survey_answers.parquet" in names
    messages = pd.read_csv(tmp_path / "out" / "messages.csv")
    assert len(messages) == 4 and set(messages["text"]) == {"A fine point."}
    surveys = pd.read_parquet(tmp_path / "out" / "survey_answers.parquet")
    assert len(surveys) == 12


def test_unopenable_database_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open results database"):
        Store(tmp_path / "no" / "such" / "dir" / "x.db")


def test_unreachable_server_error_hides_the_password() -> None:
    with pytest.raises(StoreError) as info:
        Store("postgresql+psycopg://stance:s3cret-pw@127.0.0.1:9/results")
    assert "s3cret-pw" not in str(info.value)
    assert "cannot open results database postgresql+psycopg://stance:***@" in str(info.value)
