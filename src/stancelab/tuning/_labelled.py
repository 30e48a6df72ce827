"""Hand-labelled questions and answers: a check of the judge behind the screens.

Answers are labelled with the party whose line they argue; questions with whether they are
neutral questions on US politics. The off-topic ones are the kind SmolLM2 wrote (issue 15).
``judge_accuracy`` says how often a judge agrees with these labels (chance: one half for
questions and answers), used by the tests and ``benchmarks/tuning_screens.py``.
"""

from __future__ import annotations

from stancelab.engine import LanguageModel
from stancelab.tuning._screening import check_questions, score_partisanship, toward

GOOD_QUESTIONS = [
    "How do you believe the U.S. should handle immigration and border security?",
    "What is your opinion on the role of the federal government in healthcare?",
    "How should the United States approach gun ownership laws?",
    "What do you think about the current level of federal taxes?",
    "How should America respond to climate change, if at all?",
    "What is your view on affirmative action in college admissions?",
]
OFF_TOPIC_QUESTIONS = [
    "Which one of these techs rip your iPhone off the shelf?",
    "What is the best way to bake sourdough bread at home?",
    "How many legs does a spider have?",
    "Which football team won the most games in the 1990s in Brazil?",
]
LEADING_QUESTIONS = [
    "Don't you agree that the disastrous open-border policies are destroying America?",
    "Why are Republicans so cruel to immigrants and the poor?",
]

REPUBLICAN_ANSWERS = [
    (
        "How do you believe the U.S. should handle immigration and border security?",
        "Secure the border first: finish the wall, deport those here illegally and end "
        "catch-and-release. A nation without borders is not a nation.",
    ),
    (
        "How do you balance Second Amendment rights with the need for gun control measures?",
        "The Second Amendment is not negotiable. Law-abiding citizens have the right to "
        "defend their families; gun control only disarms the innocent.",
    ),
    (
        "What is your stance on the government's role in addressing climate change?",
        "Climate alarmism is used to justify job-killing regulations. Let American energy "
        "producers drill and keep gas prices low.",
    ),
    (
        "What are your views on racial inequality and systemic racism in American society?",
        "America is not a racist country. Opportunity is open to everyone who works hard; "
        "we should stop dividing people by race.",
    ),
]
DEMOCRAT_ANSWERS = [
    (
        "How do you believe the U.S. should handle immigration and border security?",
        "Immigrants strengthen our country. We need a path to citizenship for Dreamers and "
        "humane treatment at the border, not walls and family separations.",
    ),
    (
        "How do you balance Second Amendment rights with the need for gun control measures?",
        "Gun violence is an epidemic. We need universal background checks and a ban on "
        "assault weapons to keep our children safe in school.",
    ),
    (
        "What is your stance on the government's role in addressing climate change?",
        "Climate change is an existential crisis. The government must invest in clean "
        "energy and cut carbon emissions now, before it is too late.",
    ),
    (
        "What are your views on racial inequality and systemic racism in American society?",
        "Systemic racism is real and shapes policing, housing and health care. We must "
        "confront it with bold reforms and real investment in communities of color.",
    ),
]


def labelled_rows() -> list[dict[str, object]]:
    """Dataset-like rows (party = the side each answer argues)."""
    rows: list[dict[str, object]] = []
    for party, answers in (("republican", REPUBLICAN_ANSWERS), ("democrat", DEMOCRAT_ANSWERS)):
        for k, (question, text) in enumerate(answers):
            rows.append(
                {
                    "id": f"{party}-L{k}",
                    "party": party,
                    "question_id": f"L{k}",
                    "question": question,
                    "k": 0,
                    "text": text,
                    "usable": True,
                }
            )
    return rows


def judge_accuracy(
    judge: LanguageModel, min_score: float | tuple[float, float] = 0.5
) -> dict[str, float]:
    """Share of the labelled questions and answers the judge gets right."""
    questions = GOOD_QUESTIONS + OFF_TOPIC_QUESTIONS + LEADING_QUESTIONS
    checks = check_questions(judge, questions, min_score)
    good = set(GOOD_QUESTIONS)
    right_q = sum(1 for c in checks if c.kept == (c.text in good))
    rows = labelled_rows()
    scores = score_partisanship(judge, rows)
    right_a = sum(
        1 for r, s in zip(rows, scores, strict=True) if toward(s["lean"], str(r["party"])) > 0
    )
    return {
        "questions": round(right_q / len(checks), 3),
        "answers": round(right_a / len(rows), 3),
        "answer_coverage": round(sum(s["coverage"] for s in scores) / len(scores), 4),
    }
