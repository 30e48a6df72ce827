"""Turn-taking policies alone, through the one ``TurnTaking`` interface, and a custom
policy plugged into a ``Debate`` (a scripted model: this is orchestration, not text)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from stancelab.conversation._personas import personas_for
from stancelab.conversation._templates import load_prompts
from stancelab.debates._debate import Debate, DebateSpec, DecideStep, TurnStep, run_debates
from stancelab.debates._turn_taking import (
    DecideFirst,
    RandomHost,
    RoundRobin,
    TurnTaking,
    host_policy,
    seeded_first_speaker,
)
from stancelab.engine._base import GenerationRequest
from stancelab.engine._errors import ConfigError
from stancelab.engine._fake import ScriptedModel

PROMPTS = load_prompts()
PERSONAS = tuple(personas_for(["republican", "democrat", "default"]))


@dataclass(frozen=True)
class FixedOrder:
    """A custom policy: speakers in a fixed cycle; ``deciders`` are asked first."""

    order: tuple[int, ...]
    deciders: frozenset[int] = frozenset()

    def speaker(self, chance: int) -> int:
        return self.order[chance % len(self.order)]

    def decides(self, agent: int) -> bool:
        return agent in self.deciders


def speakers(policy: TurnTaking, chances: int) -> list[int]:
    return [policy.speaker(c) for c in range(chances)]


def test_round_robin_steps_from_the_first_by_skip() -> None:
    assert speakers(RoundRobin(3, first=1), 6) == [1, 2, 0, 1, 2, 0]
    assert speakers(RoundRobin(4, first=3, skip=2), 5) == [3, 1, 3, 1, 3]
    assert not any(RoundRobin(3).decides(a) for a in range(3))


def test_random_host_opens_with_the_first_and_draws_from_the_seed() -> None:
    host = RandomHost(4, first=2, seed=7)
    drawn = speakers(host, 200)
    assert drawn[0] == 2
    assert set(drawn) == {0, 1, 2, 3}  # every agent gets chances
    assert drawn != speakers(RoundRobin(4, first=2), 200)
    # A chance's draw depends on the seed and the chance only: a restored debate, asking
    # for chance 150 first, gets the same speaker.
    assert RandomHost(4, first=2, seed=7).speaker(150) == drawn[150]
    assert speakers(RandomHost(4, first=2, seed=8), 200) != drawn
    assert not any(host.decides(a) for a in range(4))


def test_decide_first_keeps_the_hosts_order_and_asks_asynchronous_agents() -> None:
    host = RandomHost(3, first=0, seed=1)
    policy = DecideFirst(host, (False, True, False))
    assert speakers(policy, 50) == speakers(host, 50)
    assert [policy.decides(a) for a in range(3)] == [False, True, False]


def test_host_policy_builds_what_a_spec_names() -> None:
    assert host_policy("round robin", 3, first=1, seed=0, skip=2) == RoundRobin(3, 1, 2)
    assert host_policy("random", 3, first=1, seed=5) == RandomHost(3, 1, 5)
    assert host_policy("random", 3, first=1, seed=5, asynchronous=(False,) * 3) == RandomHost(
        3, 1, 5
    )
    wrapped = host_policy("round robin", 3, first=0, seed=0, asynchronous=(True, False, False))
    assert wrapped == DecideFirst(RoundRobin(3, 0, 1), (True, False, False))
    with pytest.raises(ConfigError, match="unknown host 'moderator'; use round robin or random"):
        host_policy("moderator", 3, first=0, seed=0)
    assert {seeded_first_speaker(3, seed) for seed in range(20)} == {0, 1, 2}


def test_a_debate_uses_the_spec_host_by_default() -> None:
    spec = DebateSpec("climate change", PERSONAS, 6, seed=4, host="random", first_speaker=1)
    debate = Debate(spec, PROMPTS)
    assert debate.turn_taking == RandomHost(3, first=1, seed=4)
    run_debates(ScriptedModel(), [debate])
    assert [t.speaker for t in debate.turns] == speakers(RandomHost(3, first=1, seed=4), 6)


def test_a_custom_policy_decides_who_speaks_in_a_debate() -> None:
    # The spec says round robin from agent 0; the plugged-in policy wins.
    spec = DebateSpec("climate change", PERSONAS, 5, first_speaker=0)
    debate = Debate(spec, PROMPTS, turn_taking=FixedOrder((2, 2, 0)))
    assert debate.first_speaker == 2
    run_debates(ScriptedModel(), [debate])
    assert [t.speaker for t in debate.turns] == [2, 2, 0, 2, 2]
    assert debate.decisions == {} and debate.passes == 0


def test_a_custom_policy_can_ask_agents_first() -> None:
    spec = DebateSpec("climate change", PERSONAS, 4, first_speaker=0, ask_attitude=False)
    debate = Debate(spec, PROMPTS, turn_taking=FixedOrder((0, 1, 2), deciders=frozenset({1})))
    assert debate.next_step() == TurnStep(1, 0)

    def reply(request: GenerationRequest) -> str:
        return "<wait>" if request.temperature == 0 else "My point."

    model = ScriptedModel(reply=reply)
    run_debates(model, [debate])
    # Agent 1 is asked at each of its chances, waits, and the chance passes to agent 2.
    assert [t.speaker for t in debate.turns] == [0, 2, 0, 2]
    assert debate.passes == 2 and sorted(debate.decisions) == [1, 4]
    decisions = [r for r in model.generated if r.temperature == 0]
    assert len(decisions) == 2 and all("<wait>" in str(r.prompt) for r in decisions)


def test_a_policy_naming_no_agent_is_one_clear_error() -> None:
    spec = DebateSpec("climate change", PERSONAS, 3, first_speaker=0, ask_attitude=False)
    debate = Debate(spec, PROMPTS, turn_taking=FixedOrder((0, 5)))
    assert debate.next_step() == TurnStep(1, 0)
    with pytest.raises(ConfigError, match="turn taking gave chance 1 to agent 5; there are 3"):
        run_debates(ScriptedModel(), [debate])
    assert len(debate.turns) == 1


def test_a_decide_step_comes_before_the_chance_it_decides() -> None:
    spec = DebateSpec("climate change", PERSONAS, 2, first_speaker=0, ask_attitude=False)
    debate = Debate(spec, PROMPTS, turn_taking=FixedOrder((1, 0), deciders=frozenset({1})))
    assert debate.next_step() == DecideStep(1, 1, 0)
    assert debate.record_decision(DecideStep(1, 1, 0), " <speak>")
    assert debate.next_step() == TurnStep(1, 1)
