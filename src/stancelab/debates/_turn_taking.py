"""Who gets the floor: turn-taking policies behind one small interface.

A debate is a sequence of *chances* to speak (0, 1, 2, ...): every reply is one, and so is
every pass of an agent that decided not to speak. A ``TurnTaking`` policy says who is given
each chance, and whether that agent is first asked if it wants it (SAUCE's decide step).
Like Concordia's engines (sequential, simultaneous, asynchronous behind one interface), the
built-in policies are interchangeable, and a custom one plugs into ``Debate`` the same way.

A policy is a pure function of the chance number: a debate restored from the store replays
its chances and gets the same speakers, so a policy keeps no state of its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from stancelab.conversation._seeds import derive_seed
from stancelab.engine import ConfigError


class TurnTaking(Protocol):
    """Who is given each chance to speak, and whether they first decide to take it."""

    def speaker(self, chance: int) -> int:
        """Index of the agent given the 0-based ``chance`` to speak."""
        ...

    def decides(self, agent: int) -> bool:
        """True when the agent is first asked whether it speaks (a pass costs no reply)."""
        ...


@dataclass(frozen=True)
class RoundRobin:
    """Every ``skip``-th agent in turn, starting with ``first`` (the paper's debates and
    SAUCE's "round robin host")."""

    n_agents: int
    first: int = 0
    skip: int = 1

    def speaker(self, chance: int) -> int:
        """``first``, then every ``skip``-th agent after it, wrapping around."""
        return (self.first + chance * self.skip) % self.n_agents

    def decides(self, agent: int) -> bool:
        """Nobody is asked first: the chance is a reply."""
        return False


@dataclass(frozen=True)
class RandomHost:
    """``first`` opens; each later chance goes to an agent drawn from the seed (SAUCE's
    "random" host). The draw for a chance depends only on the seed and the chance."""

    n_agents: int
    first: int
    seed: int

    def speaker(self, chance: int) -> int:
        """``first`` at chance 0, else a seeded draw among all agents (repeats allowed)."""
        if chance == 0:
            return self.first
        return random.Random(derive_seed(self.seed, "host", chance)).randrange(self.n_agents)

    def decides(self, agent: int) -> bool:
        """Nobody is asked first: the chance is a reply."""
        return False


@dataclass(frozen=True)
class DecideFirst:
    """SAUCE's asynchronous persons on top of any host: the host picks who gets a chance,
    and an asynchronous agent is first asked whether it speaks now."""

    host: TurnTaking
    asynchronous: Sequence[bool]
    """Per agent: True when it decides before each of its chances."""

    def speaker(self, chance: int) -> int:
        """The host's choice."""
        return self.host.speaker(chance)

    def decides(self, agent: int) -> bool:
        """True for an asynchronous agent (or when the host itself asks first)."""
        return self.asynchronous[agent] or self.host.decides(agent)


HOSTS = ("round robin", "random")
"""The built-in hosts, by the name a debate spec gives."""


def check_host(host: str) -> None:
    """Raise a one-line ConfigError unless ``host`` names a built-in host."""
    if host not in HOSTS:
        raise ConfigError(f"unknown host {host!r}; use {' or '.join(HOSTS)}")


def seeded_first_speaker(n_agents: int, seed: int) -> int:
    """The first speaker drawn from a debate's seed (when the spec fixes none)."""
    return random.Random(derive_seed(seed, "first")).randrange(n_agents)


def host_policy(
    host: str,
    n_agents: int,
    first: int,
    seed: int,
    skip: int = 1,
    asynchronous: Sequence[bool] = (),
) -> TurnTaking:
    """The built-in policy a debate spec names.

    Args:
        host: "round robin" or "random" (``HOSTS``).
        n_agents: how many agents debate.
        first: the agent given chance 0.
        seed: the debate's seed (the random host's draws).
        skip: the round robin's step (every ``skip``-th agent).
        asynchronous: per agent, whether it decides before each chance (SAUCE); empty or
            all False gives the host alone.
    """
    check_host(host)
    policy: TurnTaking
    if host == "random":
        policy = RandomHost(n_agents, first, seed)
    else:
        policy = RoundRobin(n_agents, first, skip)
    if any(asynchronous):
        return DecideFirst(policy, tuple(asynchronous))
    return policy
