"""How usable is each embedded model's self-written data? Questions kept, answers on side.

For every model, the model itself is the writer and, unless ``--judge`` names one judge for
all, the judge (the pipeline's default):

1. it writes ``--questions`` questions with the paper's prompt (no screen), then the
   question screen judges them (thresholds calibrated on Table 2's seeds, the pipeline's
   default): share kept, and why the others were dropped;
2. the Figure-10 partisan agent of each party answers the first seed questions of Table 2
   (``--answers`` answers in all, half per party, T=1.0) and the judge scores each answer:
   share on the intended side and mean lean (+1 Republican, -1 Democrat) per party;
3. the judge's accuracy on the hand-labelled set of ``stancelab.tuning._labelled``, so the
   shares above can be read against how well the judge sees anything at all.

Usage:
    python benchmarks/tuning_screens.py --models smollm2-135m qwen2.5-coder-0.5b \
        --questions 20 --answers 30 --json out.json

``--distinguish K`` instead measures whether the two parties' answers differ at all, with
no judge: each party answers every Table 2 seed question K times (T=1.0), once with the
party context as the system message (the pipeline) and once with it in the user message,
and the gate's word-level classifier (``screening.distinguishability``) names the party of
answers to questions it did not train on. 0.5 is chance.

Sample sizes are small on purpose (a shared 2-core machine; the 1.5B model decodes about
10 tok/s alone): read the shares as rough, with their counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from stancelab.engine._base import GenerationRequest, Message
from stancelab.engine._llamacpp import load_engine
from stancelab.tuning import judge_accuracy
from stancelab.tuning._datasets import answer_prompt, classify_answer
from stancelab.tuning._questions import generate_questions, seed_questions
from stancelab.tuning._screening import (
    calibrate,
    check_questions,
    distinguishability,
    score_partisanship,
    toward,
)


def measure(
    model: str, n_questions: int, n_answers: int, max_tokens: int, judge_name: str | None
) -> dict[str, Any]:
    """One model's figures (see the module docstring)."""
    out: dict[str, Any] = {
        "model": model,
        "judge": judge_name or model,
        "questions_asked": n_questions,
    }
    with ExitStack() as stack:
        lm = stack.enter_context(load_engine(model, n_parallel=4, ctx_per_slot=1024))
        judge = lm
        if judge_name and judge_name != model:
            judge = stack.enter_context(load_engine(judge_name, n_parallel=4, ctx_per_slot=1024))
        t0 = time.perf_counter()
        seeds = seed_questions()
        bank = generate_questions(
            lm, len(seeds) + n_questions, parallel=2, max_rounds=6, max_tokens=250
        )
        written = [q.text for q in bank if q.source == "generated"]
        out["generate_questions_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        thresholds = calibrate(judge, [q.text for q in seeds])
        out["thresholds"] = [round(t, 4) for t in thresholds]
        checks = check_questions(judge, written, thresholds)
        out["screen_questions_s"] = round(time.perf_counter() - t0, 1)
        out["questions_written"] = len(written)
        out["questions_kept"] = sum(c.kept for c in checks)
        out["questions_dropped"] = {
            r: sum(1 for c in checks if c.reason == r) for r in ("off_topic", "leading", "unscored")
        }
        out["question_checks"] = [c.as_dict() for c in checks]

        t0 = time.perf_counter()
        per_party = n_answers // 2
        rows = []
        for party in ("republican", "democrat"):
            picks = [seeds[k % 5] for k in range(per_party)]
            gens = lm.generate(
                [
                    GenerationRequest(
                        answer_prompt(party, q.text),
                        temperature=1.0,
                        max_tokens=max_tokens,
                        seed=1000 + k,
                    )
                    for k, q in enumerate(picks)
                ]
            )
            for q, g in zip(picks, gens, strict=True):
                if classify_answer(g.text) is None:
                    rows.append({"party": party, "question": q.text, "text": g.text.strip()})
        out["generate_answers_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        scores = score_partisanship(judge, rows)
        out["score_answers_s"] = round(time.perf_counter() - t0, 1)
        for party in ("republican", "democrat"):
            mine = [(r, s) for r, s in zip(rows, scores, strict=True) if r["party"] == party]
            out[party] = {
                "answers": len(mine),
                "on_side": sum(1 for _, s in mine if toward(s["lean"], party) > 0),
                "mean_lean": round(statistics.fmean(s["lean"] for _, s in mine), 3)
                if mine
                else None,
                "coverage": round(statistics.fmean(s["coverage"] for _, s in mine), 4)
                if mine
                else None,
            }
        out["answers"] = [{**r, **s} for r, s in zip(rows, scores, strict=True)]
        t0 = time.perf_counter()
        out["judge_accuracy"] = judge_accuracy(judge, thresholds)
        out["judge_accuracy_s"] = round(time.perf_counter() - t0, 1)
    return out


def placed_prompt(party: str, question: str, placement: str) -> list[Message]:
    """The pipeline's answer prompt, or the same words as one user message."""
    messages = answer_prompt(party, question)
    if placement == "system":
        return messages
    return [{"role": "user", "content": "\n\n".join(m["content"] for m in messages)}]


def distinguish(model: str, per_question: int, max_tokens: int) -> dict[str, Any]:
    """Distinguishability of one model's two parties' answers, per prompt placement."""
    seeds = seed_questions()
    asks = [
        (party, q, k)
        for party in ("republican", "democrat")
        for q in seeds
        for k in range(per_question)
    ]
    out: dict[str, Any] = {"model": model, "answers_per_party": per_question * len(seeds)}
    with load_engine(model, n_parallel=8, ctx_per_slot=512) as lm:
        for placement in ("system", "user"):
            t0 = time.perf_counter()
            gens = lm.generate(
                [
                    GenerationRequest(
                        placed_prompt(party, q.text, placement),
                        temperature=1.0,
                        max_tokens=max_tokens,
                        seed=1000 * k + i,
                    )
                    for i, (party, q, k) in enumerate(asks)
                ]
            )
            rows = [
                {"party": party, "question_id": q.id, "text": g.text.strip()}
                for (party, q, _), g in zip(asks, gens, strict=True)
            ]
            told = distinguishability(
                [r for r in rows if r["party"] == "republican"],
                [r for r in rows if r["party"] == "democrat"],
            )
            out[placement] = {**told, "seconds": round(time.perf_counter() - t0, 1)}
    return out


def screens_line(result: dict[str, Any]) -> str:
    """One model's screen figures on a line."""
    r, d, j = result["republican"], result["democrat"], result["judge_accuracy"]
    return (
        f"{result['model']} (judge {result['judge']}): questions kept "
        f"{result['questions_kept']}/{result['questions_written']} "
        f"(dropped {result['questions_dropped']}); on side R {r['on_side']}/{r['answers']} "
        f"D {d['on_side']}/{d['answers']}; mean lean R {r['mean_lean']} D {d['mean_lean']}; "
        f"judge accuracy questions {j['questions']} answers {j['answers']} "
        f"(coverage {j['answer_coverage']}); thresholds {result['thresholds']}; times "
        f"{ {k: v for k, v in result.items() if k.endswith('_s')} }"
    )


def distinguish_line(result: dict[str, Any]) -> str:
    """One model's distinguishability figures on a line."""
    return (
        f"{result['model']}: {result['answers_per_party']} answers per party; parties told "
        f"apart on unseen questions, context as system message "
        f"{result['system']['accuracy']}, in the user message "
        f"{result['user']['accuracy']} (chance 0.5 +- {result['user']['band']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m"])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--answers", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--judge", default=None, help="one judge for every writer (default: each judges itself)"
    )
    parser.add_argument(
        "--distinguish", type=int, default=0, help="answers per seed question and party"
    )
    args = parser.parse_args()
    results = []
    for model in args.models:
        if args.distinguish:
            result = distinguish(model, args.distinguish, args.max_tokens)
            line = distinguish_line(result)
        else:
            result = measure(model, args.questions, args.answers, args.max_tokens, args.judge)
            line = screens_line(result)
        results.append(result)
        print(line, flush=True)
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
