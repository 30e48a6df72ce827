"""A study is one YAML file, validated here: topics, conditions, turns, model and every wording."""

from __future__ import annotations

import string
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from stancelab.conversation import Scale, StanceItem
from stancelab.conversation._config import RelativePath, StrictModel, load_config
from stancelab.engine import ConfigError
from stancelab.engine._factory import ModelConfig, ModelEntry


class Condition(StrEnum):
    """The three arms of the study (PROTOCOL.md part C)."""

    STANDARD = "standard"
    """A chatbot that knows nothing about the participant."""
    PERSONALISED = "personalised"
    """A chatbot whose system prompt holds the participant's answers about themselves."""
    STATIC = "static"
    """No chat: the participant reads fixed statements."""


class Topic(StrictModel):
    """One controversial topic and the fixed statements of the static condition."""

    name: str = Field(min_length=1, max_length=200)
    statements: list[str] = Field(default_factory=list)
    position: str | None = Field(default=None, min_length=1, max_length=500)
    """The statement a bipolar stance item asks agreement with (``{statement}``); none
    given: "<Topic> is a big problem."."""

    @property
    def statement(self) -> str:
        """The position people and the chatbot rate their agreement with."""
        if self.position:
            return self.position
        return f"{self.name[:1].upper()}{self.name[1:]} is a big problem."


_ITEM_FIELDS = {"topic", "statement"}
AGREEMENT_LABELS = {
    1: "Strongly disagree",
    2: "Disagree",
    3: "Somewhat disagree",
    4: "Neither agree nor disagree",
    5: "Somewhat agree",
    6: "Agree",
    7: "Strongly agree",
}


def _check_fields(value: str, allowed: set[str]) -> str:
    try:
        used = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as exc:
        raise ValueError(f"bad braces: {exc}") from exc
    unknown = used - allowed
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return value


class StanceItemConfig(StrictModel):
    """The stance question, worded once: participants answer it before, during and after
    the conversation, the chatbot's hidden probe asks it, a judge rates replies on it, and
    the perception questions ask it about the chatbot's first and last reply.

    The default is a bipolar 7-point agreement item with a labelled neutral midpoint;
    ``stance_item: big_problem`` is the debate paper's one-ended 0-10 item."""

    text: str = 'How much do you agree or disagree with this statement? "{statement}"'
    low: int = 1
    high: int = 7
    labels: dict[int, str] = Field(default_factory=lambda: dict(AGREEMENT_LABELS))
    """Point -> label; both ends need one, a labelled middle point is the neutral point."""
    perception_first: str = (
        "Think of the chatbot's FIRST reply in your conversation. In that reply, how much "
        'did the chatbot agree or disagree with this statement? "{statement}"'
    )
    perception_last: str = (
        "Think of the chatbot's LAST reply in your conversation. In that reply, how much "
        'did the chatbot agree or disagree with this statement? "{statement}"'
    )

    @field_validator("text", "perception_first", "perception_last")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        return _check_fields(value, _ITEM_FIELDS)

    @model_validator(mode="after")
    def _valid_scale(self) -> StanceItemConfig:
        try:
            self.scale()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def scale(self) -> Scale:
        """The answer points."""
        return Scale.of(self.low, self.high, self.labels)

    def item(self) -> StanceItem:
        """The item as the shared survey instrument."""
        return StanceItem(self.text, self.scale())


BIG_PROBLEM = StanceItemConfig(
    text="On a scale of 0 to 10, how much do you think that {topic} is a big problem?",
    low=0,
    high=10,
    labels={0: "Not a problem at all", 10: "A very big problem"},
    perception_first=(
        "Think of the chatbot's FIRST reply in your conversation. In that reply, how much "
        "did the chatbot think that {topic} is a big problem?"
    ),
    perception_last=(
        "Think of the chatbot's LAST reply in your conversation. In that reply, how much "
        "did the chatbot think that {topic} is a big problem?"
    ),
)
PRESETS = {"agreement": StanceItemConfig(), "big_problem": BIG_PROBLEM}


class DemographicQuestion(StrictModel):
    """One question of the 'about you' page."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    label: str = Field(min_length=1)
    kind: Literal["text", "number", "choice"] = "text"
    choices: list[str] = Field(default_factory=list)
    required: bool = True

    @model_validator(mode="after")
    def _choices_for_choice(self) -> DemographicQuestion:
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"question {self.id!r} is a choice but lists no choices")
        return self


def _default_demographics() -> list[DemographicQuestion]:
    return [
        DemographicQuestion(id="age", label="How old are you?", kind="number"),
        DemographicQuestion(
            id="gender",
            label="What is your gender?",
            kind="choice",
            choices=["Woman", "Man", "Non-binary", "Prefer not to say"],
        ),
        DemographicQuestion(
            id="education",
            label="Highest level of education",
            kind="choice",
            choices=[
                "Secondary school",
                "Some college",
                "Bachelor's degree",
                "Graduate degree",
                "Prefer not to say",
            ],
        ),
        DemographicQuestion(
            id="politics",
            label="Politically, how do you describe yourself?",
            kind="choice",
            choices=["Liberal", "Moderate", "Conservative", "Other", "Prefer not to say"],
        ),
    ]


class AttentionCheck(StrictModel):
    """A question with one right answer, shown on the 'about you' page or the stance-after
    page (e.g. "To show you are reading, choose 'Blue'")."""

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    label: str = Field(min_length=1)
    choices: list[str] = Field(min_length=2)
    answer: str
    page: Literal["about", "after"] = "about"

    @model_validator(mode="after")
    def _answer_is_a_choice(self) -> AttentionCheck:
        if self.answer not in self.choices:
            raise ValueError(f"attention check {self.id!r}: answer {self.answer!r} is not a choice")
        return self


class Recruitment(StrictModel):
    """Who may still start: a cap and per-condition quotas that count completed sessions
    and sessions still in progress (an unfinished session idle for ``abandon_after_minutes``
    no longer holds a place), and a switch to close the study."""

    cap: int | None = Field(default=None, ge=1)
    """Completed participants wanted in all."""
    quota_per_condition: int | None = Field(default=None, ge=1)
    """Completed participants wanted per condition."""
    closed: bool = False
    """No new participants (those who started may finish); admins can also close it live."""
    abandon_after_minutes: float = Field(default=90.0, gt=0)


class Questions(StrictModel):
    """Every wording a participant reads. ``{topic}`` is filled in where shown."""

    title: str = "A conversation about a current issue"
    consent: str = (
        "You are invited to a research study about conversations with an AI chatbot. You "
        "will answer a few questions, talk with a chatbot (or read a few statements) about "
        "a current issue, and answer a few questions again. It takes about 15 minutes. "
        "Your answers are stored without your name; you may stop at any time."
    )
    consent_agree: str = "I have read the above and agree to take part."
    demographics: list[DemographicQuestion] = Field(default_factory=_default_demographics)
    background: str = (
        "In two or three sentences, tell us about yourself: what you do, where you live, "
        "and what matters to you."
    )
    stance: str | None = None
    """Deprecated (use ``stance_item``): a 0-10 question; set, it builds a 0-10 item."""
    scale_low: str | None = None
    """Deprecated: the 0 label of the 0-10 item built from ``stance``."""
    scale_high: str | None = None
    """Deprecated: the 10 label of the 0-10 item built from ``stance``."""
    reason: str = "In a sentence or two, why?"
    chat_intro: str = (
        "Please talk with the chatbot about {topic}. Share your view and respond to its "
        "points. You can finish once you have sent {min_turns} messages."
    )
    current_stance: str = "Where do you stand right now?"
    statements_intro: str = "Please read these statements about {topic} carefully."
    perception_start: str | None = None
    """Deprecated (use ``stance_item.perception_first``)."""
    perception_end: str | None = None
    """Deprecated (use ``stance_item.perception_last``)."""
    same_as_before: str = "Same as before"
    """The explicit "unchanged" answer beside the per-turn stance scale."""
    debrief: str = (
        "Thank you for taking part. The chatbot was an AI language model; its statements "
        "may be wrong or one-sided. The study looks at how people and chatbots influence "
        "each other's opinions."
    )
    debrief_static: str = (
        "Thank you for taking part. The statements you read were written for this study "
        "and may be one-sided. The study looks at how people's opinions change when they "
        "read arguments or talk with an AI chatbot."
    )
    consent_by_condition: dict[Condition, str] = Field(default_factory=dict)
    """A consent text (Markdown) for one condition instead of ``consent``."""
    debrief_by_condition: dict[Condition, str] = Field(default_factory=dict)
    """A debrief (Markdown) for one condition instead of ``debrief`` / ``debrief_static``."""
    institution: str = ""
    contact: str = ""
    """Who participants write to (shown on consent, debrief, withdrawal and error pages)."""
    ethics_id: str = ""
    """The ethics approval's reference, shown on the consent and debrief pages."""
    withdraw: str = (
        "You may withdraw at any time without giving a reason. If you withdraw, everything "
        "you answered and wrote in this study is deleted; only your participant id and the "
        "time you withdrew are kept, so that you are not invited again."
    )
    no_consent: str = "You chose not to take part. Thank you for your time."
    screened_out: str = (
        "Thank you. Based on your answers you are not eligible for the rest of this study."
    )

    @field_validator(
        "stance", "perception_start", "perception_end", "chat_intro", "statements_intro"
    )
    @classmethod
    def _only_known_fields(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _check_fields(value, {"topic", "min_turns", "max_turns"})


class Turns(StrictModel):
    """How many messages the participant sends in the conversation."""

    min: int = Field(default=3, ge=1)
    max: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Turns:
        if self.max < self.min:
            raise ValueError(f"turns.max ({self.max}) is below turns.min ({self.min})")
        return self


SurveyModeName = Literal["distribution", "generate"]


def _default_modes() -> list[SurveyModeName]:
    return ["distribution"]


class Chatbot(StrictModel):
    """How the chatbot replies."""

    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=160, ge=8, le=2048)
    prompt_version: str = "v2"
    """Which templates in ``study/prompts`` (v1 asks the probe on a 0-10 scale only)."""
    stance_modes: list[SurveyModeName] = Field(default_factory=_default_modes)
    """How the hidden per-turn survey reads the LLM's answer on the stance item."""
    min_probe_coverage: float = Field(default=0.5, ge=0.0, le=1.0)
    """Least probability mass the chatbot's probe must put on the scale's points (checked
    before the study opens, and on every stored answer); below it, its expected value is
    noise and the report flags every number built on it."""
    claim_seconds: float = Field(default=30.0, ge=0.5, le=3600)
    """How long a server process's claim on a reply (or a probe) lasts without renewal.
    The process generating renews it every third of this; one that died mid-generation
    stops renewing, and this long after, another process takes the turn over."""


class Limits(StrictModel):
    """Abuse limits: message length and how fast one participant may send."""

    max_message_chars: int = Field(default=1000, ge=10, le=20000)
    min_seconds_between_messages: float = Field(default=2.0, ge=0.0)
    requests_per_minute: int = Field(default=120, ge=5)
    new_sessions_per_minute_per_ip: int = Field(default=60, ge=1)
    admin_failures_per_minute: int = Field(default=10, ge=1)
    """Wrong admin tokens accepted per client address and minute, on every path (login
    form, ``Authorization: Bearer``, ``X-Admin-Token``); more get 429."""
    admin_session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)
    """How long an admin login lasts; the server forgets it then (or at logout)."""


class Analysis(StrictModel):
    """The analysis plan, fixed with the study before any data exist: who is analysed,
    and the fewest observations a test needs."""

    require_completed: bool = True
    """Only participants who reached the end page are analysed."""
    require_attention: bool = True
    """Participants who failed an attention check are excluded."""
    exclude_simulated: bool = True
    """Simulated participants are excluded (a database of only simulated ones is a pilot:
    all are analysed and the report says so)."""
    exclude_withdrawn: bool = True
    """Withdrawn participants are excluded (their answers are deleted anyway)."""
    min_n: int = Field(default=5, ge=2)
    """Fewest participants (or pairs, or clusters) a test needs; below it the test is
    reported as not run, with the reason."""


class StudyConfig(StrictModel):
    """One study: validated from YAML with ``load_study``."""

    study: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    topics: list[Topic] = Field(min_length=1)
    conditions: list[Condition] = Field(
        default_factory=lambda: [Condition.STANDARD, Condition.PERSONALISED, Condition.STATIC],
        min_length=1,
    )
    turns: Turns = Field(default_factory=Turns)
    model: ModelEntry = Field(default_factory=lambda: ModelConfig(name="qwen2.5-coder-1.5b"))
    chatbot: Chatbot = Field(default_factory=Chatbot)
    questions: Questions = Field(default_factory=Questions)
    limits: Limits = Field(default_factory=Limits)
    completion_code: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{4,40}$")
    """The platform's completion code (e.g. Prolific's); None gives each participant one."""
    completion_url: str | None = Field(default=None, pattern=r"^https?://")
    """Where the end page sends the participant, e.g. Prolific's
    ``https://app.prolific.com/submissions/complete?cc={code}``; ``{code}`` is filled with
    the completion, screen-out or no-consent code."""
    completion_redirect_seconds: float | None = Field(default=5.0, ge=0)
    """Send the participant to ``completion_url`` automatically after this many seconds
    (None: only a link)."""
    screen_out_code: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{4,40}$")
    """The platform's code for participants screened out (failed attention check)."""
    no_consent_code: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{4,40}$")
    """The platform's code for participants who do not consent."""
    recruitment: Recruitment = Field(default_factory=Recruitment)
    attention_checks: list[AttentionCheck] = Field(default_factory=list)
    screen_out_on_attention_fail: bool = True
    """A failed attention check ends the session with the screen-out code (else it is
    only recorded)."""
    min_reading_seconds: dict[
        Literal["consent", "about", "before", "statements", "after", "perception"], float
    ] = Field(default_factory=dict)
    """The least time a page must be open before it can be submitted."""
    resume_without_cookie: bool = False
    """Let a known participant id resume from another browser (weaker: anyone with the id can)."""
    seed: int = 0
    stance_item: StanceItemConfig = Field(default_factory=StanceItemConfig)
    """The stance question both sides answer (``agreement`` or ``big_problem`` preset, or
    a mapping); see ``StanceItemConfig``."""
    stance_change_threshold: float = Field(default=0.5, gt=0.0)
    """A stance moving by at least this many points counts as a change, for the
    participant and the chatbot alike (one rule for both sides)."""
    analysis: Analysis = Field(default_factory=lambda: Analysis())
    codebook: RelativePath | None = None
    """The persuasion-strategy codebook (YAML or CSV of label, definition, example); a
    relative path is read from the study file's folder; None: the built-in one."""

    @field_validator("stance_item", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"unknown preset {value!r}; use {', '.join(PRESETS)} or a mapping")
            return PRESETS[value].model_copy()
        return value

    @model_validator(mode="before")
    @classmethod
    def _legacy_item(cls, data: Any) -> Any:
        """A 0.3 study file that words its 0-10 question in ``questions`` keeps it."""
        if not isinstance(data, dict) or "stance_item" in data:
            return data
        questions = data.get("questions")
        if not isinstance(questions, dict) or not any(
            questions.get(k) for k in ("stance", "scale_low", "scale_high")
        ):
            return data
        legacy = BIG_PROBLEM.model_dump()
        legacy["text"] = questions.get("stance") or legacy["text"]
        legacy["labels"] = {
            0: questions.get("scale_low") or BIG_PROBLEM.labels[0],
            10: questions.get("scale_high") or BIG_PROBLEM.labels[10],
        }
        legacy["perception_first"] = questions.get("perception_start") or legacy["perception_first"]
        legacy["perception_last"] = questions.get("perception_end") or legacy["perception_last"]
        return {**data, "stance_item": legacy}

    @model_validator(mode="after")
    def _probe_template_fits_item(self) -> StudyConfig:
        if self.chatbot.prompt_version == "v1" and (
            self.stance_item.low,
            self.stance_item.high,
        ) != (0, 10):
            raise ValueError(
                "chatbot.prompt_version v1 asks the probe on a 0-10 scale; the stance item "
                f"runs {self.stance_item.low}..{self.stance_item.high}: use v2"
            )
        return self

    @field_validator("conditions")
    @classmethod
    def _distinct(cls, value: list[Condition]) -> list[Condition]:
        if len(set(value)) != len(value):
            raise ValueError("conditions must be distinct")
        return value

    @model_validator(mode="after")
    def _statements_for_static(self) -> StudyConfig:
        if Condition.STATIC in self.conditions:
            missing = [t.name for t in self.topics if not t.statements]
            if missing:
                raise ValueError(f"the static condition needs statements for topic(s) {missing}")
        names = [t.name for t in self.topics]
        if len(set(names)) != len(names):
            raise ValueError("topic names must be distinct")
        return self

    def end_url(self, code: str | None) -> str | None:
        """The platform link for an end page, with its code filled in."""
        if not self.completion_url:
            return None
        return self.completion_url.replace("{code}", code or "")

    def topic(self, name: str) -> Topic:
        """The topic with this name."""
        for t in self.topics:
            if t.name == name:
                return t
        raise ConfigError(f"study {self.study!r} has no topic {name!r}")

    def fill(self, text: str, topic: str) -> str:
        """A wording with the topic and turn limits filled in."""
        return text.format(topic=topic, min_turns=self.turns.min, max_turns=self.turns.max)

    def item(self) -> StanceItem:
        """The stance item both sides answer."""
        return self.stance_item.item()

    def stance_question(self, topic: str) -> str:
        """The stance item as a participant reads it for this topic."""
        return self.item().question(topic, self.topic(topic).statement)

    def probe_question(self, topic: str) -> str:
        """The stance item as the chatbot (or a judge) is asked it, with the scale."""
        return self.item().model_question(topic, self.topic(topic).statement)

    def perception_question(self, topic: str, which: str) -> str:
        """Where the participant thinks the chatbot stood in its first or last reply."""
        text = (
            self.stance_item.perception_first
            if which == "first"
            else self.stance_item.perception_last
        )
        return text.format(topic=topic, statement=self.topic(topic).statement)


def load_study(source: Path | str | dict[str, Any]) -> StudyConfig:
    """Read and validate a study YAML file (or an already-parsed mapping); relative paths
    in a file (the codebook, model adapters) are read from the file's folder."""
    return load_config(StudyConfig, source, "study config")
