"""The participant web app (server-rendered, no JavaScript) and the admin pages.

Flow: consent → about you → stance before → conversation (or static statements) →
stance after → perception of the chatbot → debrief with completion code. The chatbot's
stance is measured with the hidden survey after every exchange, on a copy of the chat.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from stancelab.conversation.export import table_bytes
from stancelab.engine.base import LanguageModel
from stancelab.engine.errors import StancelabError
from stancelab.study.chat import Chatbot, ChatTurn, format_profile, load_template, template_hash
from stancelab.study.config import Condition, StudyConfig
from stancelab.study.security import (
    KeyedLocks,
    MinInterval,
    RateLimiter,
    Signer,
    split_session_cookie,
)
from stancelab.study.store import (
    STUDY_TABLES,
    DuplicateTurn,
    ParticipantRow,
    StudyStore,
    read_table,
)

log = logging.getLogger("stancelab.study")

SESSION_COOKIE = "sl_session"
ADMIN_COOKIE = "sl_admin"
LOGIN_CSRF_COOKIE = "sl_login_csrf"
MAX_BODY_BYTES = 64 * 1024
_PID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; "
        "img-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class AppState:
    """Everything the request handlers share."""

    config: StudyConfig
    store: StudyStore
    lm: LanguageModel | None
    signer: Signer
    admin_token: str | None
    secure_cookies: bool
    rng: random.Random
    requests: RateLimiter
    messages: MinInterval
    logins: RateLimiter
    new_sessions: RateLimiter
    busy: KeyedLocks
    env: Environment
    rng_lock: threading.Lock


class TooFast(Exception):
    """A participant is sending faster than the limits allow."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"retry after {wait_s:.1f} s")
        self.wait_s = wait_s


def _page(state: AppState, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = state.env.get_template(template).render(title=state.config.questions.title, **context)
    return HTMLResponse(html, status_code=status)


def _error(
    state: AppState, message: str, status: int, headers: dict[str, str] | None = None
) -> HTMLResponse:
    response = _page(state, "error.html", status=status, message=message)
    if headers:
        response.headers.update(headers)
    return response


def _int_field(form: dict[str, str], name: str, low: int = 0, high: int = 10) -> int | None:
    value = form.get(name, "").strip()
    if not re.fullmatch(r"-?\d{1,4}", value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def _chatbot(config: StudyConfig, row: ParticipantRow) -> Chatbot:
    question = config.fill(config.questions.stance, row.topic)
    profile = None
    if row.condition == Condition.PERSONALISED:
        labels = {q.id: q.label for q in config.questions.demographics}
        profile = format_profile(
            {k: str(v) for k, v in (row.demographics or {}).items()}, row.background or "", labels
        )
    return Chatbot.build(
        row.topic,
        question,
        profile,
        version=config.chatbot.prompt_version,
        temperature=config.chatbot.temperature,
        max_tokens=config.chatbot.max_tokens,
        modes=config.chatbot.stance_modes,
    )


def _history(state: AppState, participant_id: str) -> tuple[list[ChatTurn], int | None]:
    """The finished exchanges, and the human stance reported with the last message."""
    rows = state.store.messages(participant_id)
    users = {r.turn: r for r in rows if r.role == "user"}
    bots = {r.turn: r for r in rows if r.role == "assistant"}
    turns = [ChatTurn(users[t].text, bots[t].text) for t in sorted(users) if t in bots]
    last = users[max(users)].human_stance if users else None
    return turns, last


def create_app(
    config: StudyConfig,
    store: StudyStore,
    lm: LanguageModel | None,
    secret: bytes | None = None,
    admin_token: str | None = None,
    secure_cookies: bool = False,
) -> FastAPI:
    """The study app for one config, database and model (None only for static-only studies)."""
    chat_conditions = [c for c in config.conditions if c != Condition.STATIC]
    if chat_conditions and lm is None:
        raise ValueError("a study with chat conditions needs a language model")
    env = Environment(
        loader=PackageLoader("stancelab.study", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    state = AppState(
        config=config,
        store=store,
        lm=lm,
        signer=Signer(secret or secrets.token_bytes(32)),
        admin_token=admin_token or None,
        secure_cookies=secure_cookies,
        rng=random.Random(config.seed),
        requests=RateLimiter(config.limits.requests_per_minute, 60.0),
        messages=MinInterval(config.limits.min_seconds_between_messages),
        logins=RateLimiter(10, 60.0),
        new_sessions=RateLimiter(config.limits.new_sessions_per_minute_per_ip, 60.0),
        busy=KeyedLocks(),
        env=env,
        rng_lock=threading.Lock(),
    )
    version = config.chatbot.prompt_version
    templates_hash = template_hash(
        *(
            load_template(n, version)
            for n in ("chatbot_standard", "chatbot_personalised", "stance_probe")
        )
    )
    app = FastAPI(
        title=f"stancelab study {config.study}", docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.study = state

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(state, "That request is too large.", 413)
        try:
            response = await call_next(request)
        except TooFast as exc:  # pragma: no cover - handled by the exception handler
            response = _too_fast(state, exc)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(TooFast)
    async def too_fast(_request: Request, exc: TooFast) -> Response:
        return _too_fast(state, exc)

    # --- participant helpers -------------------------------------------------------
    def current(request: Request) -> ParticipantRow | None:
        parsed = split_session_cookie(request.cookies.get(SESSION_COOKIE))
        if parsed is None:
            return None
        participant_id, signature = parsed
        row = store.participant(participant_id)
        if row is None or row.study != config.study:
            return None
        if not state.signer.verify(signature, "session", row.id, row.session_nonce):
            return None
        return row

    def limit(row: ParticipantRow) -> None:
        wait = state.requests.hit(row.id)
        if wait:
            raise TooFast(wait)

    async def checked_form(request: Request, row: ParticipantRow) -> dict[str, str] | None:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        expected = state.signer.csrf_token(row.id, row.session_nonce)
        if not hmac.compare_digest(values.get("csrf", "").encode(), expected.encode()):
            return None
        return values

    def context(row: ParticipantRow, **extra: Any) -> dict[str, Any]:
        q = config.questions
        return {
            "p": row,
            "q": q,
            "csrf": state.signer.csrf_token(row.id, row.session_nonce),
            "fill": lambda text: config.fill(text, row.topic),
            "scale": range(11),
            "config": config,
            **extra,
        }

    def start_cookie(response: Response, row: ParticipantRow) -> Response:
        response.set_cookie(
            SESSION_COOKIE,
            state.signer.session_cookie(row.id, row.session_nonce),
            httponly=True,
            samesite="lax",
            secure=state.secure_cookies,
            max_age=7 * 24 * 3600,
            path="/",
        )
        return response

    def to_study() -> RedirectResponse:
        return RedirectResponse("/study", status_code=303)

    def measure(row: ParticipantRow, history: list[ChatTurn]) -> None:
        assert lm is not None
        answers = _chatbot(config, row).stances(lm, [history], [len(history)])
        store.add_stances(row.id, answers)

    # --- entry -----------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    def entry(request: Request) -> Response:
        """Start or resume a session from the recruiting link (?pid=...)."""
        pid = (
            request.query_params.get("pid") or request.query_params.get("PROLIFIC_PID") or ""
        ).strip()
        row = current(request)
        if not pid:
            if row is not None:
                return to_study()
            return _error(
                state,
                "Please open this study from the link you were given "
                "(it carries your participant id).",
                400,
            )
        if not _PID.fullmatch(pid):
            return _error(state, "This participant id is not valid.", 400)
        if row is not None and row.pid == pid:
            return to_study()
        existing = store.participant_by_pid(config.study, pid)
        if existing is not None:
            if not config.resume_without_cookie:
                return _error(
                    state,
                    "This participant id has already started the study in "
                    "another browser. Please continue there, or contact the "
                    "researchers.",
                    403,
                )
            return start_cookie(to_study(), existing)
        client = request.client.host if request.client else "?"
        wait = state.new_sessions.hit(f"new:{client}")
        if wait:
            raise TooFast(wait)
        with state.rng_lock:
            seed = state.rng.random()
        simulated = request.headers.get("x-stancelab-simulated") == "1"
        model_name = lm.name if lm is not None else ""
        row = store.create_participant(
            config.study,
            pid,
            [str(c) for c in config.conditions],
            [t.name for t in config.topics],
            random.Random(seed),
            model=model_name,
            template_hash=templates_hash,
            simulated=simulated,
            fixed_code=config.completion_code,
        )
        return start_cookie(to_study(), row)

    @app.get("/study", response_class=HTMLResponse)
    def study(request: Request) -> Response:
        """The participant's current page; reload resumes where they were."""
        row = current(request)
        if row is None:
            return _error(
                state,
                "Your session was not found. Please open the study from the link you were given.",
                403,
            )
        limit(row)
        if row.step == "consent":
            return _page(state, "consent.html", **context(row))
        if row.step == "about":
            return _page(state, "about.html", **context(row, values={}, errors=[]))
        if row.step == "before":
            return _page(state, "stance.html", **context(row, which="before", errors=[]))
        if row.step == "conversation":
            return conversation_page(row)
        if row.step == "after":
            return _page(state, "stance.html", **context(row, which="after", errors=[]))
        if row.step == "perception":
            return _page(state, "perception.html", **context(row, errors=[]))
        return _page(state, "done.html", **context(row))

    def conversation_page(
        row: ParticipantRow, error: str | None = None, status: int = 200
    ) -> Response:
        if row.condition == Condition.STATIC:
            statements = config.topic(row.topic).statements
            return _page(
                state, "statements.html", status=status, **context(row, statements=statements)
            )
        history, last = _history(state, row.id)
        stance = last if last is not None else row.stance_before
        return _page(
            state,
            "chat.html",
            status=status,
            **context(
                row,
                history=history,
                next_turn=len(history) + 1,
                stance=stance,
                error=error,
                can_finish=len(history) >= config.turns.min,
                can_send=len(history) < config.turns.max,
            ),
        )

    def step_guard(request: Request, step: str) -> ParticipantRow | Response:
        row = current(request)
        if row is None:
            return _error(state, "Your session was not found.", 403)
        limit(row)
        if row.step != step:
            return to_study()  # a repeated or out-of-order submission changes nothing
        return row

    # --- steps -------------------------------------------------------------------------

    async def guarded_form(
        request: Request, step: str
    ) -> tuple[ParticipantRow, dict[str, str]] | Response:
        """The participant at this step and their CSRF-checked form, or the page to show."""
        row = step_guard(request, step)
        if isinstance(row, Response):
            return row
        form = await checked_form(request, row)
        if form is None:
            return _error(state, "The form expired. Please go back and reload the page.", 403)
        return row, form

    @app.post("/study/consent")
    async def consent(request: Request) -> Response:
        """Record consent."""
        guarded = await guarded_form(request, "consent")
        if isinstance(guarded, Response):
            return guarded
        row, form = guarded
        if form.get("agree") != "yes":
            return _page(
                state,
                "consent.html",
                status=400,
                **context(row, error="Please tick the box to take part."),
            )
        store.update(row.id, step="about")
        return to_study()

    @app.post("/study/about")
    async def about(request: Request) -> Response:
        """Record demographics and the personal background."""
        guarded = await guarded_form(request, "about")
        if isinstance(guarded, Response):
            return guarded
        row, form = guarded
        values: dict[str, str] = {}
        errors: list[str] = []
        limit_chars = config.limits.max_message_chars
        for question in config.questions.demographics:
            value = form.get(f"d_{question.id}", "").strip()[:200]
            if question.required and not value:
                errors.append(f"Please answer: {question.label}")
            elif value and question.kind == "number" and not re.fullmatch(r"\d{1,3}", value):
                errors.append(f"Please give a whole number: {question.label}")
            elif value and question.kind == "choice" and value not in question.choices:
                errors.append(f"Please pick one of the options: {question.label}")
            values[question.id] = value
        background = form.get("background", "").strip()
        if not background:
            errors.append("Please tell us a little about yourself.")
        elif len(background) > limit_chars:
            errors.append(f"Please keep it under {limit_chars} characters.")
        if errors:
            return _page(
                state,
                "about.html",
                status=400,
                **context(row, values={**values, "background": background}, errors=errors),
            )
        store.update(row.id, demographics=values, background=background, step="before")
        return to_study()

    def stance_form(form: dict[str, str]) -> tuple[int | None, str, list[str]]:
        stance = _int_field(form, "stance")
        reason = form.get("reason", "").strip()
        errors = []
        if stance is None:
            errors.append("Please choose a number from 0 to 10.")
        if not reason:
            errors.append("Please give a short reason.")
        elif len(reason) > config.limits.max_message_chars:
            errors.append(f"Please keep it under {config.limits.max_message_chars} characters.")
        return stance, reason, errors

    @app.post("/study/before")
    async def before(request: Request) -> Response:
        """Record the stance before the conversation and measure the chatbot's (turn 0)."""
        guarded = await guarded_form(request, "before")
        if isinstance(guarded, Response):
            return guarded
        row, form = guarded
        stance, reason, errors = stance_form(form)
        if errors:
            return _page(
                state, "stance.html", status=400, **context(row, which="before", errors=errors)
            )
        row = store.update(row.id, stance_before=stance, reason_before=reason)
        if row.condition != Condition.STATIC:
            try:
                await run_in_threadpool(measure, row, [])
            except StancelabError as exc:
                log.error("chatbot stance probe failed for participant %s: %s", row.id, exc)
                return _error(
                    state,
                    "The chatbot is not available right now. Please wait a "
                    "moment and submit the page again.",
                    503,
                    headers={"Retry-After": "10"},
                )
        store.update(row.id, step="conversation")
        return to_study()

    @app.post("/study/message")
    async def message(request: Request) -> Response:
        """One exchange: store the participant's message and the chatbot's reply together."""
        guarded = await guarded_form(request, "conversation")
        if isinstance(guarded, Response):
            return guarded
        row, form = guarded
        if row.condition == Condition.STATIC:
            return to_study()
        text = form.get("message", "").replace("\r\n", "\n").strip()
        turn = _int_field(form, "turn", 1, 10_000)
        stance = _int_field(form, "stance")
        if not text:
            return conversation_page(row, "Please write a message first.", 400)
        if len(text) > config.limits.max_message_chars:
            return conversation_page(
                row,
                f"Please keep messages under {config.limits.max_message_chars} characters.",
                400,
            )
        wait = state.messages.hit(row.id)
        if wait:
            raise TooFast(wait)
        if not state.busy.try_acquire(row.id):
            raise TooFast(2.0)
        try:
            return await run_in_threadpool(exchange, row, text, turn, stance)
        finally:
            state.busy.release(row.id)

    def exchange(row: ParticipantRow, text: str, turn: int | None, stance: int | None) -> Response:
        assert lm is not None
        history, last = _history(state, row.id)
        expected = len(history) + 1
        if turn != expected:  # a resubmitted form: never store a message twice
            return to_study()
        if expected > config.turns.max:  # the conversation is full: only "finish" is left
            return to_study()
        if stance is None:
            stance = last if last is not None else row.stance_before
        bot = _chatbot(config, row)
        start = time.perf_counter()
        try:
            reply = bot.reply(lm, history, text)
        except StancelabError as exc:
            log.error("chatbot reply failed for participant %s: %s", row.id, exc)
            return conversation_page(
                row, "The chatbot could not answer just now. Please send your message again.", 503
            )
        latency = time.perf_counter() - start
        try:
            store.add_exchange(row.id, expected, text, stance, reply, latency)
        except DuplicateTurn:
            return to_study()
        history.append(ChatTurn(text, reply))
        try:
            store.add_stances(row.id, bot.stances(lm, [history], [expected]))
        except StancelabError as exc:  # the exchange is kept; this turn's stance is missing
            log.error(
                "chatbot stance probe failed for participant %s turn %d: %s", row.id, expected, exc
            )
        return to_study()

    @app.post("/study/finish-conversation")
    async def finish_conversation(request: Request) -> Response:
        """Leave the conversation (after the minimum number of turns) or the statements."""
        guarded = await guarded_form(request, "conversation")
        if isinstance(guarded, Response):
            return guarded
        row, _ = guarded
        if row.condition == Condition.STATIC:
            statements = config.topic(row.topic).statements
            for index, statement in enumerate(statements, start=1):
                try:
                    store.add_exchange(row.id, index, statement, None, None, role="statement")
                except DuplicateTurn:
                    break
        else:
            history, _ = _history(state, row.id)
            if len(history) < config.turns.min:
                return conversation_page(
                    row, f"Please send at least {config.turns.min} messages before finishing.", 400
                )
        store.update(row.id, step="after")
        return to_study()

    @app.post("/study/after")
    async def after(request: Request) -> Response:
        """Record the stance after the conversation."""
        guarded = await guarded_form(request, "after")
        if isinstance(guarded, Response):
            return guarded
        row, form = guarded
        stance, reason, errors = stance_form(form)
        if errors:
            return _page(
                state, "stance.html", status=400, **context(row, which="after", errors=errors)
            )
        if row.condition == Condition.STATIC:
            store.update(
                row.id,
                stance_after=stance,
                reason_after=reason,
                step="done",
                completed_at=dt.datetime.now(dt.UTC),
            )
        else:
            store.update(row.id, stance_after=stance, reason_after=reason, step="perception")
        return to_study()

    @app.post("/study/perception")
    async def perception(request: Request) -> Response:
        """Record where the participant thinks the chatbot stood at the start and the end."""

        guarded = await guarded_form(request, "perception")
        if isinstance(guarded, Response):
            return guarded
        row, form = guarded
        start_value = _int_field(form, "perceived_start")
        end_value = _int_field(form, "perceived_end")
        if start_value is None or end_value is None:
            return _page(
                state,
                "perception.html",
                status=400,
                **context(row, errors=["Please choose a number from 0 to 10 for both questions."]),
            )
        store.update(
            row.id,
            perceived_start=start_value,
            perceived_end=end_value,
            step="done",
            completed_at=dt.datetime.now(dt.UTC),
        )
        return to_study()

    # --- admin ------------------------------------------------------------------------
    def is_admin(request: Request) -> bool:
        token = state.admin_token
        if not token:
            return False
        header = request.headers.get("authorization", "")
        given = (
            header[7:]
            if header.lower().startswith("bearer ")
            else request.headers.get("x-admin-token", "")
        )
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return True
        cookie = request.cookies.get(ADMIN_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(
            cookie.encode(), state.signer.admin_cookie(token).encode()
        )

    def admin_denied() -> Response:
        return RedirectResponse("/admin/login", status_code=303)

    @app.get("/admin/login", response_class=HTMLResponse)
    def admin_login_page() -> Response:
        """The admin login form (token in a POST body, never in a URL)."""
        nonce = secrets.token_hex(16)
        response = _page(state, "admin_login.html", csrf=nonce, error=None)
        response.set_cookie(
            LOGIN_CSRF_COOKIE,
            nonce,
            httponly=True,
            samesite="strict",
            secure=state.secure_cookies,
            path="/admin",
        )
        return response

    @app.post("/admin/login")
    async def admin_login(request: Request) -> Response:
        """Check the token; on success set a derived admin cookie."""
        client = request.client.host if request.client else "?"
        wait = state.logins.hit(f"login:{client}")
        if wait:
            raise TooFast(wait)
        form = await request.form()
        csrf = str(form.get("csrf", ""))
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not csrf or not hmac.compare_digest(csrf.encode(), cookie.encode()):
            return _error(state, "The form expired. Please reload the login page.", 403)
        token = str(form.get("token", ""))
        if not state.admin_token or not hmac.compare_digest(
            token.encode(), state.admin_token.encode()
        ):
            log.warning("admin login failed from %s", client)
            return _page(state, "admin_login.html", status=403, csrf=cookie, error="Wrong token.")
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie(
            ADMIN_COOKIE,
            state.signer.admin_cookie(state.admin_token),
            httponly=True,
            samesite="strict",
            secure=state.secure_cookies,
            path="/admin",
            max_age=12 * 3600,
        )
        return response

    @app.get("/admin", response_class=HTMLResponse)
    def admin_sessions(request: Request) -> Response:
        """All sessions of this study."""
        if not is_admin(request):
            return admin_denied()
        rows = store.participants(config.study)
        counts: dict[str, int] = {}
        for message_row in store.all_messages():
            if message_row.role == "user":
                counts[message_row.participant_id] = counts.get(message_row.participant_id, 0) + 1
        return _page(
            state,
            "admin_sessions.html",
            rows=rows,
            counts=counts,
            tables=STUDY_TABLES,
            study=config.study,
        )

    @app.get("/admin/session/{participant_id}", response_class=HTMLResponse)
    def admin_session(participant_id: str, request: Request) -> Response:
        """One session's answers, transcript and the chatbot's stance per turn."""
        if not is_admin(request):
            return admin_denied()
        row = store.participant(participant_id)
        if row is None or row.study != config.study:
            return _error(state, "No such session.", 404)
        stances = {s.turn: s for s in store.stances(row.id) if s.mode == "distribution"}
        if not stances:
            stances = {s.turn: s for s in store.stances(row.id)}
        return _page(
            state, "admin_session.html", p=row, messages=store.messages(row.id), stances=stances
        )

    @app.get("/admin/export/{name}")
    def admin_export(name: str, request: Request) -> Response:
        """One table as CSV or Parquet (e.g. /admin/export/study_messages.csv)."""
        if not is_admin(request):
            return admin_denied()
        table, _, fmt = name.rpartition(".")
        if table not in STUDY_TABLES or fmt not in ("csv", "parquet"):
            return _error(state, "No such export.", 404)
        body = table_bytes(read_table(store, table), fmt)
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/vnd.apache.parquet"
        return Response(
            body,
            media_type=media,
            headers={"Content-Disposition": f'attachment; filename="{table}.{fmt}"'},
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok", "study": config.study}

    return app


def _too_fast(state: AppState, exc: TooFast) -> Response:
    wait = max(1, round(exc.wait_s + 0.49))
    return _error(
        state,
        f"You are going a little fast. Please wait {wait} second"
        f"{'s' if wait != 1 else ''} and try again.",
        429,
        headers={"Retry-After": str(wait)},
    )


def admin_token_from_env(name: str = "STANCELAB_ADMIN_TOKEN") -> str | None:
    """The admin token from an environment variable (never from a config file)."""
    value = os.environ.get(name, "").strip()
    return value or None


def secret_from_env(name: str = "STANCELAB_STUDY_SECRET") -> bytes | None:
    """The cookie-signing secret from an environment variable (sessions survive restarts)."""
    value = os.environ.get(name, "").strip()
    return value.encode() if value else None
