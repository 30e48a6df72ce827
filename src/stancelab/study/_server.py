"""Run the study app with uvicorn: in the foreground (serve), as several worker processes
on one PostgreSQL database (``app_from_env``), or in a thread (tests, pilots)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from stancelab.conversation._database import database_url
from stancelab.engine._base import LanguageModel
from stancelab.engine._errors import ConfigError, StancelabError
from stancelab.engine._factory import ModelConfig, open_model
from stancelab.study._app import admin_token_from_env, create_app, secret_from_env
from stancelab.study._config import Condition, StudyConfig, load_study
from stancelab.study._replies import check_probe_coverage
from stancelab.study._store import StudyStore


def uvicorn_proxy_options(forwarded_allow_ips: str | None) -> dict[str, Any]:
    """uvicorn settings that trust X-Forwarded-For / -Proto only from the given proxy
    addresses (comma-separated). None trusts no one: uvicorn's own default trusts
    127.0.0.1, so any local client (or a proxy on the same host passing the header
    through) could pick its address and escape the per-address rate limits."""
    if not forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": forwarded_allow_ips}


@contextlib.contextmanager
def running_server(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 30.0,
    forwarded_allow_ips: str | None = None,
) -> Iterator[str]:
    """Serve an ASGI app in a background thread; yields its base URL, stops on exit.
    Proxy headers count only from ``forwarded_allow_ips`` (see ``uvicorn_proxy_options``)."""

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        **uvicorn_proxy_options(forwarded_allow_ips),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="study-server", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise StancelabError(f"the study server did not start on {host}:{bound_port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


ENV_CONFIG = "STANCELAB_STUDY_CONFIG"
ENV_DB = "STANCELAB_STUDY_DB"
ENV_MODEL = "STANCELAB_STUDY_MODEL"
ENV_SECURE_COOKIES = "STANCELAB_STUDY_SECURE_COOKIES"
APP_FACTORY = "stancelab.study.server:app_from_env"
"""The import string of the worker processes' app (``uvicorn --factory``)."""


def is_sqlite(db: str) -> bool:
    """Whether a ``--db`` value (a path or a URL) names an SQLite database."""
    return database_url(db).startswith("sqlite")


def model_override(config: StudyConfig, model: str | None) -> StudyConfig:
    """The study config with its model replaced by ``model`` (a name or YAML), if given."""
    if model is None:
        return config
    return config.model_copy(update={"model": ModelConfig.parse(model)})


@dataclass
class StudyServer:
    """One server process's app with what it opened: its database and its model."""

    app: FastAPI
    config: StudyConfig
    store: StudyStore
    lm: LanguageModel | None
    coverage: dict[str, float]
    """The probe's probability mass on the stance item per topic (``check_probe_coverage``)."""
    close: Callable[[], None]
    """Release the model and the database connections (the app calls it at shutdown)."""


def open_study_server(
    config_path: Path, db: str, model: str | None = None, secure_cookies: bool = False
) -> StudyServer:
    """Open a study's database and model, check the probe's coverage, and build its app
    (admin token and cookie secret from the environment). The app closes the model and
    the database when the server shuts down."""
    config = model_override(load_study(config_path), model)
    store = StudyStore(db)
    lm = None

    def close() -> None:
        if lm is not None:
            lm.close()
        store.close()

    coverage: dict[str, float] = {}
    try:
        if any(c != Condition.STATIC for c in config.conditions):
            lm = open_model(config.model)
            coverage = check_probe_coverage(config, lm)
    except BaseException:
        close()
        raise
    app = create_app(
        config,
        store,
        lm,
        secret=secret_from_env(),
        admin_token=admin_token_from_env(),
        secure_cookies=secure_cookies,
        closing=close,
    )
    return StudyServer(app, config, store, lm, coverage, close)


def app_from_env() -> FastAPI:
    """The app of one server process, configured through the environment, for running
    several: ``uvicorn --factory stancelab.study.server:app_from_env --workers N`` (what
    ``stancelab study serve --workers N`` runs) or gunicorn with uvicorn workers.

    Reads ``$STANCELAB_STUDY_CONFIG`` (the study file), ``$STANCELAB_STUDY_DB`` (a
    PostgreSQL URL), ``$STANCELAB_STUDY_MODEL`` (optional: overrides the file's model),
    ``$STANCELAB_STUDY_SECURE_COOKIES`` ("1": cookies marked Secure) and, like ``serve``,
    ``$STANCELAB_ADMIN_TOKEN`` and ``$STANCELAB_STUDY_SECRET`` (the same in every process,
    or a session cookie signed by one process is refused by the others). Each process
    opens its own model."""
    config_path = os.environ.get(ENV_CONFIG, "").strip()
    db = os.environ.get(ENV_DB, "").strip()
    if not config_path or not db:
        raise ConfigError(f"${ENV_CONFIG} and ${ENV_DB} must name the study file and database")
    if is_sqlite(db):
        raise ConfigError(f"${ENV_DB}: {SQLITE_ONE_PROCESS}")
    server = open_study_server(
        Path(config_path),
        db,
        os.environ.get(ENV_MODEL, "").strip() or None,
        secure_cookies=os.environ.get(ENV_SECURE_COOKIES, "") == "1",
    )
    return server.app


SQLITE_ONE_PROCESS = "SQLite allows one server process; use PostgreSQL for --workers N"
