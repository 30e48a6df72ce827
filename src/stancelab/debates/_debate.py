"""Debates with hidden attitude surveys (Taubenfeld et al. 2024, section 4.3; SAUCE).

A ``Debate`` is a small state machine: it says what it needs next (a survey of all
agents, an agent's decision whether to speak, or one agent's turn) and records the
answers. Who speaks is its ``TurnTaking`` policy (``turn_taking.py``), what each agent
sees is its ``Rendering`` (``rendering.py``), and what of a reply is kept is
``cleaning.py``. ``run_debate`` drives one debate to its end; ``run_debates`` gives each
debate a worker thread of its own, so a slow debate never holds the others back, and the
engine batches the requests that arrive together from all workers (continuous batching
over its slots). That is the one concurrency model: debates are never batched into one
engine call by hand.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from stancelab.conversation import (
    ATTITUDE,
    Persona,
    PromptFormat,
    PromptSet,
    SurveyAnswer,
    SurveyItem,
    SurveyMode,
    SurveyQuestion,
    ask,
)
from stancelab.conversation._seeds import derive_seed
from stancelab.debates._cleaning import clean_reply as clean_reply  # callers import it here
from stancelab.debates._cleaning import is_usable, speaker_line, stop_strings
from stancelab.debates._rendering import Rendering, decide_request, header
from stancelab.debates._turn_taking import TurnTaking, check_host, host_policy, seeded_first_speaker
from stancelab.engine import ConfigError
from stancelab.engine._base import Generation, GenerationRequest, LanguageModel, Message, Prompt


@dataclass(frozen=True)
class Speaking:
    """How one agent takes part (SAUCE's persons): in strict turn, or asynchronously.

    An asynchronous agent is asked at each of its chances whether it wants to speak now
    (SAUCE's asynchronous persons); a pass costs no message, and the host moves on.
    """

    asynchronous: bool = False
    opinion: str | None = None
    """SAUCE's ``opinion``: shown after the scenario in the agent's context."""
    personality: str | None = None
    """SAUCE's ``speaking_personality``: shown when the agent decides whether to speak."""
    use_token: str = "<speak>"
    pass_token: str = "<wait>"
    examples: bool = False
    """SAUCE's ``in_context_learning``: the decision request carries short examples."""


@dataclass(frozen=True)
class DebateSpec:
    """Everything that defines one debate."""

    topic: str
    personas: tuple[Persona, ...]
    iterations: int
    seed: int = 0
    word_limit: int = 50
    survey_modes: tuple[SurveyMode, ...] = (SurveyMode.DISTRIBUTION,)
    max_retries: int = 3
    max_tokens: int = 96
    temperature: float = 1.0
    questions: tuple[SurveyQuestion, ...] = ()
    """Survey questions; empty means the paper's attitude question from the templates."""
    scenario: str | None = None
    """Replaces the topic line of the context (SAUCE's "scenario"); None keeps it."""
    first_speaker: int | None = None
    """Fixed first speaker (SAUCE's start_person_index); None draws it from the seed."""
    ask_attitude: bool = True
    """With no ``questions``: True asks the paper's attitude question, False asks none."""
    host: str = "round robin"
    """Who gets the next chance: "round robin" (every ``host_skip``-th agent) or "random"."""
    host_skip: int = 1
    speaking: tuple[Speaking, ...] = ()
    """Per agent; empty: everyone speaks in strict turn."""

    def __post_init__(self) -> None:
        check_host(self.host)
        if self.host_skip < 1:
            raise ConfigError(f"host skip must be at least 1, got {self.host_skip}")
        if self.speaking and len(self.speaking) != len(self.personas):
            raise ConfigError(
                f"{len(self.speaking)} speaking settings for {len(self.personas)} agents"
            )
        if not self.topic.strip():
            raise ConfigError("the topic is empty; give a topic such as 'climate change'")
        if len(self.personas) < 1:
            raise ConfigError("a debate needs at least one agent")
        if self.iterations < 0:
            raise ConfigError(f"iterations must be 0 or more, got {self.iterations}")
        if self.word_limit < 2:
            raise ConfigError(f"word_limit must be at least 2, got {self.word_limit}")
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {self.max_retries}")
        names = [p.name for p in self.personas]
        if len(set(names)) != len(names):
            raise ConfigError(f"agent names must be distinct, got {names}")
        if not self.survey_modes:
            raise ConfigError("at least one survey mode is needed")
        if self.first_speaker is not None and not 0 <= self.first_speaker < len(self.personas):
            raise ConfigError(
                f"first speaker {self.first_speaker} is not one of the {len(self.personas)} agents"
            )
        ids = [q.id for q in self.questions]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"survey question ids must be distinct, got {ids}")


@dataclass
class Turn:
    """One reply: iteration (1-based), speaker, cleaned text and what it cost."""

    iteration: int
    speaker: int
    text: str
    raw_text: str
    attempts: int = 1
    truncated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0


@dataclass
class Decision:
    """One decide step of an agent that decides first: did it take its chance, what did it
    answer, and what the answer cost."""

    chance: int
    """The 0-based chance it decided (every reply and every pass is one)."""
    iteration: int
    """The reply it would be (1-based): replies so far + 1."""
    speaker: int
    speaks: bool
    """True: it took the chance (a reply follows); False: it passed."""
    raw_text: str
    """The model's answer to the decision request, as given."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_s: float = 0.0


@dataclass(frozen=True)
class SurveyStep:
    """All agents are to be surveyed at this iteration."""

    iteration: int


@dataclass(frozen=True)
class TurnStep:
    """The given agent is to speak at this iteration."""

    iteration: int
    speaker: int


@dataclass(frozen=True)
class DecideStep:
    """An asynchronous agent is to decide whether it speaks at this chance."""

    iteration: int
    speaker: int
    chance: int


class Debate:
    """State of one debate: whose turn (its ``TurnTaking`` policy), when to survey, and
    what has been said; prompts are rebuilt append-only from the stored turns."""

    def __init__(
        self,
        spec: DebateSpec,
        prompts: PromptSet,
        formats: Sequence[PromptFormat] | None = None,
        turn_taking: TurnTaking | None = None,
    ) -> None:
        """Set up a debate with no turns yet.

        Args:
            spec: what defines the debate.
            prompts: the wordings.
            formats: each agent's prompt format (agents on different models may differ);
                None: every agent uses ``prompts.format``.
            turn_taking: who gets each chance to speak; None: the spec's host (round robin
                or random, from ``first_speaker`` or the seed) with its asynchronous agents
                deciding first.
        """
        self.spec = spec
        self.prompts = prompts
        n = len(spec.personas)
        names = tuple(p.name for p in spec.personas)
        self.rendering = Rendering(
            prompts,
            names=names,
            headers=tuple(self._header(i) for i in range(n)),
            formats=tuple(formats) if formats is not None else (prompts.format,) * n,
            word_limit=spec.word_limit,
        )
        if turn_taking is None:
            first = spec.first_speaker
            turn_taking = host_policy(
                spec.host,
                n,
                first=seeded_first_speaker(n, spec.seed) if first is None else first,
                seed=spec.seed,
                skip=spec.host_skip,
                asynchronous=[s.asynchronous for s in spec.speaking],
            )
        self.turn_taking = turn_taking
        self.turns: list[Turn] = []
        self.surveys: dict[tuple[int, int, str, SurveyMode], SurveyAnswer] = {}
        self.failed: str | None = None
        self.question = prompts.survey_question.format(topic=spec.topic)
        default_questions = (SurveyQuestion(ATTITUDE, self.question),) if spec.ask_attitude else ()
        self.questions = spec.questions or default_questions
        self.speaking = spec.speaking or tuple(Speaking() for _ in spec.personas)
        self.decisions: dict[int, Decision] = {}
        """chance -> the decision of the agent given it, for agents that decide first."""
        self.passes = 0
        self._speaker_line = speaker_line(names)
        self._stops = stop_strings(names)

    def _header(self, agent: int) -> str:
        opinion = self.spec.speaking[agent].opinion if self.spec.speaking else None
        return header(
            self.prompts,
            self.spec.personas[agent].background,
            self.spec.topic,
            self.spec.word_limit,
            scenario=self.spec.scenario,
            opinion=opinion,
        )

    @property
    def n_agents(self) -> int:
        """Number of debaters."""
        return len(self.spec.personas)

    @property
    def first_speaker(self) -> int:
        """The agent given the first chance to speak."""
        return self.turn_taking.speaker(0)

    @property
    def chance(self) -> int:
        """How many chances to speak have passed: every reply and every pass is one."""
        return len(self.turns) + self.passes

    def decide_prompt(self, agent: int) -> Prompt:
        """Ask an agent whether it speaks now (a copy, never in history)."""
        how = self.speaking[agent]
        request = decide_request(how.personality, how.use_token, how.pass_token, how.examples)
        return self.rendering.system_prompt(agent, self.turns, request)

    def decide_request(self, step: DecideStep) -> GenerationRequest:
        """Greedy and short: the decision is a token, not a reply."""
        return GenerationRequest(
            prompt=self.decide_prompt(step.speaker), temperature=0.0, max_tokens=8, stop=("\n",)
        )

    def record_decision(
        self, step: DecideStep, raw: str, generation: Generation | None = None
    ) -> bool:
        """Record a decision with SAUCE's rule: a non-empty answer without the pass token
        speaks. Returns whether the agent speaks.

        Args:
            step: the decide step ``next_step`` asked for.
            raw: the model's answer.
            generation: the engine's answer, for its token counts and latency.
        """
        how = self.speaking[step.speaker]
        speaks = bool(raw.strip()) and how.pass_token not in raw
        cost = generation or Generation(raw)
        self.add_decision(
            Decision(
                chance=step.chance,
                iteration=step.iteration,
                speaker=step.speaker,
                speaks=speaks,
                raw_text=raw,
                prompt_tokens=cost.prompt_tokens,
                completion_tokens=cost.completion_tokens,
                cached_tokens=cost.cached_tokens,
                latency_s=cost.latency_s,
            )
        )
        return speaks

    def add_decision(self, decision: Decision) -> None:
        """Append a decision (one just made, or a stored one replayed); it must be the one
        next_step asked for. A pass moves the chance on; too many in a row fail the debate."""
        step = self.next_step()
        if step != DecideStep(decision.iteration, decision.speaker, decision.chance):
            raise RuntimeError(
                f"decision at chance {decision.chance} recorded out of order (expected {step})"
            )
        self.decisions[decision.chance] = decision
        if decision.speaks:
            return
        self.passes += 1
        tail = 0
        for chance in reversed(range(self.chance)):
            made = self.decisions.get(chance)
            if made is None or made.speaks:
                break
            tail += 1
        if tail >= 3 * self.n_agents:
            self.failed = (
                f"nobody chose to speak in {tail} chances in a row "
                f"(after {len(self.turns)} replies)"
            )

    @property
    def survey_iterations(self) -> list[int]:
        """Iterations at which any question is asked."""
        return [i for i in range(self.spec.iterations + 1) if self.questions_at(i)]

    def questions_at(self, iteration: int) -> list[SurveyQuestion]:
        """The questions asked after ``iteration`` replies."""
        last = self.spec.iterations
        asked = []
        for q in self.questions:
            if q.iterations is None:
                hit = iteration % self.n_agents == 0
            elif q.iterations == "always":
                hit = True
            else:
                hit = iteration in q.iterations or (-1 in q.iterations and iteration == last)
            if hit:
                asked.append(q)
        return asked

    def _missing(self, iteration: int, agent: int) -> list[tuple[SurveyQuestion, SurveyMode]]:
        missing = []
        for q in self.questions_at(iteration):
            modes = self.spec.survey_modes if q.kind == "scale" else (SurveyMode.GENERATE,)
            missing += [(q, m) for m in modes if (iteration, agent, q.id, m) not in self.surveys]
        return missing

    def pending_surveys(self, iteration: int) -> list[tuple[SurveyItem, tuple[SurveyMode, ...]]]:
        """The survey questions still unanswered after ``iteration`` replies: one item per
        agent and question, with the modes it still needs (a resumed debate asks only these).
        """
        pending = []
        for agent in range(self.n_agents):
            by_question: dict[str, list[SurveyMode]] = {}
            questions: dict[str, SurveyQuestion] = {}
            for q, mode in self._missing(iteration, agent):
                by_question.setdefault(q.id, []).append(mode)
                questions[q.id] = q
            for qid, modes in by_question.items():
                q = questions[qid]
                item = SurveyItem(
                    iteration,
                    agent,
                    self.survey_prompt(agent, q.text),
                    question_id=q.id,
                    question=q.text,
                    kind=q.kind,
                    conversation_id=f"debate-{self.spec.seed}-agent-{agent}",
                    scale=q.scale,
                )
                pending.append((item, tuple(modes)))
        return pending

    def agent_context(self, agent: int) -> dict[str, object]:
        """Everything an agent is told besides the debate itself, as given: the opening of
        its every prompt (its story and the topic line, or SAUCE's scenario and opinion),
        its prompt format, and how it takes part (SAUCE's speaking personality, tokens)."""
        how = self.speaking[agent]
        return {
            "system_prompt": self.rendering.headers[agent],
            "prompt_format": str(self.rendering.formats[agent]),
            "opinion": how.opinion,
            "speaking_personality": how.personality,
            "asynchronous": how.asynchronous,
            "use_turn_token": how.use_token if how.asynchronous else None,
            "pass_turn_token": how.pass_token if how.asynchronous else None,
            "in_context_learning": how.examples,
        }

    def is_chat(self, agent: int) -> bool:
        """True when this agent's prompts are chat messages rather than one transcript."""
        return self.rendering.is_chat(agent)

    def context(self, agent: int) -> str:
        """The agent's view as a transcript: its background, the topic line, the history."""
        return self.rendering.transcript(agent, self.turns)

    def messages(self, agent: int, request: str) -> list[Message]:
        """The agent's view as chat messages, ending with ``request`` from the user."""
        return self.rendering.messages(agent, self.turns, request)

    def turn_prompt(self, agent: int) -> Prompt:
        """Prompt asking the agent for its next reply (paper Fig. 2b, or its chat form)."""
        return self.rendering.turn_prompt(agent, self.turns)

    def survey_prompt(self, agent: int, question: str | None = None) -> Prompt:
        """Prompt asking a survey question on a copy of the context (Fig. 2c).

        Built fresh from the turns each time: no survey question or answer is ever part
        of any agent's history.
        """
        text = self.question if question is None else question
        return self.rendering.survey_prompt(agent, self.turns, text)

    @property
    def done(self) -> bool:
        """True once every turn and survey is recorded, or the debate failed."""
        return self.failed is not None or self.next_step() is None

    def next_step(self) -> SurveyStep | TurnStep | DecideStep | None:
        """What the debate needs next."""
        if self.failed is not None:
            return None
        iteration = len(self.turns)
        if any(self._missing(iteration, a) for a in range(self.n_agents)):
            return SurveyStep(iteration)
        if iteration < self.spec.iterations:
            chance = self.chance
            speaker = self.turn_taking.speaker(chance)
            if not 0 <= speaker < self.n_agents:
                raise ConfigError(
                    f"turn taking gave chance {chance} to agent {speaker}; "
                    f"there are {self.n_agents} agents"
                )
            if self.turn_taking.decides(speaker) and chance not in self.decisions:
                return DecideStep(iteration + 1, speaker, chance)
            return TurnStep(iteration + 1, speaker)
        return None

    def turn_request(self, step: TurnStep, attempt: int) -> GenerationRequest:
        """The generation request for a turn; each attempt gets its own seed."""
        return GenerationRequest(
            prompt=self.turn_prompt(step.speaker),
            temperature=self.spec.temperature,
            max_tokens=self.spec.max_tokens,
            seed=derive_seed(self.spec.seed, step.iteration, attempt),
            stop=self._stops,
            conversation_id=f"debate-{self.spec.seed}-agent-{step.speaker}",
        )

    def clean_reply(self, raw: str, speaker: int) -> tuple[str, bool]:
        """Strip echoed names, cut at the next speaker line, enforce the word limit."""
        return clean_reply(
            raw, self.spec.personas[speaker].name, self._speaker_line, self.spec.word_limit
        )

    def record_turn(self, turn: Turn) -> None:
        """Append a reply; it must be the one next_step asked for."""
        step = self.next_step()
        if (
            not isinstance(step, TurnStep)
            or step.iteration != turn.iteration
            or step.speaker != turn.speaker
        ):
            raise RuntimeError(f"turn {turn.iteration} recorded out of order (expected {step})")
        self.turns.append(turn)

    def record_survey(self, answer: SurveyAnswer) -> None:
        """Store a survey answer; it never enters any history."""
        key = (answer.iteration, answer.agent_index, answer.question_id, answer.mode)
        self.surveys[key] = answer


@dataclass
class DebateEvents:
    """Callbacks a caller may set to watch (or store) progress."""

    on_turn: Callable[[Debate, Turn], None] | None = None
    on_survey: Callable[[Debate, list[SurveyAnswer]], None] | None = None
    on_failure: Callable[[Debate, str], None] | None = None
    on_retry: Callable[[Debate, TurnStep, int, str], None] | None = None
    on_decision: Callable[[Debate, DecideStep, bool, str], None] | None = None
    """An asynchronous agent decided whether to speak (True: it speaks); the whole
    decision, with its cost, is ``debate.decisions[step.chance]``."""
    should_stop: Callable[[], bool] | None = None
    """Checked before every step; True ends the run early (finished work is kept)."""
    on_end: Callable[[Debate], None] | None = None
    """The debate is done (every step taken, or failed); not called when it was stopped."""
    extra: dict[str, object] = field(default_factory=dict)


ModelChoice = LanguageModel | Callable[[Debate, int], LanguageModel]
"""One model for every agent, or a function (debate, agent index) -> model."""


def _chooser(models: ModelChoice) -> Callable[[Debate, int], LanguageModel]:
    if isinstance(models, LanguageModel):
        return lambda debate, agent: models
    return models


def _run_survey(
    choose: Callable[[Debate, int], LanguageModel],
    debate: Debate,
    step: SurveyStep,
    events: DebateEvents,
) -> None:
    # Every agent's items that go to the same model and need the same modes are one call.
    groups: dict[tuple[int, tuple[SurveyMode, ...]], list[SurveyItem]] = {}
    engines: dict[int, LanguageModel] = {}
    for item, modes in debate.pending_surveys(step.iteration):
        lm = choose(debate, item.agent_index)
        engines[id(lm)] = lm
        groups.setdefault((id(lm), modes), []).append(item)
    answered: list[SurveyAnswer] = []
    for (engine_id, modes), items in groups.items():
        for answer in ask(engines[engine_id], items, modes):
            debate.record_survey(answer)
            answered.append(answer)
    if events.on_survey and answered:
        events.on_survey(debate, answered)


def _run_turn(
    choose: Callable[[Debate, int], LanguageModel],
    debate: Debate,
    step: TurnStep,
    events: DebateEvents,
) -> None:
    lm = choose(debate, step.speaker)
    for attempt in range(1, debate.spec.max_retries + 2):
        [gen] = lm.generate([debate.turn_request(step, attempt)])
        text, truncated = debate.clean_reply(gen.text, step.speaker)
        if is_usable(text):
            turn = Turn(
                iteration=step.iteration,
                speaker=step.speaker,
                text=text,
                raw_text=gen.text,
                attempts=attempt,
                truncated=truncated,
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens,
                cached_tokens=gen.cached_tokens,
                latency_s=gen.latency_s,
            )
            debate.record_turn(turn)
            if events.on_turn:
                events.on_turn(debate, turn)
            return
        if attempt <= debate.spec.max_retries and events.on_retry:
            events.on_retry(debate, step, attempt, gen.text)
    debate.failed = (
        f"no usable reply at iteration {step.iteration} after {attempt} attempts "
        f"(last: {gen.text[:60]!r})"
    )
    if events.on_failure:
        events.on_failure(debate, debate.failed)


def _run_decision(
    choose: Callable[[Debate, int], LanguageModel],
    debate: Debate,
    step: DecideStep,
    events: DebateEvents,
) -> None:
    [gen] = choose(debate, step.speaker).generate([debate.decide_request(step)])
    speaks = debate.record_decision(step, gen.text, gen)
    if events.on_decision:
        events.on_decision(debate, step, speaks, gen.text)
    if debate.failed and events.on_failure:
        events.on_failure(debate, debate.failed)


def run_debate(models: ModelChoice, debate: Debate, events: DebateEvents | None = None) -> None:
    """Advance one debate, step by step, until it is done, failed, or asked to stop.

    Args:
        models: one model for every agent, or a function (debate, agent index) -> model.
        debate: the debate to advance (a restored one carries on where it stopped).
        events: callbacks; ``on_end`` is called once the debate is done (not when stopped).
    """
    events = events or DebateEvents()
    choose = _chooser(models)
    while not (events.should_stop and events.should_stop()):
        step = debate.next_step()
        if step is None:
            if events.on_end:
                events.on_end(debate)
            return
        if isinstance(step, DecideStep):
            _run_decision(choose, debate, step, events)
        elif isinstance(step, SurveyStep):
            _run_survey(choose, debate, step, events)
        else:
            _run_turn(choose, debate, step, events)


def run_debates(
    models: ModelChoice,
    debates: Sequence[Debate],
    events: DebateEvents | None = None,
    workers: int | None = None,
) -> None:
    """Run debates at once, a worker thread per debate, until each is done or failed.

    The engine batches the requests that arrive together from all workers over its slots
    (continuous batching), so a slow debate never holds the others back. The first error
    stops every other debate after its current step, and is raised.

    Args:
        models: one model for every agent, or a function (debate, agent index) -> model.
        debates: the debates; finished ones are skipped.
        events: callbacks, called from the workers' threads.
        workers: debates driven at once (default: all of them).
    """
    events = events or DebateEvents()
    todo = [d for d in debates if not d.done]
    if not todo:
        return
    stop = threading.Event()
    asked = events.should_stop

    def should_stop() -> bool:
        return stop.is_set() or bool(asked and asked())

    mine = dataclasses.replace(events, should_stop=should_stop)
    pool = ThreadPoolExecutor(max_workers=workers or len(todo), thread_name_prefix="debate")
    futures = [pool.submit(run_debate, models, debate, mine) for debate in todo]
    try:
        finished, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in finished:
            exc = future.exception()
            if exc is not None:
                raise exc
    except BaseException:
        stop.set()  # let running debates finish their current step, then stop
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
