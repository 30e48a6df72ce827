"""One debate as a plan of its own: what ``stancelab debate``, ``stancelab sauce`` and
``stancelab.debate()`` hand to the runner.

A single debate is a one-debate experiment: ``plan_debate`` resolves it into a ``Plan``
and ``runner.execute`` runs it, so its run folder (``OUT/COMMAND-LABEL-FINGERPRINT``) has
``run.json``, resumes when the same command is given again, and reports and shows
progress like any run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from stancelab.conversation import Persona, PromptSet, SurveyMode, personas_for
from stancelab.debates._debate import DebateSpec
from stancelab.debates._experiment import PlannedDebate
from stancelab.debates._runner import ModelLike, Plan
from stancelab.engine import ConfigError, LanguageModel

AgentLike = str | Persona | Mapping[str, Any]
"""An agent of a single debate: a built-in kind ("republican", "democrat", "default"),
a Persona, or a mapping with a persona's fields (name, kind, background)."""

PERSONA_FIELDS = tuple(f.name for f in dataclasses.fields(Persona))


def _persona(agent: Mapping[str, Any], where: str) -> Persona:
    unknown = sorted(set(agent) - set(PERSONA_FIELDS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field; use {', '.join(PERSONA_FIELDS)}")
    for key in PERSONA_FIELDS:
        if not isinstance(agent.get(key), str):
            raise ConfigError(f"{where}.{key}: give a text")
    try:
        return Persona(**{key: agent[key] for key in PERSONA_FIELDS})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def resolve_agents(agents: Sequence[AgentLike]) -> tuple[Persona, ...]:
    """The personas of a debate, in speaking order, from kinds, Personas or mappings.

    Kinds become the built-in personas (one per kind listed, each name distinct); blank
    kinds are skipped. Errors name the agent (``agents[2].background: ...``).
    """
    if isinstance(agents, str | Mapping):  # one agent where a list was meant
        raise ConfigError("agents: give a list, e.g. ['republican', 'democrat', 'default']")
    slots: list[Persona | str] = []
    for index, agent in enumerate(agents):
        if isinstance(agent, Persona):
            slots.append(agent)
        elif isinstance(agent, str):
            if agent.strip():
                slots.append(agent.strip().lower())
        elif isinstance(agent, Mapping):
            slots.append(_persona(agent, f"agents[{index}]"))
        else:
            raise ConfigError(
                f"agents[{index}]: expected a kind, a Persona or a mapping, "
                f"got {type(agent).__name__}"
            )
    if not slots:
        raise ConfigError("no agents given; use e.g. republican,democrat,default")
    builtin = iter(personas_for([s for s in slots if isinstance(s, str)]))
    return tuple(s if isinstance(s, Persona) else next(builtin) for s in slots)


def debate_spec(
    topic: str,
    agents: Sequence[AgentLike],
    iterations: int,
    seed: int,
    word_limit: int,
    modes: tuple[SurveyMode, ...],
) -> DebateSpec:
    """A round-robin debate on a topic between the given agents (see ``resolve_agents``)."""
    return DebateSpec(
        topic=topic.strip(),
        personas=resolve_agents(agents),
        iterations=iterations,
        seed=seed,
        word_limit=word_limit,
        survey_modes=modes,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "debate"


def plan_debate(
    spec: DebateSpec,
    model: ModelLike,
    prompts: PromptSet,
    command: str = "debate",
    label: str | None = None,
    db: str | None = None,
    source: tuple[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Plan:
    """Resolve one debate into a plan the runner executes (``runner.execute``).

    Args:
        spec: the debate.
        model: the model every agent runs on: a config (opened by the run) or a model
            already loaded (used as it is, left open).
        prompts: the prompt templates, in the format every agent gets.
        command: what made it (debate, sauce): the run folder's name starts with it.
        label: a readable part of the run folder's name (default: the topic).
        db: a database URL instead of the run folder's stancelab.db.
        source: (file name, text) kept in the run folder (default: the config as YAML).
        extra: more entries for the stored configuration (e.g. the SAUCE file).
    """
    kinds = [p.kind for p in spec.personas]
    described = (
        model.describe() if isinstance(model, LanguageModel) else model.model_dump(mode="json")
    )
    # The run's configuration, said once for every way a single debate is started.
    config: dict[str, Any] = {
        "command": command,
        "topic": spec.topic,
        "agents": kinds,
        "iterations": spec.iterations,
        "model": described,
        "survey_modes": [str(m) for m in spec.survey_modes],
        "seed": spec.seed,
        "word_limit": spec.word_limit,
        "prompt_format": str(prompts.format),
        **(extra or {}),
    }
    # Everything that changes results: the whole spec (persona stories, SAUCE settings)
    # and the templates' wording, so the same command resumes and a changed one does not.
    identity = {
        "config": config,
        "spec": dataclasses.asdict(spec),
        "prompts": prompts.fingerprint(),
    }
    fingerprint = hashlib.sha256(
        json.dumps(identity, sort_keys=True, default=str).encode()
    ).hexdigest()[:16]
    planned = PlannedDebate(
        key="0",
        topic=spec.topic,
        setup="+".join(kinds)[:200],
        repetition=0,
        personas=spec.personas,
        seed=spec.seed,
    )
    return Plan(
        name=f"{command}-{_slug(label or spec.topic)}-{fingerprint[:8]}",
        kind="debate",
        config=config,
        source=source or (f"{command}.yaml", yaml.safe_dump(config, sort_keys=False)),
        fingerprint=fingerprint,
        prompts=prompts,
        modes=spec.survey_modes,
        seed=spec.seed,
        models={("", kind): model for kind in kinds},
        formats={("", kind): prompts.format for kind in kinds},
        debates=((planned, spec),),
        workers=1,
        db=db,
    )


__all__ = ["AgentLike", "debate_spec", "plan_debate", "resolve_agents"]
