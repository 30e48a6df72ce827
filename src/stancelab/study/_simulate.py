"""Simulated participants: LLM personas complete the study through its HTTP interface.

Each persona opens the recruiting link, answers every page, chats with the chatbot and
reports its stance, exactly as a person's browser would (forms, cookies, CSRF tokens),
so a lab can pilot the whole study, and load-test it, before recruiting anyone.
"""

from __future__ import annotations

import contextlib
import html
import random
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stancelab.conversation import SurveyItem, SurveyMode, ask
from stancelab.engine import StancelabError, open_model
from stancelab.engine._base import GenerationRequest, LanguageModel, Message
from stancelab.study._app import create_app
from stancelab.study._chat import clean_reply, load_template
from stancelab.study._config import StudyConfig
from stancelab.study._replies import check_probe_coverage
from stancelab.study._server import running_server
from stancelab.study._store import StudyStore

_BACKGROUNDS = (
    (
        "34",
        "Woman",
        "Bachelor's degree",
        "Liberal",
        "I am a nurse in a mid-sized city. I care about my family's health and my community.",
    ),
    (
        "58",
        "Man",
        "Secondary school",
        "Conservative",
        "I run a small farm in the countryside. Hard work, faith and self-reliance matter to me.",
    ),
    (
        "23",
        "Non-binary",
        "Some college",
        "Liberal",
        "I study computer science and work part time in a cafe. I worry about the future.",
    ),
    (
        "45",
        "Man",
        "Graduate degree",
        "Moderate",
        "I am an engineer with two kids in the suburbs. I like to weigh evidence before I decide.",
    ),
    (
        "67",
        "Woman",
        "Some college",
        "Conservative",
        "I am a retired teacher in a small town. Tradition and safety matter to me.",
    ),
    (
        "39",
        "Woman",
        "Graduate degree",
        "Moderate",
        "I am a doctor in a large hospital and a mother of one. I value facts and fairness.",
    ),
)


@dataclass
class Persona:
    """Who a simulated participant is and what it believes (0-10)."""

    demographics: dict[str, str]
    background: str
    stance: int


@dataclass
class SimulationResult:
    """What one simulated participant did and saw."""

    pid: str
    completed: bool
    completion_code: str | None = None
    condition_seen: str = ""
    sent: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    retries_429: int = 0
    error: str | None = None
    seconds: float = 0.0


def make_persona(config: StudyConfig, rng: random.Random) -> Persona:
    """A persona with answers to every demographic question and a strong-ish stance."""
    age, gender, education, politics, background = rng.choice(_BACKGROUNDS)
    preset = {"age": age, "gender": gender, "education": education, "politics": politics}
    answers: dict[str, str] = {}
    for q in config.questions.demographics:
        value = preset.get(q.id, "")
        if q.kind == "choice" and value not in q.choices:
            value = rng.choice(q.choices)
        elif q.kind == "number" and not value.isdigit():
            value = str(rng.randint(18, 80))
        elif q.kind == "text" and not value:
            value = "prefer not to say"
        answers[q.id] = value
    scale = config.stance_item.scale()
    # a clear view on one side: the outer points, never the neutral middle
    span = scale.high - scale.low
    lean = [
        p for p in scale.points if abs(p - scale.low) < span / 3 or abs(scale.high - p) < span / 3
    ]
    stance = rng.choice(lean)
    return Persona(answers, background, stance)


MESSAGE_MAX_TOKENS = 80
"""The most tokens a persona's message may have (``simulate``'s ``max_tokens``)."""


def persona_messages(
    config: StudyConfig,
    persona: Persona,
    topic: str,
    replies: Sequence[str],
    sent: Sequence[str],
) -> list[Message]:
    """The chat a persona's model sees: who it is, then the conversation so far with the
    chatbot's replies as the other side."""
    version = config.chatbot.prompt_version
    system = load_template("participant_persona", version).format(
        topic=topic or "the topic",
        background=persona.background,
        stance=_view(config, persona, topic),
    )
    messages: list[Message] = [{"role": "system", "content": system}]
    messages.append(
        {
            "role": "user",
            "content": "(The chatbot waits for your first message. Say what you think.)",
        }
    )
    for own, reply in zip(sent, replies, strict=False):
        messages.append({"role": "assistant", "content": own})
        messages.append({"role": "user", "content": reply})
    return messages


def _view(config: StudyConfig, persona: Persona, topic: str) -> str:
    """The persona's stance in words (v1 templates take the bare 0-10 number)."""
    if config.chatbot.prompt_version == "v1":
        return str(persona.stance)
    scale = config.stance_item.scale()
    question = config.stance_question(topic or config.topics[0].name)
    label = scale.label(persona.stance)
    return (
        f'Asked "{question}", you answer {persona.stance} on a scale from '
        f"{scale.low} ({scale.label(scale.low)}) to {scale.high} ({scale.label(scale.high)})"
        + (f": {label}." if label else ".")
    )


def rating_item(
    config: StudyConfig,
    persona: Persona,
    topic: str,
    replies: Sequence[str],
    sent: Sequence[str],
    question: str,
) -> SurveyItem:
    """A stance question to the persona after the conversation so far, on the item's scale."""
    prompt = persona_messages(config, persona, topic, replies, sent)
    if len(prompt) % 2 == 0:  # ends with the persona's own message: ask as the chatbot
        prompt.append({"role": "user", "content": question})
    else:
        prompt[-1] = {"role": "user", "content": prompt[-1]["content"] + "\n\n" + question}
    return SurveyItem(0, 0, prompt, scale=config.stance_item.scale())


def perception_question(config: StudyConfig, topic: str, which: str) -> str:
    """Where the chatbot stood in its ``which`` ("first"/"last") reply, with the scale."""
    scale = config.stance_item.scale()
    return f"{config.perception_question(topic, which)} {scale.instruction()}"


_READING = re.compile(r"more time to read this page \((\d+) more seconds?\)")


class _Page:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.text = response.text
        match = re.search(r'data-step="([a-z_-]*)"', self.text)
        self.step = match.group(1) if match else ""

    def field(self, name: str) -> str:
        match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', self.text)
        if match is None:
            raise StancelabError(f"page {self.step!r} has no field {name!r}")
        return html.unescape(match.group(1))

    def replies(self) -> list[str]:
        found = re.findall(
            r'data-role="assistant" data-turn="\d+"><span class="who">'
            r"[^<]*</span>(.*?)</div>",
            self.text,
            flags=re.S,
        )
        return [html.unescape(r) for r in found]


class SimulatedParticipant:
    """Plays one participant over HTTP with a persona language model."""

    def __init__(
        self,
        config: StudyConfig,
        lm: LanguageModel,
        persona: Persona,
        pid: str,
        rng: random.Random,
        turns: int | None = None,
        track_stance: bool = True,
        max_tokens: int = MESSAGE_MAX_TOKENS,
    ) -> None:
        self.config = config
        self.lm = lm
        self.persona = persona
        self.pid = pid
        self.rng = rng
        self.turns = turns if turns is not None else rng.randint(config.turns.min, config.turns.max)
        self.turns = max(config.turns.min, min(config.turns.max, self.turns))
        self.track_stance = track_stance
        self.max_tokens = max_tokens
        self.topic = ""
        self.last_stance: int | None = None
        self.result = SimulationResult(pid=pid, completed=False)

    # --- the persona's mind ---------------------------------------------------------
    def _persona_messages(self, replies: Sequence[str], sent: Sequence[str]) -> list[Message]:
        return persona_messages(self.config, self.persona, self.topic, replies, sent)

    def _write(self, replies: Sequence[str], sent: Sequence[str]) -> str:
        prompt = self._persona_messages(replies, sent)
        request = GenerationRequest(
            prompt, temperature=1.0, max_tokens=self.max_tokens, seed=self.rng.randrange(2**31)
        )
        out = self.lm.generate([request])[0].text
        text = clean_reply(out)[: self.config.limits.max_message_chars]
        if not text:
            text = (
                f"I rate it {self.persona.stance} out of 10. "
                f"Why should I change my mind about {self.topic}?"
            )
        return text

    def _rate(self, replies: Sequence[str], sent: Sequence[str], question: str) -> int:
        if not self.track_stance:
            return self.persona.stance
        item = rating_item(self.config, self.persona, self.topic, replies, sent, question)
        scale = item.scale
        answer = ask(self.lm, [item], (SurveyMode.DISTRIBUTION,))[0]
        if answer.score is None:
            return self.persona.stance
        return max(scale.low, min(scale.high, round(answer.score)))

    def _stance_question(self) -> str:
        return self.config.probe_question(self.topic)

    def _perception_question(self, which: str) -> str:
        return perception_question(self.config, self.topic, which)

    # --- HTTP ------------------------------------------------------------------------
    def _send(
        self, client: httpx.Client, method: str, url: str, data: dict[str, str] | None = None
    ) -> _Page:
        for _ in range(60):
            response = client.request(method, url, data=data)
            if response.status_code == 429:
                self.result.retries_429 += 1
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.status_code >= 500:
                raise StancelabError(f"server error {response.status_code} on {url}")
            reading = _READING.search(response.text) if response.status_code == 400 else None
            if reading:  # the page's minimum reading time: read on, then submit again
                time.sleep(int(reading.group(1)))
                continue
            return _Page(response)
        raise StancelabError(f"still rate-limited after 60 tries on {url}")

    def run(self, client: httpx.Client) -> SimulationResult:
        """Complete the study from the recruiting link to the completion code."""
        start = time.perf_counter()
        try:
            self._run(client)
        except (StancelabError, httpx.HTTPError) as exc:
            self.result.error = str(exc)
        self.result.seconds = time.perf_counter() - start
        return self.result

    def _run(self, client: httpx.Client) -> None:
        page = self._send(client, "GET", f"/?pid={self.pid}")
        sent: list[str] = []
        for _ in range(8 + 3 * self.config.turns.max):
            step = page.step
            csrf = page.field("csrf") if step not in ("done", "error") else ""
            if step == "consent":
                page = self._send(client, "POST", "/study/consent", {"csrf": csrf, "agree": "yes"})
            elif step == "about":
                data = {"csrf": csrf, "background": self.persona.background}
                data.update({f"d_{k}": v for k, v in self.persona.demographics.items()})
                data.update({f"a_{a.id}": a.answer for a in self.config.attention_checks})
                page = self._send(client, "POST", "/study/about", data)
            elif step == "before":
                self.topic = self._topic_from(page)
                self.last_stance = self.persona.stance
                page = self._send(
                    client,
                    "POST",
                    "/study/before",
                    {
                        "csrf": csrf,
                        "stance": str(self.persona.stance),
                        "reason": f"That is what I believe as {self.persona.background[:60]}",
                    },
                )
            elif step == "conversation":
                self.topic = self.topic or self._topic_from(page)
                if 'data-role="statement"' in page.text:
                    self.result.condition_seen = "static"
                    page = self._send(client, "POST", "/study/finish-conversation", {"csrf": csrf})
                    continue
                self.result.condition_seen = "chat"
                if 'data-pending="1"' in page.text:  # a reply still being written
                    time.sleep(1.0)
                    page = self._send(client, "GET", "/study")
                    continue
                replies = page.replies()
                self.result.replies = replies
                stance = self._rate(replies, sent, self._stance_question())
                # an unchanged view is given as the explicit "same as before" answer
                answer = "same" if stance == self.last_stance else str(stance)
                self.last_stance = stance
                if len(replies) >= self.turns or 'name="message"' not in page.text:
                    finish = self._finish_csrf(page, csrf)
                    page = self._send(
                        client,
                        "POST",
                        "/study/finish-conversation",
                        {"csrf": finish, "stance": answer},
                    )
                    continue
                text = self._write(replies, sent)
                sent.append(text)
                self.result.sent = list(sent)
                page = self._send(
                    client,
                    "POST",
                    "/study/message",
                    {
                        "csrf": csrf,
                        "turn": page.field("turn"),
                        "key": page.field("key"),
                        "message": text,
                        "stance": answer,
                    },
                )
            elif step == "after":
                replies = self.result.replies
                stance = self._rate(replies, sent, self._stance_question())
                page = self._send(
                    client,
                    "POST",
                    "/study/after",
                    {
                        "csrf": csrf,
                        "stance": str(stance),
                        "reason": "After the conversation.",
                        **{f"a_{a.id}": a.answer for a in self.config.attention_checks},
                    },
                )
            elif step == "perception":
                replies = self.result.replies
                start = self._rate(replies[:1], sent[:1], self._perception_question("first"))
                end = self._rate(replies, sent, self._perception_question("last"))
                page = self._send(
                    client,
                    "POST",
                    "/study/perception",
                    {"csrf": csrf, "perceived_start": str(start), "perceived_end": str(end)},
                )
            elif step == "done":
                match = re.search(r'id="completion-code">([^<]+)<', page.text)
                self.result.completion_code = match.group(1).strip() if match else None
                self.result.completed = True
                self.result.replies = self.result.replies or []
                return
            else:
                raise StancelabError(f"unexpected page {step!r} (HTTP {page.response.status_code})")
        raise StancelabError("the study did not end")

    @staticmethod
    def _finish_csrf(page: _Page, fallback: str) -> str:
        match = re.search(r'id="form-finish".*?name="csrf" value="([^"]*)"', page.text, flags=re.S)
        return html.unescape(match.group(1)) if match else fallback

    def _topic_from(self, page: _Page) -> str:
        for topic in self.config.topics:
            if html.escape(topic.name) in page.text:
                return topic.name
        return self.config.topics[0].name


@contextlib.contextmanager
def _study_server(config: StudyConfig, db: str | Path, lm: LanguageModel) -> Iterator[str]:

    store = StudyStore(db)
    try:
        with running_server(create_app(config, store, lm)) as url:
            yield url
    finally:
        store.close()


def simulate(
    config: StudyConfig,
    n: int,
    *,
    base_url: str | None = None,
    db: str | Path = "study.db",
    lm: LanguageModel | None = None,
    persona_lm: LanguageModel | None = None,
    concurrency: int | None = None,
    seed: int = 0,
    turns: int | None = None,
    track_stance: bool = True,
    max_tokens: int = MESSAGE_MAX_TOKENS,
) -> list[SimulationResult]:
    """Run n simulated participants over HTTP (starting the app on 127.0.0.1 if no URL)."""
    if n < 1:
        raise StancelabError(f"the number of participants must be at least 1, got {n}")
    owned: list[LanguageModel] = []
    if lm is None and (base_url is None or persona_lm is None):
        lm = open_model(config.model)
        owned.append(lm)
    persona_model = persona_lm or lm
    assert persona_model is not None
    if base_url is None and lm is not None and any(c != "static" for c in config.conditions):
        try:  # the same gate as `study serve`: a pilot on a noisy probe pilots nothing
            check_probe_coverage(config, lm)
        except StancelabError:
            for model in owned:
                model.close()
            raise
    rng = random.Random(seed)
    players = [
        SimulatedParticipant(
            config,
            persona_model,
            make_persona(config, rng),
            f"sim-{uuid.uuid4().hex[:12]}",
            random.Random(rng.randrange(2**31)),
            turns,
            track_stance,
            max_tokens,
        )
        for _ in range(n)
    ]
    try:
        with contextlib.ExitStack() as stack:
            if base_url is None:
                assert lm is not None
                base_url = stack.enter_context(_study_server(config, db, lm))
            url = base_url

            def play(player: SimulatedParticipant) -> SimulationResult:
                with httpx.Client(
                    base_url=url,
                    follow_redirects=True,
                    timeout=300.0,
                    headers={"x-stancelab-simulated": "1"},
                ) as client:
                    return player.run(client)

            with ThreadPoolExecutor(max_workers=concurrency or min(n, 32)) as pool:
                return list(pool.map(play, players))
    finally:
        for model in owned:
            model.close()


def summary(results: Sequence[SimulationResult]) -> dict[str, Any]:
    """Counts and timings of a simulation."""
    done = [r for r in results if r.completed]
    return {
        "participants": len(results),
        "completed": len(done),
        "failed": [f"{r.pid}: {r.error}" for r in results if not r.completed],
        "messages_sent": sum(len(r.sent) for r in results),
        "retries_429": sum(r.retries_429 for r in results),
        "mean_seconds": sum(r.seconds for r in results) / max(1, len(results)),
    }
