"""The admin pages: log in, all sessions, one session, exports. Plain ``def`` handlers
(FastAPI's threadpool: the store is synchronous)."""

from __future__ import annotations

import hmac
import io
import logging
import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from stancelab.study.deps import Form
from stancelab.study.pages import (
    ADMIN_COOKIE,
    LOGIN_CSRF_COOKIE,
    PageError,
    Redirect,
    State,
    TooFast,
    page,
)
from stancelab.study.store import STUDY_TABLES, read_table

log = logging.getLogger("stancelab.study")

router = APIRouter(prefix="/admin")


def admin(request: Request, state: State) -> None:
    """Admin authentication (token header or login cookie); else to the login page."""
    token = state.admin_token
    if not token:
        raise Redirect("/admin/login")
    header = request.headers.get("authorization", "")
    given = (
        header[7:]
        if header.lower().startswith("bearer ")
        else request.headers.get("x-admin-token", "")
    )
    if given and hmac.compare_digest(given.encode(), token.encode()):
        return
    cookie = request.cookies.get(ADMIN_COOKIE, "")
    if cookie and hmac.compare_digest(cookie.encode(), state.signer.admin_cookie(token).encode()):
        return
    raise Redirect("/admin/login")


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
def login(
    request: Request,
    form: Form,
    state: State,
) -> Response:
    """Check the token; on success set a derived admin cookie."""
    client = request.client.host if request.client else "?"
    wait = state.logins.hit(f"login:{client}")
    if wait:
        raise TooFast(wait)
    csrf = form.get("csrf", "")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not csrf or not hmac.compare_digest(csrf.encode(), cookie.encode()):
        raise PageError("The form expired. Please reload the login page.", 403)
    token = form.get("token", "")
    if not state.admin_token or not hmac.compare_digest(token.encode(), state.admin_token.encode()):
        log.warning("admin login failed from %s", client)
        return page(state, "admin_login.html", status=403, csrf=cookie, error="Wrong token.")
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


@router.get("", response_class=HTMLResponse, dependencies=[Depends(admin)])
def sessions(state: State) -> Response:
    """All sessions of this study."""
    store = state.store
    rows = store.participants(state.config.study)
    counts: dict[str, int] = {}
    for message_row in store.all_messages():
        if message_row.role == "user":
            counts[message_row.participant_id] = counts.get(message_row.participant_id, 0) + 1
    return page(
        state,
        "admin_sessions.html",
        rows=rows,
        counts=counts,
        tables=STUDY_TABLES,
        study=state.config.study,
    )


@router.get("/session/{participant_id}", response_class=HTMLResponse, dependencies=[Depends(admin)])
def session(participant_id: str, state: State) -> Response:
    """One session's answers, transcript and the chatbot's stance per turn."""
    store = state.store
    row = store.participant(participant_id)
    if row is None or row.study != state.config.study:
        raise PageError("No such session.", 404)
    stances = {s.turn: s for s in store.stances(row.id) if s.mode == "distribution"}
    if not stances:
        stances = {s.turn: s for s in store.stances(row.id)}
    return page(
        state, "admin_session.html", p=row, messages=store.messages(row.id), stances=stances
    )


@router.get("/export/{name}", dependencies=[Depends(admin)])
def export(name: str, state: State) -> Response:
    """One table as CSV or Parquet (e.g. /admin/export/study_messages.csv)."""
    table, _, fmt = name.rpartition(".")
    if table not in STUDY_TABLES or fmt not in ("csv", "parquet"):
        raise PageError("No such export.", 404)
    frame = read_table(state.store, table)
    if fmt == "csv":
        body = frame.to_csv(index=False).encode()
        media = "text/csv; charset=utf-8"
    else:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        body = buffer.getvalue()
        media = "application/vnd.apache.parquet"
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{table}.{fmt}"'},
    )
