"""Server-sent events: the chatbot's reply to one turn, for the page's JavaScript.

The stream says ``pending`` at once (the page shows a typing indicator), then ``partial``
with the whole reply text so far whenever it has grown (zero or more times), then
``reply`` with the stored text (exactly once), or ``failed``, or ``timeout`` after
``STREAM_LIMIT_S``. It reads the reply's progress from the database (``Replies.watch``),
so it finds the reply whichever server process generates it, and a reconnect (a reload,
a second tab, another process behind the load balancer) simply continues; a pending
message nobody answers any more (its process died) is taken over. It never holds a
thread while waiting; its database reads go through the threadpool.
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
        last_sent = loop.time()
        shown = ""
        async for progress in state.replies.watch(row.id, turn, STREAM_LIMIT_S):
            if progress.reply is not None:
                await run_in_threadpool(state.store.mark_shown, row.id, [turn])
                yield _event("reply", {"turn": turn, "text": progress.reply})
                return
            if progress.failed:
                yield _event("failed", {"turn": turn})
                return
            if progress.partial and progress.partial != shown:
                shown = progress.partial
                yield _event("partial", {"turn": turn, "text": shown})
                last_sent = loop.time()
            elif loop.time() - last_sent > KEEPALIVE_S:
                yield ": keep-alive\n\n"
                last_sent = loop.time()
        yield _event("timeout", {"turn": turn})

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
