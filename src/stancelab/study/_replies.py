"""The chatbot's replies and hidden stance probes, run on worker threads off the event loop.

A participant's message is stored (status 'pending') before anything here runs. A reply
job reads the conversation from the database, makes sure every earlier turn's stance
probe is stored (so no turn is accepted before the previous probe is in), asks the model,
and stores the reply; the probe of the new turn then runs after the reply is stored, off
the participant's critical path. Jobs are futures keyed by (participant, turn): a repeated
submission, a second tab or a reload waits on the same job instead of starting another.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from stancelab.engine import ConfigError, LanguageModel, StancelabError
from stancelab.study._chat import Chatbot, ChatTurn, format_profile
from stancelab.study._config import Condition, StudyConfig
from stancelab.study._store import ChatMessageRow, DuplicateTurn, ParticipantRow, StudyStore

log = logging.getLogger("stancelab.study")

JobKey = tuple[str, int]


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


class Replies:
    """Reply and probe jobs of one app, on a bounded pool of worker threads."""

    def __init__(
        self, config: StudyConfig, store: StudyStore, lm: LanguageModel | None, workers: int = 16
    ) -> None:
        self.config = config
        self.store = store
        self.lm = lm
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="study-reply")
        self._jobs: dict[JobKey, Future[str]] = {}
        self._probe_locks: dict[JobKey, threading.Lock] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop taking jobs; running ones finish."""
        self._pool.shutdown(wait=False, cancel_futures=False)

    # --- replies ------------------------------------------------------------------------
    def job(self, participant_id: str, turn: int) -> Future[str] | None:
        """The running reply job of this turn in this process, if any."""
        with self._lock:
            return self._jobs.get((participant_id, turn))

    def start(self, participant_id: str, turn: int) -> Future[str]:
        """Start (or join) the job that answers this turn's stored message. A turn whose
        previous turn is still being answered starts once that one is done."""
        key = (participant_id, turn)
        with self._lock:
            running = self._jobs.get(key)
            if running is not None:
                return running
            future: Future[str] = Future()
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

    def _answer(self, participant_id: str, turn: int, future: Future[str]) -> None:
        try:
            future.set_result(self._reply(participant_id, turn))
        except BaseException as exc:  # the waiting request shows it; the message is kept
            if isinstance(exc, StancelabError):
                log.error("chatbot reply failed for participant %s: %s", participant_id, exc)
            else:
                log.exception("chatbot reply crashed for participant %s", participant_id)
            try:
                self.store.set_status(participant_id, turn, "failed")
            except StancelabError:
                log.exception("cannot mark turn %d of %s failed", turn, participant_id)
            future.set_exception(exc)
        finally:
            with self._lock:
                self._jobs.pop((participant_id, turn), None)
        if future.exception() is None:
            self._pool.submit(self._probe_after, participant_id, turn)

    def _reply(self, participant_id: str, turn: int) -> str:
        assert self.lm is not None
        row = self.store.participant(participant_id)
        if row is None:
            raise StancelabError(f"no participant {participant_id!r}")
        messages = self.store.messages(participant_id)
        done = [m for m in messages if m.role == "assistant" and m.turn == turn]
        if done:  # answered already (another process, or a restarted job)
            return done[0].text
        user = next((m for m in messages if m.role == "user" and m.turn == turn), None)
        if user is None:
            raise StancelabError(f"turn {turn} of {participant_id} has no message")
        history = answered_history(messages, before_turn=turn)
        bot = build_chatbot(self.config, row)
        self.ensure_probes(row, history, bot)
        start = time.perf_counter()
        text, cut = bot.reply_checked(self.lm, history, user.text)
        try:
            self.store.add_reply(participant_id, turn, text, time.perf_counter() - start, cut)
        except DuplicateTurn:
            stored = [
                m
                for m in self.store.messages(participant_id)
                if m.role == "assistant" and m.turn == turn
            ]
            return stored[0].text if stored else text
        return text

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
        one probe per turn at a time (a second caller waits for the first)."""
        assert self.lm is not None
        key = (row.id, turn)
        with self._lock:
            lock = self._probe_locks.setdefault(key, threading.Lock())
        with lock:
            if turn in self.store.stance_turns(row.id):
                return
            bot = bot or build_chatbot(self.config, row)
            try:
                self.store.add_stances(row.id, bot.stances(self.lm, [history], [turn]))
            except StancelabError as exc:  # the exchange is kept; this turn's stance is missing
                log.error(
                    "chatbot stance probe failed for participant %s turn %d: %s", row.id, turn, exc
                )
                return
        with self._lock:
            self._probe_locks.pop(key, None)

    def ensure_probes(
        self, row: ParticipantRow, history: list[ChatTurn], bot: Chatbot | None = None
    ) -> None:
        """Every stance from turn 0 to len(history) stored (measured now where missing)."""
        have = self.store.stance_turns(row.id)
        for turn in range(len(history) + 1):
            if turn not in have:
                self.probe(row, turn, history[:turn], bot)
