"""The participant's pages: consent → about you → stance before → conversation (or static
statements) → stance after → perception of the chatbot → debrief.

Handlers are plain ``def`` (FastAPI runs them in its threadpool: the store is synchronous
SQLAlchemy) except ``message``, which awaits the chatbot's reply on a future and so holds
no thread while the model works; its database calls go through ``run_in_threadpool``.
Every validation error re-renders the page with what was typed and chosen.
"""

from __future__ import annotations

import datetime as dt
import hmac
import random
import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from stancelab.study._config import AttentionCheck, Condition
from stancelab.study._deps import (
    Form,
    MaybeParticipant,
    Participant,
    SignedIn,
    StepForm,
    step_form,
)
from stancelab.study._pages import (
    SESSION_COOKIE,
    AppState,
    PageError,
    State,
    TooFast,
    context,
    int_field,
    page,
)
from stancelab.study._replies import answered_history
from stancelab.study._store import ENDED, ChatMessageRow, DuplicateTurn, ParticipantRow, StudyFull

router = APIRouter()

_PID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
REPLY_WAIT_S = 300.0
"""How long a plain-form submission waits for the reply before showing the pending page."""
FAILED = (
    "The chatbot could not answer just now. Your message is kept below: "
    "please send your message again."
)


def to_study() -> RedirectResponse:
    """303 to the participant's current page."""
    return RedirectResponse("/study", status_code=303)


def start_cookie(state: AppState, response: Response, row: ParticipantRow) -> Response:
    """Set the signed session cookie."""
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


@router.get("/", response_class=HTMLResponse)
def entry(
    request: Request,
    row: MaybeParticipant,
    state: State,
) -> Response:
    """Start or resume a session from the recruiting link (?pid=...)."""
    config, store = state.config, state.store
    pid = (
        request.query_params.get("pid") or request.query_params.get("PROLIFIC_PID") or ""
    ).strip()
    if not pid:
        if row is not None:
            return to_study()
        raise PageError(
            "Please open this study from the link you were given (it carries your participant id).",
            400,
        )
    if not _PID.fullmatch(pid):
        raise PageError("This participant id is not valid.", 400)
    if row is not None and row.pid == pid:
        return to_study()
    existing = store.participant_by_pid(config.study, pid)
    if existing is not None:
        if not config.resume_without_cookie:
            raise PageError(
                "This participant id has already started the study in another browser. "
                "Please continue there, or contact the researchers.",
                403,
            )
        return start_cookie(state, to_study(), existing)
    if config.recruitment.closed or store.is_closed(config.study):
        raise PageError(
            "This study is closed to new participants. Please return your submission "
            "on the study platform.",
            403,
        )
    client = request.client.host if request.client else "?"
    wait = state.new_sessions.hit(f"new:{client}")
    if wait:
        raise TooFast(wait)
    with state.rng_lock:
        seed = state.rng.random()
    simulated = request.headers.get("x-stancelab-simulated") == "1"
    recruitment = config.recruitment
    try:
        row = store.create_participant(
            config.study,
            pid,
            [str(c) for c in config.conditions],
            [t.name for t in config.topics],
            random.Random(seed),
            model=state.lm.name if state.lm is not None else "",
            template_hash=state.templates_hash,
            simulated=simulated,
            fixed_code=config.completion_code,
            active_since=dt.datetime.now(dt.UTC)
            - dt.timedelta(minutes=recruitment.abandon_after_minutes),
            cap=recruitment.cap,
            quota_per_condition=recruitment.quota_per_condition,
            platform_study_id=_platform_id(request, "STUDY_ID"),
            platform_session_id=_platform_id(request, "SESSION_ID"),
            stance_item=config.item().as_dict(),
        )
    except StudyFull:
        raise PageError(
            "This study is full. Please return your submission on the study platform.", 403
        ) from None
    return start_cookie(state, to_study(), row)


def _platform_id(request: Request, name: str) -> str | None:
    value = request.query_params.get(name, "").strip()
    return value if _PID.fullmatch(value) else None


@router.get("/study", response_class=HTMLResponse)
def study(row: Participant, state: State) -> Response:
    """The participant's current page; reload resumes where they were."""
    state.store.stamp_page(row.id, f"{row.step}.shown")
    if row.step == "consent":
        return page(state, "consent.html", **context(state, row))
    if row.step == "about":
        return page(
            state,
            "about.html",
            **context(state, row, values={}, errors=[], attention_about=_attention(state, "about")),
        )
    if row.step in ("before", "after"):
        return stance_page(state, row, row.step)
    if row.step == "conversation":
        return conversation_page(state, row)
    if row.step == "perception":
        return perception_page(state, row)
    return end_page(state, row)


@router.get("/study/state")
def conversation_state(row: SignedIn, state: State) -> JSONResponse:
    """Where the participant is, in a few bytes: the step and, in the conversation, the
    version of what its page shows. Other tabs poll it while visible and refresh their
    conversation in place when it changes. Not counted against the request rate: a
    poll every few seconds must not use up the budget the participant's forms need."""
    version = row.step
    if row.step == "conversation" and row.condition != Condition.STATIC:
        version = Conversation.read(state.store.messages(row.id)).version
    return JSONResponse(
        {"step": row.step, "version": version}, headers={"Cache-Control": "no-store"}
    )


def perception_page(
    state: AppState,
    row: ParticipantRow,
    errors: list[str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    """Where the participant thinks the chatbot stood in its first and its last reply:
    the replies they read, compared with the chatbot's stance measured right after them."""
    config = state.config
    return page(
        state,
        "perception.html",
        status=status,
        **context(
            state,
            row,
            errors=errors or [],
            values=values or {},
            perception_first=config.perception_question(row.topic, "first"),
            perception_last=config.perception_question(row.topic, "last"),
        ),
    )


def end_page(state: AppState, row: ParticipantRow) -> Response:
    """The last page: debrief and completion code, or the code of another ending, with
    the platform link (followed automatically when configured)."""
    config, q = state.config, state.config.questions
    code = {
        "done": row.completion_code,
        "no_consent": config.no_consent_code,
        "screened_out": config.screen_out_code,
    }.get(row.step)
    debrief = q.debrief_by_condition.get(
        Condition(row.condition),
        q.debrief_static if row.condition == Condition.STATIC else q.debrief,
    )
    url = config.end_url(code) if (code or row.step == "withdrawn") else None
    return page(
        state,
        "done.html",
        **context(state, row, end_code=code, end_url=url, debrief=debrief),
    )


def reading_wait(state: AppState, row: ParticipantRow, name: str) -> float:
    """Seconds this page must still stay open (its configured minimum reading time)."""
    need = state.config.min_reading_seconds.get(name)  # type: ignore[call-overload]
    if not need:
        return 0.0
    shown = (row.page_times or {}).get(f"{row.step}.shown")
    if shown is None:
        state.store.stamp_page(row.id, f"{row.step}.shown")
        return float(need)
    opened = dt.datetime.fromisoformat(shown)
    return max(0.0, float(need) - (dt.datetime.now(dt.UTC) - opened).total_seconds())


def reading_error(wait: float) -> str:
    """The line shown when a page is submitted before its minimum reading time."""
    seconds = max(1, round(wait + 0.49))
    return (
        "Please take a little more time to read this page "
        f"({seconds} more second{'s' if seconds != 1 else ''})."
    )


def check_attention(
    checks: list[AttentionCheck], form: dict[str, str], values: dict[str, str]
) -> tuple[dict[str, dict[str, object]], list[str]]:
    """The answers to attention checks ({id: {answer, passed}}) and the errors to show."""
    answers: dict[str, dict[str, object]] = {}
    errors = []
    for check in checks:
        given = form.get(f"a_{check.id}", "").strip()
        values[f"a_{check.id}"] = given
        if given not in check.choices:
            errors.append(f"Please answer: {check.label}")
            continue
        answers[check.id] = {"answer": given, "passed": given == check.answer}
    return answers, errors


def _attention(state: AppState, where: str) -> list[AttentionCheck]:
    return [a for a in state.config.attention_checks if a.page == where]


def record_attention(
    state: AppState, row: ParticipantRow, answers: dict[str, dict[str, object]]
) -> bool:
    """Store attention-check answers; whether the session goes on (False: screened out)."""
    if not answers:
        return True
    merged = {**(row.attention or {}), **answers}
    failed = any(not a["passed"] for a in answers.values())
    if failed and state.config.screen_out_on_attention_fail:
        state.store.update(row.id, attention=merged, step="screened_out")
        return False
    state.store.update(row.id, attention=merged)
    return True


@router.get("/study/withdraw", response_class=HTMLResponse)
def withdraw_page(row: Participant, state: State) -> Response:
    """What withdrawing does to the participant's data, and the button to do it."""
    if row.step in ("done", *ENDED):
        return to_study()
    return page(state, "withdraw.html", **context(state, row, progress=None))


@router.post("/study/withdraw")
def withdraw(row: Participant, form: Form, state: State) -> Response:
    """End the session and delete what the participant gave (``questions.withdraw``)."""
    expected = state.signer.csrf_token(row.id, row.session_nonce)
    if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        raise PageError("The form expired. Please go back and reload the page.", 403)
    if row.step not in ("done", *ENDED) and form.get("confirm") == "yes":
        state.store.withdraw(row.id, delete_data=True)
    return to_study()


def stance_page(
    state: AppState,
    row: ParticipantRow,
    which: str,
    errors: list[str] | None = None,
    values: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    """The 0-10 stance page before or after the conversation."""
    return page(
        state,
        "stance.html",
        status=status,
        **context(
            state,
            row,
            which=which,
            errors=errors or [],
            values=values or {},
            attention_after=_attention(state, "after"),
        ),
    )


@dataclass
class Conversation:
    """Where a participant's chat stands, read from their stored messages."""

    history: list[Any]
    pending: list[ChatMessageRow]
    failed: ChatMessageRow | None
    last_stance: int | None
    """The stance sent with the latest message (None before the first): what "same as
    before" means, with the stance-before page's answer before any message."""
    next_turn: int

    @classmethod
    def read(cls, messages: list[ChatMessageRow]) -> Conversation:
        users = [m for m in messages if m.role == "user"]
        answered = {m.turn for m in messages if m.role == "assistant"}
        failed = next((m for m in users if m.status == "failed"), None)
        pending = [m for m in users if m.status != "failed" and m.turn not in answered]
        sent = [m for m in users if m.status != "failed"]
        last = sent[-1].human_stance if sent else None
        next_turn = failed.turn if failed is not None else len(sent) + 1
        return cls(answered_history(messages), pending, failed, last, next_turn)

    @property
    def version(self) -> str:
        """What a page shows of this conversation, in one string: it changes whenever a
        message is stored, answered or fails (another tab compares it to know it is
        out of date)."""
        failed = self.failed.turn if self.failed is not None else 0
        return f"{len(self.history)}.{len(self.pending)}.{self.next_turn}.{failed}"


def conversation_page(
    state: AppState,
    row: ParticipantRow,
    error: str | None = None,
    status: int = 200,
    typed: str | None = None,
    chosen: str | None = None,
    headers: dict[str, str] | None = None,
    finish_error: str | None = None,
    finish_stance: str | None = None,
) -> Response:
    """The chat (or the static statements) with pending messages and what was typed.
    No stance is pre-selected: ``chosen`` / ``finish_stance`` only re-show what the
    participant picked in a form that came back with an error."""
    config = state.config
    if row.condition == Condition.STATIC:
        statements = config.topic(row.topic).statements
        # the error (a minimum reading time not yet over) must show on this page too: a
        # page that refuses without saying why leaves a person, or a pilot, stuck
        return page(
            state,
            "statements.html",
            status=status,
            **context(state, row, statements=statements, errors=[error] if error else []),
        )
    messages = state.store.messages(row.id)
    chat = Conversation.read(messages)
    state.store.mark_shown(row.id, [m.turn for m in messages if m.role == "assistant"])
    for pending in chat.pending:  # a reply whose job is gone (a restart): claimed and answered
        state.replies.start(row.id, pending.turn)
    if chat.failed is not None and error is None:
        error = FAILED
    if typed is None and chat.failed is not None:
        typed = chat.failed.text
    n_sent = len(chat.history) + len(chat.pending)
    response = page(
        state,
        "chat.html",
        status=status,
        **context(
            state,
            row,
            history=chat.history,
            pending=chat.pending,
            next_turn=chat.next_turn,
            version=chat.version,
            stance=chosen,
            finish_stance=finish_stance,
            finish_error=finish_error,
            error=error,
            typed=typed or "",
            can_finish=len(chat.history) >= config.turns.min and not chat.pending,
            can_send=n_sent < config.turns.max,
        ),
    )
    if headers:
        response.headers.update(headers)
    return response


@router.post("/study/consent")
def consent(guarded: Annotated[StepForm, Depends(step_form("consent"))], state: State) -> Response:
    """Record consent."""
    row, form = guarded.row, guarded.form
    if form.get("decision") == "decline":
        state.store.stamp_page(row.id, "consent.submitted")
        state.store.update(row.id, step="no_consent")
        return to_study()
    agreed = form.get("agree") == "yes"
    wait = reading_wait(state, row, "consent")
    if wait or not agreed:
        # a refusal keeps the box as the participant left it (ticked stays ticked)
        error = reading_error(wait) if wait else "Please tick the box to take part."
        return page(
            state, "consent.html", status=400, **context(state, row, error=error, agreed=agreed)
        )
    state.store.stamp_page(row.id, "consent.submitted")
    state.store.update(row.id, step="about")
    return to_study()


@router.post("/study/about")
def about(guarded: Annotated[StepForm, Depends(step_form("about"))], state: State) -> Response:
    """Record demographics and the personal background."""
    row, form = guarded.row, guarded.form
    config = state.config
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
    typed = form.get("background", "")
    background = typed.strip()
    if not background:
        errors.append("Please tell us a little about yourself.")
    elif len(background) > limit_chars:
        errors.append(f"Please keep it under {limit_chars} characters (it has {len(background)}).")
    shown = {**values, "background": typed}
    answers, attention_errors = check_attention(_attention(state, "about"), form, shown)
    errors.extend(attention_errors)
    wait = reading_wait(state, row, "about")
    if wait and not errors:
        errors.append(reading_error(wait))
    if errors:
        return page(
            state,
            "about.html",
            status=400,
            **context(
                state,
                row,
                values=shown,
                errors=errors,
                attention_about=_attention(state, "about"),
            ),
        )
    state.store.stamp_page(row.id, "about.submitted")
    state.store.update(row.id, demographics=values, background=background)
    if record_attention(state, row, answers):
        state.store.update(row.id, step="before")
    return to_study()


def stance_form(state: AppState, form: dict[str, str]) -> tuple[int | None, str, list[str]]:
    """The 0-10 answer and reason of a stance page, with the errors to show."""
    limit_chars = state.config.limits.max_message_chars
    scale = state.config.stance_item.scale()
    stance = int_field(form, "stance", scale.low, scale.high)
    reason = form.get("reason", "").strip()
    errors = []
    if stance is None:
        errors.append(f"Please choose a number from {scale.low} to {scale.high}.")
    if not reason:
        errors.append("Please give a short reason.")
    elif len(reason) > limit_chars:
        errors.append(f"Please keep it under {limit_chars} characters (it has {len(reason)}).")
    return stance, reason, errors


@dataclass
class TurnStance:
    """The per-turn stance of a message or finish form: a point, or "same as before"."""

    value: int | None
    source: str | None
    """'chosen' or 'same'; None when the form did not answer."""
    seconds: float | None
    raw: str
    """What the form sent, to show it again after an error."""


NO_TURN_STANCE = "Please say where you stand now (a number, or “Same as before”)."


def turn_stance(state: AppState, form: dict[str, str], previous: int | None) -> TurnStance:
    """Read the per-turn stance: nothing is assumed when the participant did not answer,
    and "same as before" is recorded as such (its value is the previous answer)."""
    scale = state.config.stance_item.scale()
    raw = form.get("stance", "").strip()
    ms = int_field(form, "stance_ms", 0, 86_400_000)
    seconds = ms / 1000 if ms is not None else None
    if raw == "same" and previous is not None:
        return TurnStance(previous, "same", seconds, raw)
    value = int_field(form, "stance", scale.low, scale.high)
    if value is None:
        return TurnStance(None, None, seconds, raw)
    return TurnStance(value, "chosen", seconds, raw)


def _answer_seconds(state: AppState, row: ParticipantRow) -> float | None:
    """Seconds the participant had the per-turn stance in front of them, when the
    browser did not say (no JavaScript): since the latest reply was first shown, or
    since the conversation page was (before the first reply)."""
    shown_at = [
        m.shown_at
        for m in state.store.messages(row.id)
        if m.role == "assistant" and m.shown_at is not None
    ]
    if shown_at:
        since = max(shown_at)
        since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)  # SQLite: naive UTC
    else:
        shown = (row.page_times or {}).get("conversation.shown")
        if shown is None:
            return None
        since = dt.datetime.fromisoformat(shown)
    return max(0.0, (dt.datetime.now(dt.UTC) - since).total_seconds())


@router.post("/study/before")
def before(guarded: Annotated[StepForm, Depends(step_form("before"))], state: State) -> Response:
    """Record the stance before the conversation; the chatbot's (turn 0) is measured on a
    worker thread and is stored before the first reply is generated."""
    row, form = guarded.row, guarded.form
    stance, reason, errors = stance_form(state, form)
    wait = reading_wait(state, row, "before")
    if wait and not errors:
        errors.append(reading_error(wait))
    if errors:
        return stance_page(state, row, "before", errors, form, status=400)
    state.store.stamp_page(row.id, "before.submitted")
    row = state.store.update(
        row.id, stance_before=stance, reason_before=reason, step="conversation"
    )
    if row.condition != Condition.STATIC:
        state.replies.probe_later(row.id, 0)
    return to_study()


@dataclass
class Accepted:
    """What became of a submitted message."""

    turn: int | None = None
    """The stored message's turn (None: nothing stored, show the conversation)."""
    wait_s: float = 0.0
    """Sent too soon after the previous message: nothing stored, try again after this."""
    missing_stance: bool = False
    """A new message without a per-turn stance: nothing stored, ask for it."""


def accept_message(
    state: AppState,
    row: ParticipantRow,
    text: str,
    stance: TurnStance,
    key: str | None,
    turn_hint: int | None,
) -> Accepted:
    """Store a participant's message (before the model is asked). A repeated submission
    (same key) returns the turn it stored; a message from another tab (new key) is added
    after the others; a form without a key keeps the old rule (a stale turn is a repeat)."""
    store, config = state.store, state.config
    if key:
        existing = store.message_by_key(row.id, key)
        if existing is not None:
            return Accepted(existing.turn)
    for _attempt in range(5):
        chat = Conversation.read(store.messages(row.id))
        if key is None and turn_hint != chat.next_turn:
            return Accepted()
        if chat.failed is None and chat.next_turn > config.turns.max:
            return Accepted()  # the conversation is full: only "finish" is left
        if stance.source is None:  # checked after the repeats above: they need no answer
            return Accepted(missing_stance=True)
        wait = state.messages.hit(row.id)
        if wait:
            return Accepted(wait_s=wait)
        value = stance.value
        if stance.source == "same" and chat.last_stance is not None:
            value = chat.last_stance  # "same" as the latest stored answer, whatever the tab saw
        try:
            if chat.failed is not None:
                store.resend_user_message(
                    chat.failed.id, text, value, key, stance.source, stance.seconds
                )
            else:
                store.add_user_message(
                    row.id, chat.next_turn, text, value, key, stance.source, stance.seconds
                )
        except DuplicateTurn:  # another request took this turn (or this key) meanwhile
            if key:
                existing = store.message_by_key(row.id, key)
                if existing is not None:
                    return Accepted(existing.turn)
            continue
        return Accepted(chat.next_turn)
    raise PageError("Your message could not be stored. Please send it again.", 409)


@router.post("/study/message")
async def message(
    request: Request,
    guarded: Annotated[StepForm, Depends(step_form("conversation", rate_limited=False))],
    state: State,
) -> Response:
    """Store the participant's message, then answer it. With JavaScript (header
    ``X-Study-Async: 1``) the answer is JSON naming the reply's event stream; a plain form
    waits for the reply and lands on the conversation page."""
    row, form = guarded.row, guarded.form
    config = state.config
    is_async = request.headers.get("x-study-async") == "1"
    if row.condition == Condition.STATIC:
        return to_study()
    typed = form.get("message", "")
    text = typed.replace("\r\n", "\n").strip()
    turn_hint = int_field(form, "turn", 1, 10_000)
    previous = await run_in_threadpool(_previous_stance, state, row)
    stance = turn_stance(state, form, previous)
    if stance.source is not None and stance.seconds is None:
        stance.seconds = await run_in_threadpool(_answer_seconds, state, row)
    raw_key = form.get("key", "")
    key = raw_key if _KEY.fullmatch(raw_key) else None
    limit_chars = config.limits.max_message_chars
    rate_wait = state.requests.hit(row.id)  # answered below with the page and the input
    error = None
    if not text:
        error = "Please write a message first."
    elif len(text) > limit_chars:
        error = f"Please keep messages under {limit_chars} characters (this one has {len(text)})."
    if error is not None:
        if is_async:
            return JSONResponse({"error": error}, status_code=400)
        return await run_in_threadpool(conversation_page, state, row, error, 400, typed, stance.raw)
    if rate_wait:
        accepted = Accepted(wait_s=rate_wait)
    else:
        accepted = await run_in_threadpool(accept_message, state, row, text, stance, key, turn_hint)
    if accepted.missing_stance:
        if is_async:
            return JSONResponse({"error": NO_TURN_STANCE}, status_code=400)
        return await run_in_threadpool(
            conversation_page, state, row, NO_TURN_STANCE, 400, typed, stance.raw
        )
    if accepted.wait_s:
        wait = max(1, round(accepted.wait_s + 0.49))
        error = f"Please wait {wait} second{'s' if wait != 1 else ''} and send your message again."
        if is_async:
            return JSONResponse(
                {"error": error, "retry_after": wait},
                status_code=429,
                headers={"Retry-After": str(wait)},
            )
        return await run_in_threadpool(
            conversation_page, state, row, error, 429, typed, stance.raw, {"Retry-After": str(wait)}
        )
    if accepted.turn is None:
        if is_async:
            return JSONResponse({"reload": True})
        return to_study()
    turn = accepted.turn
    state.replies.start(row.id, turn)  # a repeat joins the job; another process's claim wins
    if is_async:
        return JSONResponse({"turn": turn, "stream": f"/study/stream/{turn}"})
    failed = False
    async for progress in state.replies.watch(row.id, turn, REPLY_WAIT_S):
        failed = progress.failed  # after REPLY_WAIT_S the page shows it pending and refreshes
    if failed:  # logged by the job; the message is kept for sending again
        return await run_in_threadpool(
            conversation_page, state, row, FAILED, 503, None, stance.raw, {"Retry-After": "10"}
        )
    return to_study()


def _previous_stance(state: AppState, row: ParticipantRow) -> int | None:
    """What "same as before" stands for: the latest stance sent, else the stance before."""
    last = Conversation.read(state.store.messages(row.id)).last_stance
    return last if last is not None else row.stance_before


@router.post("/study/finish-conversation")
def finish_conversation(
    guarded: Annotated[StepForm, Depends(step_form("conversation"))], state: State
) -> Response:
    """Leave the conversation (after the minimum number of turns) or the statements; every
    chatbot stance is stored before the participant moves on."""
    row = guarded.row
    config, store = state.config, state.store
    if row.condition == Condition.STATIC:
        wait = reading_wait(state, row, "statements")
        if wait:
            return conversation_page(state, row, reading_error(wait), 400)
        for index, statement in enumerate(config.topic(row.topic).statements, start=1):
            try:
                store.add_exchange(row.id, index, statement, None, None, role="statement")
            except DuplicateTurn:
                break
    else:
        chat = Conversation.read(store.messages(row.id))
        if len(chat.history) < config.turns.min or chat.pending:
            return conversation_page(
                state,
                row,
                f"Please send at least {config.turns.min} messages before finishing."
                if not chat.pending
                else "Please wait for the chatbot's reply before finishing.",
                400,
                finish_stance=guarded.form.get("stance", "").strip(),
            )
        previous = chat.last_stance if chat.last_stance is not None else row.stance_before
        stance = turn_stance(state, guarded.form, previous)
        if stance.source is None:
            return conversation_page(
                state, row, status=400, finish_error=NO_TURN_STANCE, finish_stance=stance.raw
            )
        if stance.seconds is None:
            stance.seconds = _answer_seconds(state, row)
        state.replies.ensure_probes(row, chat.history)
        store.update(
            row.id,
            stance_last=stance.value,
            stance_last_source=stance.source,
            stance_last_seconds=stance.seconds,
        )
    store.stamp_page(row.id, "conversation.submitted")
    store.update(row.id, step="after")
    return to_study()


@router.post("/study/after")
def after(guarded: Annotated[StepForm, Depends(step_form("after"))], state: State) -> Response:
    """Record the stance after the conversation."""
    row, form = guarded.row, guarded.form
    stance, reason, errors = stance_form(state, form)
    values = dict(form)
    answers, attention_errors = check_attention(_attention(state, "after"), form, values)
    errors.extend(attention_errors)
    wait = reading_wait(state, row, "after")
    if wait and not errors:
        errors.append(reading_error(wait))
    if errors:
        return stance_page(state, row, "after", errors, values, status=400)
    state.store.stamp_page(row.id, "after.submitted")
    state.store.update(row.id, stance_after=stance, reason_after=reason)
    if not record_attention(state, row, answers):
        return to_study()
    if row.condition == Condition.STATIC:
        state.store.update(
            row.id,
            stance_after=stance,
            reason_after=reason,
            step="done",
            completed_at=dt.datetime.now(dt.UTC),
        )
    else:
        state.store.update(row.id, stance_after=stance, reason_after=reason, step="perception")
    return to_study()


@router.post("/study/perception")
def perception(
    guarded: Annotated[StepForm, Depends(step_form("perception"))], state: State
) -> Response:
    """Record where the participant thinks the chatbot stood at the start and the end."""
    row, form = guarded.row, guarded.form
    scale = state.config.stance_item.scale()
    start_value = int_field(form, "perceived_start", scale.low, scale.high)
    end_value = int_field(form, "perceived_end", scale.low, scale.high)
    wait = reading_wait(state, row, "perception")
    if start_value is None or end_value is None or wait:
        message = (
            reading_error(wait)
            if start_value is not None and end_value is not None
            else f"Please choose a number from {scale.low} to {scale.high} for both questions."
        )
        return perception_page(state, row, [message], dict(form), 400)
    state.store.stamp_page(row.id, "perception.submitted")
    state.store.update(
        row.id,
        perceived_start=start_value,
        perceived_end=end_value,
        step="done",
        completed_at=dt.datetime.now(dt.UTC),
    )
    return to_study()
