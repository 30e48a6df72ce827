"""Load: many simulated participants at once over real HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

from stancelab.engine._base import GenerationRequest
from stancelab.engine._fake import FakeChatModel
from stancelab.study._simulate import simulate, summary
from stancelab.study._store import StudyStore

from .conftest import make_config

PARTICIPANTS = 24
TURNS = 3


def test_concurrent_participants_lose_nothing(tmp_path: Path) -> None:
    counter = itertools.count(1)
    lock = threading.Lock()

    def unique_message(_request: GenerationRequest) -> str:
        with lock:
            n = next(counter)
        return f"persona-message-{n:04d} I have my reasons."

    config = make_config(
        conditions=["standard", "personalised"],
        topics=[{"name": "climate change"}, {"name": "gun violence"}],
        turns={"min": TURNS, "max": TURNS},
        limits={"min_seconds_between_messages": 0.3, "requests_per_minute": 600},
    )
    chatbot = FakeChatModel(delay_s=0.05)
    personas = FakeChatModel(reply=unique_message)
    db = tmp_path / "load.db"
    start = time.perf_counter()
    results = simulate(
        config,
        PARTICIPANTS,
        db=db,
        lm=chatbot,
        persona_lm=personas,
        concurrency=PARTICIPANTS,
        turns=TURNS,
    )
    elapsed = time.perf_counter() - start
    info = summary(results)
    print(
        f"\nload: {PARTICIPANTS} participants x {TURNS} turns in {elapsed:.1f} s, "
        f"{info['retries_429']} polite 429 retries"
    )
    assert info["failed"] == [] and info["completed"] == PARTICIPANTS
    store = StudyStore(db)
    try:
        rows = {r.pid: r for r in store.participants()}
        assert set(rows) == {r.pid for r in results}
        codes = [r.completion_code for r in results]
        assert len(set(codes)) == PARTICIPANTS and all(codes)
        all_sent: list[str] = []
        for result in results:
            row = rows[result.pid]
            assert row.step == "done" and row.completion_code == result.completion_code
            messages = store.messages(row.id)
            users = [m for m in messages if m.role == "user"]
            bots = [m for m in messages if m.role == "assistant"]
            # nothing lost or duplicated: exactly what this participant sent, in order
            assert [m.text for m in users] == result.sent
            assert [m.turn for m in users] == list(range(1, TURNS + 1))
            assert [m.turn for m in bots] == list(range(1, TURNS + 1))
            # every reply answers this participant's own message (the fake echoes it)
            for user, bot in zip(users, bots, strict=True):
                assert bot.text == f"You said: {user.text[:80]}"
            assert result.replies == [b.text for b in bots]
            assert [(s.turn, s.score) for s in store.stances(row.id)] == [
                (k, 3.0 + k) for k in range(TURNS + 1)
            ]
            all_sent.extend(result.sent)
        assert len(all_sent) == len(set(all_sent)) == PARTICIPANTS * TURNS
        assert len(store.all_messages()) == 2 * PARTICIPANTS * TURNS
        conditions = [r.condition for r in rows.values()]
        assert conditions.count("standard") == conditions.count("personalised")
    finally:
        store.close()
