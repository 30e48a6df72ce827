"""The guards of the study app as FastAPI dependencies: the participant's session, the
step a form belongs to, the CSRF token, and admin authentication.

The ones that read the database are plain ``def`` functions, so FastAPI runs them in its
threadpool and the event loop never waits on SQLAlchemy. A guard that fails raises
``PageError`` or ``Redirect`` (``pages.py``), which the app turns into the page to show.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from stancelab.study._pages import SESSION_COOKIE, PageError, Redirect, State, TooFast
from stancelab.study._security import split_session_cookie
from stancelab.study._store import ParticipantRow


def current_participant(request: Request, state: State) -> ParticipantRow | None:
    """The participant named by a validly signed session cookie, or None."""
    parsed = split_session_cookie(request.cookies.get(SESSION_COOKIE))
    if parsed is None:
        return None
    participant_id, signature = parsed
    row = state.store.participant(participant_id)
    if row is None or row.study != state.config.study:
        return None
    if not state.signer.verify(signature, "session", row.id, row.session_nonce):
        return None
    return row


MaybeParticipant = Annotated[ParticipantRow | None, Depends(current_participant)]


def signed_in(row: MaybeParticipant) -> ParticipantRow:
    """The signed-in participant; else the error page."""
    if row is None:
        raise PageError(
            "Your session was not found. Please open the study from the link you were given.",
            403,
        )
    return row


SignedIn = Annotated[ParticipantRow, Depends(signed_in)]


def participant(row: SignedIn, state: State) -> ParticipantRow:
    """The signed-in participant, within their request rate; else the error page."""
    wait = state.requests.hit(row.id)
    if wait:
        raise TooFast(wait)
    return row


async def form_fields(request: Request) -> dict[str, str]:
    """The submitted form's text fields (files ignored)."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


Participant = Annotated[ParticipantRow, Depends(participant)]
Form = Annotated[dict[str, str], Depends(form_fields)]


@dataclass(frozen=True)
class StepForm:
    """A CSRF-checked form of the participant's current step."""

    row: ParticipantRow
    form: dict[str, str]


def step_form(step: str, rate_limited: bool = True) -> Callable[..., StepForm]:
    """A dependency: the participant at ``step`` with their CSRF-checked form. A form of
    another step (a repeated or out-of-order submission) changes nothing: back to /study.
    ``rate_limited=False`` leaves the request-rate check to the handler (which can then
    answer with the page and the participant's input instead of the bare 429 page)."""

    def guard(row: SignedIn, form: Form, state: State) -> StepForm:
        if rate_limited:
            participant(row, state)
        if row.step != step:
            raise Redirect("/study")
        expected = state.signer.csrf_token(row.id, row.session_nonce)
        if not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
            raise PageError("The form expired. Please go back and reload the page.", 403)
        return StepForm(row, form)

    return guard
