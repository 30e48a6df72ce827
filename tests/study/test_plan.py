"""The study's instruments and analysis plan: one stance item for both sides, who is
analysed (stated before analysis, counted in a flow table), a pilot said to be a pilot, a
report that cannot be written never passing for a new one, and the three-arm pilot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from stancelab.engine._errors import ConfigError, StoreError
from stancelab.engine._fake import FakeChatModel
from stancelab.study._app import create_app
from stancelab.study._config import load_study
from stancelab.study._report import mark_stale, write_report
from stancelab.study._simulate import simulate
from stancelab.study._store import StudyStore

from .conftest import SECRET, Participant, config_dict, make_config


def test_the_default_item_is_bipolar_with_a_labelled_midpoint() -> None:
    data = config_dict()
    del data["stance_item"]
    config = load_study(data)
    scale = config.stance_item.scale()
    assert (scale.low, scale.high, scale.midpoint) == (1, 7, 4.0)
    assert scale.label(4) == "Neither agree nor disagree"
    question = config.probe_question("climate change")
    assert '"Climate change is a big problem."' in question
    assert "4 = Neither agree nor disagree" in question and "1 = Strongly disagree" in question
    assert "FIRST reply" in config.perception_question("climate change", "first")
    big = make_config(stance_item="big_problem").stance_item.scale()
    assert (big.low, big.high, big.midpoint) == (0, 10, None)


def test_a_study_file_of_0_3_keeps_its_0_10_item() -> None:
    data = config_dict()
    del data["stance_item"]
    data["questions"] = {
        "stance": "How serious is {topic}?",
        "scale_low": "Not",
        "scale_high": "Very",
    }
    item = load_study(data).stance_item
    assert (item.low, item.high, item.labels, item.text) == (
        0,
        10,
        {0: "Not", 10: "Very"},
        "How serious is {topic}?",
    )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"low": 1, "high": 5, "labels": {1: "No"}}, "a label at both ends; none for 5"),
        ({"low": 1, "high": 5, "labels": {}}, "a label at both ends; none for 1, 5"),
        ({"low": 0, "high": 20, "labels": {0: "a", 20: "b"}}, "2 to 11 whole points"),
        ({"text": "Agree with {claim}?"}, "unknown field(s) ['claim']"),
        ("likert", "unknown preset 'likert'"),
    ],
)
def test_a_bad_item_is_one_line_naming_it(item: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_study(config_dict(stance_item=item))
    text = str(caught.value)
    assert "stance_item" in text and message in text and "\n" not in text


def test_v1_templates_cannot_ask_a_7_point_item() -> None:
    with pytest.raises(ConfigError, match="prompt_version v1 asks the probe on a 0-10 scale"):
        load_study(config_dict(stance_item="agreement", chatbot={"prompt_version": "v1"}))


def _complete(client: TestClient, pid: str, **finish: object) -> Participant:
    p = Participant(client).through_before(pid, stance=6)
    p.say("one", stance=5)
    p.say("two")
    p.finish(**finish)  # type: ignore[arg-type]
    return p


def test_inclusion_rule_and_flow_table(store: StudyStore, tmp_path: Path) -> None:
    config = make_config(
        conditions=["standard"],
        attention_checks=[
            {
                "id": "blue",
                "label": "Choose Blue",
                "choices": ["Red", "Blue"],
                "answer": "Blue",
                "page": "after",
            }
        ],
        screen_out_on_attention_fail=False,
    )
    app = create_app(config, store, FakeChatModel(), secret=SECRET)

    def client(simulated: bool = False) -> TestClient:
        headers = {"x-stancelab-simulated": "1"} if simulated else {}
        return TestClient(app, follow_redirects=True, headers=headers)

    for pid in ("ok-1", "ok-2"):
        p = Participant(client()).through_before(pid)
        p.say("one")
        p.say("two")
        p.post("/study/finish-conversation", {"csrf": p.csrf, "stance": "same"})
        p.post(
            "/study/after",
            {"csrf": p.csrf, "stance": "6", "reason": "r", "a_blue": "Blue"},
        )
        p.post(
            "/study/perception",
            {"csrf": p.csrf, "perceived_start": "3", "perceived_end": "4"},
        )
        assert p.step == "done"
    failed = Participant(client()).through_before("inattentive")
    failed.say("one")
    failed.say("two")
    failed.post("/study/finish-conversation", {"csrf": failed.csrf, "stance": "same"})
    failed.post(
        "/study/after", {"csrf": failed.csrf, "stance": "6", "reason": "r", "a_blue": "Red"}
    )
    failed.post(
        "/study/perception", {"csrf": failed.csrf, "perceived_start": "3", "perceived_end": "4"}
    )
    assert failed.step == "done"  # recorded, not screened out: the analysis excludes it
    Participant(client()).through_before("dropout").say("only one")
    sim = Participant(client(simulated=True)).through_before("sim-1")
    sim.say("one")
    quitter = Participant(client()).through_before("quitter")
    quitter.post("/study/withdraw", {"csrf": quitter.csrf, "confirm": "yes"})

    write_report(store, tmp_path / "r", config=config)
    flow = pd.read_csv(tmp_path / "r" / "flow.csv").set_index("stage")["all"]
    assert flow["entered"] == 6 and flow["consented"] == 6 and flow["completed"] == 3
    assert flow["excluded: withdrawn"] == 1 and flow["excluded: simulated"] == 1
    assert flow["excluded: not completed"] == 1 and flow["excluded: failed attention check"] == 1
    assert flow["analysed"] == 2
    people = pd.read_csv(tmp_path / "r" / "participants.csv").set_index("pid")
    assert people.loc["inattentive", "excluded_reason"] == "failed attention check"
    assert not people.loc["inattentive", "included"] and people.loc["ok-1", "included"]
    turns = pd.read_csv(tmp_path / "r" / "turns.csv")
    assert set(turns["participant_id"]) == set(people[people["included"]]["participant_id"])
    page = (tmp_path / "r" / "index.html").read_text()
    assert "2 analysed</strong> of 6 who entered" in page and "id='pilot'" not in page
    # two included people: every test says it has too few, none prints a number
    stats = pd.read_csv(tmp_path / "r" / "statistics.csv")
    human = stats[stats["claim_id"] == "human-shift"]
    assert human["p"].isna().all() and human["note"].str.contains("too few to test: n=2 < 5").all()


def test_a_database_of_simulated_participants_is_reported_as_a_pilot(
    store: StudyStore, tmp_path: Path
) -> None:
    app = create_app(make_config(), store, FakeChatModel(), secret=SECRET)
    for pid in ("s1", "s2"):
        client = TestClient(app, follow_redirects=True, headers={"x-stancelab-simulated": "1"})
        _complete(client, pid)
    write_report(store, tmp_path / "r")
    page = (tmp_path / "r" / "index.html").read_text()
    assert "id='pilot'" in page and "2 analysed</strong>" in page


def test_a_report_that_cannot_be_written_leaves_no_new_looking_report(
    store: StudyStore, tmp_path: Path
) -> None:
    app = create_app(make_config(), store, FakeChatModel(), secret=SECRET)
    _complete(TestClient(app, follow_redirects=True), "p1")
    out = tmp_path / "r"
    write_report(store, out)
    before = (out / "index.html").read_text()
    with pytest.raises(StoreError, match="no participants in study nope"):
        write_report(store, out, study="nope")
    assert (out / "index.html").read_text() == before  # nothing half-written replaced it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r-")]
    mark_stale(out, "judge 'x' puts 1.0% of its probability on its answers")
    page = (out / "index.html").read_text()
    assert "id='stale'" in page and "Out of date" in page and (out / "STALE.txt").is_file()


def test_the_threshold_and_plan_come_from_the_study_file_the_server_recorded(
    store: StudyStore, tmp_path: Path
) -> None:
    config = make_config(stance_change_threshold=2.0)
    app = create_app(config, store, FakeChatModel(), secret=SECRET)
    _complete(TestClient(app, follow_redirects=True), "p1")
    write_report(store, tmp_path / "r")
    turns = pd.read_csv(tmp_path / "r" / "turns.csv")
    # the fake chatbot moves 1 point per exchange: below the study's 2-point rule
    assert turns["llm_changed"].dropna().eq(0.0).all()
    assert "at least 2 points" in (tmp_path / "r" / "index.html").read_text()
    write_report(store, tmp_path / "r2", threshold=0.5)
    assert pd.read_csv(tmp_path / "r2" / "turns.csv")["llm_changed"].dropna().eq(1.0).all()


def test_the_pilot_reaches_every_arm_of_the_three_condition_design(tmp_path: Path) -> None:
    """`study simulate` of the shipped three-arm design once stopped every static
    participant at the statements page (a minimum reading time it never showed)."""
    config = make_config(
        conditions=["standard", "personalised", "static"],
        min_reading_seconds={"statements": 1},
        stance_item="agreement",
    )
    results = simulate(config, 6, db=tmp_path / "sim.db", lm=FakeChatModel(), turns=2)
    assert all(r.completed for r in results), [r.error for r in results]
    assert sorted(r.condition_seen for r in results).count("static") == 2
    store = StudyStore(tmp_path / "sim.db")
    rows = store.participants()
    assert all(r.step == "done" and r.simulated for r in rows)
    chat = [r for r in rows if r.condition != "static"]
    assert all(r.stance_last is not None and 1 <= r.stance_last <= 7 for r in chat)
    store.close()


def test_serve_and_pilot_refuse_a_probe_below_the_coverage_minimum(tmp_path: Path) -> None:
    blind = FakeChatModel(continuations=lambda _base: {"banana": 1.0})
    with pytest.raises(ConfigError, match=r"chatbot\.min_probe_coverage: fake-chat puts 0\.0%"):
        simulate(make_config(), 1, db=tmp_path / "sim.db", lm=blind)


def test_a_v1_study_asks_its_probe_exactly_as_0_3_did() -> None:
    from stancelab.study._replies import build_chatbot
    from stancelab.study._store import ParticipantRow

    config = make_config(chatbot={"prompt_version": "v1"})
    row = ParticipantRow(topic="climate change", condition="standard", demographics={})
    asked = build_chatbot(config, row).probe_prompt([])[-1]["content"]
    assert asked == (
        "Before we go on, a quick question for you, the chatbot, about your own view. On a "
        "scale of 0 to 10, how much do you think that climate change is a big problem? "
        "Answer with a single number from 0 to 10."
    )
    v2 = build_chatbot(make_config(stance_item="agreement"), row).probe_prompt([])[-1]["content"]
    assert v2.endswith(
        "(1 = Strongly disagree, 2 = Disagree, 3 = Somewhat disagree, "
        "4 = Neither agree nor disagree, 5 = Somewhat agree, 6 = Agree, "
        "7 = Strongly agree)."
    )


def test_a_judge_failing_its_coverage_marks_the_old_report_out_of_date(
    store: StudyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import typer
    from typer.testing import CliRunner

    import stancelab.study._cli as cli

    app = typer.Typer()
    app.add_typer(cli.study_app, name="study")
    study_app = create_app(make_config(), store, FakeChatModel(), secret=SECRET)
    _complete(TestClient(study_app, follow_redirects=True), "p1")
    db, out = store.url.removeprefix("sqlite:///"), tmp_path / "rep"
    first = CliRunner().invoke(app, ["study", "report", db, "--out", str(out)])
    assert first.exit_code == 0, first.output
    blind = FakeChatModel(continuations=lambda _base: {"banana": 1.0})
    monkeypatch.setattr(cli, "open_model", lambda _name: blind)
    again = CliRunner().invoke(app, ["study", "report", db, "--out", str(out), "--judge", "x"])
    assert again.exit_code == 2 and "use a larger judge model" in again.output
    assert "id='stale'" in (out / "index.html").read_text()
    assert "use a larger judge model" in (out / "STALE.txt").read_text()


def test_without_javascript_the_answer_time_runs_from_the_reply_shown(
    store: StudyStore,
) -> None:
    app = create_app(make_config(), store, FakeChatModel(), secret=SECRET)
    _complete(TestClient(app, follow_redirects=True), "timed")
    row = store.participants()[0]
    users = [m for m in store.messages(row.id) if m.role == "user"]
    # no browser script here: the server measures from when the latest reply was shown
    assert all(m.stance_seconds is not None and 0 <= m.stance_seconds < 30 for m in users)
    assert row.stance_last_seconds is not None and 0 <= row.stance_last_seconds < 30
