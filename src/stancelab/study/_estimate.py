"""What a pilot with simulated participants will take, counted before it starts.

``estimate_pilot`` counts, from a ``StudyConfig``, every request the participants still
to run will send: on the chatbot's side the probe check, each reply and each hidden
stance probe (turn 0 and after every reply); on the persona's side each message it
writes and each stance it rates (every conversation page, after the chat, and the two
perception questions). The prompts are the real ones, built from the study's templates
with stand-in replies and messages, so they grow with the conversation as they will.
Conditions are filled as the app assigns them (the least-filled first, from the
participants already done in the database); turns are drawn uniformly between
``turns.min`` and ``turns.max``, so the expected counts average over every number of
turns and the bound takes ``turns.max`` with every reply at ``max_tokens``.

Tokens per character come from the opened model (``measure_pilot``: a few seconds on the
study's own probe and first reply), else characters / 4; time from the measured speeds;
cost from the model entry's ``price_per_million``.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stancelab.conversation import SurveyItem, SurveyMode, survey_modes_for
from stancelab.conversation._tally import (
    CHARS_PER_TOKEN,
    MEASURED_REPLIES,
    Measurement,
    PeriodicLines,
    RequestCounter,
    Tally,
    Usage,
    duration,
    eta,
    filler,
    measure_engine,
    priced,
    seconds_for,
)
from stancelab.engine._base import ChoiceRequest, LanguageModel
from stancelab.engine._factory import Price
from stancelab.study._chat import Chatbot, ChatTurn, clean_reply
from stancelab.study._config import Condition, StudyConfig
from stancelab.study._replies import build_chatbot
from stancelab.study._simulate import (
    MESSAGE_MAX_TOKENS,
    Persona,
    make_persona,
    perception_question,
    persona_messages,
    rating_item,
)
from stancelab.study._store import ParticipantRow, StudyStore

FIRST_MESSAGE_WORDS = 40
"""Length of the stand-in first message the measurement's replies answer."""


@dataclass
class PilotEstimate(Usage):
    """What a pilot still needs: counts per stage and per model, time and cost.

    Attributes:
        name: what the first line calls it.
        participants_total: participants the pilot is to have.
        participants_left: those still to run (finished ones are not run again).
        per_condition: expected participants still to run per condition.
        turns: (expected, most) messages a chatting participant sends.
        stages: requests and tokens per stage (``checks``, ``replies``, ``probes``,
            ``messages``, ``ratings``), expected values.
        models: the same per model, for time and cost.
        bound: every chat at ``turns.max`` and every reply at ``max_tokens``.
        token_method: how tokens were counted.
        seconds: the time at the measured speeds (None: not measured).
        time_basis: what the time rests on.
        cost: USD, expected (None: the model entry has no price).
        cost_bound: USD with the bound's requests (what ``--max-cost`` compares).
        notes: what the counts leave out or assume.
    """

    name: str
    participants_total: int
    participants_left: int
    per_condition: dict[str, float]
    turns: tuple[float, int]
    stages: dict[str, Tally]
    models: dict[str, Tally]
    bound: Tally
    token_method: str
    seconds: float | None
    time_basis: str
    cost: float | None
    cost_bound: float | None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The estimate as a few lines for a terminal or a log."""
        split = ", ".join(f"{c} {n:.3g}" for c, n in self.per_condition.items())
        expected, most = self.turns
        return [
            f"estimate for {self.name}: {self.participants_left} of {self.participants_total} "
            f"simulated participants to run ({split}) · {expected:.3g} turns each expected, "
            f"at most {most} ({self.bound.requests:,.0f} requests)",
            *self.usage_lines(),
        ]


def finished_per_condition(config: StudyConfig, db: str | Path | None) -> dict[str, int]:
    """Participants of this study that reached the end page, per condition; reads the
    database only where it exists (a dry run creates none)."""
    done = {str(c): 0 for c in config.conditions}
    if db is None or ("://" not in str(db) and not Path(db).is_file()):
        return done
    store = StudyStore(db)
    try:
        for row in store.participants(config.study):
            if row.step == "done" and str(row.condition) in done:
                done[str(row.condition)] += 1
    finally:
        store.close()
    return done


def expected_assignment(done: dict[str, int], n: int) -> dict[str, float]:
    """The expected participants each condition gets of ``n`` new ones, the app filling
    the least-filled condition first (ties at random: the last round is split evenly)."""
    if n <= 0 or not done:
        return dict.fromkeys(done, 0.0)
    counts = sorted(done.values())
    level, left = float(counts[0]), float(n)
    for k in range(1, len(counts) + 1):  # raise the k lowest to the next count, or as far as n goes
        ceiling = counts[k] if k < len(counts) else float("inf")
        step = min(ceiling - level, left / k)
        level, left = level + step, left - step * k
        if left <= 1e-9:
            break
    return {c: max(0.0, level - d) for c, d in done.items()}


def _stand_ins(measured: Measurement | None, max_tokens: int, per_char: float) -> list[str]:
    """Replies for the conversation's history: the ones the model wrote while measured,
    else prose of ``max_tokens`` tokens."""
    if measured and measured.replies:
        return measured.replies
    chars = int(max_tokens / per_char)
    return [filler(chars // 5)[:chars]]


def _participant(
    counter: RequestCounter,
    config: StudyConfig,
    persona: Persona,
    condition: str,
    topic: str,
    turns: int,
    keys: tuple[str, str],
    modes: tuple[tuple[SurveyMode, ...], tuple[SurveyMode, ...]],
    texts: tuple[list[str], list[str]],
    fractions: tuple[float, float],
) -> None:
    """Count the requests of one participant of ``condition`` and ``topic`` who sends
    ``turns`` messages, in the order the app and the persona send them."""
    bot_key, persona_key = keys
    probe_modes, rating_modes = modes
    replies_text, messages_text = texts
    reply_fraction, message_fraction = fractions
    question = config.probe_question(topic)

    def rate(replies: Sequence[str], sent: Sequence[str], asked: str) -> None:
        item = rating_item(config, persona, topic, replies, sent, asked)
        for mode in rating_modes:
            counter.survey("ratings", persona_key, item, mode, "persona")

    if condition == Condition.STATIC:
        rate([], [], question)  # the stance after reading the statements
        return
    row = ParticipantRow(
        topic=topic,
        condition=condition,
        demographics=persona.demographics,
        background=persona.background,
    )
    bot = build_chatbot(config, row)
    history: list[ChatTurn] = []
    sent: list[str] = []
    replies: list[str] = []

    def probe() -> None:
        item = SurveyItem(len(history), 0, bot.probe_prompt(history), scale=bot.scale)
        for mode in probe_modes:
            counter.survey("probes", bot_key, item, mode, "chatbot")

    probe()  # turn 0, after the stance before the chat
    for k in range(turns):
        rate(replies, sent, question)  # each conversation page asks the stance
        prompt = persona_messages(config, persona, topic, replies, sent)
        counter.request(
            "messages",
            persona_key,
            prompt,
            message_fraction * MESSAGE_MAX_TOKENS,
            MESSAGE_MAX_TOKENS,
            "persona",
        )
        message = messages_text[k % len(messages_text)][: config.limits.max_message_chars]
        [request] = bot.reply_requests([(history, message)])
        fraction = reply_fraction * bot.max_tokens
        counter.request("replies", bot_key, request.prompt, fraction, bot.max_tokens, "chatbot")
        sent.append(message)
        replies.append(replies_text[k % len(replies_text)])
        history.append(ChatTurn(message, replies[-1]))
        probe()
    rate(replies, sent, question)  # the last conversation page
    rate(replies, sent, question)  # after the conversation
    rate(replies[:1], sent[:1], perception_question(config, topic, "first"))
    rate(replies, sent, perception_question(config, topic, "last"))


def _add(target: dict[str, Tally], source: dict[str, Tally], weight: float) -> None:
    """Add ``weight`` times each tally of ``source`` to ``target``."""
    for key, tally in source.items():
        scaled = Tally(*(weight * getattr(tally, f.name) for f in dataclasses.fields(tally)))
        target.setdefault(key, Tally()).add(scaled)


def _standard_bot(config: StudyConfig, topic: str) -> Chatbot:
    """The standard chatbot of a topic (the probe check's and the measurement's)."""
    row = ParticipantRow(topic=topic, condition=Condition.STANDARD, demographics={})
    return build_chatbot(config, row)


def estimate_pilot(
    config: StudyConfig,
    participants: int,
    *,
    db: str | Path | None = None,
    resume: bool = True,
    turns: int | None = None,
    measured: Measurement | None = None,
    lm: LanguageModel | None = None,
    persona_lm: LanguageModel | None = None,
    persona_price: Price | None = None,
    name: str | None = None,
) -> PilotEstimate:
    """Count what ``participants`` simulated participants need (``simulate``).

    Reads the database (when it exists), writes nothing, calls no model.

    Args:
        config: the study.
        participants: the participants the pilot is to have (``resume``), or to add.
        db: the study's database: the participants already done fill their conditions
            first and, with ``resume``, are not run again.
        resume: ``participants`` counts the ones done (a pilot run until it has that
            many); False: that many more (``stancelab study simulate``).
        turns: every participant sends this many messages (``simulate(turns=)``); None:
            drawn uniformly from ``turns.min`` to ``turns.max``.
        measured: ``measure_pilot`` on the chatbot's model (the persona's too when it is
            the same): tokens as it counts them, its reply length and speed; None:
            characters / 4, replies at ``max_tokens``, no time.
        lm: the opened chatbot model (its survey modes; None: log-probabilities).
        persona_lm: the persona's own model, when it is not the chatbot's.
        persona_price: the persona model's price, when it is not the chatbot's.
        name: the first line's name (default: the study's).
    """
    done = finished_per_condition(config, db)
    left = max(0, participants - sum(done.values())) if resume else participants
    per_condition = expected_assignment(done, left)
    bot_key = config.model.name
    persona_key = persona_lm.name if persona_lm is not None else bot_key
    keys = (bot_key, persona_key)
    probe_modes = tuple(SurveyMode(m) for m in config.chatbot.stance_modes)
    rating_modes: tuple[SurveyMode, ...] = (SurveyMode.DISTRIBUTION,)
    if lm is not None:
        probe_modes = survey_modes_for(lm, probe_modes)[0]
    rater = persona_lm or lm
    if rater is not None:
        rating_modes = survey_modes_for(rater, rating_modes)[0]
    on_bot = {bot_key: measured} if measured else {}
    paths = {k: m.has_token_paths() for k, m in ((bot_key, lm), (persona_key, rater)) if m}
    per_char = measured.tokens_per_char if measured else 1 / CHARS_PER_TOKEN
    fraction = measured.reply_fraction if measured else 1.0
    message_chars = int(fraction * MESSAGE_MAX_TOKENS / per_char)
    texts = (
        _stand_ins(measured, config.chatbot.max_tokens, per_char),
        [filler(message_chars // 5 + 1)[:message_chars]],
    )
    persona = make_persona(config, random.Random(config.seed))
    low, high = (turns, turns) if turns is not None else (config.turns.min, config.turns.max)
    stages: dict[str, Tally] = {}
    models: dict[str, Tally] = {}
    bound_models: dict[str, Tally] = {}
    chats = 0.0
    for condition, expected in per_condition.items():
        if expected <= 0:
            continue
        chatting = condition != Condition.STATIC
        chats += expected if chatting else 0.0
        for topic in config.topics:
            drawn = range(low, high + 1) if chatting else range(high, high + 1)
            for n_turns in drawn:
                share = expected / len(config.topics) / len(drawn)
                counter = RequestCounter(on_bot, paths)
                _participant(
                    counter,
                    config,
                    persona,
                    condition,
                    topic.name,
                    n_turns,
                    keys,
                    (probe_modes, rating_modes),
                    texts,
                    (fraction, fraction),
                )
                _add(stages, counter.stages, share)
                _add(models, counter.models, share)
                if n_turns == high:
                    _add(bound_models, counter.models, share * len(drawn))
    notes = []
    if left and any(c != Condition.STATIC for c in config.conditions):
        check = RequestCounter(on_bot, paths)
        for topic in config.topics:  # simulate's probe coverage check, once per call
            bot = _standard_bot(config, topic.name)
            item = SurveyItem(0, 0, bot.probe_prompt([]), scale=bot.scale)
            for mode in probe_modes:
                check.survey("checks", bot_key, item, mode, None)
        _add(stages, check.stages, 1.0)
        _add(models, check.models, 1.0)
        _add(bound_models, check.models, 1.0)
    if chats:
        notes.append(
            "turns are drawn uniformly: the expected counts average over every number of turns"
            if turns is None
            else f"every participant sends {turns} messages"
        )
    prices: dict[str, Price] = {}
    if config.model.price_per_million is not None:
        prices[bot_key] = config.model.price_per_million
    if persona_lm is not None and persona_price is not None:
        prices[persona_key] = persona_price
    cost, _ = priced(models, prices)
    _, cost_bound = priced(bound_models, prices)
    seconds, basis = seconds_for(models, on_bot)
    bound = Tally()
    for tally in bound_models.values():
        bound.add(tally)
    method = (
        f"the model's own counts on this study's prompts ({per_char:.3f} tokens/char for {bot_key})"
        if measured
        else f"characters / {CHARS_PER_TOKEN:g} (no model opened to count them)"
    )
    return PilotEstimate(
        name or config.study,
        participants if resume else sum(done.values()) + participants,
        left,
        per_condition,
        (
            (low + high) / 2 if chats else 0.0,
            high if chats else 0,
        ),
        stages,
        models,
        bound,
        method,
        seconds,
        basis,
        cost,
        cost_bound,
        notes,
    )


def measure_pilot(lm: LanguageModel, config: StudyConfig) -> Measurement:
    """A few seconds of the opened chatbot model on the study's own prompts: the probe
    before any reply on each topic (prompt speed, tokens per character, scoring requests
    per point), then a first reply on every parallel slot (speed, reply length).

    The requests are real ones (a hosted model bills them)."""
    probes = [
        ChoiceRequest(bot.probe_prompt([]), bot.scale.candidates)
        for bot in (_standard_bot(config, topic.name) for topic in config.topics)
    ]
    bot = _standard_bot(config, config.topics[0].name)
    slots = config.model.parallel
    message = filler(FIRST_MESSAGE_WORDS)
    requests = [
        dataclasses.replace(request, seed=k)
        for k, request in enumerate(
            bot.reply_requests([([], message)] * max(slots, MEASURED_REPLIES))
        )
    ]
    return measure_engine(
        lm, probes, requests, lambda text: clean_reply(text) or None, slots, lm.name
    )


def combine_pilots(name: str, parts: Sequence[PilotEstimate], at_once: bool) -> PilotEstimate:
    """Several pilots' estimates (one per model) as one: counts, cost and notes added up;
    the time is the longest part's when they run ``at_once``, else the sum."""
    if len(parts) == 1:
        return dataclasses.replace(parts[0], name=name)
    stages: dict[str, Tally] = {}
    models: dict[str, Tally] = {}
    bound = Tally()
    per_condition: dict[str, float] = {}
    for part in parts:
        _add(stages, part.stages, 1.0)
        _add(models, part.models, 1.0)
        bound.add(part.bound)
        for condition, n in part.per_condition.items():
            per_condition[condition] = per_condition.get(condition, 0.0) + n
    times = [p.seconds for p in parts if p.participants_left]
    known = [t for t in times if t is not None]
    seconds = None
    if len(known) == len(times):
        seconds = max(known, default=0.0) if at_once else sum(known)
    costs = [p.cost for p in parts if p.cost is not None]
    bounds = [p.cost_bound for p in parts if p.cost_bound is not None]
    return PilotEstimate(
        name,
        sum(p.participants_total for p in parts),
        sum(p.participants_left for p in parts),
        per_condition,
        max((p.turns for p in parts), key=lambda t: t[1]),
        stages,
        models,
        bound,
        "; ".join(dict.fromkeys(p.token_method for p in parts)),
        seconds,
        "; ".join(dict.fromkeys(p.time_basis for p in parts)),
        sum(costs) if costs else None,
        sum(bounds) if bounds else None,
        list(dict.fromkeys(n for p in parts for n in p.notes)),
    )


class PilotProgress(PeriodicLines):
    """A progress line every ``interval_s`` seconds while simulated participants take a
    study: participants finished of those this call runs, replies stored, elapsed time and
    ETA (from the share finished, else from the estimate). Read from the study's database,
    so it counts what is stored, whichever worker stored it. Use as a context manager.
    """

    def __init__(
        self,
        db: str | Path,
        study: str,
        to_run: int,
        log: Callable[[str], None] = print,
        interval_s: float = 60.0,
        estimated_s: float | None = None,
    ) -> None:
        """``to_run``: the participants this call adds; ``estimated_s``: the estimate's
        time for them (None: not measured)."""
        super().__init__(log, interval_s)
        self.db, self.study, self.to_run, self.estimated_s = Path(db), study, to_run, estimated_s
        self._first = (0, 0)

    def counts(self) -> tuple[int, int]:
        """Participants finished and chatbot replies stored, now."""
        if not self.db.is_file():
            return 0, 0
        store = StudyStore(self.db)
        try:
            done = sum(1 for p in store.participants(self.study) if p.step == "done")
            replies = sum(1 for m in store.all_messages() if m.role == "assistant")
        finally:
            store.close()
        return done, replies

    def start(self) -> None:
        """What was stored before this call (a resumed pilot's earlier participants)."""
        self._first = self.counts()

    def line(self) -> str:
        """The progress now."""
        done, replies = self.counts()
        done, replies = done - self._first[0], replies - self._first[1]
        elapsed = self.elapsed
        return (
            f"progress: {done}/{self.to_run} participants · {replies} replies · "
            f"{duration(elapsed)} elapsed · ETA {eta(done, self.to_run, elapsed, self.estimated_s)}"
        )
