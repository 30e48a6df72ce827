"""``findings``: a paper's claims tested on a run's attitude frame, one verdict per row."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from stancelab.conversation import MIN_N, Topic, paper_topic
from stancelab.debates import Run
from stancelab.debates._fidelity import FidelityRow
from stancelab.engine import ConfigError
from stancelab.replicate import jiang2025, taubenfeld2024
from stancelab.replicate._verdict import Claim, Finding, findings_table

ClaimRunner = Callable[[pd.DataFrame, Sequence[FidelityRow], Sequence[Topic], int], list[Finding]]

PAPERS: dict[str, tuple[dict[str, Claim], ClaimRunner]] = {
    taubenfeld2024.PAPER: (taubenfeld2024.CLAIMS, taubenfeld2024.claim_findings),
}
"""Each paper's claims and the function that tests them all."""

STUDY_PAPERS: dict[str, dict[str, Claim]] = {jiang2025.PAPER: jiang2025.CLAIMS}
"""Papers of human-LLM studies: their claims are read from the study report's
statistics (`jiang2025.study_findings`), not from debates."""

CLAIMS: dict[str, Claim] = {
    claim_id: claim for claims, _ in PAPERS.values() for claim_id, claim in claims.items()
}
"""Every claim of every debate paper by id (``CLAIMS["default-stable"].definition``); a
study paper's are in its module (``jiang2025.CLAIMS``)."""

REQUIRED = ("debate_id", "topic", "setup", "iteration", "agent_index", "kind", "score")
"""The attitude-frame columns the claims read (``attitude_frame`` gives them all)."""

PREFERRED_MODE = "distribution"


def paper_claims(paper: str) -> tuple[dict[str, Claim], ClaimRunner]:
    """A paper's claims and runner, or one line naming the papers there are."""
    if paper not in PAPERS:
        raise ConfigError(f"unknown paper {paper!r}; choose one of: {', '.join(PAPERS)}")
    return PAPERS[paper]


def answered(frame: pd.DataFrame) -> pd.DataFrame:
    """The attitude answers that hold a number (the columns the claims read checked)."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ConfigError(f"the attitude frame has no column(s) {', '.join(missing)}")
    if "question_id" in frame:
        frame = frame[frame["question_id"] == "attitude"]
    if "ok" in frame:
        frame = frame[frame["ok"].astype(bool)]
    return frame[frame["score"].notna()]


def one_mode(frame: pd.DataFrame, mode: str | None) -> tuple[pd.DataFrame, str]:
    """The answers of one survey mode (``distribution`` when present, else the first)."""
    modes = [str(m) for m in dict.fromkeys(frame["mode"])] if "mode" in frame else [""]
    if mode is None:
        mode = PREFERRED_MODE if PREFERRED_MODE in modes else modes[0] if modes else ""
    elif mode not in modes:
        raise ConfigError(
            f"no survey mode {mode!r} in the frame; choose one of: {', '.join(modes)}"
        )
    if "mode" in frame:
        frame = frame[frame["mode"] == mode]
    if frame.empty:
        raise ConfigError("the attitude frame holds no survey answer with a number")
    return frame, mode


def _answers(
    frame: pd.DataFrame, mode: str | None, condition: str | None
) -> tuple[pd.DataFrame, str]:
    """The attitude answers with a number, of one survey mode and one untuned condition."""
    frame = answered(frame)
    if "tuned" in frame:  # the paper's claims are about the base model
        frame = frame[~frame["tuned"].astype(bool)]
    if "condition" in frame:
        labels = [str(c) for c in dict.fromkeys(frame["condition"])]
        if condition is None and len(labels) > 1:
            raise ConfigError(
                "the frame holds the conditions "
                f"{', '.join(map(repr, labels))}; pass condition= one of them"
            )
        if condition is not None:
            if condition not in labels:
                raise ConfigError(
                    f"no condition {condition!r} in the frame; choose one of: "
                    f"{', '.join(map(repr, labels))}"
                )
            frame = frame[frame["condition"] == condition]
    return one_mode(frame, mode)


def findings(
    frame: pd.DataFrame,
    *,
    model: str,
    paper: str = taubenfeld2024.PAPER,
    checks: Sequence[FidelityRow] = (),
    topics: Sequence[Topic] | None = None,
    mode: str | None = None,
    condition: str | None = None,
    claims: Sequence[str] | None = None,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Test every claim of a paper on a run's answers; one row per claim and cell.

    Columns: ``paper, claim_id, claim, model, setup, topic, mode, estimate, ci_low,
    ci_high, threshold, verdict, n, test, note`` (`COLUMNS`). ``verdict`` is
    ``reproduced`` when the 95% CI lies wholly on the paper's side of the claim's
    threshold, ``not reproduced`` when wholly on the other side, ``inconclusive``
    otherwise or when the test did not run (the note says why, e.g. too few debates).
    ``n`` counts debates (stories for ``personas-hold``). The ``personas-hold``
    precondition comes first; a dynamics claim whose topics' personas did not hold says
    so in its note.

    Args:
        frame: survey answers as ``attitude_frame`` / ``Run.surveys()`` returns them;
            ``debate_id`` must be unique across the frame (`run_findings` makes it so for
            several runs).
        model: the model's name, written in every row.
        paper: the paper whose claims are tested (see `PAPERS`).
        checks: the fidelity check's rows (``FidelityRow``, or the store's persona
            checks): the personas' pre-debate scores; without them ``personas-hold`` is
            inconclusive and the Default's pre-debate score comes from the frame.
        topics: the topics with their party positions; default: the frame's topics with
            the paper's positions (`paper_topic`).
        mode: the survey mode to test (``distribution`` when present, else the first).
        condition: the untuned condition label to test, when the frame holds several.
        claims: only these claim ids (the precondition always stays); default: all.
        min_n: the fewest debates (or stories per party) a test needs.

    Raises:
        ConfigError: an unknown paper, claim id, mode or condition, or a frame without
            the columns the claims read or without answers.
    """
    known, run_claims = paper_claims(paper)
    unknown = [c for c in claims or () if c not in known]
    if unknown:
        raise ConfigError(
            f"unknown claim id {unknown[0]!r} for {paper}; choose from: {', '.join(known)}"
        )
    answers, chosen_mode = _answers(frame, mode, condition)
    if topics is None:
        topics = [paper_topic(str(t)) for t in dict.fromkeys(answers["topic"])]
    found = run_claims(answers, checks, topics, min_n)
    if claims is not None:
        kept = {*claims, "personas-hold"}
        found = [f for f in found if f.claim.id in kept]
    return findings_table(found, model=model, mode=chosen_mode)


def tuning_findings(
    frame: pd.DataFrame,
    *,
    model: str,
    party: str,
    topics: Sequence[Topic] | None = None,
    mode: str | None = None,
    claims: Sequence[str] | None = None,
    min_n: int = MIN_N,
) -> pd.DataFrame:
    """Test taubenfeld2024's tuning claims (``tuning-shifts-default``,
    ``dpo-shifts-more``) on the debates of one self-fine-tuning run; rows as `findings`.

    Args:
        frame: the tuning run's survey answers (``attitude_frame``): one condition per
            model, ``condition`` its variant group (``base``, ``r=256 NWP``, ``r=8 DPO``;
            seeds share it) and ``tuned`` marking the tuned ones.
        model: the model's name, written in every row.
        party: the party the model was tuned toward.
        topics: the topics with their party positions; default: the frame's topics with
            the paper's positions (`paper_topic`).
        mode: the survey mode to test (``distribution`` when present, else the first).
        claims: only these claim ids; default: both (other ids of the paper are ignored).
        min_n: the fewest debates each group of a test needs.

    Raises:
        ConfigError: a frame without the columns the claims read, without answers, or
            without ``condition``/``tuned`` columns, or an unknown mode.
    """
    if "condition" not in frame or "tuned" not in frame:
        raise ConfigError("the tuning frame has no condition/tuned columns (attitude_frame's)")
    answers, chosen_mode = one_mode(answered(frame), mode)
    if topics is None:
        topics = [paper_topic(str(t)) for t in dict.fromkeys(answers["topic"])]
    found = taubenfeld2024.tuning_claim_findings(answers, party, topics, min_n)
    if claims is not None:
        found = [f for f in found if f.claim.id in claims]
    return findings_table(found, model=model, mode=chosen_mode)


def _model_name(config: dict[str, Any]) -> str:
    entry = config.get("model") or {}
    return str(entry.get("name", "?")) if isinstance(entry, dict) else str(entry)


def run_findings(*runs: Run, model: str | None = None, **options: Any) -> pd.DataFrame:
    """`findings` on one or more stored runs of one model (the paper scale's design is two
    experiments: Fig. 3 at 30 iterations and the later figures at 9).

    Debate ids are prefixed with each run's id so they stay unique; the fidelity check's
    rows come from the first run that has any (the runs share their personas), and the
    topics' party positions from the runs' experiment files.

    Args:
        runs: the runs, e.g. ``open_run("runs/taubenfeld2024-quick-M")``.
        model: the name written in every row; default: the first run's model.
        options: further `findings` arguments (``paper``, ``mode``, ``claims``, ...).
    """
    if not runs:
        raise ConfigError("run_findings needs at least one run")
    frame, checks, topics = runs_answers(runs)
    return findings(
        frame,
        model=model or _model_name(runs[0].config),
        checks=checks,
        topics=topics or None,
        **options,
    )


def runs_answers(
    runs: Sequence[Run],
) -> tuple[pd.DataFrame, list[FidelityRow], list[Topic]]:
    """The survey answers of several runs of one model as one frame (debate ids prefixed
    with each run's id, so they stay unique), the fidelity check's rows of the first run
    that has any (the runs share their personas), and the runs' topics with their party
    positions."""
    frames: list[pd.DataFrame] = []
    checks: list[FidelityRow] = []
    topics: dict[str, Topic] = {}
    for run in runs:
        frame = run.surveys()
        frames.append(frame.assign(debate_id=f"{run.run_id}:" + frame["debate_id"].astype(str)))
        for t in run.config.get("topics") or []:
            topics.setdefault(t["name"], Topic(t["name"], t.get("big_problem_for")))
        if not checks:
            checks = [
                FidelityRow(r.persona, r.kind, r.topic, r.score, r.coverage)
                for r in run.store.persona_checks(run.run_id)
            ]
    return pd.concat(frames, ignore_index=True), checks, list(topics.values())
