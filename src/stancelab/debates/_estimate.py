"""What a run will take before it starts, and how far it has got while it runs.

``estimate`` counts, from a resolved ``Plan`` and what its run folder already holds, every
request the run will send: persona stories still to write, the fidelity check, and every
reply and survey point of every debate not yet done. The prompts are the real ones: each
debate is walked through its own state machine (``Debate``) with stand-in replies, so
the prompts grow as they will. Token counts come from the opened model (``measure``: the
model's own counts on this design's prompts, a few seconds of work, which also gives its
speed), else characters / 4. Time follows from the measured speeds, cost from the model
entry's ``price_per_million``.

``ProgressLines`` prints a line at a fixed interval (once a minute by default) for a run
whose output is not a terminal: done / total debates, replies, survey points, tokens,
elapsed time and ETA.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, TypeVar

from stancelab.conversation._personas import (
    PARTIES,
    Persona,
    PersonaSet,
    meta_prompts,
    persona_prompt,
    persona_templates,
)
from stancelab.conversation._seeds import derive_seed
from stancelab.conversation._survey import (
    ZERO_TO_TEN,
    SurveyAnswer,
    SurveyItem,
    SurveyMode,
    answer_max_tokens,
    survey_modes_for,
)
from stancelab.debates._cleaning import is_usable
from stancelab.debates._debate import (
    Debate,
    DebateEvents,
    SurveyStep,
    Turn,
    TurnStep,
)
from stancelab.debates._fidelity import fidelity_items
from stancelab.debates._runner import (
    WRITER,
    ModelLike,
    ModelPool,
    Plan,
    RunFolder,
    _read_drafts,
    fidelity_groups,
    fidelity_mode,
    new_debate,
    planned_debates,
)
from stancelab.engine._base import ChoiceRequest, GenerationRequest, LanguageModel, Prompt
from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import ModelConfig, Price
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
STORY_WORDS = 170
"""Length of a persona story not yet written, for the prompts that will carry it (the
meta-prompt asks for a short paragraph; stories are cut at 256 tokens)."""
STORY_MAX_TOKENS = 256
"""``generate_personas``' limit per story draw."""
MEASURED_REPLIES = 4
"""Replies the measurement asks for at least (all slots at once when there are more)."""
MEASURED_POINTS = 8
"""Distinct first surveys the measurement scores (scoring requests per point vary with the
prompt by a request or two on small models: a mean over a few)."""
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


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "".join(f"\x1e{m['role']}\x1f{m['content']}" for m in prompt)


def _common_prefix(a: str, b: str) -> int:
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


@dataclass
class Estimate:
    """What a run still needs: counts per stage and per model, time and cost."""

    name: str
    stages: dict[str, Tally]
    models: dict[str, Tally]
    """Per model (its name), for time and cost."""
    debates_total: int
    debates_left: int
    replies_left: int
    points_left: int
    """Survey points (agent x question x mode) still to ask in the debates."""
    token_method: str
    seconds: float | None
    time_basis: str
    cost: float | None
    """USD, expected; None when no model of the run has a price."""
    cost_bound: float | None
    """USD with every reply at ``max_tokens``."""
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> Tally:
        """All stages together."""
        out = Tally()
        for tally in self.stages.values():
            out.add(tally)
        return out

    def lines(self) -> list[str]:
        """The estimate as a few lines for a terminal or a log."""
        return [
            f"estimate for {self.name}: {self.debates_left} of {self.debates_total} debates to "
            f"run · {self.replies_left} replies · {self.points_left} survey points",
            *usage_lines(
                self.stages,
                self.token_method,
                self.seconds,
                self.time_basis,
                self.cost,
                self.cost_bound,
                self.notes,
            ),
        ]


def usage_lines(
    stages: dict[str, Tally],
    token_method: str,
    seconds: float | None,
    time_basis: str,
    cost: float | None,
    cost_bound: float | None,
    notes: list[str],
) -> list[str]:
    """The lines every estimate prints under its own first line: requests and tokens in
    all and by stage, how tokens were counted, time, cost and notes."""
    t = Tally()
    for tally in stages.values():
        t.add(tally)
    out = [
        f"  {t.requests:,.0f} requests · {t.prompt_tokens:,.0f} prompt tokens "
        f"({t.new_prompt_tokens:,.0f} not in a prefix cache) · ~{t.completion_tokens:,.0f} "
        f"generated (at most {t.completion_bound:,.0f})",
        "  by stage: "
        + " · ".join(
            f"{stage} {tally.requests:,.0f} requests, {tally.prompt_tokens:,.0f} + "
            f"{tally.completion_tokens:,.0f} tokens"
            for stage, tally in stages.items()
            if tally.requests
        ),
        f"  tokens: {token_method}",
    ]
    if seconds is None:
        out.append(f"  time: not estimated ({time_basis})")
    else:
        out.append(f"  time: about {duration(seconds)} ({time_basis})")
    if cost is None:
        out.append("  cost: no price (no model entry sets price_per_million)")
    else:
        out.append(
            f"  cost: about {usd(cost)} (at most {usd(cost_bound or 0)} with "
            "every reply at max_tokens), from price_per_million"
        )
    out += [f"  note: {n}" for n in notes]
    return out


def usd(amount: float) -> str:
    """An amount of US dollars, with cents, or four digits where it is under a cent."""
    return f"${amount:,.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4g}"


def duration(seconds: float) -> str:
    """Seconds as a short duration: seconds, minutes or hours."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def model_key(model: ModelLike) -> str:
    """The key a model is counted under: one per engine (as ``ModelPool`` opens them)."""
    if isinstance(model, LanguageModel):
        return f"{model.name} (loaded)"
    return model.name if not model.adapters else f"{model.name}+{len(model.adapters)} adapters"


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
        """A prompt's tokens as model ``key`` counts them (measured), else characters / 4."""
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
        """Count ``count`` requests of ``prompt`` to model ``key`` under ``stage``, each
        generating ``expected`` tokens (at most ``bound``); ``conversation`` names the
        conversation the prompt continues, whose shared beginning a prefix cache serves."""
        tokens = self.tokens(key, prompt)
        text = _prompt_text(prompt)
        new = tokens
        if conversation is not None:
            previous = self._last.get(conversation)
            if previous:
                shared = _common_prefix(previous, text)
                new = tokens * (1 - shared / max(1, len(text)))
            self._last[conversation] = text
        tally = Tally(count, count * tokens, new, count * expected, count * bound)
        self.stages.setdefault(stage, Tally()).add(tally)
        self.models.setdefault(key, Tally()).add(tally)

    def survey(
        self, stage: str, key: str, item: SurveyItem, mode: SurveyMode, conversation: object
    ) -> None:
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


def _personas(plan: Plan, folder: RunFolder) -> tuple[PersonaSet | None, int]:
    """The persona set the debates will use (stand-ins for stories not yet written) and
    how many stories are still to write."""
    config = plan.experiment
    if config is None:
        return None, 0
    if folder.personas.is_file():
        return PersonaSet.load(folder.personas), 0
    source = config.personas.file
    if source is not None and source.is_file():
        return PersonaSet.load(source), 0
    per_party = config.personas.generate or 0
    kept = len(_read_drafts(folder.partial_personas))
    _, background = persona_templates(config.prompts.folder)
    stand_ins = [
        Persona(
            f"{party[0].upper()}{i}",
            party,
            background.format(name=f"{party[0].upper()}{i}", story=filler(STORY_WORDS)),
        )
        for party in PARTIES
        for i in range(per_party)
    ]
    return PersonaSet(stand_ins, {}), max(0, 2 * per_party - kept)


def estimate(
    plan: Plan,
    out: Path,
    engines: dict[str, LanguageModel] | None = None,
    measured: dict[str, Measurement] | None = None,
) -> Estimate:
    """Count what a plan still needs in the folder ``out`` (a resumed run: only the rest).

    Reads the run folder and its store, writes nothing, calls no model.

    Args:
        plan: the run (``plan_experiment``, ``plan_debate``).
        out: the folder that holds run folders.
        engines: opened models by ``model_key`` (their survey modes and scoring kind
            count); None counts as if every model gives log-probabilities.
        measured: ``measure`` results by ``model_key``: tokens counted as the model
            counts them, the time from its speed; None: characters / 4 and no time.
    """
    engines, measured = engines or {}, measured or {}
    first = plan.conditions[0]
    keys = {slot: model_key(m) for slot, m in plan.models.items()}
    modes = plan.modes
    for engine in engines.values():
        modes = survey_modes_for(engine, modes)[0]
    counter = RequestCounter(measured, {k: e.has_token_paths() for k, e in engines.items()})
    folder = RunFolder(out / plan.name)
    store, run_id = None, None
    if folder.meta.is_file():
        meta = folder.read_meta()
        if meta.get("fingerprint") == plan.fingerprint:
            store, run_id = folder.open_store(), str(meta["run_id"])
    personas, to_write = _personas(plan, folder)
    config = plan.experiment
    notes: list[str] = []
    if config is not None and to_write:
        writer = config.personas.model or config.model
        prompts = meta_prompts(config.topic_objects(), config.prompts.folder)
        for k in range(to_write):
            prompt = persona_prompt(prompts[PARTIES[k % 2]], plan.formats[("", WRITER)])
            counter.request(
                "personas", model_key(writer), prompt, STORY_MAX_TOKENS, STORY_MAX_TOKENS
            )
        notes.append("a story whose draft is unusable is drawn again (up to 8 draws)")
        if config.personas.screen:
            notes.append("the persona screen's surveys and re-draws are not counted")
    if config is not None and personas is not None and config.personas.check_fidelity:
        done = store is not None and run_id is not None and store.persona_checks(run_id)
        if not done:
            for kind, group in fidelity_groups(personas).items():
                fmt = plan.formats[(first, kind)]
                items, _ = fidelity_items(group, config.topic_objects(), plan.prompts, fmt)
                for asked in items:
                    counter.survey(
                        "fidelity", keys[(first, kind)], asked, fidelity_mode(modes), None
                    )
    planned = planned_debates(plan, personas, modes)
    stored = {row.key: row for row in store.debates(run_id)} if store and run_id else {}
    left = replies = points = 0
    for index, (item, spec) in enumerate(planned):
        debate = new_debate(item, spec, plan.prompts, plan.formats)
        row = stored.get(item.key)
        if store is not None and row is not None:
            store.restore(row.id, debate)
        if debate.done:
            continue
        left += 1
        kind_key = {a: keys[(item.condition, p.kind)] for a, p in enumerate(spec.personas)}
        r, p = _walk(debate, index, kind_key, counter)
        replies, points = replies + r, points + p
    if any(m.replies for m in measured.values()):
        notes.append("replies unusable on the first try are asked again (not counted)")
    seconds, basis = request_time(counter.models, measured)
    cost, bound = _cost(plan, counter.models)
    method = (
        "the model's own counts on this design's prompts ("
        + ", ".join(f"{m.tokens_per_char:.3f} tokens/char for {k}" for k, m in measured.items())
        + ")"
        if measured
        else f"characters / {CHARS_PER_TOKEN:g} (no model opened to count them)"
    )
    return Estimate(
        plan.name,
        counter.stages,
        counter.models,
        len(planned),
        left,
        replies,
        points,
        method,
        seconds,
        basis,
        cost,
        bound,
        notes,
    )


def _walk(
    debate: Debate, index: int, keys: dict[int, str], counter: RequestCounter
) -> tuple[int, int]:
    """Walk a debate to its end with stand-in replies; returns (replies, survey points)."""
    replies = points = 0
    while (step := debate.next_step()) is not None:
        if isinstance(step, SurveyStep):
            for item, modes in debate.pending_surveys(step.iteration):
                for mode in modes:
                    key = keys[item.agent_index]
                    counter.survey("debates", key, item, mode, (index, item.agent_index))
                    points += 1
                    debate.record_survey(
                        SurveyAnswer(
                            step.iteration,
                            item.agent_index,
                            mode,
                            True,
                            5.0,
                            question_id=item.question_id,
                        )
                    )
        elif isinstance(step, TurnStep):
            key = keys[step.speaker]
            request = debate.turn_request(step, 1)
            m = counter.measured.get(key)
            fraction = m.reply_fraction if m else 1.0
            bound = debate.spec.max_tokens
            conversation = (index, step.speaker)
            counter.request("debates", key, request.prompt, fraction * bound, bound, conversation)
            text = _stand_in(m, debate.spec.word_limit, replies)
            debate.record_turn(Turn(step.iteration, step.speaker, text, text))
            replies += 1
        else:
            request = debate.decide_request(step)
            key = keys[step.speaker]
            bound = request.max_tokens
            counter.request("debates", key, request.prompt, bound, bound, (index, step.speaker))
            debate.record_decision(step, debate.speaking[step.speaker].use_token)
    return replies, points


def _stand_in(measured: Measurement | None, word_limit: int, k: int) -> str:
    """A reply for a debate's history: one the model wrote while measured, else prose at
    the word limit (small models fill it)."""
    if measured and measured.replies:
        return measured.replies[k % len(measured.replies)]
    return filler(word_limit - 1)


def request_time(
    models: dict[str, Tally], measured: dict[str, Measurement]
) -> tuple[float | None, str]:
    """Seconds the tallied requests take at the measured speeds (a model not measured at
    the first measured one's), and what that rests on; None when nothing was measured."""
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


def _cost(plan: Plan, models: dict[str, Tally]) -> tuple[float | None, float | None]:
    prices: dict[str, Price] = {}
    entries = [*plan.models.values()]
    if plan.experiment is not None:
        entries.append(plan.experiment.personas.model or plan.experiment.model)
    for entry in entries:
        if isinstance(entry, ModelConfig) and entry.price_per_million is not None:
            prices[model_key(entry)] = entry.price_per_million
    if not prices:
        return None, None
    cost = bound = 0.0
    for key, tally in models.items():
        price = prices.get(key)
        if price is not None:
            cost += price.cost(tally.prompt_tokens, tally.completion_tokens)
            bound += price.cost(tally.prompt_tokens, tally.completion_bound)
    return cost, bound


def measure(
    engine: LanguageModel,
    surveys: list[Prompt],
    debate: Debate,
    speaker: int,
    slots: int,
    name: str,
) -> Measurement:
    """A few seconds of an opened model on a design's own prompts: ``surveys`` (first
    surveys of its agents) scored at once (prompt speed, tokens per character, scoring
    requests per point: 1.1 on Qwen 0.5B, about 4 on SmolLM2 135M, whose answers are
    flatter), then agent ``speaker``'s first reply in ``debate`` asked on every slot at
    once (generation speed, reply length).

    The requests are real ones (a hosted model bills them) and are counted in the
    engine's totals like any other.
    """
    turn = debate.turn_request(TurnStep(1, speaker), 1)
    requests = [
        dataclasses.replace(turn, seed=derive_seed(debate.spec.seed, "measure", k))
        for k in range(max(slots, MEASURED_REPLIES))
    ]
    choices = [ChoiceRequest(p, ZERO_TO_TEN.candidates) for p in surveys]
    measured = measure_requests(engine, requests, slots, name, choices)
    cleaned = [debate.clean_reply(text, speaker)[0] for text in measured.replies]
    return dataclasses.replace(measured, replies=[t for t in cleaned if is_usable(t)])


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


def measure_requests(
    engine: LanguageModel,
    requests: Sequence[GenerationRequest],
    slots: int,
    name: str,
    choices: Sequence[ChoiceRequest] = (),
) -> Measurement:
    """A few seconds of an opened model on requests a run will send: ``choices`` scored
    at once (prompt speed, scoring requests per point), or without them (or without
    log-probabilities) their prompts, else those of ``requests``, read for one token each
    (prompt speed); then ``requests`` generated at once (generation speed, reply length).
    ``replies`` holds the generated texts as they came.

    The requests are real ones (a hosted model bills them) and are counted in the
    engine's totals like any other.
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
    return Measurement(
        model=name,
        tokens_per_char=per_char,
        prompt_tps=prompt_tps,
        decode_tps=max(generated, 1) / decoding,
        slots=slots,
        reply_fraction=statistics.fmean(
            g.completion_tokens / r.max_tokens for g, r in zip(gens, requests, strict=True)
        ),
        replies=[g.text for g in gens],
        requests_per_point=points,
        tokens_per_scoring=path_tokens if points is not None else None,
        seconds=time.perf_counter() - started,
    )


def estimate_run(
    plan: Plan,
    out: Path,
    pool: ModelPool | None = None,
    log: Callable[[str], None] = print,
) -> Estimate:
    """Count what a plan still needs, measuring its first condition's models on the way
    when ``pool`` is given (they are opened in it and stay open for the run).

    Args:
        plan: the run.
        out: the folder that holds run folders.
        pool: where the run's engines are opened; None counts without opening any
            model (characters / 4, no time).
        log: where a stage message goes.
    """
    engines: dict[str, LanguageModel] = {}
    measured: dict[str, Measurement] = {}
    if pool is not None and estimate(plan, out, {}, {}).total.requests == 0:
        pool = None  # nothing left to run: measuring would spend requests on nothing
    if pool is not None:
        first = plan.conditions[0]
        slots: dict[str, int] = {}
        for (condition, _), entry in plan.models.items():
            if condition == first and model_key(entry) not in engines:
                engines[model_key(entry)] = pool.get(entry)
                slots[model_key(entry)] = getattr(entry, "parallel", 1)
        log(f"measuring {', '.join(engines)} on this design's prompts for the estimate…")
        personas, _ = _personas(plan, RunFolder(out / plan.name))
        planned = planned_debates(plan, personas, plan.modes)
        for key, engine in engines.items():
            surveys: dict[str, Prompt] = {}  # distinct first surveys, up to MEASURED_POINTS
            turn: tuple[Debate, int] | None = None
            for item, spec in planned:
                debate = new_debate(item, spec, plan.prompts, plan.formats)
                for agent, persona in enumerate(spec.personas):
                    if model_key(plan.models[(item.condition, persona.kind)]) == key:
                        prompt = debate.survey_prompt(agent)
                        surveys.setdefault(_prompt_text(prompt), prompt)
                        # The reply the run asks first, where this model gives it.
                        if turn is None or agent == debate.first_speaker:
                            turn = (debate, agent) if turn is None or turn[0] is debate else turn
                if len(surveys) >= MEASURED_POINTS:
                    break
            config = plan.experiment
            if config is not None and personas is not None and config.personas.check_fidelity:
                for kind, group in fidelity_groups(personas).items():
                    if model_key(plan.models[(first, kind)]) == key:
                        fmt = plan.formats[(first, kind)]
                        items, _ = fidelity_items(
                            group, config.topic_objects()[:1], plan.prompts, fmt
                        )
                        for asked in items:
                            surveys.setdefault(_prompt_text(asked.prompt), asked.prompt)
            if turn is not None:
                picked = list(surveys.values())[:MEASURED_POINTS]
                measured[key] = measure(engine, picked, *turn, slots[key], key)
    return estimate(plan, out, engines, measured)


class Priced(Protocol):
    """An estimate with a cost bound (a debates run's, a fine-tuning run's)."""

    cost_bound: float | None


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


class ProgressLines(PeriodicLines):
    """A progress line every ``interval_s`` seconds while a run goes on, for output that
    is not a terminal (a batch job, a log file), where a live bar shows nothing.

    Use as a context manager around the run, with ``events()`` given to the runner.
    """

    def __init__(
        self,
        found: Estimate,
        tokens: Callable[[], dict[str, int]],
        log: Callable[[str], None] = print,
        interval_s: float = 60.0,
    ) -> None:
        """``found``: the run's estimate (the totals); ``tokens``: the engines' counts
        now (``ModelPool.stats``)."""
        super().__init__(log, interval_s)
        self.found = found
        self._tokens = tokens
        self.debates = self.replies = self.points = 0
        self._lock = threading.Lock()
        self._base = 0

    def _count(self) -> int:
        stats = self._tokens()
        return stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)

    def events(self, inner: DebateEvents | None = None) -> DebateEvents:
        """Callbacks that count replies, survey points and finished debates (and call
        ``inner``'s own)."""
        inner = inner or DebateEvents()

        def on_turn(d: Debate, turn: Turn) -> None:
            with self._lock:
                self.replies += 1
            if inner.on_turn:
                inner.on_turn(d, turn)

        def on_survey(d: Debate, answers: list[SurveyAnswer]) -> None:
            with self._lock:
                self.points += len(answers)
            if inner.on_survey:
                inner.on_survey(d, answers)

        def on_end(d: Debate) -> None:
            with self._lock:
                self.debates += 1
            if inner.on_end:
                inner.on_end(d)

        return dataclasses.replace(inner, on_turn=on_turn, on_survey=on_survey, on_end=on_end)

    def line(self) -> str:
        """The progress now: done / total, tokens, elapsed time and ETA."""
        f = self.found
        elapsed = self.elapsed
        left = eta(self.replies + self.points, f.replies_left + f.points_left, elapsed, f.seconds)
        already = f.debates_total - f.debates_left
        return (
            f"progress: {already + self.debates}/{f.debates_total} debates · "
            f"{self.replies}/{f.replies_left} replies · {self.points}/{f.points_left} survey "
            f"points · {self._count() - self._base:,} tokens · {duration(elapsed)} elapsed"
            f" · ETA {left}"
        )

    def start(self) -> None:
        """Tokens are counted from here."""
        self._base = self._count()
