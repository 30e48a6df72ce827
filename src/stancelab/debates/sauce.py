"""Import SAUCE experiment files (the framework the debate paper ran on).

SAUCE (Neuberger et al. 2024) describes an experiment in JSON: ``persons`` with
background stories, a ``host`` (round robin from ``start_person_index``), an
``endType`` (``iteration`` with ``max_num_msgs``) and ``experiment`` with a
``scenario`` and ``survey_questions`` asked at given message counts (-1: at the end;
"always": every time). This module turns such a file into a stancelab DebateSpec.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from stancelab.conversation.personas import Persona
from stancelab.conversation.survey import SurveyMode, SurveyQuestion
from stancelab.debates.debate import DebateSpec
from stancelab.engine.errors import ConfigError

_SCALE = re.compile(r"scale of 0 to 10|0\s*(?:-|to)\s*10", re.IGNORECASE)


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigError(f"{where}: missing '{key}'")
    value = obj[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def load_sauce(
    path: Path,
    seed: int = 0,
    survey_modes: tuple[SurveyMode, ...] = (SurveyMode.DISTRIBUTION,),
    topic: str | None = None,
) -> DebateSpec:
    """Read a SAUCE JSON experiment into a DebateSpec; errors name the field."""
    if not path.is_file():
        raise ConfigError(f"SAUCE file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    where = str(path)
    persons = _need(data, "persons", list, where)
    if not persons:
        raise ConfigError(f"{where}.persons: the list is empty")
    personas = []
    for k, person in enumerate(persons):
        name = _need(person, "name", str, f"{where}.persons[{k}]")
        story = _need(person, "background_story", str, f"{where}.persons[{k}]")
        kind = str(person.get("kind") or name).lower()
        try:
            personas.append(Persona(name, kind, story))
        except ConfigError as exc:
            raise ConfigError(f"{where}.persons[{k}]: {exc}") from exc
    host = _need(data, "host", dict, where)
    host_class = str(host.get("class", ""))
    if host_class.lower() != "round robin host":
        raise ConfigError(
            f"{where}.host.class: only 'Round Robin Host' can be imported, got {host_class!r}"
        )
    if int(host.get("skip", 1)) != 1:
        raise ConfigError(f"{where}.host.skip: only skip 1 (plain round robin) is supported")
    start = host.get("start_person_index", 0)
    end = _need(data, "endType", dict, where)
    if str(end.get("class", "")).lower() != "iteration":
        raise ConfigError(f"{where}.endType.class: only 'iteration' can be imported")
    messages = _need(end, "max_num_msgs", int, f"{where}.endType")
    experiment = data.get("experiment") or {}
    if not isinstance(experiment, dict):
        raise ConfigError(f"{where}.experiment: expected an object")
    scenario = experiment.get("scenario")
    questions = []
    for k, q in enumerate(experiment.get("survey_questions", [])):
        qw = f"{where}.experiment.survey_questions[{k}]"
        text = _need(q, "question", str, qw)
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
    return DebateSpec(
        topic=topic or (scenario or path.stem),
        personas=tuple(personas),
        iterations=messages,
        seed=seed,
        survey_modes=survey_modes,
        questions=tuple(questions),
        scenario=str(scenario) if scenario else None,
        first_speaker=int(start),
    )
