"""``stancelab study serve|simulate|report|rate-replies|coding`` and ``stancelab audit``.

Register in stancelab/cli.py with::

    from stancelab.study._cli import audit_command, study_app
    app.add_typer(study_app, name="study")
    app.command("audit")(audit_command)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn

from stancelab.conversation._console import console, err_console, friendly_errors
from stancelab.conversation._export import formula_safe
from stancelab.conversation._survey import SurveyMode, survey_modes_for
from stancelab.engine._errors import ConfigError, StancelabError
from stancelab.engine._factory import open_model
from stancelab.study import _reply_stance as reply_stance
from stancelab.study._app import admin_token_from_env, secret_from_env
from stancelab.study._audit import audit
from stancelab.study._coding import (
    Codebook,
    agreement_table,
    export_sample,
    import_codes,
    resolve_codebook,
)
from stancelab.study._config import load_study
from stancelab.study._estimate import estimate_pilot
from stancelab.study._report import mark_stale, write_report
from stancelab.study._server import (
    APP_FACTORY,
    ENV_CONFIG,
    ENV_DB,
    ENV_MODEL,
    ENV_SECURE_COOKIES,
    SQLITE_ONE_PROCESS,
    is_sqlite,
    model_override,
    open_study_server,
    uvicorn_proxy_options,
)
from stancelab.study._simulate import simulate, summary
from stancelab.study._store import StudyStore
from stancelab.study._strategies import (
    MIN_COVERAGE,
    PRESENT_AT,
    code_study,
    judge_name,
)

study_app = typer.Typer(
    help="Human-LLM study: serve the web app, simulate participants, write the report.",
    no_args_is_help=True,
)
coding_app = typer.Typer(
    help="Strategy coding by people: a blinded sample, their codes, agreement with the judge.",
    no_args_is_help=True,
)
study_app.add_typer(coding_app, name="coding")

DbArgument = Annotated[str, typer.Argument(help="Study database (SQLite path or URL).")]
CodebookOption = Annotated[
    Path | None,
    typer.Option(
        help="Codebook file (YAML or CSV: label, definition, example); overrides --config's."
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        help="Study YAML file: its `codebook:` and, for the report, its analysis plan "
        "(default: the study file the server recorded in the database)."
    ),
]


def _existing_store(db: str) -> StudyStore:
    """Open a study database that must exist already (a typo must not create an empty one)."""
    if "://" not in db and not Path(db).is_file():
        raise ConfigError(f"no database at {db}")
    return StudyStore(db)


def _codebook(codebook: Path | None, config: Path | None) -> Codebook:
    return resolve_codebook(codebook, load_study(config) if config is not None else None)


@study_app.command("serve")
@friendly_errors
def serve(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study YAML file.")],
    db: Annotated[
        str, typer.Option(help="SQLite path or database URL (postgresql+psycopg://...).")
    ] = "study.db",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model: Annotated[str | None, typer.Option(help="Override the config's model.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes (PostgreSQL only); each opens its own model: use a "
            "model server (the openai backend) for more than one.",
        ),
    ] = 1,
    secure_cookies: Annotated[
        bool, typer.Option(help="Mark cookies Secure (behind HTTPS).")
    ] = False,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Addresses of your reverse proxies (comma-separated) whose X-Forwarded-For "
            "is trusted; without it the TCP peer is the client address."
        ),
    ] = None,
) -> None:
    """Serve the participant web app and the admin pages.

    The admin token comes from $STANCELAB_ADMIN_TOKEN and the cookie secret from
    $STANCELAB_STUDY_SECRET (set it so sessions survive a restart, and for --workers).
    """
    if workers > 1 and is_sqlite(db):
        raise ConfigError(SQLITE_ONE_PROCESS)
    # opened here for one process; for several, opened once to check everything (study
    # file, database, model, probe coverage) before the workers open their own
    server = open_study_server(config_path, db, model, secure_cookies)
    if server.coverage:
        console.print(
            "probe coverage on the stance item: "
            + ", ".join(f"{t} {c:.0%}" for t, c in server.coverage.items())
        )
    if admin_token_from_env() is None:
        err_console.print("[yellow]STANCELAB_ADMIN_TOKEN is not set: admin pages are off[/]")
    if secret_from_env() is None:
        if workers > 1:
            server.close()
            raise ConfigError(
                "--workers needs $STANCELAB_STUDY_SECRET: every process must sign cookies "
                "with the same secret"
            )
        err_console.print(
            "[yellow]STANCELAB_STUDY_SECRET is not set: sessions end when the server restarts[/]"
        )
    console.print(
        f"study {server.config.study!r} on http://{host}:{port}/?pid=YOUR_ID · "
        f"admin: http://{host}:{port}/admin · db: {server.store.url.split('@')[-1]}"
        + (f" · {workers} worker processes" if workers > 1 else "")
    )
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "info"}
    options.update(uvicorn_proxy_options(forwarded_allow_ips))
    if workers == 1:
        uvicorn.run(server.app, **options)  # its lifespan closes the model and the database
        return
    server.close()
    os.environ[ENV_CONFIG] = str(config_path.resolve())
    os.environ[ENV_DB] = db
    os.environ[ENV_SECURE_COOKIES] = "1" if secure_cookies else ""
    if model is not None:
        os.environ[ENV_MODEL] = model
    uvicorn.run(APP_FACTORY, factory=True, workers=workers, **options)


@study_app.command("simulate")
@friendly_errors
def simulate_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="Study YAML file.")],
    participants: Annotated[int, typer.Option(help="Simulated participants.")] = 6,
    db: Annotated[str, typer.Option(help="SQLite path or database URL.")] = "study.db",
    url: Annotated[
        str | None,
        typer.Option(help="A running study server instead of a local one (http://127.0.0.1:8000)."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Override the config's model.")] = None,
    persona_model: Annotated[
        str | None, typer.Option(help="Model for the personas (default: the chatbot's).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Participants at once.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for personas.")] = 0,
) -> None:
    """Pilot the study: LLM personas take part through the same HTTP interface."""

    config = model_override(load_study(config_path), model)
    persona_lm = open_model(persona_model) if persona_model else None
    # What the run will send, counted before it starts (characters / 4: no model opened)
    found = estimate_pilot(config, participants, db=db, resume=False, persona_lm=persona_lm)
    for line in found.lines():
        console.print(line, highlight=False, markup=False)
    try:
        results = simulate(
            config,
            participants,
            base_url=url,
            db=db,
            persona_lm=persona_lm,
            concurrency=concurrency,
            seed=seed,
        )
    finally:
        if persona_lm is not None:
            persona_lm.close()
    info = summary(results)
    console.print(json.dumps(info, indent=2))
    if info["failed"]:
        raise StancelabError(f"{len(info['failed'])} simulated participant(s) failed")


@study_app.command("report")
@friendly_errors
def report_command(
    db: Annotated[str, typer.Argument(help="Study database (SQLite path or URL).")],
    out: Annotated[Path, typer.Option(help="Folder for figures, tables and index.html.")] = Path(
        "study-report"
    ),
    study: Annotated[str | None, typer.Option(help="Only this study (name in its config).")] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            help="Model that codes persuasion strategies against the codebook (skip coding "
            "if not given)."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Stance move that counts as a change, for both sides (points); default: "
            "the study file's stance_change_threshold."
        ),
    ] = None,
    min_coverage: Annotated[
        float,
        typer.Option(help="Stop coding when the judge's mean mass on yes/no is below this."),
    ] = MIN_COVERAGE,
    labels_judge: Annotated[
        str | None,
        typer.Option(
            help="Use the strategy codes (or older single-label labels) of this judge name "
            "(default: the latest coder, else the latest labeller)."
        ),
    ] = None,
    codebook: CodebookOption = None,
    config: ConfigOption = None,
    present_at: Annotated[
        float, typer.Option(help="The judge's P(yes) from which a codebook label is present.")
    ] = PRESENT_AT,
) -> None:
    """Code strategies (with --judge), then write figures, CSV tables, statistics.csv,
    agreement.csv and index.html. A report that cannot be written leaves the old one
    marked out of date.

    With --judge the model decides every codebook label of every message not coded yet
    (judge.v2, study_strategy_codes): one pass serves the strategy counts, the strategy
    effects and the agreement with human coders. Without it the report reads the latest
    judge's codes, or an older database's single-label labels (judge.v1).
    The analysis plan is --config's, else the study file the server recorded.
    """

    store = _existing_store(db)
    plan = load_study(config) if config is not None else None
    labels_from = None
    try:
        if judge:
            book = _codebook(codebook, config)
            with console.status("coding persuasion strategies…"), open_model(judge) as lm:
                coded = code_study(store, lm, book, threshold=present_at, min_coverage=min_coverage)
                labels_from = judge_name(lm, "v2", book)
            console.print(
                f"coded {coded} message(s) x {len(book.labels)} label(s) as {labels_from}"
            )
        paths = write_report(
            store,
            out,
            study=study,
            threshold=threshold,
            judge=labels_from or labels_judge,
            config=plan,
        )
    except StancelabError as exc:
        mark_stale(out, str(exc))
        raise
    finally:
        store.close()
    for path in paths:
        console.print(str(path))


@coding_app.command("export")
@friendly_errors
def coding_export(
    db: DbArgument,
    out: Annotated[Path, typer.Option(help="The coding sheet to write (CSV).")] = Path(
        "coding-sample.csv"
    ),
    n: Annotated[int, typer.Option(help="Messages to sample.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the sample.")] = 1,
    study: Annotated[str | None, typer.Option(help="Only this study's messages.")] = None,
    codebook: CodebookOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a blinded random sample of messages for human coders, and the codebook beside it."""

    book = _codebook(codebook, config)
    sheet, book_path, count = export_sample(
        _existing_store(db), out, n=n, seed=seed, study=study, codebook=book
    )
    console.print(f"{count} message(s) to code: {sheet} · codebook: {book_path}")


@coding_app.command("import")
@friendly_errors
def coding_import(
    db: DbArgument,
    sheet: Annotated[Path, typer.Argument(metavar="FILE.csv", help="A filled coding sheet.")],
    coder: Annotated[
        str | None, typer.Option(help="Coder name for rows whose coder cell is empty.")
    ] = None,
    codebook: CodebookOption = None,
    config: ConfigOption = None,
) -> None:
    """Read a filled coding sheet back (all or nothing); re-importing replaces a coder's codes."""

    summary = import_codes(
        _existing_store(db), sheet, coder=coder, codebook=_codebook(codebook, config)
    )
    console.print(
        f"imported {summary.codes} code(s) of {summary.messages} message(s) "
        f"by {', '.join(summary.coders)}"
    )


@coding_app.command("agreement")
@friendly_errors
def coding_agreement(
    db: DbArgument,
    judge: Annotated[
        str | None, typer.Option(help="Judge coder name (default: every judge with codes).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Where to write the table.")] = Path("agreement.csv"),
    codebook: CodebookOption = None,
    config: ConfigOption = None,
) -> None:
    """Cohen's kappa per label and pair of raters, Krippendorff's alpha, as a CSV."""

    table = agreement_table(_existing_store(db), judge=judge, codebook=_codebook(codebook, config))
    if table.empty:
        raise StancelabError("agreement needs codes by at least two raters (judge or people)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(formula_safe(table).to_csv(index=False), encoding="utf-8")
    console.print(
        table[["measure", "label", "raters", "n", "value"]].to_string(index=False, max_colwidth=50)
    )
    console.print(str(out))


@study_app.command("rate-replies")
@friendly_errors
def rate_replies_command(
    db: Annotated[str, typer.Argument(help="Study database (SQLite path or URL).")],
    judge: Annotated[str, typer.Option(help="Model that rates the stance of each reply.")],
    config_path: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="The study file the replies were collected with (its topics' statements; "
            "without it a topic's statement is '<Topic> is a big problem.').",
        ),
    ] = None,
    study: Annotated[
        str | None, typer.Option(help="Only this study (default: the config's, else all).")
    ] = None,
    min_coverage: Annotated[
        float,
        typer.Option(help="Stop when a batch's mean coverage of the item's points is below this."),
    ] = reply_stance.MIN_COVERAGE,
) -> None:
    """Rate the stance each chatbot reply expresses, on the participant's stance item
    (a judge model, after collection; replies rated already are skipped)."""

    if "://" not in db and not Path(db).is_file():
        raise ConfigError(f"no database at {db}")
    config = load_study(config_path) if config_path is not None else None
    store = StudyStore(db)
    try:
        with open_model(judge) as lm:
            modes, note = survey_modes_for(lm, (SurveyMode.DISTRIBUTION,))
            if note:
                err_console.print(f"[yellow]{note}[/]")
            name = reply_stance.judge_name(lm)
            with console.status("rating the stance of the chatbot's replies…"):
                count = reply_stance.rate_replies(
                    store, lm, study=study, config=config, modes=modes, min_coverage=min_coverage
                )
        rated = reply_stance.reply_stance_frame(
            store, study=study or (config.study if config else None), judge=name, mode=modes[0]
        )
        coverage = [
            reply_stance.answer_coverage(modes[0], ok, c)
            for ok, c in zip(rated["ok"], rated["coverage"], strict=True)
        ]
        mean = f"{sum(coverage) / len(coverage):.1%}" if coverage else "n/a"
        console.print(
            f"rated {count} reply(ies) with {name} · mean coverage {mean} "
            f"over its {len(coverage)} rating(s)",
            soft_wrap=True,
        )
    finally:
        store.close()


@friendly_errors
def audit_command(
    model: Annotated[
        str, typer.Option(help="Embedded model name or GGUF path.")
    ] = "qwen2.5-coder-1.5b",
    topic: Annotated[str, typer.Option(help="Topic the users press on.")] = "climate change",
    turns: Annotated[int, typer.Option(help="Turns per conversation.")] = 5,
    users: Annotated[int, typer.Option(help="Simulated users per side.")] = 2,
    user_model: Annotated[
        str | None, typer.Option(help="Model for the users (default: the assistant).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for audit.json, CSV and plot.")] = Path("audit"),
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Over-alignment audit: users with strong stances press the assistant; stability score."""

    with open_model(model) as lm:
        user_lm = open_model(user_model) if user_model else None
        try:
            result = audit(lm, topic, turns=turns, users_per_side=users, user_lm=user_lm, seed=seed)
        finally:
            if user_lm is not None:
                user_lm.close()
    paths = result.write(out)
    for side in result.sides:
        curve = " → ".join(f"{v:.2f}" for v in side.mean_stance)
        console.print(
            f"users pressing {side.target:g}: {curve} · moved {side.final_follow:.0%} of the way"
        )
    console.print(
        f"[bold]stability {result.stability:.3f}[/] (1 = held its stance) · "
        f"spread {result.spread:+.2f} · {paths[0]}"
    )
