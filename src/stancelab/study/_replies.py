"""The chatbot's replies and hidden stance probes, run on worker threads off the event loop,
by exactly one of the server processes that share the database.

A participant's message is stored (status 'pending') before anything here runs. A reply
job first claims the turn in the database (``StudyStore.claim``): one process wins, the
others leave it. The winner reads the conversation, makes sure every earlier turn's
stance probe is stored (so no turn is accepted before the previous probe is in), asks the
model, publishes the text as it grows (``partial_text``) and stores the reply; the probe
of the new turn then runs after the reply is stored, off the participant's critical path,
under a claim of its own. A claim is renewed while its process lives; one whose process
died expires after ``chatbot.claim_seconds`` and the next process that looks (an event
stream, a page) takes the turn over. Within a process, jobs are futures keyed by
(participant, turn), so a repeated submission, a second tab or a reload joins the same job.
Whoever waits for a reply watches the database (``Replies.watch``), which finds it
whichever process generates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor

from starlette.concurrency import run_in_threadpool

from stancelab.engine._base import LanguageModel
from stancelab.engine._errors import ConfigError, StancelabError
from stancelab.study._chat import Chatbot, ChatTurn, format_profile
from stancelab.study._config import Condition, StudyConfig
from stancelab.study._store import (
    ChatMessageRow,
    DuplicateTurn,
    ParticipantRow,
    ReplyProgress,
    StudyStore,
)

log = logging.getLogger("stancelab.study")

POLL_S = 0.2
"""How often a waiting request reads the reply's progress from the database."""
PARTIAL_EVERY_S = 0.2
"""The generating process publishes the growing text at most this often."""
PROBE_WAIT_S = 600.0
"""Longest a job waits for a probe (or an earlier turn) another process works on."""

JobKey = tuple[str, int]
ClaimKey = tuple[str, int, str]


def build_chatbot(config: StudyConfig, row: ParticipantRow) -> Chatbot:
    """The chatbot of one participant's condition and topic."""
    # v1's probe template carries its own "Answer with a single number from 0 to 10.": it
    # gets the bare question, so a 0.3 study asks exactly what it asked before
    question = (
        config.stance_question(row.topic)
        if config.chatbot.prompt_version == "v1"
        else config.probe_question(row.topic)
    )
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
        scale=config.stance_item.scale(),
    )


def answered_history(
    messages: list[ChatMessageRow], before_turn: int | None = None
) -> list[ChatTurn]:
    """The finished exchanges (a message with its reply), optionally only those before a turn."""
    users = {m.turn: m for m in messages if m.role == "user" and m.status != "failed"}
    bots = {m.turn: m for m in messages if m.role == "assistant"}
    return [
        ChatTurn(users[t].text, bots[t].text)
        for t in sorted(users)
        if t in bots and (before_turn is None or t < before_turn)
    ]


def probe_coverage(config: StudyConfig, lm: LanguageModel) -> dict[str, float]:
    """The probability mass the chatbot's probe puts on the item's points before any
    reply, per topic and condition's prompt (distribution mode; 1.0 in generate mode)."""
    if "distribution" not in config.chatbot.stance_modes:
        return {}
    coverage: dict[str, float] = {}
    for topic in config.topics:
        row = ParticipantRow(topic=topic.name, condition=Condition.STANDARD, demographics={})
        bot = build_chatbot(config, row)
        answers = bot.stances(lm, [[]], [0])
        found = [a.coverage for a in answers if a.coverage is not None]
        coverage[topic.name] = min(found) if found else 0.0
    return coverage


def check_probe_coverage(config: StudyConfig, lm: LanguageModel) -> dict[str, float]:
    """Refuse a chatbot whose probe puts too little probability on the scale: its stance
    scores would be noise (``chatbot.min_probe_coverage``). Returns the coverage per topic."""
    coverage = probe_coverage(config, lm)
    low = {t: c for t, c in coverage.items() if c < config.chatbot.min_probe_coverage}
    if low:
        topic, worst = min(low.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"chatbot.min_probe_coverage: {lm.name} puts {worst:.1%} of its probability on "
            f"the stance item's points for topic {topic!r} (minimum "
            f"{config.chatbot.min_probe_coverage:.0%}); its stance scores would be noise: use "
            "a larger model, stance_modes [generate], or lower the minimum and let the report "
            "flag every affected number"
        )
    return coverage


def generate_reply(
    bot: Chatbot,
    lm: LanguageModel,
    history: list[ChatTurn],
    user: str,
    on_text: Callable[[str], None],
) -> tuple[str, bool]:
    """The chatbot's next reply and whether it was cut at max_tokens, its text so far
    handed to ``on_text`` as it grows. Every reply of the study goes through here: an
    engine that streams (``lm.supports_streaming()``) hands over the text per piece;
    the last call is the reply as stored (cut back to its last full sentence if it hit
    max_tokens)."""
    text, cut = bot.reply_checked(lm, history, user, on_text=on_text)
    on_text(text)
    return text, cut


def worker_name() -> str:
    """A name for this server process in claims: host, process id, random tag."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(3)}"


class Replies:
    """Reply and probe jobs of one server process, on a bounded pool of worker threads,
    claimed in the database against every other process."""

    def __init__(
        self, config: StudyConfig, store: StudyStore, lm: LanguageModel | None, workers: int = 16
    ) -> None:
        self.config = config
        self.store = store
        self.lm = lm
        self.worker_id = worker_name()
        self.claim_s = config.chatbot.claim_seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="study-reply")
        self._jobs: dict[JobKey, Future[None]] = {}
        self._held: set[ClaimKey] = set()  # the claims this process works on (renewed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def close(self) -> None:
        """Stop taking jobs; running ones finish."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=False)

    # --- claims ---------------------------------------------------------------------
    def _claim(self, participant_id: str, turn: int, kind: str) -> bool:
        """Claim a turn's reply or probe for this process (renewed until released)."""
        if not self.store.claim(participant_id, turn, kind, self.worker_id, self.claim_s):
            return False
        with self._lock:
            self._held.add((participant_id, turn, kind))
            if self._renewer is None:
                self._renewer = threading.Thread(
                    target=self._renew, name="study-claims", daemon=True
                )
                self._renewer.start()
        return True

    def _unhold(self, participant_id: str, turn: int, kind: str) -> None:
        with self._lock:
            self._held.discard((participant_id, turn, kind))

    def _renew(self) -> None:
        """Keep this process's claims alive while it works on them (a process that dies
        stops renewing, and its claims expire)."""
        while not self._stop.wait(self.claim_s / 3):
            with self._lock:
                held = sorted(self._held)
            if held:
                try:
                    self.store.renew_claims(self.worker_id, held, self.claim_s)
                except StancelabError:
                    log.exception("cannot renew the claims of %s", self.worker_id)

    # --- replies ------------------------------------------------------------------------
    def job(self, participant_id: str, turn: int) -> Future[None] | None:
        """The running reply job of this turn in this process, if any (done, never failed,
        when the turn is answered, failed, or found claimed by another process)."""
        with self._lock:
            return self._jobs.get((participant_id, turn))

    def start(self, participant_id: str, turn: int) -> Future[None]:
        """Start (or join) the job that answers this turn's stored message, unless another
        process has claimed it. A turn whose previous turn is still being answered here
        starts once that one is done. Touches no database on the calling thread."""
        key = (participant_id, turn)
        with self._lock:
            running = self._jobs.get(key)
            if running is not None:
                return running
            future: Future[None] = Future()
            future.set_running_or_notify_cancel()  # nobody may cancel it from outside
            self._jobs[key] = future
            previous = self._jobs.get((participant_id, turn - 1))

        def submit(_done: object = None) -> None:
            self._pool.submit(self._answer, participant_id, turn, future)

        if previous is not None and not previous.done():
            previous.add_done_callback(submit)
        else:
            submit()
        return future

    def _answer(self, participant_id: str, turn: int, future: Future[None]) -> None:
        answered = False
        try:
            if self._claim(participant_id, turn, "reply"):
                try:
                    self._reply(participant_id, turn)
                    answered = True
                except BaseException as exc:  # the waiting page shows it; the message is kept
                    if isinstance(exc, StancelabError):
                        log.error("chatbot reply failed for %s: %s", participant_id, exc)
                    else:
                        log.exception("chatbot reply crashed for participant %s", participant_id)
                    try:
                        self.store.fail_reply(participant_id, turn, self.worker_id)
                    except StancelabError:
                        log.exception("cannot mark turn %d of %s failed", turn, participant_id)
                finally:
                    self._unhold(participant_id, turn, "reply")
        except StancelabError:  # the claim itself failed (the database): the stream retries
            log.exception("cannot claim turn %d of %s", turn, participant_id)
        finally:
            with self._lock:
                self._jobs.pop((participant_id, turn), None)
            future.set_result(None)
        if answered:
            self._pool.submit(self._probe_after, participant_id, turn)

    def _reply(self, participant_id: str, turn: int) -> None:
        assert self.lm is not None
        row = self.store.participant(participant_id)
        if row is None:
            raise StancelabError(f"no participant {participant_id!r}")
        messages = self._after_earlier_turns(participant_id, turn)
        if any(m.role == "assistant" and m.turn == turn for m in messages):
            self.store.finish_claim(participant_id, turn, "reply")  # answered already
            return
        user = next((m for m in messages if m.role == "user" and m.turn == turn), None)
        if user is None:
            raise StancelabError(f"turn {turn} of {participant_id} has no message")
        history = answered_history(messages, before_turn=turn)
        bot = build_chatbot(self.config, row)
        self.ensure_probes(row, history, bot)
        start = time.perf_counter()
        published = start

        def on_text(text: str) -> None:
            nonlocal published
            if time.perf_counter() - published >= PARTIAL_EVERY_S:
                self.store.set_partial(participant_id, turn, self.worker_id, text)
                published = time.perf_counter()

        log.info("generating the reply to turn %d of %s (%s)", turn, participant_id, self.worker_id)
        text, cut = generate_reply(bot, self.lm, history, user.text, on_text)
        try:
            self.store.add_reply(participant_id, turn, text, time.perf_counter() - start, cut)
        except DuplicateTurn:  # stored meanwhile by a process that took the turn over
            self.store.finish_claim(participant_id, turn, "reply")

    def _after_earlier_turns(self, participant_id: str, turn: int) -> list[ChatMessageRow]:
        """The conversation once every earlier message is answered or failed. A second
        tab can store turn k while turn k-1 is pending in another process: the reply to k
        must see k-1's reply, so this waits (and answers k-1 here if nobody does)."""
        deadline = time.monotonic() + PROBE_WAIT_S
        while True:
            messages = self.store.messages(participant_id)
            waiting = [
                m.turn
                for m in messages
                if m.role == "user" and m.turn < turn and m.status == "pending"
            ]
            if not waiting or time.monotonic() > deadline:
                return messages
            for earlier in waiting:
                if self.store.reply_progress(participant_id, earlier).orphaned:
                    self.start(participant_id, earlier)
            time.sleep(POLL_S)

    async def watch(
        self, participant_id: str, turn: int, limit_s: float
    ) -> AsyncIterator[ReplyProgress]:
        """The reply's progress, read from the database every ``POLL_S`` (sooner when this
        process's job ends) until it is stored or failed or ``limit_s`` passes. A pending
        message nobody answers (its process died, or the server restarted) is taken over
        here. Never holds a thread while waiting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while True:
            progress = await run_in_threadpool(self.store.reply_progress, participant_id, turn)
            if progress.orphaned:
                self.start(participant_id, turn)
            yield progress
            if progress.done or loop.time() >= deadline:
                return
            job = self.job(participant_id, turn)
            if job is not None:
                await asyncio.wait({asyncio.wrap_future(job)}, timeout=POLL_S)
            else:
                await asyncio.sleep(POLL_S)

    # --- probes -------------------------------------------------------------------------
    def probe_later(self, participant_id: str, turn: int) -> None:
        """Measure the chatbot's stance after ``turn`` exchanges on a worker thread."""
        self._pool.submit(self._probe_after, participant_id, turn)

    def _probe_after(self, participant_id: str, turn: int) -> None:
        try:
            row = self.store.participant(participant_id)
            if row is None:
                return
            history = answered_history(self.store.messages(participant_id), before_turn=turn + 1)
            self.probe(row, turn, history[:turn])
        except Exception:  # a worker thread: log, the next ensure_probes retries
            log.exception("stance probe of turn %d for %s crashed", turn, participant_id)

    def probe(
        self,
        row: ParticipantRow,
        turn: int,
        history: list[ChatTurn],
        bot: Chatbot | None = None,
    ) -> None:
        """Store the chatbot's stance after ``turn`` exchanges unless it is stored already;
        one probe per turn across every process (the others wait for the claimant's, and
        take over when its claim expires)."""
        assert self.lm is not None
        deadline = time.monotonic() + PROBE_WAIT_S
        while turn not in self.store.stance_turns(row.id):
            if time.monotonic() > deadline:
                log.error("gave up waiting for the probe of turn %d of %s", turn, row.id)
                return
            if not self._claim(row.id, turn, "probe"):
                time.sleep(POLL_S)  # another process measures it
                continue
            try:
                bot = bot or build_chatbot(self.config, row)
                self.store.add_stances(row.id, bot.stances(self.lm, [history], [turn]))
                self.store.finish_claim(row.id, turn, "probe")
            except BaseException as exc:  # the exchange is kept; this turn's stance is missing
                self.store.release_claim(row.id, turn, "probe", self.worker_id)  # retry later
                if not isinstance(exc, StancelabError):
                    raise
                log.error(
                    "chatbot stance probe failed for participant %s turn %d: %s", row.id, turn, exc
                )
            finally:
                self._unhold(row.id, turn, "probe")
            return

    def ensure_probes(
        self, row: ParticipantRow, history: list[ChatTurn], bot: Chatbot | None = None
    ) -> None:
        """Every stance from turn 0 to len(history) stored (measured now where missing)."""
        have = self.store.stance_turns(row.id)
        for turn in range(len(history) + 1):
            if turn not in have:
                self.probe(row, turn, history[:turn], bot)
