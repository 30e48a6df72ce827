"""`stancelab replicate` and `sl.replicate`: a paper's design run per model (resumable),
its claims with verdicts claim x model, the report, jiang2025's pilot, and bad input
refused before anything runs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import stancelab as sl
from stancelab.cli import app
from stancelab.conversation._personas import BUILTIN_PERSONAS, PersonaSet
from stancelab.debates._estimate import Estimate
from stancelab.debates._store import Store
from stancelab.replicate import CLAIMS, TUNING_CLAIMS
from stancelab.replicate.jiang2025 import CLAIMS as STUDY_CLAIMS
from stancelab.replicate.jiang2025 import PILOT_NOTE, study_findings

from . import moving

MOVING = "{name: alpha, backend: replicate-moving}"
MOVING_ENTRY = {"name": "alpha", "backend": "replicate-moving"}


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    moving.CALLS["n"] = 0
    moving.CRASH_AFTER["n"] = None
    moving.TIMES.clear()
    moving.STORIES.clear()
    yield
    moving.CRASH_AFTER["n"] = None


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server_url() -> Iterator[str]:
    """A loopback HTTP server that answers every GET: a remote model's server is up."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"data": []}')

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def debates_in(folder: Path) -> list[tuple[str, str, int]]:
    store = Store(folder / "stancelab.db")
    [run] = store.runs()
    return [(d.key, d.setup, d.repetition) for d in store.debates(run.id)]


def test_the_command_runs_the_smoke_design_and_writes_the_findings(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app, ["replicate", "taubenfeld2024", "--model", MOVING, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "claims by model" in result.output and "inconclusive" in result.output
    run = sl.open_run(out / "taubenfeld2024-smoke-alpha")
    assert run.status == "complete"
    setups = {d[1] for d in debates_in(out / "taubenfeld2024-smoke-alpha")}
    assert setups == {"three-way", "two-way", "rr-default", "rr", "dd-default"}
    surveys = run.surveys()
    republicans = surveys[(surveys["kind"] == "republican") & (surveys["mode"] == "distribution")]
    # The planted answers move: each Republican halves its distance to 6 per cycle.
    assert republicans.groupby("iteration")["score"].mean().is_monotonic_increasing
    report = out / "replicate-taubenfeld2024-smoke"
    findings = pd.read_csv(report / "findings.csv")
    assert set(findings["claim_id"]) == set(CLAIMS) - set(TUNING_CLAIMS)
    # Smoke scale: 2 debates per setup, below the 5 a test needs.
    assert (findings["verdict"] == "inconclusive").all()
    assert findings["note"].str.contains("too few to test").all()
    page = (report / "index.html").read_text()
    assert "Claims by model" in page and "Table 1" in page  # the paper numbers not compared
    assert all((report / f"alpha-{s}.png").is_file() for s in setups)  # a figure per setup


def test_two_models_side_by_side_with_personas_written_once_each(tmp_path: Path) -> None:
    models = [MOVING_ENTRY, {"name": "beta", "backend": "replicate-moving"}]
    estimated: list[float] = []  # when the whole design's estimate was printed

    def log(line: str) -> None:
        if line.startswith("estimate for taubenfeld2024"):
            estimated.append(time.monotonic())

    rep = sl.replicate(
        "taubenfeld2024",
        models=models,
        out=tmp_path,
        log=log,
        setups=["three-way", "rr"],
        claims=["default-stable", "echo-moderates"],
    )
    table = rep.findings()
    assert list(dict.fromkeys(table["model"])) == ["alpha", "beta"]
    for model in ("alpha", "beta"):
        mine = table[table["model"] == model]
        assert list(mine["claim_id"]) == ["personas-hold", "default-stable", "echo-moderates"]
        assert (tmp_path / "personas" / f"taubenfeld2024-smoke-{model}.yaml").is_file()
        keys = debates_in(tmp_path / f"taubenfeld2024-smoke-{model}")
        assert {k[1] for k in keys} == {"three-way", "rr"}
    verdicts = rep.verdicts()
    assert list(verdicts.columns) == ["claim_id", "setup", "topic", "part", "alpha", "beta"]
    assert len(verdicts) == 3
    # Both models are measured for the estimate first; then local models run one after
    # another: every call of alpha's run before any of beta's.
    alpha = [t for m, t in moving.TIMES if m == "alpha" and t > estimated[0]]
    beta = [t for m, t in moving.TIMES if m == "beta" and t > estimated[0]]
    assert alpha and beta and max(alpha) < min(beta)
    page = rep.report().read_text()
    assert page.count("<h3>") == 2 and "beta-rr.png" in page
    assert moving.STORIES == {"alpha": 4, "beta": 4}  # 2 per party, once per model


def test_remote_models_run_at_once(tmp_path: Path, server_url: str) -> None:
    models = [
        {"name": name, "backend": "replicate-remote", "base_urls": [server_url]}
        for name in ("east", "west")
    ]
    lines: list[str] = []
    rep = sl.replicate(
        "taubenfeld2024", models=models, out=tmp_path, log=lines.append, setups=["three-way"]
    )
    assert "2 models on remote servers: running them at once" in lines
    assert any(line.startswith("[west] ") for line in lines)
    east = [t for m, t in moving.TIMES if m == "east"]
    west = [t for m, t in moving.TIMES if m == "west"]
    assert min(west) < max(east) and min(east) < max(west)  # their calls interleave
    assert set(rep.findings()["model"]) == {"east", "west"}


def test_a_killed_replication_resumes_without_duplicate_debates(tmp_path: Path) -> None:
    moving.CRASH_AFTER["n"] = 40  # past the stories and the fidelity check, mid-debates
    with pytest.raises(moving.Killed):
        sl.replicate("taubenfeld2024", model=MOVING_ENTRY, out=tmp_path, log=None)
    folder = tmp_path / "taubenfeld2024-smoke-alpha"
    store = Store(folder / "stancelab.db")
    [run] = store.runs()
    assert run.status == "failed"
    before = sum(1 for d in store.debates(run.id) if d.status == "complete")
    moving.CRASH_AFTER["n"] = None
    calls_before = moving.CALLS["n"]
    moving.STORIES.clear()
    rep = sl.replicate("taubenfeld2024", model=MOVING_ENTRY, out=tmp_path, log=None)
    assert store.get_run(run.id).status == "complete"
    keys = debates_in(folder)
    assert len(keys) == len(set(keys)) == 10  # 5 setups x 2 repetitions, none twice
    assert before < 10
    # The second call wrote no story again: the run keeps its personas.
    assert moving.STORIES == {"alpha": 0}
    assert moving.CALLS["n"] > calls_before
    assert len(rep.findings()) == 13
    again = moving.CALLS["n"]
    sl.replicate("taubenfeld2024", model=MOVING_ENTRY, out=tmp_path, log=None)
    assert moving.CALLS["n"] == again  # a finished replication runs nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["jiang2099"], "unknown paper 'jiang2099'; choose one of: taubenfeld2024, jiang2025"),
        (["taubenfeld2024", "--scale", "huge"], "unknown scale 'huge'; choose one of: smoke"),
        (
            ["taubenfeld2024", "--claims", "default-stable,echo-polarises"],
            "unknown claim id 'echo-polarises' for taubenfeld2024; choose from: personas-hold",
        ),
        (
            ["jiang2025", "--claims", "default-stable"],
            "unknown claim id 'default-stable' for jiang2025; choose from: human-shift",
        ),
        (["taubenfeld2024", "--setups", "rrr"], "unknown setup 'rrr'; choose from: three-way"),
        (["taubenfeld2024", "--model", "{name: [oops"], "is not a YAML mapping"),
        (
            ["taubenfeld2024", "--model", "{name: a, backend: nope}"],
            "model 'a': unknown backend 'nope'",
        ),
        (["taubenfeld2024", "--model", MOVING], "model 'alpha' is given twice"),
    ],
)
def test_bad_input_is_one_line_and_runs_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "runs"
    command = ["replicate", args[0], "--model", MOVING, *args[1:], "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.count("error:") == 1
    assert not out.exists() and moving.CALLS["n"] == 0


def test_an_unreachable_server_in_the_model_list_stops_everything_first(
    tmp_path: Path, server_url: str
) -> None:
    port = closed_port()
    up = f"{{name: east, backend: openai, base_urls: [{server_url}]}}"
    down = f"{{name: west, backend: openai, base_urls: ['http://127.0.0.1:{port}/v1']}}"
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "replicate",
            "taubenfeld2024",
            "--model",
            MOVING,
            "--model",
            up,
            "--model",
            down,
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2, result.output
    assert f"model 'west': cannot reach http://127.0.0.1:{port}/v1 (ConnectError)" in (
        result.output
    )
    assert not out.exists() and moving.CALLS["n"] == 0


def test_jiang2025_pilot_gives_the_study_claims_with_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    command = ["replicate", "jiang2025", "--model", "{name: echo, backend: fake}"]
    result = CliRunner().invoke(app, [*command, "--participants", "6", "--out", str(out)])
    assert result.exit_code == 0, result.output
    folder = out / "jiang2025-echo"
    findings = pd.read_csv(out / "replicate-jiang2025" / "findings.csv")
    assert set(findings["claim_id"]) == set(STUDY_CLAIMS)
    assert (findings["note"].str.contains(PILOT_NOTE)).all()
    assert set(findings["setup"]) >= {"standard", "personalised"}
    page = (out / "replicate-jiang2025" / "index.html").read_text()
    assert "Simulated people are not people" in page
    assert (folder / "report" / "statistics.csv").is_file()
    # Given again, it adds only missing participants: none.
    store_rows = _participants(folder)
    again = CliRunner().invoke(app, [*command, "--participants", "6", "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert _participants(folder) == store_rows == 6


def _participants(folder: Path) -> int:
    from stancelab.study._store import StudyStore

    store = StudyStore(folder / "study.db")
    try:
        return sum(1 for p in store.participants() if p.step == "done")
    finally:
        store.close()


def test_study_verdicts_follow_each_claims_side() -> None:
    """The main rows of statistics.csv, on planted numbers: the paper's side, the other
    side, a CI within the change rule for a claim that something moves, and too few."""
    rows = [
        ("human-shift", "standard", "paired t", 0.05, -0.2, 0.3, 20, ""),
        ("human-shift", "static", "paired t", 1.2, 0.8, 1.6, 20, ""),
        (
            "llm-shift",
            "standard",
            "one-sample t · probe, toward the participant",
            1.0,
            0.6,
            1.4,
            20,
            "",
        ),
        (
            "llm-shift",
            "personalised",
            "one-sample t · probe, toward the participant",
            -0.4,
            -0.6,
            -0.2,
            20,
            "",
        ),
        ("llm-shift", "standard", "Wilcoxon signed-rank · probe", 1.0, 0.6, 1.4, 20, ""),
        (
            "misperception",
            "standard",
            "paired t · perceived vs probe (reply 1 to last)",
            0.05,
            -0.1,
            0.2,
            20,
            "",
        ),
        ("gap-narrows", "standard", "paired t · probe", 0.4, 0.1, 0.7, 20, ""),
        ("llm-toward-neutral", "standard", "paired t · probe", None, None, None, 3, "too few"),
    ]
    columns = ["claim_id", "condition", "test", "estimate", "ci_low", "ci_high", "n", "note"]
    statistics = pd.DataFrame(rows, columns=columns).assign(p=0.01)
    table = study_findings(statistics, model="m")
    verdicts = dict(
        zip(zip(table["claim_id"], table["setup"], strict=True), table["verdict"], strict=True)
    )
    assert verdicts == {
        ("human-shift", "standard"): "reproduced",
        ("human-shift", "static"): "not reproduced",
        ("llm-shift", "standard"): "reproduced",
        ("llm-shift", "personalised"): "not reproduced",
        ("gap-narrows", "standard"): "not reproduced",
        ("misperception", "standard"): "not reproduced",
        ("llm-toward-neutral", "standard"): "inconclusive",
    }
    assert table[table["claim_id"] == "human-shift"]["threshold"].eq(0.5).all()
    seen = table[table["claim_id"] == "misperception"].iloc[0]
    assert "no move the study's change rule" in seen["note"]


@pytest.mark.engine
def test_replicate_on_an_embedded_model(tmp_path: Path) -> None:
    """The smoke design's three-way debates on SmolLM2-135M through the real engine.

    SmolLM2-135M rarely writes a usable story (prose on the ideology's topics) within 8
    draws, so the design's persona file is there already, holding the built-in personas:
    a design reads its persona file when it exists."""
    out = tmp_path / "runs"
    builtin = [p for kind in ("republican", "democrat") for p in BUILTIN_PERSONAS[kind]]
    (out / "personas").mkdir(parents=True)
    PersonaSet(builtin, {"source": "built-in"}).save(
        out / "personas" / "taubenfeld2024-smoke-smollm2-135m.yaml"
    )
    result = CliRunner().invoke(
        app,
        [
            "replicate",
            "taubenfeld2024",
            "--model",
            "{name: smollm2-135m, parallel: 2}",
            "--setups",
            "three-way",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    run = sl.open_run(out / "taubenfeld2024-smoke-smollm2-135m")
    assert run.status == "complete"
    assert len(run.turns()) == 2 * 3  # 2 debates of 3 replies
    findings = pd.read_csv(out / "replicate-taubenfeld2024-smoke" / "findings.csv")
    assert set(findings["claim_id"]) == {
        "personas-hold",
        "default-stable",
        "partisans-converge",
        "no-crossing",
        "first-cycle",
        "default-leans-democrat",
    }
    assert findings["model"].eq("smollm2-135m").all()
    assert findings["verdict"].isin(["reproduced", "not reproduced", "inconclusive"]).all()


def test_a_dry_run_counts_the_whole_design_once_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    command = ["replicate", "taubenfeld2024", "--model", MOVING, "--out", str(out)]
    result = CliRunner().invoke(app, [*command, "--dry-run", "--no-measure"])
    assert result.exit_code == 0, result.output
    # Smoke: 1 topic x 5 setups x 2 repetitions, one experiment; 2 stories per party.
    assert "estimate for taubenfeld2024 at smoke scale: 10 of 10 debates to run" in result.output
    assert "personas 4 requests" in result.output
    assert "dry run: no debate was run" in result.output
    assert not out.exists() and moving.CALLS["n"] == 0


def test_the_estimate_measures_each_model_once_and_matches_the_run(tmp_path: Path) -> None:
    lines: list[str] = []
    rep = sl.replicate(
        "taubenfeld2024", model=MOVING_ENTRY, out=tmp_path, log=lines.append, setups=["rr"]
    )
    measuring = [line for line in lines if line.startswith("measuring")]
    assert len(measuring) == 1, lines  # the run reuses the design's measurement
    found = rep.estimate
    assert isinstance(found, Estimate) and found.debates_left == 2
    [run] = rep.runs["alpha"]
    replies = run.turns()
    # Stand-in replies walk the same turns the run took: every reply is counted.
    assert found.replies_left == len(replies)
    assert moving.STORIES == {"alpha": 4} and found.stages["personas"].requests == 4


def test_a_priced_design_above_max_cost_asks_first(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    price = "price_per_million: {input: 900, output: 900}"
    priced = f"{{name: alpha, backend: replicate-moving, {price}}}"
    command = ["replicate", "taubenfeld2024", "--model", priced, "--out", str(out)]
    refused = CliRunner().invoke(app, [*command, "--no-measure", "--max-cost", "0.5"])
    assert refused.exit_code == 2, refused.output
    assert "is above --max-cost $0.50: pass --yes to run it anyway" in refused.output
    assert not out.exists() and moving.CALLS["n"] == 0
    ran = CliRunner().invoke(
        app, [*command, "--no-measure", "--max-cost", "0.5", "--yes", "--setups", "rr"]
    )
    assert ran.exit_code == 0, ran.output
    assert "cost: about $" in ran.output
    assert sl.open_run(out / "taubenfeld2024-smoke-alpha").status == "complete"


def test_a_jiang2025_dry_run_prints_the_pilots_estimate_and_runs_nothing(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    command = [
        "replicate",
        "jiang2025",
        "--model",
        "{name: echo, backend: fake}",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, [*command, "--participants", "6", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "estimate for jiang2025: 6 of 6 simulated participants to run" in result.output
    assert "replies" in result.output and "tokens/char for echo" in result.output
    assert "dry run: no participant was run" in result.output
    assert not out.exists()  # no database, no folder


def test_a_priced_pilot_above_max_cost_is_refused_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    priced = "{name: echo, backend: fake, price_per_million: {input: 900000, output: 900000}}"
    command = ["replicate", "jiang2025", "--model", priced, "--out", str(out)]
    refused = CliRunner().invoke(app, [*command, "--no-measure", "--max-cost", "0.5"])
    assert refused.exit_code == 2, refused.output
    assert "is above --max-cost $0.50: pass --yes to run it anyway" in refused.output
    assert not out.exists()
