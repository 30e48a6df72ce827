"""What every router of the study app shares: its state, page rendering, and the
exceptions a guard raises to end a request early (turned into pages by ``app.py``)."""

from __future__ import annotations

import random
import re
import secrets
import threading
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment
from markdown_it import MarkdownIt
from markupsafe import Markup

from stancelab.engine._base import LanguageModel
from stancelab.study._config import Condition, StudyConfig
from stancelab.study._replies import Replies
from stancelab.study._security import RateLimiter, Signer
from stancelab.study._store import ParticipantRow, StudyStore

SESSION_COOKIE = "sl_session"
ADMIN_COOKIE = "sl_admin"
LOGIN_CSRF_COOKIE = "sl_login_csrf"


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
    messages: RateLimiter
    logins: RateLimiter
    new_sessions: RateLimiter
    env: Environment
    rng_lock: threading.Lock
    replies: Replies
    templates_hash: str


class TooFast(Exception):
    """A participant is sending faster than the limits allow."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"retry after {wait_s:.1f} s")
        self.wait_s = wait_s


class PageError(Exception):
    """End the request with the error page: one sentence for the participant."""

    def __init__(self, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = headers or {}


class Redirect(Exception):
    """End the request with a 303 to another page (a repeated or out-of-order form)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def get_state(request: Request) -> AppState:
    """The app's shared state (a dependency)."""
    state: AppState = request.app.state.study
    return state


State = Annotated[AppState, Depends(get_state)]
"""The app state as a dependency-injected parameter."""


def page(state: AppState, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a template into a response."""
    html = state.env.get_template(template).render(title=state.config.questions.title, **context)
    return HTMLResponse(html, status_code=status)


def error_page(
    state: AppState, message: str, status: int, headers: dict[str, str] | None = None
) -> HTMLResponse:
    """The error page with one sentence."""
    response = page(state, "error.html", status=status, message=message, q=state.config.questions)
    if headers:
        response.headers.update(headers)
    return response


def too_fast_page(state: AppState, wait_s: float) -> HTMLResponse:
    """The 429 page with a Retry-After header."""
    wait = max(1, round(wait_s + 0.49))
    return error_page(
        state,
        f"You are going a little fast. Please wait {wait} second"
        f"{'s' if wait != 1 else ''} and try again.",
        429,
        headers={"Retry-After": str(wait)},
    )


_MARKDOWN = MarkdownIt("commonmark", {"html": False})  # raw HTML in a config is shown as text


def markdown(text: str) -> Markup:
    """Markdown from the study config as HTML (raw HTML escaped, so no script gets in)."""
    return Markup(_MARKDOWN.render(text))


def progress_of(state: AppState, row: ParticipantRow) -> tuple[int, int] | None:
    """(this page's number, pages in all) for the participant's flow; None at the end."""
    steps = ["consent", "about", "before", "conversation", "after"]
    if row.condition != Condition.STATIC:
        steps.append("perception")
    if row.step not in steps:
        return None
    return steps.index(row.step) + 1, len(steps)


def int_field(form: dict[str, str], name: str, low: int = 0, high: int = 10) -> int | None:
    """A whole number from a form field within [low, high], or None."""
    value = form.get(name, "").strip()
    if not re.fullmatch(r"-?\d{1,4}", value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def context(state: AppState, row: ParticipantRow, **extra: Any) -> dict[str, Any]:
    """What every participant page template sees."""
    config = state.config
    return {
        "p": row,
        "q": config.questions,
        "csrf": state.signer.csrf_token(row.id, row.session_nonce),
        "fill": lambda text: config.fill(text, row.topic),
        "scale": config.stance_item.scale(),
        "stance_question": config.stance_question(row.topic),
        "config": config,
        "max_chars": config.limits.max_message_chars,
        "form_key": secrets.token_urlsafe(16),
        "progress": progress_of(state, row),
        "md": markdown,
        **extra,
    }
