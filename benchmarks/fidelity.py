"""How well each embedded model holds its personas before any debate, in each prompt format.

Run: python benchmarks/fidelity.py [--models qwen2.5-coder-1.5b] [--formats transcript,chat]
     [--per-party 4] [--story-format chat] [--json out.json] [--screen]

For every model and format: the model writes ``--per-party`` Republican and Democrat
stories with the paper's meta-prompt (Figure 1, temperature 1.0, in that format), then
every persona and the Default agent answer the survey on each Pew topic with an empty
history, in that format, in both survey modes. Printed per topic: the mean Republican,
Democrat and Default score (distribution mode), the share of each party on its side of
the midpoint, the separation (the party expected high minus the other), and the share of
generate-mode answers that held no number. ``--screen`` also runs the optional screen
(re-draws of stories whose own survey sits on the wrong side) and reports both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from stancelab.conversation import (
    BUILTIN_PERSONAS,
    PAPER_TOPICS,
    PromptFormat,
    SurveyMode,
    generate_personas,
    load_prompts,
    paper_topic,
)
from stancelab.debates._fidelity import FidelityRow, screen_personas, summarise, survey_personas
from stancelab.engine._llamacpp import load_engine

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def measure(
    engine: Any,
    fmt: PromptFormat,
    per_party: int,
    seed: int,
    screen: bool,
    max_tokens: int,
    writer: Any = None,
    story_format: PromptFormat | None = None,
) -> dict[str, Any]:
    topics = [paper_topic(t) for t in PAPER_TOPICS]
    prompts = load_prompts(format=PromptFormat.CHAT)  # holds every template
    start = time.perf_counter()
    writer = writer or engine
    story_format = story_format or fmt
    personas = generate_personas(
        writer, per_party, seed=seed, prompt_format=story_format, workers=4, max_tokens=max_tokens
    )
    write_s = time.perf_counter() - start
    print(
        f"[{engine.name} {fmt}] {len(personas.personas)} stories ({story_format}) in "
        f"{write_s:.0f} s",
        file=sys.stderr,
    )
    screened = None
    if screen:
        engines = {k: engine for k in ("republican", "democrat", "default")}
        formats = dict.fromkeys(engines, fmt)
        personas, screened = screen_personas(
            personas,
            writer,
            engines,
            formats,
            topics,
            prompts,
            (SurveyMode.DISTRIBUTION,),
            seed=seed,
            prompt_format=story_format,
        )
    group = [*personas.personas, BUILTIN_PERSONAS["default"][0]]
    start = time.perf_counter()
    dist = survey_personas(engine, group, topics, prompts, SurveyMode.DISTRIBUTION, fmt)
    gen = survey_personas(engine, group, topics, prompts, SurveyMode.GENERATE, fmt)
    survey_s = time.perf_counter() - start
    print(f"[{engine.name} {fmt}] surveys in {survey_s:.0f} s", file=sys.stderr)
    rows = []
    for t in summarise(dist, topics):
        gen_t = [r for r in gen if r.topic == t.topic]
        gen_summary = summarise([r for r in gen_t if r.score is not None], [paper_topic(t.topic)])
        rows.append(
            {
                "topic": t.topic,
                "means": t.means,
                "on_side": t.on_side,
                "separation": t.separation,
                "generate_means": gen_summary[0].means,
                "generate_separation": gen_summary[0].separation,
                "generate_failures": sum(r.score is None for r in gen_t),
                "generate_answers": len(gen_t),
                "generate_failures_by_kind": _failures_by_kind(gen_t),
            }
        )
    return {
        "format": str(fmt),
        "story_format": str(story_format),
        "rows": rows,
        "write_s": round(write_s, 1),
        "survey_s": round(survey_s, 1),
        "screen": screened,
        "attempts": personas.meta.get("attempts"),
        "stories": {p.name: p.background for p in personas.personas},
    }


def _failures_by_kind(rows: list[FidelityRow]) -> dict[str, str]:
    out = {}
    for kind in ("republican", "democrat", "default"):
        mine = [r for r in rows if r.kind == kind]
        out[kind] = f"{sum(r.score is None for r in mine)}/{len(mine)}"
    return out


def fmt_num(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        "| model | stories / survey | topic | R / D / Default | R on side | D on side | separation "
        "| generate: separation | generate: no number |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for result in results:
        for entry in result["formats"]:
            for r in entry["rows"]:
                m = r["means"]
                g = r["generate_means"]
                rs, rn = r["on_side"].get("republican", (0, 0))
                ds, dn = r["on_side"].get("democrat", (0, 0))
                print(
                    f"| {result['model']} | {entry['story_format']} / {entry['format']} | "
                    f"{r['topic']} | "
                    f"{fmt_num(m['republican'])} / {fmt_num(m['democrat'])} / "
                    f"{fmt_num(m['default'])} | {rs}/{rn} | {ds}/{dn} | "
                    f"{fmt_num(r['separation'], True)} | "
                    f"{fmt_num(r['generate_separation'], True)} "
                    f"({fmt_num(g['republican'])}/{fmt_num(g['democrat'])}/"
                    f"{fmt_num(g['default'])}) | "
                    f"{r['generate_failures']}/{r['generate_answers']} |"
                )
    for result in results:
        for entry in result["formats"]:
            good = sum(1 for r in entry["rows"] if (r["separation"] or 0) >= 1.0)
            screen = entry["screen"]
            extra = (
                f", screen re-drew {screen['redrawn']} ({screen['still_wrong']} still wrong)"
                if screen
                else ""
            )
            print(
                f"{result['model']} {entry['story_format']} / {entry['format']}: separation "
                f">= 1.0 in the right direction on {good}/4 topics; stories "
                f"{entry['write_s']} s, surveys {entry['survey_s']} s{extra}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--formats", default="transcript,chat")
    parser.add_argument("--per-party", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=256, help="per story")
    parser.add_argument(
        "--story-sampling",
        default="",
        help="e.g. top_k=40,top_p=0.95,min_p=0.05: a second engine with this sampler cut "
        "writes the stories (the protocol samples the whole distribution)",
    )
    parser.add_argument(
        "--story-format",
        choices=[str(f) for f in PromptFormat],
        help="the format stories are written in (default: each survey format); an "
        "experiment sets it with personas.model's prompt_format",
    )
    parser.add_argument("--screen", action="store_true", help="also run the optional screen")
    parser.add_argument("--json", help="write the full results (stories included) here")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        engine = load_engine(model, n_parallel=args.parallel, ctx_per_slot=2048)
        writer = None
        if args.story_sampling:
            cut = {k: float(v) for k, v in (i.split("=") for i in args.story_sampling.split(","))}
            writer = load_engine(model, n_parallel=args.parallel, ctx_per_slot=2048, sampling=cut)
        entry: dict[str, Any] = {"model": model, "formats": []}
        results.append(entry)
        try:
            for name in [f.strip() for f in args.formats.split(",") if f.strip()]:
                measured = measure(
                    engine,
                    PromptFormat(name),
                    args.per_party,
                    args.seed,
                    args.screen,
                    args.max_tokens,
                    writer,
                    PromptFormat(args.story_format) if args.story_format else None,
                )
                measured["story_sampling"] = args.story_sampling or "protocol"
                entry["formats"].append(measured)
                # Each model and format as soon as it is measured: a long run that is
                # cut short still leaves its finished figures.
                print_table([{"model": model, "formats": [measured]}])
                sys.stdout.flush()
                if args.json:
                    with open(args.json, "w", encoding="utf-8") as handle:
                        json.dump(results, handle, indent=2, default=str)
        finally:
            engine.close()
            if writer is not None:
                writer.close()


if __name__ == "__main__":
    main()
