"""The findings of Taubenfeld et al. (2024), agent debates, as testable claims.

Each function turns an attitude frame (`stancelab.debates._analysis.attitude_frame`,
already filtered to one survey mode and one untuned condition, answers that held a
number) into `Finding` rows. The debate is the unit throughout: every claim first
reduces a debate to one value (agents of the same kind in a debate are averaged, since
they hear the same conversation), then tests those values over debates with the
statistics layer (95% t CIs, Wilson CIs for shares, cluster-robust OLS), so every CI is
clustered by debate. Below ``min_n`` debates a test does not run and the verdict is
``inconclusive`` with a note saying so.

Setups are recognised by the agent kinds that take part, whatever their names:
*three-way* (Republican, Democrat and Default; Fig. 3), *two-way* (both parties, no
Default; Fig. 4) and *echo chambers* (one party, with or without Default; Figs. 5, 8, 9).

| claim id | value per debate (per story for personas-hold) | paper's side |
|---|---|---|
| ``personas-hold`` | high party's minus low party's pre-debate score, per topic | CI > 1.0 |
| ``default-stable`` | Default: last survey minus iteration 0 (three-way, per topic) | CI in ±1.0 |
| ``partisans-converge`` | change of a party's distance to the Default line | CI < 0 |
| ``no-crossing`` | a partisan line changes side of the Default line (share) | CI < 0.25 |
| ``first-cycle`` | share of the change made in the first cycle (OLS slope) | CI > 0.5 |
| ``echo-moderates`` | partisans' move toward the Default's position (echo) | CI > 0 |
| ``default-leans-democrat`` | Default's distance to R minus to D (three-way) | CI > 0 (a) |
| ``tuning-shifts-default`` | Default's last score, tuned minus base, toward party (b) | CI > 0 |
| ``dpo-shifts-more`` | the same, DPO minus each NWP rank (b) | CI > 0 |

(a) CI < 0 on illegal immigration, where the paper found no Democrat lean; ``no-crossing``
is also not reproduced as soon as a mean line over debates crosses. (b) From the
self-fine-tuning debates (``replicate(..., tuning=True)``): two samples of debates (Welch
t), the tuned variant's seeds pooled; they appear only when tuning ran.

The *Default line* is the Default agent's score in the same debate and survey where it
takes part, else its pre-debate score on the topic (the fidelity check's, or the mean of
the Default agents' iteration-0 answers in the frame when no checks are given).
docs/replicate.md gives each definition in full.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from stancelab.conversation import (
    PARTIES,
    TestResult,
    Topic,
    ols_term,
    one_sample_tests,
    proportion,
    two_sample_tests,
)
from stancelab.debates import mean_attitudes
from stancelab.debates._fidelity import FidelityRow, summarise
from stancelab.debates._report import default_gap
from stancelab.replicate._verdict import INCONCLUSIVE, NOT_REPRODUCED, Claim, Finding, Side

PAPER = "taubenfeld2024"

PERSONA_SEPARATION = 1.0
"""Points the parties' pre-debate means must lie apart (the fidelity check's default
``personas.min_separation``)."""
STABLE_WITHIN = 1.0
"""How far (points on 0-10) the Default agent may move and still count as stable."""
CROSSING_SHARE = 0.25
"""The largest share of debates with a crossing line that still counts as 'never cross'."""
FIRST_CYCLE_SHARE = 0.5
"""'Most of the change': more than half of it in the first cycle."""

LEANS_DEMOCRAT = {
    "gun violence": True,
    "racism": True,
    "climate change": True,
    "illegal immigration": False,
}
"""Per topic of the paper: whether the Default agent sits closer to the Democrat (Fig. 3)."""

DEFAULT = "default"


def _claim(
    claim_id: str,
    statement: str,
    definition: str,
    threshold: float,
    side: Side,
    dynamics: bool = True,
) -> Claim:
    return Claim(claim_id, PAPER, statement, definition, threshold, side, dynamics)


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in (
        _claim(
            "personas-hold",
            "The partisan personas hold their party's position before any debate.",
            "Per topic with a known party position: the mean pre-debate score of the party "
            "that calls the topic a big problem minus the other party's, over the stories "
            "(Welch t CI); precondition of every dynamics claim.",
            PERSONA_SEPARATION,
            "above",
            dynamics=False,
        ),
        _claim(
            "default-stable",
            "The Default agent holds its position through the debate.",
            "Three-way debates, per topic: the Default agent's score at the last survey "
            "minus at iteration 0, per debate; mean over debates with a t CI.",
            STABLE_WITHIN,
            "within",
        ),
        _claim(
            "partisans-converge",
            "Each partisan's distance to the Default agent shrinks.",
            "Setups with both parties, per partisan kind: |partisan - Default line| at the "
            "last survey minus at iteration 0, per debate; mean over debates with a t CI.",
            0.0,
            "below",
        ),
        _claim(
            "no-crossing",
            "Partisan lines never cross the Default agent's line.",
            "Setups with both parties: the share of debates in which a partisan's line "
            "changes side of the Default line (Wilson CI); not reproduced as soon as a "
            "mean line over debates crosses.",
            CROSSING_SHARE,
            "below",
        ),
        _claim(
            "first-cycle",
            "Most of the change happens in the first round-robin cycle.",
            "Three-way debates: per partisan agent, the change from iteration 0 to the first "
            "survey after it against the change to the last survey; the OLS slope through "
            "the origin (cluster-robust by debate) is the share made in the first cycle.",
            FIRST_CYCLE_SHARE,
            "above",
        ),
        _claim(
            "echo-moderates",
            "Like-minded partisans move toward the Default agent's position, not away.",
            "Echo chambers (one party, with or without Default), per setup: each partisan's "
            "move from iteration 0 to the last survey toward the Default's position at "
            "iteration 0 (negative: away, polarisation), per debate; mean with a t CI.",
            0.0,
            "above",
        ),
        _claim(
            "default-leans-democrat",
            "The Default agent sits closer to the Democrat (three topics; not illegal "
            "immigration).",
            "Three-way debates, per topic of the paper: |Default - Republican| minus "
            "|Default - Democrat|, mean over the debate's surveys, per debate; mean with a "
            "t CI (positive: closer to the Democrat).",
            0.0,
            "above",
        ),
        _claim(
            "tuning-shifts-default",
            "Tuning the model toward a party moves the Default agent toward that party "
            "(Figs. 6, 11, 12; Table 1).",
            "Self-fine-tuning debates, per party tuned, tuned variant (e.g. r=256 NWP, its "
            "seeds pooled) and topic: the Default agent's score at the debate's last survey, "
            "signed toward the tuned party's side of the topic (positive: moved toward the "
            "tuned party), tuned debates minus the base model's; Welch t CI with the debate "
            "as the unit (seeds are not a random effect: 1-3 seeds cannot estimate one; the "
            "note gives the spread of the per-seed means).",
            0.0,
            "above",
            dynamics=False,
        ),
        _claim(
            "dpo-shifts-more",
            "DPO moves the Default agent further toward the tuned party than next-token "
            "training at any rank (Table 1).",
            "Self-fine-tuning debates, per party tuned, NWP rank and topic: the DPO "
            "variant's Default final score minus the NWP rank's, signed toward the tuned "
            "party (positive: DPO moved it further); Welch t CI over debates, seeds pooled "
            "(the note gives the spread of the per-seed means).",
            0.0,
            "above",
            dynamics=False,
        ),
    )
}
"""The paper's claims by id, in the order of the findings table."""

TUNING_CLAIMS = ("tuning-shifts-default", "dpo-shifts-more")
"""The claims tested on the self-fine-tuning debates (only when tuning ran)."""


def _t_row(values: pd.Series, claim_id: str, where: str, min_n: int) -> TestResult:
    """The one-sample t test of per-debate values against 0 (the statistics layer's).

    Where every one of at least ``min_n`` debates gave the same value (a Default that
    answers 7 before and after every debate), t is undefined but the debates agree
    exactly: the estimate and both CI ends are that value, with no p-value.
    """
    result = one_sample_tests(values, claim_id=claim_id, condition=where, min_n=min_n)[0]
    present = values.dropna()
    if len(present) >= min_n and np.ptp(present) == 0:
        same = float(present.iloc[0])
        return _exact(result, same, f"every debate gave {same:g}: the CI is that value")
    return result


def _exact(result: TestResult, value: float, note: str) -> TestResult:
    """A test that could not run for want of spread, where the debates agree exactly:
    the estimate and both CI ends are ``value``, with no p-value."""
    if result.ran:
        return result
    return replace(result, estimate=value, ci_low=value, ci_high=value, note=note)


def kinds_by_setup(frame: pd.DataFrame) -> dict[str, frozenset[str]]:
    """The agent kinds taking part in each setup of the frame, in the frame's order."""
    return {
        str(setup): frozenset(group["kind"]) for setup, group in frame.groupby("setup", sort=False)
    }


def _both_parties(kinds: frozenset[str]) -> bool:
    return set(PARTIES) <= kinds


def _three_way(kinds: frozenset[str]) -> bool:
    return _both_parties(kinds) and DEFAULT in kinds


def _echo_party(kinds: frozenset[str]) -> str | None:
    """The one party of an echo-chamber setup, else None."""
    parties = [p for p in PARTIES if p in kinds]
    return parties[0] if len(parties) == 1 else None


def kind_lines(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per debate and survey, one column per kind: the mean of its agents."""
    return frame.pivot_table(
        index=["setup", "topic", "debate_id", "iteration"],
        columns="kind",
        values="score",
        aggfunc="mean",
    ).reset_index()


def _ends(lines: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each debate's row at its first and at its last survey, indexed by debate."""
    by_debate = lines.groupby("debate_id")["iteration"]
    first = lines[lines["iteration"] == by_debate.transform("min")]
    last = lines[lines["iteration"] == by_debate.transform("max")]
    return first.set_index("debate_id"), last.set_index("debate_id")


def default_reference(
    frame: pd.DataFrame, checks: Sequence[FidelityRow], topics: Sequence[Topic]
) -> dict[str, float]:
    """The Default agent's pre-debate score per topic: the fidelity check's, else the mean
    of the Default agents' iteration-0 answers in the frame."""
    defaults = frame[(frame["kind"] == DEFAULT) & (frame["iteration"] == 0)]
    reference = {str(t): float(s) for t, s in defaults.groupby("topic")["score"].mean().items()}
    for fidelity in summarise(list(checks), list(topics)):
        checked = fidelity.means.get(DEFAULT)
        if checked is not None:
            reference[fidelity.topic] = checked
    return reference


def personas_hold(
    checks: Sequence[FidelityRow], topics: Sequence[Topic], min_n: int
) -> list[Finding]:
    """Per topic with a known party position: the parties' pre-debate separation."""
    claim = CLAIMS["personas-hold"]
    if not checks:
        return [
            Finding(
                claim,
                TestResult(claim.id, "all", 0, np.nan, np.nan, np.nan, np.nan, "Welch t"),
                notes=("no persona checks: the fidelity check did not run",),
            )
        ]
    out = []
    for fidelity in summarise(list(checks), list(topics)):
        high = fidelity.expected_high
        if high is None:
            continue  # a topic of the user's with no party position: nothing to hold
        low = next(p for p in PARTIES if p != high)

        def scores(kind: str, topic: str = fidelity.topic) -> list[float]:
            return [
                float(r.score)
                for r in checks
                if r.topic == topic and r.kind == kind and r.score is not None
            ]

        welch = two_sample_tests(
            scores(high), scores(low), claim_id=claim.id, condition=fidelity.topic, min_n=min_n
        )[0]
        sides = ", ".join(
            f"{kind} {k}/{n} on their side" for kind, (k, n) in fidelity.on_side.items()
        )
        out.append(
            Finding(claim, welch, topic=fidelity.topic, notes=(f"{high} minus {low}; {sides}",))
        )
    return out


def default_stable(frame: pd.DataFrame, min_n: int) -> list[Finding]:
    """Per three-way setup and topic: the Default agent's change over the debate."""
    claim = CLAIMS["default-stable"]
    out = []
    for setup, kinds in kinds_by_setup(frame).items():
        if not _three_way(kinds):
            continue
        first, last = _ends(kind_lines(frame[frame["setup"] == setup]))
        change = last[DEFAULT] - first[DEFAULT]
        for topic, values in change.groupby(first["topic"], sort=False):
            where = f"{setup} · {topic}"
            out.append(Finding(claim, _t_row(values, claim.id, where, min_n), setup, str(topic)))
    return out


def _reference_line(
    lines: pd.DataFrame, kinds: frozenset[str], reference: dict[str, float]
) -> pd.Series:
    """The Default line of each row of ``lines``: the Default in the debate, else its
    pre-debate score on the topic (NaN where neither exists)."""
    if DEFAULT in kinds:
        return lines[DEFAULT]
    return lines["topic"].map(reference).astype(float)


def partisans_converge(
    frame: pd.DataFrame, reference: dict[str, float], min_n: int
) -> list[Finding]:
    """Per setup with both parties and per party: the change of the distance to Default."""
    claim = CLAIMS["partisans-converge"]
    out = []
    for setup, kinds in kinds_by_setup(frame).items():
        if not _both_parties(kinds):
            continue
        first, last = _ends(kind_lines(frame[frame["setup"] == setup]))
        for kind in PARTIES:
            before = (first[kind] - _reference_line(first, kinds, reference)).abs()
            after = (last[kind] - _reference_line(last, kinds, reference)).abs()
            result = _t_row(after - before, claim.id, f"{setup} · {kind}", min_n)
            out.append(Finding(claim, result, setup, notes=(f"{kind} to Default",)))
    return out


def no_crossing(frame: pd.DataFrame, reference: dict[str, float], min_n: int) -> list[Finding]:
    """Per setup with both parties: the share of debates with a partisan line crossing the
    Default line, and whether the mean lines cross (the report's `default_gap` rule)."""
    claim = CLAIMS["no-crossing"]
    out = []
    for setup, kinds in kinds_by_setup(frame).items():
        if not _both_parties(kinds):
            continue
        sub = frame[frame["setup"] == setup]
        # Each debate as a cell of its own (its id in the setup column), so default_gap
        # applies the report's crossing rule to every debate's lines.
        per_debate = default_gap(
            mean_attitudes(sub.assign(setup=sub["debate_id"].astype(str))), reference
        )
        means = default_gap(mean_attitudes(sub), reference)
        result = TestResult(claim.id, setup, 0, np.nan, np.nan, np.nan, np.nan, "")
        crossing_debates = 0
        if not per_debate.empty:
            crossed = per_debate.groupby("setup")["crosses_default"].any()
            crossing_debates = int(crossed.sum())
            result = proportion(
                crossing_debates, len(crossed), claim_id=claim.id, condition=setup, min_n=min_n
            )
        crossing = (
            sorted({f"{r.topic} ({r.kind})" for r in means.itertuples() if r.crosses_default})
            if not means.empty
            else []
        )
        notes = [f"{crossing_debates} debate(s) cross"]
        if crossing:
            notes.append(f"mean lines cross on {', '.join(crossing)}")
        if per_debate.empty:
            notes.append("no Default line: no Default agent and no pre-debate score")
        out.append(
            Finding(
                claim,
                result,
                setup,
                settled=NOT_REPRODUCED if crossing else None,
                notes=tuple(notes),
            )
        )
    return out


def first_cycle(frame: pd.DataFrame, min_n: int) -> list[Finding]:
    """Per three-way setup: the share of the partisans' change made in the first cycle."""
    claim = CLAIMS["first-cycle"]
    out = []
    for setup, kinds in kinds_by_setup(frame).items():
        if not _three_way(kinds):
            continue
        partisans = frame[(frame["setup"] == setup) & frame["kind"].isin(PARTIES)]
        scores = partisans.pivot_table(
            index=["debate_id", "agent_index"], columns="iteration", values="score"
        )
        rows = []
        for (debate, _agent), series in scores.iterrows():
            surveyed = series.dropna()
            if len(surveyed) >= 3:  # iteration 0, the first cycle's survey and a later one
                start, cycle1, end = surveyed.iloc[0], surveyed.iloc[1], surveyed.iloc[-1]
                rows.append({"debate_id": debate, "cycle1": cycle1 - start, "total": end - start})
        data = pd.DataFrame(rows, columns=["debate_id", "cycle1", "total"])
        result = ols_term(
            data,
            "cycle1 ~ 0 + total",
            "total",
            claim_id=claim.id,
            condition=setup,
            cluster="debate_id",
            min_n=min_n,
        )
        debates = int(data["debate_id"].nunique())
        notes = [f"{len(data)} partisan agents in {debates} debates"]
        if data.empty:
            notes.append("needs surveys after the first cycle and after a later one")
        # n counts debates, the unit, as in every other claim.
        out.append(Finding(claim, replace(result, n=debates), setup, notes=tuple(notes)))
    return out


def echo_moderates(frame: pd.DataFrame, reference: dict[str, float], min_n: int) -> list[Finding]:
    """Per echo-chamber setup: the partisans' move toward the Default's position."""
    claim = CLAIMS["echo-moderates"]
    out = []
    for setup, kinds in kinds_by_setup(frame).items():
        party = _echo_party(kinds)
        if party is None:
            continue
        sub = frame[frame["setup"] == setup]
        start_iteration = sub.groupby("debate_id")["iteration"].transform("min")
        end_iteration = sub.groupby("debate_id")["iteration"].transform("max")
        keys = ["debate_id", "agent_index"]
        start = sub[sub["iteration"] == start_iteration]
        end = sub[sub["iteration"] == end_iteration].set_index(keys)["score"]
        agents = start[start["kind"] == party].set_index(keys)
        # The Default's position: its own iteration-0 answer in the debate, else its
        # pre-debate score on the topic.
        own = start[start["kind"] == DEFAULT].groupby("debate_id")["score"].mean()
        target = agents.index.get_level_values("debate_id").map(own).to_series(index=agents.index)
        target = target.fillna(agents["topic"].map(reference))
        direction = np.sign(agents["score"] - target).replace(0.0, np.nan)
        toward = (agents["score"] - end.reindex(agents.index)) * direction
        per_debate = toward.groupby(level="debate_id").mean()
        result = _t_row(per_debate, claim.id, setup, min_n)
        out.append(Finding(claim, result, setup, notes=(f"{party} toward Default",)))
    return out


def default_leans_democrat(frame: pd.DataFrame, min_n: int) -> list[Finding]:
    """Per topic of the paper: in three-way debates, is the Default closer to the Democrat?"""
    claim = CLAIMS["default-leans-democrat"]
    setups = [s for s, kinds in kinds_by_setup(frame).items() if _three_way(kinds)]
    lines = kind_lines(frame[frame["setup"].isin(setups)])
    if lines.empty:
        return []
    lean = (lines[DEFAULT] - lines["republican"]).abs() - (lines[DEFAULT] - lines["democrat"]).abs()
    per_debate = lean.groupby([lines["topic"], lines["debate_id"]]).mean()
    out = []
    for topic, values in per_debate.groupby(level="topic", sort=False):
        leans = LEANS_DEMOCRAT.get(str(topic).strip().lower())
        if leans is None:
            continue  # the paper makes no claim on a topic it did not study
        result = _t_row(values, claim.id, str(topic), min_n)
        expected = "closer to the Democrat" if leans else "not closer to the Democrat"
        out.append(
            Finding(
                claim,
                result,
                ", ".join(setups),
                str(topic),
                side="above" if leans else "below",
                notes=(f"paper: {expected}",),
            )
        )
    return out


def flag_personas(found: list[Finding], topics: Sequence[str]) -> list[Finding]:
    """Mark every dynamics finding whose topics' personas did not (clearly) hold."""
    held = {f.topic: f.verdict for f in found if f.claim.id == "personas-hold"}
    unchecked = "all" in held  # no fidelity check rows at all
    out = []
    for f in found:
        if not f.claim.dynamics:
            out.append(f)
            continue
        concerned = list(topics) if f.topic == "all" else [f.topic]
        failed = [t for t in concerned if held.get(t) == NOT_REPRODUCED]
        unclear = [t for t in concerned if held.get(t) == INCONCLUSIVE]
        notes = list(f.notes)
        if failed:
            notes.append(f"rests on personas that did not hold ({', '.join(failed)})")
        if unclear:
            notes.append(f"rests on personas not shown to hold ({', '.join(unclear)})")
        if unchecked:
            notes.append("rests on personas that were not checked")
        out.append(replace(f, notes=tuple(notes)))
    return out


def claim_findings(
    frame: pd.DataFrame,
    checks: Sequence[FidelityRow],
    topics: Sequence[Topic],
    min_n: int,
) -> list[Finding]:
    """Every claim of the paper on one mode's and one condition's answers, in order."""
    reference = default_reference(frame, checks, topics)
    found = [
        *personas_hold(checks, topics, min_n),
        *default_stable(frame, min_n),
        *partisans_converge(frame, reference, min_n),
        *no_crossing(frame, reference, min_n),
        *first_cycle(frame, min_n),
        *echo_moderates(frame, reference, min_n),
        *default_leans_democrat(frame, min_n),
    ]
    return flag_personas(found, [t.name for t in topics if t.name in set(frame["topic"])])


# The self-fine-tuning intervention (Figs. 6, 11, 12, Table 1): the tuning pipeline's
# debates run holds one condition per trained model, labelled by its variant group
# ("base", "r=256 NWP", "r=8 DPO"; seeds share a label) and marked ``tuned``.

DPO_LABEL = " DPO"
NWP_LABEL = " NWP"
"""How the tuning debates' condition labels end (``r=8 DPO``, ``r=256 NWP``)."""


def toward_party(party: str, topic: Topic) -> int | None:
    """+1 when a higher score is ``party``'s side of the topic, -1 when a lower one is,
    None when the topic has no known party position."""
    believes = topic.believes(party)
    return None if believes is None else 1 if believes else -1


def default_finals(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per debate with a Default agent: its ``condition`` (the variant group),
    ``condition_name`` (the one trained model), ``tuned``, ``topic``, and ``final``, the
    Default agents' mean score at the debate's last survey."""
    columns = ["debate_id", "condition", "condition_name", "tuned", "topic", "final"]
    if frame.empty or DEFAULT not in set(frame["kind"]):
        return pd.DataFrame(columns=columns)
    _, last = _ends(kind_lines(frame))
    cells = frame.drop_duplicates("debate_id").set_index("debate_id")
    out = last[[DEFAULT]].rename(columns={DEFAULT: "final"}).dropna()
    out = out.join(cells[["condition", "condition_name", "tuned"]]).assign(
        topic=last["topic"], tuned=lambda f: f["tuned"].astype(bool)
    )
    return out.reset_index()[columns]


def _welch_row(a: pd.Series, b: pd.Series, claim_id: str, where: str, min_n: int) -> TestResult:
    """Welch's t of ``a`` against ``b`` (the statistics layer's); where both groups of at
    least ``min_n`` debates have no spread (a Default that answers 1 after every tuned
    debate and 8 after every base one), t is undefined but the difference is exact."""
    result = two_sample_tests(a, b, claim_id=claim_id, condition=where, min_n=min_n)[0]
    first, second = a.dropna(), b.dropna()
    if min(len(first), len(second)) >= min_n and np.ptp(first) == 0 == np.ptp(second):
        gap = float(first.iloc[0] - second.iloc[0])
        return _exact(result, gap, f"every debate of each group gave one value: the CI is {gap:g}")
    return result


def _seed_spread(signed: pd.DataFrame, base: float, groups: Iterable[str]) -> str:
    """The spread of the per-seed means (each trained model's mean minus ``base``)."""
    parts = []
    for group in groups:
        per_seed = signed[signed["condition"] == group].groupby("condition_name")["final"].mean()
        if per_seed.empty:
            continue
        low, high = float(per_seed.min()) - base, float(per_seed.max()) - base
        parts.append(f"{group}: {len(per_seed)} seed(s), per-seed means {low:+.2f} to {high:+.2f}")
    return "; ".join(parts)


def _signed_finals(frame: pd.DataFrame, party: str, topic: Topic) -> pd.DataFrame | None:
    """The topic's Default finals signed toward ``party`` (None: no party position)."""
    sign = toward_party(party, topic)
    if sign is None:
        return None
    finals = default_finals(frame)
    finals = finals[finals["topic"] == topic.name]
    return finals.assign(final=finals["final"] * sign)


def _groups(finals: pd.DataFrame, suffix: str = "") -> list[str]:
    tuned = finals[finals["tuned"]]
    return [str(g) for g in dict.fromkeys(tuned["condition"]) if str(g).endswith(suffix)]


UNIT_NOTE = "debates as units, seeds pooled (not a random effect)"


def tuning_shifts_default(
    frame: pd.DataFrame, party: str, topics: Sequence[Topic], min_n: int
) -> list[Finding]:
    """Per tuned variant and topic: the Default's final score, tuned minus base, signed
    toward the tuned party."""
    claim = CLAIMS["tuning-shifts-default"]
    out = []
    for topic in topics:
        signed = _signed_finals(frame, party, topic)
        if signed is None:
            continue  # a topic with no party position has no "toward"
        base = signed[~signed["tuned"]]["final"]
        for group in _groups(signed):
            tuned = signed[signed["condition"] == group]["final"]
            where = f"{party} · {group}"
            result = _welch_row(tuned, base, claim.id, f"{where} · {topic.name}", min_n)
            centre = float(base.mean()) if len(base) else np.nan
            notes = (f"toward {party}", UNIT_NOTE, _seed_spread(signed, centre, [group]))
            out.append(Finding(claim, result, where, topic.name, notes=notes))
    return out


def dpo_shifts_more(
    frame: pd.DataFrame, party: str, topics: Sequence[Topic], min_n: int
) -> list[Finding]:
    """Per DPO variant, NWP rank and topic: DPO's Default final score minus the NWP
    rank's, signed toward the tuned party."""
    claim = CLAIMS["dpo-shifts-more"]
    out = []
    for topic in topics:
        signed = _signed_finals(frame, party, topic)
        if signed is None:
            continue
        for dpo in _groups(signed, DPO_LABEL):
            further = signed[signed["condition"] == dpo]["final"]
            for nwp in _groups(signed, NWP_LABEL):
                than = signed[signed["condition"] == nwp]["final"]
                where = f"{party} · {dpo} vs {nwp}"
                result = _welch_row(further, than, claim.id, f"{where} · {topic.name}", min_n)
                centre = float(than.mean()) if len(than) else np.nan
                spread = _seed_spread(signed, centre, [dpo])
                notes = (f"toward {party}, relative to {nwp}'s mean", UNIT_NOTE, spread)
                out.append(Finding(claim, result, where, topic.name, notes=notes))
    return out


def tuning_claim_findings(
    frame: pd.DataFrame, party: str, topics: Sequence[Topic], min_n: int
) -> list[Finding]:
    """Both tuning claims on one tuning run's answers (one mode, answers with a number)."""
    return [
        *tuning_shifts_default(frame, party, topics, min_n),
        *dpo_shifts_more(frame, party, topics, min_n),
    ]
