"""A single debate is a one-debate run of the runner: run.json, resume, progress, report,
and every agent's context stored as it was given."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

import stancelab as sl
from stancelab.conversation._personas import Persona
from stancelab.conversation._survey import SurveyMode
from stancelab.conversation._templates import load_prompts
from stancelab.debates._runner import RUN_META, execute
from stancelab.debates._sauce import load_sauce
from stancelab.debates._single import plan_debate
from stancelab.debates._store import Store
from stancelab.engine._base import Generation, GenerationRequest
from stancelab.engine._fake import ScriptedModel


class Crash(Exception):
    """The model process dying mid-debate."""


class CountingModel(ScriptedModel):
    """Replies that depend on the prompt and seed; dies after ``crash_after`` replies."""

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__(
            reply=lambda r: f" Point {(r.seed or 0) % 997} after {len(str(r.prompt))} chars.",
            continuations=lambda prompt: {f" {3 + len(prompt) % 5}\n": 0.8, " 10\n": 0.2},
        )
        self.crash_after = crash_after
        self.replies = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.crash_after is not None and self.replies + len(requests) > self.crash_after:
            raise Crash("simulated crash")
        self.replies += len(requests)
        return super().generate(requests)


def debate(model: ScriptedModel, out: Path, **kw: object) -> sl.Run:
    return sl.debate("racism", iterations=6, model=model, out=out, **kw)  # type: ignore[arg-type]


def rows(run: sl.Run) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    turns = run.turns()[["iteration", "speaker", "text"]]
    surveys = run.surveys()[["iteration", "agent_index", "mode", "score"]]
    return list(turns.itertuples(index=False)), list(surveys.round(9).itertuples(index=False))


def test_a_single_debate_is_a_run_folder_with_progress_and_report(tmp_path: Path) -> None:
    run = debate(CountingModel(), tmp_path)
    assert run.folder is not None and run.folder.name.startswith("debate-racism-")
    meta = json.loads((run.folder / RUN_META).read_text())
    assert meta["run_id"] == run.run_id and meta["kind"] == "debate"
    assert (run.folder / "debate.yaml").is_file()
    reopened = sl.open_run(run.folder)
    progress = reopened.progress()
    assert progress["status"] == "complete"
    [(cell, counts)] = progress["cells"].items()
    assert cell == "racism · republican+democrat+default"
    assert counts == {"debates": 1, "complete": 1, "turns": 6}
    assert progress["expected_turns_per_cell"] == 6
    assert progress["survey_answers"] == 3 * 3  # at 0, 3 and 6
    report = reopened.report()
    assert report.is_file() and "racism" in report.read_text()
    assert (report.parent / "attitude_means.csv").read_text().count("\n") > 1


def test_the_same_debate_given_again_resumes_where_it_stopped(tmp_path: Path) -> None:
    reference = rows(debate(CountingModel(), tmp_path / "ref"))
    with pytest.raises(Crash):
        debate(CountingModel(crash_after=4), tmp_path / "runs")
    [folder] = (tmp_path / "runs").iterdir()
    partial = sl.open_run(folder)
    assert partial.status == "failed" and len(partial.turns()) == 4

    again = CountingModel()
    resumed = debate(again, tmp_path / "runs")
    assert resumed.folder == folder and resumed.run_id == partial.run_id
    assert resumed.status == "complete" and rows(resumed) == reference
    assert again.replies == 2  # only the two replies the crash left undone
    finished = CountingModel()
    debate(finished, tmp_path / "runs")  # a finished debate returns at once
    assert finished.replies == 0 and finished.scored_prompts == []
    # A changed debate is a run of its own, never mixed into this one.
    debate(CountingModel(), tmp_path / "runs", seed=1)
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_personas_and_agent_specs_debate_and_their_stories_are_stored(tmp_path: Path) -> None:
    mine = Persona("Rosa", "democrat", "You are Rosa, a nurse from Detroit and a Democrat.")
    spec = {"name": "Walt", "kind": "republican", "background": "You are Walt, a farmer."}
    run = sl.debate(
        "gun violence",
        [mine, spec, "default"],
        iterations=3,
        model=CountingModel(),
        out=tmp_path,
    )
    agents = run.agents()
    assert list(agents["name"]) == ["Rosa", "Walt", "Sam"]
    assert list(agents["kind"]) == ["democrat", "republican", "default"]
    assert agents["background"][0] == mine.background
    assert mine.background in agents["system_prompt"][0]
    assert "gun violence" in agents["system_prompt"][1]
    assert set(agents["prompt_format"]) == {"transcript"}
    assert set(run.turns()["speaker"]) == {"Rosa", "Walt", "Sam"}
    with pytest.raises(sl.ConfigError, match=r"agents\[1\]\.background: give a text"):
        sl.debate("racism", [mine, {"name": "X", "kind": "democrat"}], model=CountingModel())
    with pytest.raises(sl.ConfigError, match=r"agents\[0\]\.story: unknown field"):
        sl.debate("racism", [{"story": "x"}], model=CountingModel())


SAUCE = {
    "persons": [
        {
            "class": "async_group_discussant",
            "name": "Abigail",
            "background_story": "Your name is Abigail, a Democrat.",
            "opinion": "Racism is the defining problem of our time.",
            "speaking_personality": "You jump in whenever someone is wrong.",
        },
        {
            "class": "person_openai_completion",
            "name": "Aaron",
            "background_story": "Your name is Aaron, a Republican.",
            "opinion": "Racism is mostly a thing of the past.",
        },
    ],
    "host": {"class": "Round Robin Host"},
    "endType": {"class": "iteration", "max_num_msgs": 2},
    "experiment": {"scenario": "This is a debate about racism."},
}


def test_a_sauce_persons_opinion_and_speaking_personality_are_stored(tmp_path: Path) -> None:
    file = tmp_path / "sauce.json"
    file.write_text(json.dumps(SAUCE))
    spec = load_sauce(file, topic="racism", survey_modes=(SurveyMode.DISTRIBUTION,))
    model = ScriptedModel(reply=lambda r: " <speak> We must act." if r.temperature else "<speak>")
    plan = plan_debate(spec, model, load_prompts(), "sauce", label=file.stem)
    result = execute(plan, tmp_path / "runs", log=lambda _: None)
    agents = sl.open_run(result.folder.path).agents().set_index("name")
    assert agents.loc["Abigail", "opinion"] == SAUCE["persons"][0]["opinion"]  # type: ignore[index]
    assert agents.loc["Abigail", "speaking_personality"] == "You jump in whenever someone is wrong."
    assert bool(agents.loc["Abigail", "asynchronous"]) and agents.loc["Abigail", "pass_turn_token"]
    assert pd.isna(agents.loc["Aaron", "speaking_personality"])
    # The opinion is part of what the agent is told: the opening of its every prompt.
    assert "Racism is mostly a thing of the past." in str(agents.loc["Aaron", "system_prompt"])
    assert "This is a debate about racism." in str(agents.loc["Aaron", "system_prompt"])


def test_an_older_database_gains_the_context_column_when_opened(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "create table agents (id integer primary key, debate_id integer, agent_index integer, "
        "name varchar(100), kind varchar(50), background text)"
    )
    con.execute("insert into agents values (1, 1, 0, 'Jack', 'republican', 'A rancher.')")
    con.commit()
    Store(db)
    columns = [row[1] for row in con.execute("pragma table_info(agents)")]
    assert "context" in columns
    assert con.execute("select name, context from agents").fetchall() == [("Jack", None)]


ASYNC_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sauce-async.json"


def decision(prompt: str) -> str:
    """Greedy, like a real engine: by the prompt alone. The quiet person always waits, the
    listener waits at every other prompt length, the outgoing one always speaks."""
    if "You are quiet" in prompt or ("You listen first" in prompt and len(prompt) % 2):
        return " <wait>"
    return " <speak>"


class DecidingModel(CountingModel):
    """A CountingModel that answers decision requests (SAUCE's asynchronous persons)."""

    def __init__(self, crash_after: int | None = None) -> None:
        super().__init__(crash_after)
        write = self.reply
        self.reply = lambda r: (
            decision(str(r.prompt))
            if "<wait>" in str(r.prompt)  # only a decision request offers the pass token
            else write(r)
        )


def run_sauce(model: CountingModel, out: Path, log: list[str] | None = None) -> sl.Run:
    spec = load_sauce(ASYNC_EXAMPLE)
    plan = plan_debate(spec, model, load_prompts(), "sauce", label="async")
    result = execute(plan, out, log=(log if log is not None else []).append)
    return sl.open_run(result.folder.path, result.run_id)


def stored(run: sl.Run) -> tuple[list[tuple[object, ...]], ...]:
    turns = run.turns()[["iteration", "agent_index", "text", "prompt_tokens"]]
    decisions = run.decisions()[["chance", "iteration", "agent_index", "speaks", "raw_text"]]
    surveys = run.surveys()[["iteration", "agent_index", "mode", "score"]].round(9)
    return tuple(list(f.itertuples(index=False)) for f in (turns, decisions, surveys))


def asked(*models: CountingModel) -> list[tuple[str, int | None]]:
    return [(str(r.prompt), r.seed) for m in models for r in m.generated]


def test_a_resumed_decide_first_debate_continues_as_an_uninterrupted_one(tmp_path: Path) -> None:
    reference_model = DecidingModel()
    reference = stored(run_sauce(reference_model, tmp_path / "ref"))
    turns, decisions, _ = reference
    passes = [d for d in decisions if not d[3]]
    assert len(turns) == 6 and passes  # passes happen: the floor depends on them
    # Every decision is stored with its answer and cost; a pass is no reply.
    assert len(decisions) == len(turns) + len(passes)
    assert {d[4] for d in decisions} == {" <wait>", " <speak>"}
    # Crash after a pass, between a decision to speak and its reply.
    first_pass = next(
        i
        for i, r in enumerate(reference_model.generated)
        if "<wait>" in str(r.prompt) and decision(str(r.prompt)) == " <wait>"
    )
    dying = DecidingModel(crash_after=first_pass + 2)
    with pytest.raises(Crash):
        run_sauce(dying, tmp_path / "runs")
    [folder] = (tmp_path / "runs").iterdir()
    partial = sl.open_run(folder)
    made, spoke = partial.decisions(), len(partial.turns())
    assert 0 < spoke < 6 and not made["speaks"].all()
    assert made["speaks"].sum() == spoke + 1  # the last decision's reply was lost

    again, log = DecidingModel(), list[str]()
    resumed = run_sauce(again, tmp_path / "runs", log)
    assert resumed.status == "complete" and stored(resumed) == reference
    # The same prompts in the same order, none asked twice, none skipped.
    assert asked(dying, again) == asked(reference_model)
    assert dying.scored_prompts + again.scored_prompts == reference_model.scored_prompts
    assert not any("WARNING" in line for line in log)


def test_a_decide_first_debate_from_before_decisions_were_stored_still_resumes(
    tmp_path: Path,
) -> None:
    reference = stored(run_sauce(DecidingModel(), tmp_path / "ref"))
    with pytest.raises(Crash):
        run_sauce(DecidingModel(crash_after=10), tmp_path / "runs")
    [folder] = (tmp_path / "runs").iterdir()
    con = sqlite3.connect(folder / "stancelab.db")
    done = con.execute("select count(*) from messages").fetchone()[0]
    passed_last = con.execute("select speaks from decisions order by chance desc").fetchone()
    assert 0 < done < 6 and passed_last == (0,)  # inner passes and one after the last reply
    con.execute("drop table decisions")  # the database of an older stancelab
    con.commit()

    log: list[str] = []
    resumed = run_sauce(DecidingModel(), tmp_path / "runs", log)
    # The floor goes on as it would have: who spoke next tells each unstored decision.
    assert resumed.status == "complete" and stored(resumed)[0] == reference[0]
    [warning] = [line for line in log if line.startswith("WARNING")]
    # The pass after the last stored reply is asked again, not inferred.
    assert "1 debate(s) resume with 5 earlier decision(s)" in warning and "not stored" in warning
    # Only the decisions made after the resume are in the record.
    chances = list(resumed.decisions()["chance"])
    assert chances and chances == [d[0] for d in reference[1] if d[0] >= chances[0]]


def test_stored_replies_that_do_not_follow_the_turn_taking_are_one_clear_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(Crash):
        run_sauce(DecidingModel(crash_after=10), tmp_path / "runs")
    [folder] = (tmp_path / "runs").iterdir()
    con = sqlite3.connect(folder / "stancelab.db")
    con.execute("update messages set agent_index = 2 where iteration = 2")  # not Robert's
    con.commit()
    with pytest.raises(sl.StoreError, match=r"debate 1 in .*: 3 stored replies and 4 decisions"):
        run_sauce(DecidingModel(), tmp_path / "runs")
