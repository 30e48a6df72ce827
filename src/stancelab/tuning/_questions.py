"""Question bank: Table 2's ten seed questions plus questions the model writes itself."""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from stancelab.conversation._config import read_yaml
from stancelab.conversation._templates import DEFAULT_VERSION, read_template
from stancelab.engine import ConfigError
from stancelab.engine._base import GenerationRequest, LanguageModel

_WORD = re.compile(r"[a-z0-9']+")
_LEADER = re.compile(r"^\s*(?:[-*•]|\(?\d{1,3}[.):]|Q\d*[.:]|Question\s*\d*[.:])\s*", re.I)

PROMPTS = "stancelab.tuning.prompts"
"""The package that holds the fine-tuning wordings."""


@dataclass(frozen=True)
class Question:
    """One question of the bank."""

    id: str
    text: str
    source: str = "seed"


@dataclass
class BankLog:
    """What growing the bank took: rounds, candidates, and why candidates were dropped."""

    rounds: int = 0
    candidates: int = 0
    duplicates: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    """Screen verdicts: off_topic, leading, unscored -> count."""
    checks: list[dict[str, object]] = field(default_factory=list)
    """Every screened candidate with its scores (kept or not)."""

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready record."""
        return asdict(self)


Screen = Callable[[list[str]], list[tuple[bool, str | None, dict[str, object]]]]
"""Judges candidate questions: (kept, reason when dropped, record) per candidate."""


def seed_questions(version: str = DEFAULT_VERSION) -> list[Question]:
    """The ten seed questions of the paper's Table 2."""
    lines = [
        ln.strip() for ln in read_template(PROMPTS, "seed_questions", version=version).splitlines()
    ]
    return [
        Question(f"q{i:03d}", text, "seed")
        for i, text in enumerate((ln for ln in lines if ln), start=1)
    ]


def normalise(text: str) -> list[str]:
    """Lower-case word tokens, for near-duplicate detection."""
    return _WORD.findall(text.lower())


def similarity(a: str, b: str) -> float:
    """Max of token Jaccard and difflib ratio over normalised text (0..1)."""
    ta, tb = normalise(a), normalise(b)
    if not ta or not tb:
        return 0.0
    sa, sb = set(ta), set(tb)
    jaccard = len(sa & sb) / len(sa | sb)
    ratio = difflib.SequenceMatcher(None, " ".join(ta), " ".join(tb)).ratio()
    return max(jaccard, ratio)


def is_near_duplicate(text: str, kept: list[str], threshold: float) -> bool:
    """True when text is at least ``threshold`` similar to any kept question."""
    return any(similarity(text, other) >= threshold for other in kept)


def parse_questions(reply: str) -> list[str]:
    """Questions in a model reply: one per line, numbering and quotes removed, ending in '?'."""
    found = []
    for line in reply.splitlines():
        text = _LEADER.sub("", line).strip().strip('"“”*').strip()
        if not text.endswith("?") or len(normalise(text)) < 4 or len(text) > 300:
            continue
        found.append(text)
    return found


def generate_questions(
    lm: LanguageModel,
    count: int = 100,
    *,
    start: list[Question] | None = None,
    per_request: int = 10,
    threshold: float = 0.7,
    parallel: int = 8,
    max_rounds: int = 50,
    temperature: float = 1.0,
    max_tokens: int = 400,
    seed: int = 0,
    version: str = DEFAULT_VERSION,
    progress: Callable[[int, int], None] | None = None,
    screen: Screen | None = None,
    log: BankLog | None = None,
) -> list[Question]:
    """Grow the bank (seeds first) with model-written questions until ``count`` distinct ones.

    With ``screen``, each round's new distinct candidates are judged together and only the
    kept ones join the bank; ``log`` counts rounds, near-duplicates and dropped candidates.
    """
    bank = list(start if start is not None else seed_questions(version))
    template = read_template(PROMPTS, "question_generation", version=version).strip()
    rng = random.Random(seed)
    log = log if log is not None else BankLog()
    for round_no in range(max_rounds):
        if len(bank) >= count:
            break
        log.rounds += 1
        requests = []
        for k in range(parallel):
            example = rng.choice(bank).text
            prompt = template.format(count=per_request, question=example)
            requests.append(
                GenerationRequest(
                    prompt=[{"role": "user", "content": prompt}],
                    temperature=temperature,
                    max_tokens=max_tokens,
                    seed=seed * 100_003 + round_no * 101 + k,
                )
            )
        fresh: list[str] = []
        for generation in lm.generate(requests):
            for text in parse_questions(generation.text):
                log.candidates += 1
                if is_near_duplicate(text, [q.text for q in bank] + fresh, threshold):
                    log.duplicates += 1
                    continue
                fresh.append(text)
        while fresh and len(bank) < count:
            # Judge only about as many as are still needed (twice that, as some fail).
            chunk, fresh = fresh[: 2 * (count - len(bank))], fresh[2 * (count - len(bank)) :]
            verdicts = screen(chunk) if screen is not None else None
            for k, text in enumerate(chunk):
                if len(bank) >= count:
                    break
                if verdicts is not None:
                    kept, reason, record = verdicts[k]
                    log.checks.append(record)
                    if not kept:
                        log.dropped[str(reason)] = log.dropped.get(str(reason), 0) + 1
                        continue
                bank.append(Question(f"q{len(bank) + 1:03d}", text, "generated"))
        if progress is not None:
            progress(round_no + 1, len(bank))
    return bank[:count]


def save_questions(questions: list[Question], path: Path) -> None:
    """Write the bank as an editable YAML list of {id, text, source}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Question bank (stancelab finetune). Edit freely: ids must stay unique.\n"
    body = yaml.safe_dump(
        [asdict(q) for q in questions], sort_keys=False, allow_unicode=True, width=1000
    )
    path.write_text(header + body, encoding="utf-8")


def load_questions(path: Path) -> list[Question]:
    """Read a bank written by save_questions (or by hand: a list of strings also works)."""
    data = read_yaml(path, "question file") or []
    if not isinstance(data, list):
        raise ConfigError(f"{path} must hold a list of questions")
    out: list[Question] = []
    for i, item in enumerate(data, start=1):
        if isinstance(item, str):
            out.append(Question(f"q{i:03d}", item.strip(), "file"))
        elif isinstance(item, dict) and str(item.get("text", "")).strip():
            out.append(
                Question(
                    str(item.get("id", f"q{i:03d}")),
                    str(item["text"]).strip(),
                    str(item.get("source", "file")),
                )
            )
        else:
            raise ConfigError(f"{path}: entry {i} is neither a string nor {{id, text}}")
    ids = [q.id for q in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: question ids are not unique")
    if not out:
        raise ConfigError(f"{path} holds no questions")
    return out
