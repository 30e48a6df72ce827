"""Round-robin debates with hidden attitude surveys (Taubenfeld et al. 2024, section 4.3).

A ``Debate`` is a small state machine: it says what it needs next (a survey of all
agents, or one agent's turn) and records the answers. ``run_debates`` advances many
debates in lockstep so the engine gets a whole batch of requests at every step.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from stancelab.engine.base import GenerationRequest, LanguageModel
from stancelab.errors import ConfigError
from stancelab.personas import Persona
from stancelab.survey import SurveyAnswer, SurveyItem, SurveyMode, ask
from stancelab.templates import PromptSet

_GENERIC_SPEAKER = r"[A-Z][A-Za-z .'\-]{0,30}"


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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class SurveyStep:
    """All agents are to be surveyed at this iteration."""

    iteration: int


@dataclass(frozen=True)
class TurnStep:
    """The given agent is to speak at this iteration."""

    iteration: int
    speaker: int


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any parts (same parts, same seed, on every machine)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Debate:
    """State of one debate; prompts are rebuilt append-only from the stored turns."""

    def __init__(self, spec: DebateSpec, prompts: PromptSet) -> None:
        self.spec = spec
        self.prompts = prompts
        n = len(spec.personas)
        self.first_speaker = random.Random(derive_seed(spec.seed, "first")).randrange(n)
        self.turns: list[Turn] = []
        self.surveys: dict[tuple[int, int, SurveyMode], SurveyAnswer] = {}
        self.failed: str | None = None
        self.question = prompts.survey_question.format(topic=spec.topic)
        self._headers = [
            prompts.debate_context.format(
                background=p.background.strip(), topic=spec.topic, word_limit=spec.word_limit
            )
            for p in spec.personas
        ]
        names = "|".join(re.escape(p.name) for p in spec.personas)
        self._speaker_line = re.compile(
            rf"\n\s*(?:Me|System|{names}|{_GENERIC_SPEAKER})\s*:", re.MULTILINE
        )
        self._stops = ("\nMe:", "\nSystem:", *(f"\n{p.name}:" for p in spec.personas))

    @property
    def n_agents(self) -> int:
        """Number of debaters."""
        return len(self.spec.personas)

    def speaker_at(self, iteration: int) -> int:
        """Index of the agent who speaks at a 1-based iteration (round robin)."""
        return (self.first_speaker + iteration - 1) % self.n_agents

    @property
    def survey_iterations(self) -> list[int]:
        """Iteration 0 and the end of every full round-robin cycle."""
        return list(range(0, self.spec.iterations + 1, self.n_agents))

    def _history(self, agent: int) -> str:
        lines = []
        for turn in self.turns:
            who = "Me" if turn.speaker == agent else self.spec.personas[turn.speaker].name
            lines.append(f"{who}: {turn.text}\n")
        return "".join(lines)

    def context(self, agent: int) -> str:
        """The agent's view: its background, the topic line and the history so far."""
        return self._headers[agent] + self._history(agent)

    def turn_prompt(self, agent: int) -> str:
        """Prompt asking the agent for its next reply (paper Fig. 2b)."""
        return self.context(agent) + self.prompts.debate_turn

    def survey_prompt(self, agent: int) -> str:
        """Prompt asking the survey question on a copy of the context (Fig. 2c)."""
        return self.context(agent) + self.prompts.survey_prompt.format(question=self.question)

    @property
    def done(self) -> bool:
        """True once every turn and survey is recorded, or the debate failed."""
        return self.failed is not None or self.next_step() is None

    def next_step(self) -> SurveyStep | TurnStep | None:
        """What the debate needs next."""
        if self.failed is not None:
            return None
        iteration = len(self.turns)
        if iteration in self.survey_iterations and any(
            (iteration, a, m) not in self.surveys
            for a in range(self.n_agents)
            for m in self.spec.survey_modes
        ):
            return SurveyStep(iteration)
        if iteration < self.spec.iterations:
            return TurnStep(iteration + 1, self.speaker_at(iteration + 1))
        return None

    def turn_request(self, step: TurnStep, attempt: int) -> GenerationRequest:
        """The generation request for a turn; each attempt gets its own seed."""
        return GenerationRequest(
            prompt=self.turn_prompt(step.speaker),
            temperature=self.spec.temperature,
            max_tokens=self.spec.max_tokens,
            seed=derive_seed(self.spec.seed, step.iteration, attempt),
            stop=self._stops,
        )

    def clean_reply(self, raw: str, speaker: int) -> tuple[str, bool]:
        """Strip echoed names, cut at the next speaker line, enforce the word limit."""
        return clean_reply(raw, self.spec.personas[speaker].name, self._speaker_line,
                           self.spec.word_limit)

    def record_turn(self, turn: Turn) -> None:
        """Append a reply; it must be the one next_step asked for."""
        step = self.next_step()
        if not isinstance(step, TurnStep) or step.iteration != turn.iteration:
            raise RuntimeError(f"turn {turn.iteration} recorded out of order (expected {step})")
        self.turns.append(turn)

    def record_survey(self, answer: SurveyAnswer) -> None:
        """Store a survey answer; it never enters any history."""
        self.surveys[(answer.iteration, answer.agent_index, answer.mode)] = answer


def clean_reply(
    raw: str, own_name: str, speaker_line: re.Pattern[str], word_limit: int
) -> tuple[str, bool]:
    """Return (cleaned reply, truncated?) for a raw completion."""
    text = "\n" + raw.replace("\r", "")
    match = speaker_line.search(text, 1)
    if match:
        text = text[: match.start()]
    text = text.strip()
    echo = re.compile(rf"^(?:Me|{re.escape(own_name)})\s*:\s*")
    while echo.match(text):
        text = echo.sub("", text, count=1)
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    words = text.split()
    # The prompt asks for a reply "shorter than N words": at most N-1 words.
    limit = word_limit - 1
    if len(words) <= limit:
        return text, False
    cut = " ".join(words[:limit])
    sentence_end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    if cut[-1:] in ".!?":
        sentence_end = len(cut) - 1
    if sentence_end >= len(cut) // 2:
        cut = cut[: sentence_end + 1]
    return cut, True


def is_usable(text: str) -> bool:
    """A reply is usable if it holds at least one word of two or more letters."""
    return re.search(r"[^\W\d_]{2,}", text) is not None


@dataclass
class DebateEvents:
    """Callbacks a caller may set to watch (or store) progress."""

    on_turn: Callable[[Debate, Turn], None] | None = None
    on_survey: Callable[[Debate, list[SurveyAnswer]], None] | None = None
    on_failure: Callable[[Debate, str], None] | None = None
    on_retry: Callable[[Debate, TurnStep, int, str], None] | None = None
    extra: dict[str, object] = field(default_factory=dict)


def _run_surveys(lm: LanguageModel, work: list[tuple[Debate, SurveyStep]],
                 events: DebateEvents) -> None:
    by_modes: dict[tuple[SurveyMode, ...], list[tuple[Debate, SurveyItem]]] = {}
    for debate, step in work:
        for agent in range(debate.n_agents):
            missing = tuple(
                m for m in debate.spec.survey_modes
                if (step.iteration, agent, m) not in debate.surveys
            )
            if missing:
                item = SurveyItem(step.iteration, agent, debate.survey_prompt(agent))
                by_modes.setdefault(missing, []).append((debate, item))
    answered: dict[int, list[SurveyAnswer]] = {}
    for modes, pairs in by_modes.items():
        answers = ask(lm, [item for _, item in pairs], modes)
        for k, (debate, _) in enumerate(pairs):
            for answer in answers[k * len(modes) : (k + 1) * len(modes)]:
                debate.record_survey(answer)
                answered.setdefault(id(debate), []).append(answer)
    for debate, _ in work:
        if events.on_survey and id(debate) in answered:
            events.on_survey(debate, answered[id(debate)])


def _run_turns(lm: LanguageModel, work: list[tuple[Debate, TurnStep]],
               events: DebateEvents) -> None:
    pending = [(debate, step, 1) for debate, step in work]
    while pending:
        requests = [d.turn_request(s, attempt) for d, s, attempt in pending]
        generations = lm.generate(requests)
        retry = []
        for (debate, step, attempt), gen in zip(pending, generations, strict=True):
            text, truncated = debate.clean_reply(gen.text, step.speaker)
            if not is_usable(text):
                if attempt <= debate.spec.max_retries:
                    if events.on_retry:
                        events.on_retry(debate, step, attempt, gen.text)
                    retry.append((debate, step, attempt + 1))
                    continue
                debate.failed = (
                    f"no usable reply at iteration {step.iteration} after {attempt} attempts "
                    f"(last: {gen.text[:60]!r})"
                )
                if events.on_failure:
                    events.on_failure(debate, debate.failed)
                continue
            turn = Turn(
                iteration=step.iteration, speaker=step.speaker, text=text, raw_text=gen.text,
                attempts=attempt, truncated=truncated, prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens, cached_tokens=gen.cached_tokens,
                latency_s=gen.latency_s,
            )
            debate.record_turn(turn)
            if events.on_turn:
                events.on_turn(debate, turn)
        pending = retry


def run_debates(
    lm: LanguageModel, debates: Sequence[Debate], events: DebateEvents | None = None
) -> None:
    """Advance all debates together until each is done or failed."""
    events = events or DebateEvents()
    while True:
        surveys: list[tuple[Debate, SurveyStep]] = []
        turns: list[tuple[Debate, TurnStep]] = []
        for debate in debates:
            step = debate.next_step()
            if isinstance(step, SurveyStep):
                surveys.append((debate, step))
            elif isinstance(step, TurnStep):
                turns.append((debate, step))
        if not surveys and not turns:
            return
        if surveys:
            _run_surveys(lm, surveys, events)
        if turns:
            _run_turns(lm, turns, events)
