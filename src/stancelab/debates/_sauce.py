"""Import SAUCE experiment files (the framework the debate paper ran on).

SAUCE (Neuberger et al. 2024) describes an experiment in JSON: ``persons`` with background
stories, a ``host`` that hands out chances to speak, an ``endType`` (``iteration`` with
``max_num_msgs``) and ``experiment`` with a ``scenario`` and ``survey_questions`` asked at
given message counts (-1: at the end; "always": every time). This module turns such a
file into a stancelab DebateSpec, honouring every field it knows and refusing every other
one with a line that names it: nothing is dropped silently.

Persons: the synchronous classes speak whenever the host gives them a chance; the
asynchronous ones (``async_group_discussant``, ``first_decides_then_generates``) are asked
at each chance whether they want to speak (SAUCE's inner scheduler), and a pass costs no
message. ``opinion`` follows the scenario in the person's context; ``speaking_personality``
is shown when the person decides whether to speak. The model is stancelab's (``--model``),
whatever model a person's class names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stancelab.conversation import Persona, SurveyMode, SurveyQuestion
from stancelab.debates._debate import DebateSpec, Speaking
from stancelab.engine import ConfigError

_SCALE = re.compile(r"scale of 0 to 10|0\s*(?:-|to)\s*10", re.IGNORECASE)

SYNCHRONOUS = ("person_openai_completion", "person_gpt3_5", "person_hugging_face")
"""Classes that speak at every chance (their model is replaced by stancelab's)."""
ASYNCHRONOUS = ("async_group_discussant", "first_decides_then_generates")
"""Classes that decide at each chance whether to speak, then write the reply."""
REFUSED_CLASSES = {
    "human": "a human participant (use the study web app: stancelab study)",
    "async_human": "a human participant (use the study web app: stancelab study)",
    "fake_person": "SAUCE's test double",
    "first_generates_then_decides": "writes a reply before deciding; stancelab decides first "
    "(use first_decides_then_generates)",
}
PERSON_FIELDS = {"class", "name", "background_story", "kind"}
ASYNC_FIELDS = {
    "opinion",
    "speaking_personality",
    "in_context_learning",
    "pass_turn_token",
    "use_turn_token",
}
REFUSED_PERSON_FIELDS = {
    "generation_model_name": "the model is stancelab's --model",
    "scheduling_model_name": "the model is stancelab's --model",
    "is_generation_model_shared": "stancelab shares one engine",
    "is_scheduling_model_shared": "stancelab shares one engine",
    "experiment_start_time": "stancelab's prompts carry no timestamps",
}
HOSTS = {"round robin host": "round robin", "random": "random"}
HOST_FIELDS = {"class", "start_person_index", "skip"}
END_FIELDS = {"class", "max_num_msgs", "start_iteration"}
EXPERIMENT_FIELDS = {"scenario", "survey_questions"}
QUESTION_FIELDS = {"id", "question", "iterations"}
TOP_FIELDS = {"persons", "host", "endType", "experiment"}


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigError(f"{where}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _only(obj: dict[str, Any], allowed: set[str], where: str, why: str = "") -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}.{unknown[0]}: not supported by stancelab's SAUCE import"
            + (f" ({why})" if why else f"; known fields: {', '.join(sorted(allowed))}")
        )


def _text(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: expected str, got {type(value).__name__}")
    return value


def _person(person: Any, where: str) -> tuple[Persona, Speaking]:
    if not isinstance(person, dict):
        raise ConfigError(f"{where}: expected an object")
    name = _need(person, "name", str, where)
    story = _need(person, "background_story", str, where)
    cls = str(person.get("class", "person_openai_completion"))
    if cls in REFUSED_CLASSES:
        raise ConfigError(f"{where}.class: {cls!r} is not supported ({REFUSED_CLASSES[cls]})")
    if cls not in SYNCHRONOUS + ASYNCHRONOUS:
        raise ConfigError(
            f"{where}.class: unknown SAUCE person class {cls!r}; supported: "
            f"{', '.join(SYNCHRONOUS + ASYNCHRONOUS)}"
        )
    for key, why in REFUSED_PERSON_FIELDS.items():
        if key in person:
            raise ConfigError(f"{where}.{key}: not supported ({why})")
    asynchronous = cls in ASYNCHRONOUS
    # opinion and speaking_personality are honoured for every class (the issue's
    # persons carry them); the scheduler's tokens only mean something when it decides.
    allowed = PERSON_FIELDS | {"opinion", "speaking_personality"}
    if asynchronous:
        allowed |= ASYNC_FIELDS
    _only(person, allowed, where)
    examples = person.get("in_context_learning", False)
    if not isinstance(examples, bool):
        raise ConfigError(f"{where}.in_context_learning: expected true or false")
    speaking = Speaking(
        asynchronous=asynchronous,
        opinion=_text(person, "opinion", where),
        personality=_text(person, "speaking_personality", where),
        use_token=_text(person, "use_turn_token", where) or "<speak>",
        pass_token=_text(person, "pass_turn_token", where)
        or ("<pass>" if cls == "first_decides_then_generates" else "<wait>"),
        examples=examples,
    )
    kind = str(person.get("kind") or name).lower()
    try:
        return Persona(name, kind, story), speaking
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_sauce(
    path: Path,
    seed: int = 0,
    survey_modes: tuple[SurveyMode, ...] = (SurveyMode.DISTRIBUTION,),
    topic: str | None = None,
) -> DebateSpec:
    """Read a SAUCE JSON experiment into a DebateSpec; errors name the field.

    A file without survey questions gets none, unless ``topic`` is given: then every
    person answers the paper's attitude question about it (before the debate and after
    every full round).
    """
    if not path.is_file():
        raise ConfigError(f"SAUCE file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    where = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    _only(data, TOP_FIELDS, where)
    persons = _need(data, "persons", list, where)
    if not persons:
        raise ConfigError(f"{where}.persons: the list is empty")
    pairs = [_person(p, f"{where}.persons[{k}]") for k, p in enumerate(persons)]
    host = _need(data, "host", dict, where)
    _only(host, HOST_FIELDS, f"{where}.host")
    host_class = str(host.get("class", ""))
    if host_class.lower() not in HOSTS:
        raise ConfigError(
            f"{where}.host.class: unknown SAUCE host {host_class!r}; use 'Round Robin Host' "
            "or 'random'"
        )
    skip = host.get("skip", 1)
    if not isinstance(skip, int) or isinstance(skip, bool) or skip < 1:
        raise ConfigError(f"{where}.host.skip: expected a whole number of at least 1")
    start = host.get("start_person_index", 0)
    if not isinstance(start, int) or isinstance(start, bool):
        raise ConfigError(f"{where}.host.start_person_index: expected int")
    end = _need(data, "endType", dict, where)
    _only(end, END_FIELDS, f"{where}.endType")
    if str(end.get("class", "")).lower() != "iteration":
        raise ConfigError(f"{where}.endType.class: only 'iteration' can be imported")
    messages = _need(end, "max_num_msgs", int, f"{where}.endType")
    if end.get("start_iteration", 0) != 0:
        # SAUCE's own end check counts the session's messages and never reads it.
        raise ConfigError(f"{where}.endType.start_iteration: only 0 is supported")
    experiment = data.get("experiment") or {}
    if not isinstance(experiment, dict):
        raise ConfigError(f"{where}.experiment: expected an object")
    _only(experiment, EXPERIMENT_FIELDS, f"{where}.experiment")
    scenario = experiment.get("scenario")
    if scenario is not None and not isinstance(scenario, str):
        raise ConfigError(f"{where}.experiment.scenario: expected str")
    raw_questions = experiment.get("survey_questions", [])
    if not isinstance(raw_questions, list):
        raise ConfigError(f"{where}.experiment.survey_questions: expected a list")
    questions = []
    for k, q in enumerate(raw_questions):
        qw = f"{where}.experiment.survey_questions[{k}]"
        text = _need(q, "question", str, qw)
        _only(q, QUESTION_FIELDS, qw)
        iterations = q.get("iterations", [-1])
        if isinstance(iterations, str):
            if iterations.lower() != "always":
                raise ConfigError(f"{qw}.iterations: use a list of numbers or 'always'")
            when: tuple[int, ...] | str = "always"
        elif isinstance(iterations, list) and all(isinstance(i, int) for i in iterations):
            when = tuple(iterations)
        else:
            raise ConfigError(f"{qw}.iterations: use a list of numbers or 'always'")
        kind = "scale" if _SCALE.search(text) else "text"
        questions.append(SurveyQuestion(str(q.get("id") or f"q{k}"), text, kind, when))
    speaking = tuple(s for _, s in pairs)
    plain = all(s == Speaking() for s in speaking)
    return DebateSpec(
        topic=topic or (scenario or path.stem),
        personas=tuple(p for p, _ in pairs),
        iterations=messages,
        seed=seed,
        survey_modes=survey_modes,
        questions=tuple(questions),
        scenario=str(scenario) if scenario else None,
        first_speaker=int(start),
        ask_attitude=topic is not None,
        host=HOSTS[host_class.lower()],
        host_skip=skip,
        speaking=() if plain else speaking,
    )
