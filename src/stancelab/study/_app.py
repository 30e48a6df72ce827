"""The study web app: three routers (participant pages, the reply stream, admin) over
one shared state, with the guards as dependencies (``deps.py``).

Flow: consent → about you → stance before → conversation (or static statements) →
stance after → perception of the chatbot → debrief with completion code. The chatbot's
stance is measured with the hidden survey after every exchange, on a copy of the chat.

Database calls never run on the event loop: the store is synchronous SQLAlchemy (shared
with the CLI, the report and the simulator), so handlers and guards that touch it are
plain ``def`` functions that FastAPI runs in its threadpool, and the two async handlers
(sending a message, the reply stream) call it through ``run_in_threadpool`` and await
the model's reply on a future, holding no thread while it is generated. An async driver
would need a second store for one app; the threadpool keeps one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from stancelab.engine import LanguageModel
from stancelab.study import _routes_admin as routes_admin
from stancelab.study import _routes_participant as routes_participant
from stancelab.study import _routes_stream as routes_stream
from stancelab.study._chat import load_template, template_hash
from stancelab.study._config import Condition, StudyConfig
from stancelab.study._pages import (
    ADMIN_COOKIE,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    AppState,
    PageError,
    Redirect,
    TooFast,
    error_page,
    too_fast_page,
)
from stancelab.study._replies import Replies
from stancelab.study._security import RateLimiter, Signer, min_interval
from stancelab.study._store import StudyStore

__all__ = [
    "ADMIN_COOKIE",
    "LOGIN_CSRF_COOKIE",
    "SESSION_COOKIE",
    "admin_token_from_env",
    "create_app",
    "secret_from_env",
]

MAX_BODY_BYTES = 64 * 1024
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
_SCRIPT = files("stancelab.study").joinpath("static", "study.js").read_bytes()


def create_app(
    config: StudyConfig,
    store: StudyStore,
    lm: LanguageModel | None,
    secret: bytes | None = None,
    admin_token: str | None = None,
    secure_cookies: bool = False,
    closing: Callable[[], None] | None = None,
) -> FastAPI:
    """The study app for one config, database and model (None only for static-only
    studies). ``closing`` runs when the server shuts down (the app's lifespan): the
    process's model and database, when the app opened them itself."""
    chat_conditions = [c for c in config.conditions if c != Condition.STATIC]
    if chat_conditions and lm is None:
        raise ValueError("a study with chat conditions needs a language model")
    env = Environment(
        loader=PackageLoader("stancelab.study", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    version = config.chatbot.prompt_version
    templates_hash = template_hash(
        *(
            load_template(n, version)
            for n in ("chatbot_standard", "chatbot_personalised", "stance_probe")
        ),
        # the item is part of what the probe asks: a changed wording or scale is a new hash
        json.dumps(config.item().as_dict(), sort_keys=True),
    )
    store.record_config(config.study, config.model_dump(mode="json"))
    state = AppState(
        config=config,
        store=store,
        lm=lm,
        signer=Signer(secret or secrets.token_bytes(32)),
        admin_token=admin_token or None,
        secure_cookies=secure_cookies,
        rng=random.Random(config.seed),
        requests=RateLimiter(store, "requests", config.limits.requests_per_minute, 60.0),
        messages=min_interval(store, "messages", config.limits.min_seconds_between_messages),
        logins=RateLimiter(store, "admin", config.limits.admin_failures_per_minute, 60.0),
        new_sessions=RateLimiter(
            store, "sessions", config.limits.new_sessions_per_minute_per_ip, 60.0
        ),
        env=env,
        rng_lock=threading.Lock(),
        replies=Replies(config, store, lm, workers=max(16, 2 * config.model.parallel)),
        templates_hash=templates_hash,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.replies.close()
        if closing is not None:
            closing()

    app = FastAPI(
        title=f"stancelab study {config.study}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.study = state

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_page(state, "That request is too large.", 413)
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(TooFast)
    async def too_fast(_request: Request, exc: TooFast) -> Response:
        return too_fast_page(state, exc.wait_s)

    @app.exception_handler(PageError)
    async def page_error(_request: Request, exc: PageError) -> Response:
        return error_page(state, exc.message, exc.status, exc.headers)

    @app.exception_handler(Redirect)
    async def redirect(_request: Request, exc: Redirect) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    app.include_router(routes_participant.router)
    app.include_router(routes_stream.router)
    app.include_router(routes_admin.router)

    @app.get("/static/study.js")
    def script() -> Response:
        """The page's progressive enhancement (the forms work without it)."""
        return Response(
            _SCRIPT,
            media_type="text/javascript; charset=utf-8",
            headers={"Cache-Control": "public, max-age=300"},
        )

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness probe; answered on the event loop itself, so its latency shows whether
        anything blocks the loop (benchmarks/study_load.py measures it under load)."""
        return {"status": "ok", "study": config.study}

    return app


def admin_token_from_env(name: str = "STANCELAB_ADMIN_TOKEN") -> str | None:
    """The admin token from an environment variable (never from a config file)."""
    value = os.environ.get(name, "").strip()
    return value or None


def secret_from_env(name: str = "STANCELAB_STUDY_SECRET") -> bytes | None:
    """The cookie-signing secret from an environment variable (sessions survive restarts)."""
    value = os.environ.get(name, "").strip()
    return value.encode() if value else None
