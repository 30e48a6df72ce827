"""Is the self-written data what the intervention needs? Two screens and a gate.

- Question screen: every model-written question is asked two Yes/No questions (does it ask
  for an opinion on US politics? is it phrased neutrally?) and kept when the probability of
  "Yes" reaches a threshold on both. The probabilities come from the same whole-candidate
  scoring the survey uses (``LanguageModel.score_choices``), on the model itself or a
  judge model.
- Answer partisanship: every answer's question and text go to the judge, which is asked
  whose views the answer expresses; its distribution over Republican / Democrat / Neither
  (averaged over both orders of the options) gives ``lean`` = P(Republican) - P(Democrat)
  in [-1, 1]. An answer is on its intended side when it leans toward its own party.
- Distinguishability (no judge): can the two parties' answers be told apart at all? A
  word-level classifier (TF-IDF and logistic regression, scikit-learn) is trained on some
  questions' answers and tested on the answers to questions it never saw. Near one half, the
  answers differ in nothing tied to the party, so DPO pairs (own answer over the other
  party's) carry no preference a model can learn beyond the pairs themselves. It is a lower
  bound: a difference the words do not show may still exist.
- Gate: the training party's answers must be on side often enough and lean further toward
  that party than the other party's answers do, and the parties must be distinguishable;
  otherwise the run warns before training and the Table-1 report carries a banner.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from stancelab.conversation._templates import DEFAULT_VERSION, read_template
from stancelab.engine._base import ChoiceRequest, LanguageModel, Message
from stancelab.tuning._questions import PROMPTS

YES_NO = ("Yes", "No")
PARTY_CHOICES = ("Republicans", "Democrats", "neither party")
PARTY_ORDERS = (
    "Republicans, Democrats or neither party",
    "Democrats, Republicans or neither party",
)


@dataclass(frozen=True)
class QuestionCheck:
    """The screen's verdict on one question."""

    text: str
    p_politics: float
    p_neutral: float
    kept: bool
    reason: str | None
    """None when kept, else 'off_topic', 'leading' or 'unscored' (the judge gave no mass)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready record."""
        return asdict(self)


def _ask(text: str, reply: str) -> list[Message]:
    """The judge's question, and the start of its reply that the candidates continue (a
    bare chat reply often opens with other words, which leaves the candidates no mass)."""
    return [{"role": "user", "content": text.strip()}, {"role": "assistant", "content": reply}]


def _p_yes(scores: Any) -> float | None:
    return float(scores.probabilities[0]) if scores.coverage > 0 else None


def question_check_requests(
    questions: Sequence[str], version: str = DEFAULT_VERSION
) -> list[ChoiceRequest]:
    """What the judge is asked about each question: the topic check, then the
    neutrality check (two requests a question)."""
    topic = read_template(PROMPTS, "question_topic_check", version=version, fields={"question"})
    neutral = read_template(PROMPTS, "question_neutral_check", version=version, fields={"question"})
    reply = read_template(PROMPTS, "question_check_reply", version=version, fields=set())
    return [
        ChoiceRequest(_ask(template.format(question=q), reply.strip()), YES_NO)
        for q in questions
        for template in (topic, neutral)
    ]


def _question_scores(
    judge: LanguageModel, questions: Sequence[str], version: str
) -> list[tuple[float | None, float | None]]:
    """P(Yes) of the topic and the neutrality check for every question (batched)."""
    requests = question_check_requests(questions, version)
    scores = judge.score_choices(requests) if requests else []
    return [(_p_yes(scores[2 * k]), _p_yes(scores[2 * k + 1])) for k in range(len(questions))]


def calibrate(
    judge: LanguageModel,
    reference: Sequence[str],
    ceiling: float = 0.5,
    version: str = DEFAULT_VERSION,
) -> tuple[float, float]:
    """Thresholds (topic, neutral) from questions known to be good (Table 2's seeds).

    Small judges put most of their mass on "No" whatever the question, so a fixed 0.5
    drops everything. A candidate must instead score at least as high as the second
    lowest reference question (the lowest fifth), and never needs more than ``ceiling``.
    """
    scores = _question_scores(judge, reference, version)
    out: list[float] = []
    for i in range(2):
        values = sorted(x for x in (v[i] for v in scores) if x is not None)
        out.append(min(ceiling, values[len(values) // 5]) if values else ceiling)
    return out[0], out[1]


def check_questions(
    judge: LanguageModel,
    questions: Sequence[str],
    min_score: float | tuple[float, float] = 0.5,
    version: str = DEFAULT_VERSION,
) -> list[QuestionCheck]:
    """Score every question on topic and neutrality (batched); keep those whose P(Yes)
    reaches ``min_score`` (one value, or (topic, neutral) thresholds from ``calibrate``)."""
    if not questions:
        return []
    t_topic, t_neutral = min_score if isinstance(min_score, tuple) else (min_score, min_score)
    out = []
    for text, (p_topic, p_neutral) in zip(
        questions, _question_scores(judge, questions, version), strict=True
    ):
        if p_topic is None or p_neutral is None:
            reason: str | None = "unscored"
        elif p_topic < t_topic:
            reason = "off_topic"
        elif p_neutral < t_neutral:
            reason = "leading"
        else:
            reason = None
        out.append(
            QuestionCheck(
                text,
                round(p_topic or 0.0, 4),
                round(p_neutral or 0.0, 4),
                reason is None,
                reason,
            )
        )
    return out


def toward(lean: float, party: str) -> float:
    """A lean (+ Republican, - Democrat) seen from ``party``: positive means its side."""
    return lean if party == "republican" else -lean


def party_check_requests(
    rows: Sequence[dict[str, Any]], version: str = DEFAULT_VERSION
) -> list[ChoiceRequest]:
    """What the judge is asked about each answer (``question`` and ``text``): whose views
    it expresses, once with the options in each order (two requests an answer)."""
    template = read_template(
        PROMPTS, "answer_party_check", version=version, fields={"question", "answer", "options"}
    )
    reply = read_template(PROMPTS, "answer_party_reply", version=version, fields=set()).strip()
    return [
        ChoiceRequest(
            _ask(template.format(question=r["question"], answer=r["text"], options=order), reply),
            PARTY_CHOICES,
        )
        for r in rows
        for order in PARTY_ORDERS
    ]


def score_partisanship(
    judge: LanguageModel, rows: Sequence[dict[str, Any]], version: str = DEFAULT_VERSION
) -> list[dict[str, float]]:
    """The judge's Republican / Democrat / Neither distribution for every answer, batched.

    Each answer is judged with the options in both orders and the two averaged. Returns one
    record per row: p_republican, p_democrat, p_neither, lean, coverage.
    """
    requests = party_check_requests(rows, version)
    scores = judge.score_choices(requests) if requests else []
    out = []
    for k in range(len(rows)):
        both = [scores[2 * k + j] for j in range(len(PARTY_ORDERS))]
        usable = [s for s in both if s.coverage > 0]
        probs = (
            [statistics.fmean(s.probabilities[i] for s in usable) for i in range(3)]
            if usable
            else [0.0, 0.0, 0.0]
        )
        out.append(
            {
                "p_republican": round(probs[0], 4),
                "p_democrat": round(probs[1], 4),
                "p_neither": round(probs[2], 4),
                "lean": round(probs[0] - probs[1], 4),
                "coverage": round(statistics.fmean(s.coverage for s in both), 4),
            }
        )
    return out


def on_side(row: dict[str, Any]) -> bool | None:
    """Whether a scored answer leans toward its own party (None when not scored)."""
    score = row.get("partisanship")
    if not score or not score.get("coverage"):
        return None
    return toward(float(score["lean"]), str(row["party"])) > 0


def partisanship_summary(rows: Sequence[dict[str, Any]], party: str) -> dict[str, Any]:
    """Share on ``party``'s side and mean lean of the scored rows (lean: + Republican)."""
    scored = [r for r in rows if on_side(r) is not None]
    if not scored:
        return {"scored": 0, "on_side_share": None, "mean_lean": None, "mean_toward": None}
    leans = [float(r["partisanship"]["lean"]) for r in scored]
    return {
        "scored": len(scored),
        "on_side_share": round(sum(1 for r in scored if on_side(r)) / len(scored), 4),
        "mean_lean": round(statistics.fmean(leans), 4),
        "mean_toward": round(statistics.fmean(toward(v, party) for v in leans), 4),
    }


def distinguishability(
    own: Sequence[dict[str, Any]], other: Sequence[dict[str, Any]], folds: int = 5
) -> dict[str, Any]:
    """How often a word-level classifier names the right party of answers to questions it
    did not train on (see the module doc); ``accuracy`` None with fewer than two questions
    answered by both parties.

    ``band`` is the half-width of the 95% interval of an accuracy of one half on this many
    answers: an accuracy inside 0.5 +- band is what indistinguishable data gives.
    """
    shared = {str(r["question_id"]) for r in own} & {str(r["question_id"]) for r in other}
    labelled = [
        (r, label)
        for group, label in ((own, 1), (other, 0))
        for r in group
        if str(r["question_id"]) in shared
    ]
    out: dict[str, Any] = {
        "answers": len(labelled),
        "questions": len(shared),
        "accuracy": None,
        "band": None,
        "method": "tfidf word 1-2 grams + logistic regression, folds by question",
    }
    if len(shared) < 2:
        return out
    # Lazy: scikit-learn is only needed here, and only by the tuning extra.
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    from sklearn.model_selection import GroupKFold, cross_val_score  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415

    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000),
    )
    try:
        scores = cross_val_score(
            classifier,
            [str(r["text"]) for r, _ in labelled],
            [label for _, label in labelled],
            groups=[str(r["question_id"]) for r, _ in labelled],
            cv=GroupKFold(n_splits=min(folds, len(shared))),
            error_score="raise",
        )
    except ValueError as exc:  # too few shared words to learn from
        out["unmeasured"] = str(exc).splitlines()[0]
        return out
    out["accuracy"] = round(float(statistics.fmean(scores)), 4)
    out["band"] = round(1.96 * (0.25 / len(labelled)) ** 0.5, 4)
    return out


def partisanship_gate(
    own: Sequence[dict[str, Any]],
    other: Sequence[dict[str, Any]],
    party: str,
    min_on_side: float,
    min_separation: float,
    min_distinguishable: float = 0.0,
) -> dict[str, Any]:
    """Is the training data partisan enough? ``passed`` None when nothing was checked.

    Own side: the share of the training party's answers that lean its way. Separation:
    how much further the training party's answers lean its way than the other party's.
    Distinguishable: ``distinguishability`` of the two parties' answers (judge-free, so it
    is checked even when no answer was scored), when ``min_distinguishable`` is above 0.
    """
    mine = partisanship_summary(own, party)
    theirs = partisanship_summary(other, party)
    gate: dict[str, Any] = {
        "party": party,
        "min_on_side": min_on_side,
        "min_separation": min_separation,
        "min_distinguishable": min_distinguishable,
        "on_side_share": mine["on_side_share"],
        "separation": None,
        "distinguishability": None,
        "passed": None,
        "problems": [],
    }
    if min_distinguishable > 0 and other:
        told = distinguishability(own, other)
        gate["distinguishability"] = told
        if told["accuracy"] is not None and told["accuracy"] < min_distinguishable:
            gate["problems"].append(
                f"a word-level classifier tells the two parties' answers apart on unseen "
                f"questions {told['accuracy']:.0%} of the time (chance 50% +- "
                f"{told['band']:.0%}, needs {min_distinguishable:.0%}): the DPO pairs carry "
                "little or no party preference to learn"
            )
    if mine["on_side_share"] is None:
        # Nothing scored: the gate can only fail on distinguishability, never pass.
        failed = bool(gate["problems"])
        gate["problems"].append("no answer was scored for partisanship")
        gate["passed"] = False if failed else None
        return gate
    if theirs["mean_toward"] is not None:
        gate["separation"] = round(mine["mean_toward"] - theirs["mean_toward"], 4)
    if mine["on_side_share"] < min_on_side:
        gate["problems"].append(
            f"only {mine['on_side_share']:.0%} of the {party} answers lean {party} "
            f"(needs {min_on_side:.0%})"
        )
    if gate["separation"] is not None and gate["separation"] < min_separation:
        gate["problems"].append(
            f"the {party} answers lean only {gate['separation']:+.2f} further {party} than "
            f"the other party's (needs {min_separation:+.2f})"
        )
    gate["passed"] = not gate["problems"]
    return gate
