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
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
    survey_modes_for,
)
from stancelab.conversation._tally import (
    CHARS_PER_TOKEN,
    MEASURED_REPLIES,
    PeriodicLines,
    RequestCounter,
    Usage,
    duration,
    eta,
    filler,
    measure_engine,
    priced,
    prompt_text,
    seconds_for,
)
from stancelab.conversation._tally import Measurement as Measurement
from stancelab.conversation._tally import Tally as Tally
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
from stancelab.engine._base import ChoiceRequest, LanguageModel, Prompt
from stancelab.engine._factory import ModelConfig, Price

STORY_WORDS = 170
"""Length of a persona story not yet written, for the prompts that will carry it (the
meta-prompt asks for a short paragraph; stories are cut at 256 tokens)."""
STORY_MAX_TOKENS = 256
"""``generate_personas``' limit per story draw."""
MEASURED_POINTS = 8
"""Distinct first surveys the measurement scores (scoring requests per point vary with the
prompt by a request or two on small models: a mean over a few)."""


@dataclass
class Estimate(Usage):
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

    def lines(self) -> list[str]:
        """The estimate as a few lines for a terminal or a log."""
        return [
            f"estimate for {self.name}: {self.debates_left} of {self.debates_total} debates to "
            f"run · {self.replies_left} replies · {self.points_left} survey points",
            *self.usage_lines(),
        ]


def model_key(model: ModelLike) -> str:
    """The key a model is counted under: one per engine (as ``ModelPool`` opens them)."""
    if isinstance(model, LanguageModel):
        return f"{model.name} (loaded)"
    return model.name if not model.adapters else f"{model.name}+{len(model.adapters)} adapters"


def _personas(
    plan: Plan, folder: RunFolder, written_first: Collection[Path] = ()
) -> tuple[PersonaSet | None, int]:
    """The persona set the debates will use (stand-ins for stories not yet written) and
    how many stories are still to write (none when another run writes its persona file
    first: ``written_first``)."""
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
    if source is not None and source.resolve() in {p.resolve() for p in written_first}:
        return PersonaSet(stand_ins, {}), 0
    return PersonaSet(stand_ins, {}), max(0, 2 * per_party - kept)


def estimate(
    plan: Plan,
    out: Path,
    engines: dict[str, LanguageModel] | None = None,
    measured: dict[str, Measurement] | None = None,
    written_first: Collection[Path] = (),
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
        written_first: persona files another run of the same design writes before this
            one reads them (its stories are counted there, not here).
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
    personas, to_write = _personas(plan, folder, written_first)
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
    seconds, basis = seconds_for(counter.models, measured)
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


def _cost(plan: Plan, models: dict[str, Tally]) -> tuple[float | None, float | None]:
    prices: dict[str, Price] = {}
    entries = [*plan.models.values()]
    if plan.experiment is not None:
        entries.append(plan.experiment.personas.model or plan.experiment.model)
    for entry in entries:
        if isinstance(entry, ModelConfig) and entry.price_per_million is not None:
            prices[model_key(entry)] = entry.price_per_million
    return priced(models, prices)


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

    def clean(text: str) -> str | None:
        cleaned = debate.clean_reply(text, speaker)[0]
        return cleaned if is_usable(cleaned) else None

    choices = [ChoiceRequest(p, ZERO_TO_TEN.candidates) for p in surveys]
    return measure_engine(engine, choices, requests, clean, slots, name)


def estimate_run(
    plan: Plan,
    out: Path,
    pool: ModelPool | None = None,
    log: Callable[[str], None] = print,
    measured: dict[str, Measurement] | None = None,
    written_first: Collection[Path] = (),
) -> Estimate:
    """Count what a plan still needs, measuring its first condition's models on the way
    when ``pool`` is given (they are opened in it and stay open for the run).

    Args:
        plan: the run.
        out: the folder that holds run folders.
        pool: where the run's engines are opened; None counts without opening any
            model (characters / 4, no time).
        log: where a stage message goes.
        measured: measurements already taken, by ``model_key`` (e.g. the same model on
            another experiment of one design): those models are not measured again, and
            the ones measured here are added, so one dict serves a run of several plans.
        written_first: persona files another plan of the same design writes first
            (see `estimate`).
    """
    engines: dict[str, LanguageModel] = {}
    measured = {} if measured is None else measured
    first_keys = {model_key(m) for (c, _), m in plan.models.items() if c == plan.conditions[0]}
    # Nothing left to run: measuring would spend requests on nothing. (A count of the
    # whole design, seconds at paper scale: skipped when nothing would be measured.)
    if (
        pool is not None
        and not first_keys <= measured.keys()
        and estimate(plan, out, {}, {}, written_first).total.requests == 0
    ):
        pool = None
    if pool is not None:
        first = plan.conditions[0]
        slots: dict[str, int] = {}
        for (condition, _), entry in plan.models.items():
            if condition == first and model_key(entry) not in engines:
                engines[model_key(entry)] = pool.get(entry)
                slots[model_key(entry)] = getattr(entry, "parallel", 1)
        to_measure = [key for key in engines if key not in measured]
        if to_measure:
            log(f"measuring {', '.join(to_measure)} on this design's prompts for the estimate…")
        personas, _ = _personas(plan, RunFolder(out / plan.name))
        planned = planned_debates(plan, personas, plan.modes)
        for key, engine in engines.items():
            if key in measured:
                continue
            surveys: dict[str, Prompt] = {}  # distinct first surveys, up to MEASURED_POINTS
            turn: tuple[Debate, int] | None = None
            for item, spec in planned:
                debate = new_debate(item, spec, plan.prompts, plan.formats)
                for agent, persona in enumerate(spec.personas):
                    if model_key(plan.models[(item.condition, persona.kind)]) == key:
                        prompt = debate.survey_prompt(agent)
                        surveys.setdefault(prompt_text(prompt), prompt)
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
                            surveys.setdefault(prompt_text(asked.prompt), asked.prompt)
            if turn is not None:
                picked = list(surveys.values())[:MEASURED_POINTS]
                measured[key] = measure(engine, picked, *turn, slots[key], key)
    used = {key: m for key, m in measured.items() if key in engines}
    return estimate(plan, out, engines, used, written_first)


def combine_estimates(name: str, parts: Sequence[Estimate], at_once: bool = False) -> Estimate:
    """Several estimates as one: counts, cost and notes added up.

    Args:
        name: what the whole is called in its first line.
        parts: the estimates (e.g. each experiment of a design, each model's design).
        at_once: the parts run at the same time (models on remote servers), so the time
            is the longest part's; else the parts' times add up.
    """
    stages: dict[str, Tally] = {}
    models: dict[str, Tally] = {}
    for part in parts:
        for target, source in ((stages, part.stages), (models, part.models)):
            for key, tally in source.items():
                target.setdefault(key, Tally()).add(tally)
    busy = [p for p in parts if p.total.requests]
    times = [p.seconds for p in busy]
    seconds: float | None = None
    if busy and all(t is not None for t in times):
        known = [t for t in times if t is not None]
        seconds = max(known) if at_once else sum(known)
    elif not busy:
        seconds = 0.0

    def unique(values: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(v for v in values if v))

    costs = [p.cost for p in parts if p.cost is not None]
    bounds = [p.cost_bound for p in parts if p.cost_bound is not None]
    return Estimate(
        name,
        stages,
        models,
        sum(p.debates_total for p in parts),
        sum(p.debates_left for p in parts),
        sum(p.replies_left for p in parts),
        sum(p.points_left for p in parts),
        "; ".join(unique([p.token_method for p in parts])),
        seconds,
        "; ".join(unique([p.time_basis for p in busy or parts]))
        + (" (the parts run at once: the longest counts)" if at_once and len(busy) > 1 else ""),
        sum(costs) if costs else None,
        sum(bounds) if bounds else None,
        unique([n for p in parts for n in p.notes]),
    )


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

    def start(self) -> None:
        """Tokens count from here: the estimate's measurement is not the run's work."""
        self._base = self._count()

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
