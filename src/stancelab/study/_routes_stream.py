"""Server-sent events: the chatbot's reply to one turn, for the page's JavaScript.

The stream says ``pending`` at once (the page shows a typing indicator), then ``reply``
with the text when it is stored, or ``failed``. It waits on the reply job's future when
this process runs the job and polls the database otherwise (another process, or a
restart), so a reload or a second tab gets the reply too. It never holds a thread while
waiting; its database reads go through the threadpool.

The model interface (``LanguageModel.generate``) returns whole replies, so the reply
arrives as one event, not token by token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from stancelab.study._deps import Participant
from stancelab.study._pages import State

router = APIRouter()

POLL_S = 0.5
KEEPALIVE_S = 15.0
STREAM_LIMIT_S = 600.0


def _event(name: str, data: dict[str, object]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.get("/study/stream/{turn}")
async def stream(
    turn: int,
    row: Participant,
    state: State,
) -> StreamingResponse:
    """The reply to ``turn`` as server-sent events."""

    async def events() -> AsyncIterator[str]:
        yield _event("pending", {"turn": turn})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_LIMIT_S
        last_sent = loop.time()
        while loop.time() < deadline:
            job = state.replies.job(row.id, turn)
            if job is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    last_sent = loop.time()
                    continue
                except Exception:  # the job logged it; the page offers to send again
                    yield _event("failed", {"turn": turn})
                    return
            messages = await run_in_threadpool(state.store.messages, row.id)
            reply = next((m for m in messages if m.role == "assistant" and m.turn == turn), None)
            if reply is not None:
                await run_in_threadpool(state.store.mark_shown, row.id, [turn])
                yield _event("reply", {"turn": turn, "text": reply.text})
                return
            user = next((m for m in messages if m.role == "user" and m.turn == turn), None)
            if user is None or user.status == "failed":
                yield _event("failed", {"turn": turn})
                return
            if job is None and state.replies.job(row.id, turn) is None:
                state.replies.start(row.id, turn)  # its job is gone (restart): answer it now
            await asyncio.sleep(POLL_S)
            if loop.time() - last_sent > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = loop.time()
        yield _event("timeout", {"turn": turn})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
