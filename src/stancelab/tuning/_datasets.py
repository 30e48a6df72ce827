"""Self-generated partisan datasets (paper Figure 10) and DPO pairs, as resumable JSONL."""

from __future__ import annotations

import json
import random
import re
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from stancelab.conversation import PAPER_TOPICS
from stancelab.conversation._seeds import derive_seed
from stancelab.conversation._templates import DEFAULT_VERSION, read_template
from stancelab.engine._base import GenerationRequest, LanguageModel, Message
from stancelab.tuning._errors import DatasetError
from stancelab.tuning._questions import PROMPTS, Question
from stancelab.tuning._screening import on_side, partisanship_summary, score_partisanship, toward

_REFUSAL = re.compile(
    r"\b(as an ai|i'?m sorry|i am sorry|i cannot|i can'?t (?:answer|provide|help)|"
    r"language model|i do not have (?:personal )?opinions|i don'?t have (?:personal )?opinions)",
    re.I,
)


def partisan_context(party: str, version: str = DEFAULT_VERSION) -> str:
    """Figure 10's context: party, the four-topic ideology, the answering instruction."""
    if party not in ("republican", "democrat"):
        raise DatasetError(f"party must be republican or democrat, got {party!r}")
    lines = []
    for topic, owner in PAPER_TOPICS.items():
        believes = party == owner
        lines.append(
            f"- You believe {topic} is a problem."
            if believes
            else f"- You don't believe {topic} is a problem."
        )
    return (
        read_template(PROMPTS, "partisan_context", version=version)
        .format(party_title=party.title(), ideology="\n".join(lines))
        .strip()
    )


def answer_prompt(party: str, question: str, version: str = DEFAULT_VERSION) -> list[Message]:
    """Chat messages asking the partisan agent one question."""
    return [
        {"role": "system", "content": partisan_context(party, version)},
        {"role": "user", "content": question},
    ]


def classify_answer(text: str, min_words: int = 3) -> str | None:
    """None for a usable answer, else why it is filtered: empty, too_short or refused."""
    stripped = text.strip()
    if not stripped:
        return "empty"
    if len(stripped.split()) < min_words:
        return "too_short"
    if _REFUSAL.search(stripped):
        return "refused"
    return None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a truncated last line (interrupted write) is skipped."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            if number < len(lines):  # not the last line: the file is damaged
                raise DatasetError(f"{path}:{number} is not valid JSON") from exc


def _drop_partial_line(path: Path) -> None:
    """Cut an unfinished last line left by an interrupted write, before appending."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def generate_answers(
    lm: LanguageModel,
    questions: Sequence[Question],
    party: str,
    path: Path,
    *,
    answers_per_question: int = 20,
    temperature: float = 1.0,
    max_tokens: int = 160,
    min_words: int = 3,
    batch: int = 32,
    seed: int = 0,
    version: str = DEFAULT_VERSION,
) -> dict[str, Any]:
    """Answer every question K times at temperature 1.0; appends to ``path`` and resumes.

    Every generation is written (usable or not, with the reason), so an interrupted run
    continues where it stopped and the summary counts what was filtered.
    """
    done = {(r["question_id"], int(r["k"])) for r in read_jsonl(path) if r.get("party") == party}
    todo = [(q, k) for q in questions for k in range(answers_per_question) if (q.id, k) not in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_partial_line(path)
    with path.open("a", encoding="utf-8") as out:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            requests = [
                GenerationRequest(
                    prompt=answer_prompt(party, q.text, version),
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=answer_seed(seed, party, q.id, k),
                )
                for q, k in chunk
            ]
            for (q, k), gen in zip(chunk, lm.generate(requests), strict=True):
                text = gen.text.strip()
                reason = classify_answer(text, min_words)
                row = {
                    "id": f"{party}-{q.id}-{k}",
                    "party": party,
                    "question_id": q.id,
                    "question": q.text,
                    "k": k,
                    "text": text,
                    "usable": reason is None,
                    "filtered": reason,
                    "finish_reason": gen.finish_reason,
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": gen.completion_tokens,
                    "temperature": temperature,
                    "model": lm.name,
                    "template_version": version,
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
    summary = summarize(path)
    path.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def answer_seed(seed: int, party: str, question_id: str, k: int) -> int:
    """The sampling seed of one answer (the same on every resume)."""
    return derive_seed(seed, party, question_id, k)


def score_dataset(
    judge: LanguageModel, path: Path, batch: int = 64, version: str = DEFAULT_VERSION
) -> dict[str, Any]:
    """Give every usable answer of a dataset file its partisanship score (resumable).

    Rows already scored keep their score; the file is rewritten atomically after each
    batch, so an interrupted run continues where it stopped. Returns the new summary.
    """
    rows = list(read_jsonl(path))
    todo = [r for r in rows if r.get("usable") and "partisanship" not in r]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        for row, score in zip(chunk, score_partisanship(judge, chunk, version), strict=True):
            row["partisanship"] = {**score, "judge": judge.name}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        tmp.replace(path)
    summary = summarize(path)
    path.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def keep_on_side(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the answers that lean toward their own party (the optional filter)."""
    return [r for r in rows if on_side(r)]


def summarize(path: Path) -> dict[str, Any]:
    """Counts, filtered answers by reason, word-length statistics of a dataset file,
    and the partisanship of its usable answers when they were scored."""
    rows = list(read_jsonl(path))
    usable = [r for r in rows if r.get("usable")]
    words = [len(r["text"].split()) for r in usable]
    reasons: dict[str, int] = {}
    for r in rows:
        if not r.get("usable"):
            reasons[str(r.get("filtered"))] = reasons.get(str(r.get("filtered")), 0) + 1
    return {
        "file": str(path),
        "generated": len(rows),
        "usable": len(usable),
        "filtered": reasons,
        "questions": len({r["question_id"] for r in usable}),
        "truncated": sum(1 for r in usable if r.get("finish_reason") == "length"),
        "words_mean": round(statistics.fmean(words), 2) if words else 0.0,
        "words_min": min(words) if words else 0,
        "words_max": max(words) if words else 0,
        "partisanship": partisanship_summary(usable, str(usable[0]["party"])) if usable else None,
    }


def load_answers(path: Path) -> list[dict[str, Any]]:
    """Usable answers of a dataset; a dataset without any is an error."""
    if not path.is_file():
        raise DatasetError(f"dataset {path} does not exist")
    rows = [r for r in read_jsonl(path) if r.get("usable") and str(r.get("text", "")).strip()]
    if not rows:
        raise DatasetError(
            f"dataset {path} has no usable answers (all empty, too short or "
            "refused); regenerate it with more tokens or another model"
        )
    return rows


def training_texts(rows: Sequence[dict[str, Any]], text_format: str = "answer") -> list[str]:
    """Texts for next-token training: the answers alone, or question newline answer."""
    if text_format == "question_answer":
        return [f"{r['question']}\n{r['text']}" for r in rows]
    return [str(r["text"]) for r in rows]


def dpo_pairs(
    own: Sequence[dict[str, Any]],
    other: Sequence[dict[str, Any]],
    per_question: int = 20,
    seed: int = 0,
    prompt_format: str = "question",
    direction: str | None = None,
) -> list[dict[str, str]]:
    """Chosen = own party's answer, rejected = other party's answer to the same question.

    With ``direction`` (a party), a pair is kept only when the chosen answer leans further
    toward that party than the rejected one (both need partisanship scores); rejected
    answers are tried in turn until one qualifies.
    """
    by_question: dict[str, list[dict[str, Any]]] = {}
    for r in other:
        by_question.setdefault(str(r["question_id"]), []).append(r)

    def leans_right_way(chosen: dict[str, Any], rejected: dict[str, Any]) -> bool:
        if direction is None:
            return True
        a, b = chosen.get("partisanship"), rejected.get("partisanship")
        if not a or not b:
            return False
        return toward(float(a["lean"]), direction) > toward(float(b["lean"]), direction)

    rng = random.Random(seed)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in own:
        grouped.setdefault(str(r["question_id"]), []).append(r)
    pairs: list[dict[str, str]] = []
    for qid, chosen_rows in grouped.items():
        rejected_rows = by_question.get(qid)
        if not rejected_rows:
            continue
        for i, chosen in enumerate(chosen_rows[:per_question]):
            rejected = (
                rejected_rows[i % len(rejected_rows)]
                if i < len(rejected_rows)
                else rng.choice(rejected_rows)
            )
            if not leans_right_way(chosen, rejected):
                # The pairing in order failed; any rejected answer that qualifies will do.
                fits = [r for r in rejected_rows if leans_right_way(chosen, r)]
                if not fits:
                    continue
                rejected = fits[i % len(fits)]
            prompt = str(chosen["question"])
            pairs.append(
                {
                    "prompt": prompt + "\n" if prompt_format == "question" else prompt,
                    "chosen": str(chosen["text"]),
                    "rejected": str(rejected["text"]),
                }
            )
    if not pairs:
        raise DatasetError(
            "no DPO pairs: the two parties' datasets share no question with usable answers"
            + (f" where the chosen answer leans further {direction}" if direction else "")
        )
    return pairs
