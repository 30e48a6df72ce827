"""Requests and tokens counted before a run, shared by the debates' and the study's estimates.

A run's estimate walks its own prompts through a `RequestCounter` (tokens per model and
stage, and what a prefix cache already holds of each conversation), measures a few seconds
of the opened model on them (`measure_engine`: tokens per character, speeds, reply length,
scoring requests per point), and turns the counts into time (`seconds_for`), cost
(`priced`) and lines for a terminal (`Usage.usage_lines`).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

from stancelab.conversation._survey import SurveyItem, SurveyMode, answer_max_tokens
from stancelab.engine._base import ChoiceRequest, GenerationRequest, LanguageModel, Prompt
from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import Price
from stancelab.engine._scoring import path_plan
from stancelab.engine._types import EngineStats

T = TypeVar("T")

CHARS_PER_TOKEN = 4.0
"""Token count without a model to ask: about four characters per token of English."""
MESSAGE_OVERHEAD_CHARS = 16
"""A chat template's role markers, counted per message as characters."""
PATH_REQUESTS_PER_POINT = 1.2
"""Scoring requests per survey point on engines that answer greedy token paths (llama.cpp,
OpenAI-compatible servers): benchmarks/README.md measured 1.14-1.27 (Qwen 0.5B, 384
points; the lower figures with identical requests in flight sent once)."""
TREE_REQUESTS_PER_POINT = 3.29
"""The same on engines that walk the token tree one level per call (benchmarks/README.md)."""
MEASURED_REPLIES = 4
"""Replies the measurement asks for at least (all slots at once when there are more)."""
MAX_COST_ENV = "STANCELAB_MAX_COST"
"""Environment variable holding the default ``--max-cost`` (USD)."""

# Stand-in text for replies and stories not yet written: plain debate prose, so a
# tokenizer counts it like the real thing.
FILLER = [
    "I",
    "understand",
    "your",
    "point,",
    "but",
    "we",
    "have",
    "to",
    "look",
    "at",
    "what",
    "the",
    "evidence",
    "shows",
    "and",
    "what",
    "families",
    "in",
    "my",
    "town",
    "actually",
    "face",
    "every",
    "day.",
    "People",
    "want",
    "safety,",
    "fair",
    "rules",
    "and",
    "a",
    "government",
    "that",
    "listens",
    "before",
    "it",
    "spends",
    "their",
    "money.",
    "We",
    "can",
    "agree",
    "that",
    "the",
    "problem",
    "is",
    "real,",
    "yet",
    "the",
    "answer",
    "should",
    "come",
    "from",
    "communities,",
    "not",
    "from",
    "one",
    "more",
    "program",
    "that",
    "nobody",
    "can",
    "afford.",
    "If",
    "we",
    "work",
    "together",
    "on",
    "practical",
    "steps,",
    "we",
    "can",
    "protect",
    "our",
    "neighbours,",
    "respect",
    "their",
    "freedom",
    "and",
    "still",
    "leave",
    "the",
    "country",
    "better",
    "for",
    "our",
    "children.",
    "That",
    "is",
    "why",
    "I",
    "keep",
    "asking",
    "for",
    "plans",
    "that",
    "are",
    "honest",
    "about",
    "costs",
    "and",
    "clear",
    "about",
    "who",
    "pays",
    "for",
    "them,",
    "because",
    "trust",
    "is",
    "earned",
    "by",
    "results",
    "and",
    "not",
    "by",
    "promises",
    "made",
    "during",
    "a",
    "campaign",
    "season.",
]


def filler(words: int) -> str:
    """``words`` words of stand-in prose."""
    return " ".join(FILLER[k % len(FILLER)] for k in range(max(1, words)))


def prompt_chars(prompt: Prompt) -> int:
    """A prompt's size in characters (chat messages with their role markers)."""
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(m["content"]) + MESSAGE_OVERHEAD_CHARS for m in prompt)


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one string, role markers included (to find what two prompts share)."""
    if isinstance(prompt, str):
        return prompt
    return "".join(f"\x1e{m['role']}\x1f{m['content']}" for m in prompt)


def common_prefix(a: str, b: str) -> int:
    """Length of the text two prompts begin with (found by halving: prompts are long)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class Tally:
    """Requests and tokens of part of a run (expected values; ``completion_bound`` is the
    most the requests may generate)."""

    requests: float = 0.0
    prompt_tokens: float = 0.0
    new_prompt_tokens: float = 0.0
    """Prompt tokens a prefix-caching engine computes (not the part each conversation's
    previous request already had)."""
    completion_tokens: float = 0.0
    completion_bound: float = 0.0

    def add(self, other: Tally) -> None:
        """Add another tally's counts to this one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class Measurement:
    """A few seconds of one opened model on this design's own prompts."""

    model: str
    tokens_per_char: float
    prompt_tps: float
    """Prompt tokens computed per second (one request)."""
    decode_tps: float
    """Tokens generated per second with every parallel slot busy."""
    slots: int
    reply_fraction: float
    """Generated tokens of a reply as a share of ``max_tokens``."""
    replies: list[str]
    """The measured replies, cleaned as a debate stores them (stand-ins for history)."""
    requests_per_point: float | None
    """Scoring requests one survey point took (None: not scored)."""
    tokens_per_scoring: float | None
    """Tokens a scoring request generated (its short greedy path)."""
    seconds: float


def usd(amount: float) -> str:
    """An amount of US dollars, with cents, or four digits where it is under a cent."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4g}"


def duration(seconds: float) -> str:
    """Seconds as a person reads them: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RequestCounter:
    """Adds requests to tallies, counting tokens per model and what each conversation's
    previous request already sent (a prefix cache serves that part)."""

    def __init__(self, measured: dict[str, Measurement], paths: dict[str, bool]) -> None:
        self.measured = measured
        self.paths = paths
        self.stages: dict[str, Tally] = {}
        self.models: dict[str, Tally] = {}
        self._last: dict[object, str] = {}

    def tokens(self, key: str, prompt: Prompt) -> float:
        """A prompt's tokens for model ``key``: measured tokens per character, else / 4."""
        m = self.measured.get(key)
        per_char = m.tokens_per_char if m else 1 / CHARS_PER_TOKEN
        return prompt_chars(prompt) * per_char

    def request(
        self,
        stage: str,
        key: str,
        prompt: Prompt,
        expected: float,
        bound: float,
        conversation: object = None,
        count: float = 1.0,
    ) -> None:
        """Count ``count`` requests of ``prompt`` to model ``key`` in ``stage``, each
        generating ``expected`` tokens (at most ``bound``); requests of one
        ``conversation`` share their prefix with its previous one (a prefix cache)."""
        tokens = self.tokens(key, prompt)
        text = prompt_text(prompt)
        new = tokens
        if conversation is not None:
            previous = self._last.get(conversation)
            if previous:
                shared = common_prefix(previous, text)
                new = tokens * (1 - shared / max(1, len(text)))
            self._last[conversation] = text
        tally = Tally(count, count * tokens, new, count * expected, count * bound)
        self.stages.setdefault(stage, Tally()).add(tally)
        self.models.setdefault(key, Tally()).add(tally)

    def survey(
        self, stage: str, key: str, item: SurveyItem, mode: SurveyMode, conversation: object
    ) -> None:
        """Count one survey point: a generated answer, or whole-candidate scoring at the
        measured (else the engine kind's) requests per point."""
        if mode == SurveyMode.GENERATE or item.kind != "scale":
            bound = answer_max_tokens(item)
            self.request(stage, key, item.prompt, bound, bound, conversation)
            return
        measured = self.measured.get(key)
        paths = self.paths.get(key, True)
        rate = PATH_REQUESTS_PER_POINT if paths else TREE_REQUESTS_PER_POINT
        if measured and measured.requests_per_point:
            rate = measured.requests_per_point  # how flat the model's answers are decides
        # A path request decodes the short path it asks for; a tree level one token.
        bound = path_plan(ChoiceRequest(item.prompt, item.scale.candidates))[0] if paths else 1
        expected: float = bound
        if measured and measured.tokens_per_scoring is not None:
            expected = min(bound, measured.tokens_per_scoring)
        self.request(stage, key, item.prompt, expected, bound, conversation, rate)


def seconds_for(
    models: dict[str, Tally], measured: dict[str, Measurement]
) -> tuple[float | None, str]:
    """The time the counted requests take at the measured speeds (a model not measured at
    the first one's), and the basis in words; None without any measurement."""
    if not measured:
        return None, "no model was opened to measure its speed"
    fallback = next(iter(measured.values()))
    seconds = 0.0
    for key, tally in models.items():
        m = measured.get(key, fallback)
        seconds += tally.new_prompt_tokens / m.prompt_tps + tally.completion_tokens / m.decode_tps
    basis = "; ".join(
        f"{k}: measured {m.seconds:.1f} s, {m.prompt_tps:,.0f} prompt tokens/s, "
        f"{m.decode_tps:,.0f} generated tokens/s over {m.slots} slots"
        for k, m in measured.items()
    )
    return seconds, f"an estimate: {basis}"


def priced(models: dict[str, Tally], prices: dict[str, Price]) -> tuple[float | None, float | None]:
    """The cost in USD of each model's counts at its price (expected, and with every
    request at its bound); (None, None) when no model has a price."""
    if not prices:
        return None, None
    cost = bound = 0.0
    for key, tally in models.items():
        price = prices.get(key)
        if price is not None:
            cost += price.cost(tally.prompt_tokens, tally.completion_tokens)
            bound += price.cost(tally.prompt_tokens, tally.completion_bound)
    return cost, bound


class Usage:
    """What every estimate has (a debates run's, a pilot's, a fine-tuning run's), and the
    lines it prints under its own first line. A mixin for the estimates' dataclasses: they
    declare these fields; this gives ``total`` and ``usage_lines``."""

    stages: dict[str, Tally]
    """Requests and tokens by what they are for (expected values)."""
    token_method: str
    """How tokens were counted."""
    seconds: float | None
    """The time at the measured speeds (None: not measured)."""
    time_basis: str
    """What the time rests on."""
    cost: float | None
    """USD, expected; None when no model entry has a price."""
    cost_bound: float | None
    """USD with every reply at ``max_tokens`` (what ``--max-cost`` compares)."""
    notes: list[str]
    """What the counts leave out or assume."""

    @property
    def total(self) -> Tally:
        """All stages together."""
        out = Tally()
        for tally in self.stages.values():
            out.add(tally)
        return out

    def usage_lines(self) -> list[str]:
        """Requests and tokens in all and by stage, how tokens were counted, the time, the
        cost and the notes."""
        total = self.total
        out = [
            f"  {total.requests:,.0f} requests · {total.prompt_tokens:,.0f} prompt tokens "
            f"({total.new_prompt_tokens:,.0f} not in a prefix cache) · "
            f"~{total.completion_tokens:,.0f} generated (at most {total.completion_bound:,.0f})",
            "  by stage: "
            + " · ".join(
                f"{stage} {tally.requests:,.0f} requests, {tally.prompt_tokens:,.0f} + "
                f"{tally.completion_tokens:,.0f} tokens"
                for stage, tally in self.stages.items()
                if tally.requests
            ),
            f"  tokens: {self.token_method}",
        ]
        if self.seconds is None:
            out.append(f"  time: not estimated ({self.time_basis})")
        else:
            out.append(f"  time: about {duration(self.seconds)} ({self.time_basis})")
        if self.cost is None:
            out.append("  cost: no price (no model entry sets price_per_million)")
        else:
            out.append(
                f"  cost: about {usd(self.cost)} (at most {usd(self.cost_bound or 0)} with "
                "every reply at max_tokens), from price_per_million"
            )
        out += [f"  note: {n}" for n in self.notes]
        return out


def measure_engine(
    engine: LanguageModel,
    choices: Sequence[ChoiceRequest],
    requests: Sequence[GenerationRequest],
    clean: Callable[[str], str | None] | None,
    slots: int,
    name: str,
) -> Measurement:
    """A few seconds of an opened model on a run's own requests: the scoring ``choices``
    at once (prompt speed, tokens per character, scoring requests per point: 1.1 on Qwen
    0.5B, about 4 on SmolLM2 135M, whose answers are flatter), or, without them or without
    log-probabilities, their prompts (else those of ``requests``) read for one token each;
    then the reply ``requests`` at once (generation speed, reply length; ask at least one
    per slot).

    The requests are real ones (a hosted model bills them) and are counted in the
    engine's totals like any other.

    Args:
        engine: the opened model.
        choices: scoring requests the run sends (a survey's scale, a judge's yes/no).
        requests: replies the run asks.
        clean: a raw reply as the run stores it, or None where it is unusable; None: the
            replies as they came.
        slots: the engine's parallel slots.
        name: the model's key in the estimate.
    """
    started = time.perf_counter()
    points: float | None = None
    probes = [c.prompt for c in choices] or [r.prompt for r in requests]
    if choices and engine.logprobs_cap() is not None:
        scores, t1, first = _timed(engine, lambda: engine.score_choices(list(choices)))
        points = statistics.fmean(s.requests for s in scores)
    else:
        reads = [GenerationRequest(p, temperature=0.0, max_tokens=1) for p in probes]
        _, t1, first = _timed(engine, lambda: engine.generate(reads))
    probe_chars = statistics.fmean(prompt_chars(p) for p in probes)
    path_tokens = first.completion_tokens / first.requests if first.requests else None
    prompt_tps = (
        first.recomputed_tokens or first.prompt_tokens or probe_chars / CHARS_PER_TOKEN
    ) / max(t1, 1e-6)
    gens, t2, second = _timed(engine, lambda: engine.generate(list(requests)))
    generated = second.completion_tokens
    if not generated:  # an engine that counts nothing: its answers' own counts
        generated = sum(g.completion_tokens for g in gens)
    decoding = max(t2 - second.recomputed_tokens / prompt_tps, 0.1 * t2, 1e-6)
    # Tokens per character over every prompt sent (the probes and the requests).
    prompt = first.prompt_tokens + second.prompt_tokens
    chars = first.requests * probe_chars + sum(prompt_chars(r.prompt) for r in requests)
    per_char = prompt / chars if prompt else 1 / CHARS_PER_TOKEN
    texts = [g.text if clean is None else clean(g.text) for g in gens]
    return Measurement(
        model=name,
        tokens_per_char=per_char,
        prompt_tps=prompt_tps,
        decode_tps=max(generated, 1) / decoding,
        slots=slots,
        reply_fraction=statistics.fmean(
            g.completion_tokens / r.max_tokens for g, r in zip(gens, requests, strict=True)
        ),
        replies=[t for t in texts if t],
        requests_per_point=points,
        tokens_per_scoring=path_tokens if points is not None else None,
        seconds=time.perf_counter() - started,
    )


def _timed(engine: LanguageModel, call: Callable[[], T]) -> tuple[T, float, EngineStats]:
    """What ``call`` returned, how long it took, and what the engine counted meanwhile."""
    before = dataclasses.replace(engine.stats)
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    after = engine.stats
    counted = EngineStats(
        after.requests - before.requests,
        after.prompt_tokens - before.prompt_tokens,
        after.cached_tokens - before.cached_tokens,
        after.completion_tokens - before.completion_tokens,
    )
    return result, seconds, counted


class PeriodicLines:
    """A line every ``interval_s`` seconds, from a thread, while a piece of work goes on:
    for output that is not a terminal (a batch job, a log file), where a live bar shows
    nothing. Subclasses say what the line is (``line``); use as a context manager."""

    def __init__(self, log: Callable[[str], None] = print, interval_s: float = 60.0) -> None:
        if interval_s <= 0:
            raise ConfigError(f"the progress interval must be above 0 s, got {interval_s}")
        self._log = log
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    @property
    def elapsed(self) -> float:
        """Seconds since the work began (``__enter__``)."""
        return time.monotonic() - self._started

    def line(self) -> str:
        """The progress now."""
        raise NotImplementedError

    def start(self) -> None:
        """Called as the work begins, before the first line (a subclass's baseline)."""

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._log(self.line())

    def __enter__(self) -> Self:
        self._started = time.monotonic()
        self.start()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def eta(done: float, total: float, elapsed: float, estimated: float | None) -> str:
    """Time left: from the share done so far, else from the estimate, else unknown."""
    if done and total:
        share = min(1.0, done / total)
        return duration(elapsed * (1 - share) / share)
    if estimated is not None:
        return f"{duration(max(0.0, estimated - elapsed))} (estimated)"
    return "unknown"


class Priced(Protocol):
    """Anything with a cost bound: a run's `Estimate`, a study pilot's."""

    @property
    def cost_bound(self) -> float | None:
        """USD at most; None: no price."""


def check_cost(
    found: Priced, max_cost: float | None, yes: bool, ask: Callable[[str], bool] | None
) -> None:
    """Refuse a run whose cost may exceed ``max_cost`` (USD) unless ``yes``.

    Args:
        found: the run's estimate; its upper bound (every reply at max_tokens) is compared.
        max_cost: the limit; None: no limit.
        yes: run whatever the cost.
        ask: asks the person at the terminal (True: go on); None when there is nobody
            to ask (not a terminal), and the run is refused with one line.
    """
    if max_cost is None or yes or found.cost_bound is None or found.cost_bound <= max_cost:
        return
    question = (
        f"the estimated cost, up to ${found.cost_bound:,.2f}, is above --max-cost ${max_cost:,.2f}"
    )
    if ask is None:
        raise ConfigError(f"{question}: pass --yes to run it anyway")
    if not ask(f"{question}; run it?"):
        raise ConfigError(f"{question}: not run")


def default_max_cost() -> float | None:
    """``--max-cost``'s default: the environment variable STANCELAB_MAX_COST, else none."""
    value = os.environ.get(MAX_COST_ENV, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{MAX_COST_ENV}={value!r} is not a number of US dollars") from None
