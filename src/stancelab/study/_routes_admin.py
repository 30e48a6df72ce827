"""The admin pages: log in and out, progress, all sessions, one session, exports.

Plain ``def`` handlers (FastAPI's threadpool: the store is synchronous). Every way to
present the admin token (the login form, ``Authorization: Bearer``, ``X-Admin-Token``)
shares one budget of wrong guesses per client address; the client address is the TCP
peer unless the server was started with trusted proxy addresses (``serve
--forwarded-allow-ips``). A login is a random token whose sha256 the database keeps with
an expiry, so sessions end server-side, at logout or when they expire.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from stancelab.conversation._export import table_bytes
from stancelab.study._config import Condition
from stancelab.study._deps import Form
from stancelab.study._exports import WIDE_EXPORT, progress, wide_participants
from stancelab.study._pages import (
    ADMIN_COOKIE,
    LOGIN_CSRF_COOKIE,
    PageError,
    Redirect,
    State,
    TooFast,
    page,
)
from stancelab.study._security import token_digest
from stancelab.study._store import STUDY_TABLES, ParticipantRow, read_table

log = logging.getLogger("stancelab.study")

router = APIRouter(prefix="/admin")


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _check_guess(state: State, request: Request, given: str) -> bool:
    """Compare a presented admin token, within the client's budget of wrong guesses."""
    key = f"admin:{_client(request)}"
    wait = state.logins.peek(key)
    if wait:
        raise TooFast(wait)
    token = state.admin_token
    if token and hmac.compare_digest(given.encode(), token.encode()):
        return True
    state.logins.hit(key)
    log.warning("wrong admin token from %s", _client(request))
    return False


def admin_session(request: Request, state: State) -> str | None:
    """The admin's session token (None when authenticated by a header); else to login."""
    if not state.admin_token:
        raise Redirect("/admin/login")
    header = request.headers.get("authorization", "")
    given = (
        header[7:].strip()
        if header.lower().startswith("bearer ")
        else request.headers.get("x-admin-token", "")
    )
    if given:
        if _check_guess(state, request, given):
            return None
        raise Redirect("/admin/login")
    cookie = request.cookies.get(ADMIN_COOKIE, "")
    if cookie and len(cookie) <= 100 and state.store.admin_session_valid(token_digest(cookie)):
        return cookie
    raise Redirect("/admin/login")


AdminSession = Annotated[str | None, Depends(admin_session)]


def step_of(row: ParticipantRow) -> str:
    """The participant's step as an admin reads it: the static condition reads
    statements, it has no conversation."""
    if row.step == "conversation" and row.condition == Condition.STATIC:
        return "statements"
    return row.step


def shown(value: object) -> object:
    """A stored answer for an admin page: "—" where there is none (never "None")."""
    return "—" if value is None else value


ADMIN_VIEW: dict[str, Any] = {"step_of": step_of, "shown": shown}
"""What the admin templates use to show a participant's row."""


@router.get("/login", response_class=HTMLResponse)
def login_page(state: State) -> Response:
    """The admin login form (token in a POST body, never in a URL)."""
    nonce = secrets.token_hex(16)
    response = page(state, "admin_login.html", csrf=nonce, error=None)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        nonce,
        httponly=True,
        samesite="strict",
        secure=state.secure_cookies,
        path="/admin",
    )
    return response


@router.post("/login")
def login(request: Request, form: Form, state: State) -> Response:
    """Check the token; on success start a server-side session."""
    csrf = form.get("csrf", "")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not hmac.compare_digest(csrf.encode(), cookie.encode()):
        raise PageError("The form expired. Please reload the login page.", 403)
    if not _check_guess(state, request, form.get("token", "")):
        return page(state, "admin_login.html", status=403, csrf=cookie, error="Wrong token.")
    session_token = secrets.token_urlsafe(32)
    minutes = state.config.limits.admin_session_minutes
    state.store.add_admin_session(token_digest(session_token), dt.timedelta(minutes=minutes))
    response = RedirectResponse("/admin", status_code=303)
    response.set_cookie(
        ADMIN_COOKIE,
        session_token,
        httponly=True,
        samesite="strict",
        secure=state.secure_cookies,
        path="/admin",
        max_age=minutes * 60,
    )
    return response


@router.post("/logout")
def logout(request: Request, form: Form, state: State) -> Response:
    """End the admin session on the server and drop the cookie."""
    cookie = request.cookies.get(ADMIN_COOKIE, "")
    if cookie:
        expected = state.signer.admin_csrf(cookie)
        if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            raise PageError("The form expired. Please reload the page.", 403)
        state.store.end_admin_session(token_digest(cookie))
    response = RedirectResponse("/admin/login", status_code=303)
    response.delete_cookie(ADMIN_COOKIE, path="/admin")
    return response


@router.post("/closed")
def set_closed(session: AdminSession, form: Form, state: State) -> Response:
    """Close the study to new participants (``closed=1``) or reopen it (``closed=0``);
    those who started may finish."""
    if session is not None:  # a browser session: the form must carry its token
        expected = state.signer.admin_csrf(session)
        if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            raise PageError("The form expired. Please reload the page.", 403)
    state.store.set_closed(state.config.study, form.get("closed") == "1")
    return RedirectResponse("/admin", status_code=303)


@router.get("", response_class=HTMLResponse)
def sessions(session: AdminSession, state: State) -> Response:
    """Progress and all sessions of this study."""
    store = state.store
    rows = store.participants(state.config.study)
    counts: dict[str, int] = {}
    for message_row in store.all_messages():
        if message_row.role == "user" and message_row.status != "failed":
            counts[message_row.participant_id] = counts.get(message_row.participant_id, 0) + 1
    return page(
        state,
        "admin_sessions.html",
        rows=rows,
        counts=counts,
        tables=(*STUDY_TABLES, WIDE_EXPORT),
        study=state.config.study,
        progress=None,
        summary=progress(state.config, rows),
        closed=state.config.recruitment.closed or state.store.is_closed(state.config.study),
        logout_csrf=state.signer.admin_csrf(session) if session else None,
        **ADMIN_VIEW,
    )


@router.get("/progress.json")
def progress_json(_session: AdminSession, state: State) -> JSONResponse:
    """Started, completed and in progress, overall and per condition (for monitoring)."""
    summary = progress(state.config, state.store.participants(state.config.study))
    summary["closed"] = state.config.recruitment.closed or state.store.is_closed(state.config.study)
    return JSONResponse(summary)


@router.get("/session/{participant_id}", response_class=HTMLResponse)
def session(participant_id: str, _session: AdminSession, state: State) -> Response:
    """One session's answers, transcript and the chatbot's stance per turn."""
    store = state.store
    row = store.participant(participant_id)
    if row is None or row.study != state.config.study:
        raise PageError("No such session.", 404)
    stances = {s.turn: s for s in store.stances(row.id) if s.mode == "distribution"}
    if not stances:
        stances = {s.turn: s for s in store.stances(row.id)}
    return page(
        state,
        "admin_session.html",
        p=row,
        messages=store.messages(row.id),
        stances=stances,
        **ADMIN_VIEW,
    )


@router.get("/export/{name}")
def export(name: str, _session: AdminSession, state: State) -> Response:
    """One table as CSV or Parquet (e.g. /admin/export/study_messages.csv), or the wide
    one-row-per-participant table (participants_wide.csv). CSV cells that a spreadsheet
    would run as a formula are neutralised."""
    table, _, fmt = name.rpartition(".")
    if table not in (*STUDY_TABLES, WIDE_EXPORT) or fmt not in ("csv", "parquet"):
        raise PageError("No such export.", 404)
    if table == WIDE_EXPORT:
        frame = wide_participants(state.store, state.config.study)
    else:
        frame = read_table(state.store, table)
    body = table_bytes(frame, fmt)
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/vnd.apache.parquet"
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{table}.{fmt}"'},
    )
