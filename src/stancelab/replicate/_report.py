"""The replication report: the claim x model verdict table, the findings, and each model's
figures (the paper's figures redrawn by the run report's own plotting functions)."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from stancelab.debates import mean_attitudes
from stancelab.debates._report import plot_setup
from stancelab.replicate import jiang2025
from stancelab.replicate._findings import PREFERRED_MODE, STUDY_PAPERS, runs_answers
from stancelab.replicate._tuning import NOT_COMPARED as TUNING_NOT_COMPARED
from stancelab.replicate._tuning import PAPER_REFERENCE, PAPER_TABLE1
from stancelab.replicate._verdict import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from stancelab.replicate.taubenfeld2024 import default_reference

if TYPE_CHECKING:
    import pandas as pd

    from stancelab.replicate._replication import Replication

COLOURS = {REPRODUCED: "#d8f0d8", NOT_REPRODUCED: "#f6d5d5", INCONCLUSIVE: "#eeeeee"}
FIGURES = {
    "three-way": "Fig. 3",
    "two-way": "Fig. 4",
    "rr-default": "Fig. 5",
    "rr": "Fig. 8",
    "dd-default": "Fig. 9",
}
"""The paper's figure each setup redraws (Taubenfeld et al. 2024)."""

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2rem auto;padding:0 1rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ccc;padding:.25rem .45rem;vertical-align:top;text-align:left}
.pilot{background:#fff3cd;border:2px solid #c90;padding:.6rem}
.panels img{max-width:100%;border:1px solid #ddd;margin:.3rem 0}
"""


TUNED_FIGURES = {
    "republican": "Fig. 11 (tuned toward Republican; Fig. 6 is its climate change and "
    "illegal immigration panels)",
    "democrat": "Fig. 12 (tuned toward Democrat)",
}
"""The paper's figure each direction of the intervention redraws."""


def _mode(table: pd.DataFrame) -> str:
    """The survey mode a figure shows: ``distribution`` when there, else the first."""
    modes = list(dict.fromkeys(table["mode"]))
    return PREFERRED_MODE if PREFERRED_MODE in modes else str(modes[0])


def _number(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def _verdict_table(replication: Replication) -> str:
    """Claim x model: each cell the verdict, coloured, with the estimate and its CI."""
    from stancelab.replicate._replication import _part  # noqa: PLC0415 - a cycle

    table = replication.table
    table = table.assign(
        part=[_part(n, t) for n, t in zip(table["note"], table["test"], strict=True)]
    )
    models = replication.models
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for keys, cell in table.groupby(["claim_id", "setup", "topic", "part"], sort=False):
        by_model = {str(r.model): r for r in cell.itertuples(index=False)}
        cells = []
        for model in models:
            r = by_model.get(model)
            if r is None:
                cells.append("<td>–</td>")
                continue
            cells.append(
                f"<td style='background:{COLOURS.get(str(r.verdict), '#fff')}'>"
                f"<strong>{html.escape(str(r.verdict))}</strong><br>{_number(r.estimate)} "
                f"[{_number(r.ci_low)}, {_number(r.ci_high)}] n={int(r.n)}</td>"
            )
        labels = "".join(f"<td>{html.escape(str(k))}</td>" for k in keys)
        rows.append(f"<tr>{labels}{''.join(cells)}</tr>")
    return (
        "<table><tr><th>claim</th><th>setup / condition</th><th>topic</th><th>part</th>"
        f"{head}</tr>" + "".join(rows) + "</table>"
    )


def _debate_panels(replication: Replication, folder: Path) -> str:
    """Per model, one figure per setup: the paper's figure on this model's runs."""
    parts = []
    for model in replication.models:
        runs = replication.runs.get(model) or []
        if not runs:
            continue
        frame, checks, topics = runs_answers(runs)
        table = mean_attitudes(frame)
        if table.empty:
            parts.append(f"<h3>{html.escape(model)}</h3><p>No survey answers yet.</p>")
            continue
        mode = _mode(table)
        baseline = default_reference(frame, checks, topics)
        images = []
        for setup in dict.fromkeys(table["setup"]):
            name = f"{model}-{setup}.png".replace(" ", "_").replace("/", "_")
            plot_setup(table, str(setup), mode, baseline, folder / name)
            title = f"{setup} ({FIGURES.get(str(setup), 'setup')}), {mode} survey"
            images.append(
                f"<figure><figcaption>{html.escape(title)}</figcaption>"
                f"<img src='{html.escape(name)}' alt='{html.escape(title)}'></figure>"
            )
        links = " · ".join(
            f"<a href='{html.escape(_relative(run.folder / 'report' / 'index.html', folder))}'>"
            f"{html.escape(run.folder.name)}</a>"
            for run in runs
            if run.folder is not None
        )
        parts.append(
            f"<h3>{html.escape(model)}</h3><p>Runs: {links} (each run's own report, once "
            "written with <code>stancelab report</code>).</p>"
            f"<div class='panels'>{''.join(images)}</div>"
        )
    return "".join(parts)


def _tuning_section(replication: Replication, folder: Path) -> str:
    """Table 1 beside the paper's, and per model and direction the debates before (solid)
    and after (dotted) tuning: Figs. 6, 11 and 12."""
    table1 = replication.table1()
    if table1.empty:
        return ""
    paper_rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{h}</td><td>{m}</td><td>{a}</td></tr>"
        for v, (h, m, a) in PAPER_TABLE1.items()
    )
    name, hellaswag, mmlu = PAPER_REFERENCE
    paper_rows += (
        f"<tr><td>{html.escape(name)}</td><td>{hellaswag}</td><td>{mmlu}</td><td>–</td></tr>"
    )
    parts = [
        "<h2>Table 1: the cost of the intervention</h2>",
        "<p>Per model, direction and variant: benchmark accuracy (%) and the Default "
        "agent's final attitude on racism, tuned rows the mean over their seeds; the "
        "paper's Mistral 7B values (tuned toward Republican) beside them.</p>",
        table1.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.2f}", border=0),
        "<p>The paper's Table 1 (Mistral 7B):</p><table><tr><th>model</th><th>HellaSwag"
        f"</th><th>MMLU</th><th>attitude</th></tr>{paper_rows}</table>",
        "<h2>Figs. 6, 11 and 12: debates before (solid) and after (dotted) tuning</h2>",
    ]
    for model, runs in replication.tuning.items():
        for run in runs:
            table = mean_attitudes(run.debates().surveys())
            if table.empty:
                continue
            mode = _mode(table)
            title = f"{model}: {TUNED_FIGURES.get(run.party, run.party)}, {mode} survey"
            images = []
            for setup in dict.fromkeys(table["setup"]):
                png = f"{model}-tuning-{run.party}-{setup}.png".replace(" ", "_").replace("/", "_")
                plot_setup(table, str(setup), mode, {}, folder / png)
                images.append(f"<img src='{html.escape(png)}' alt='{html.escape(title)}'>")
            results = _relative(run.folder / "table.txt", folder)
            parts.append(
                f"<h3>{html.escape(title)}</h3><p>The pipeline's own summary: "
                f"<a href='{html.escape(results)}'>{html.escape(results)}</a></p>"
                f"<div class='panels'>{''.join(images)}</div>"
            )
    return "".join(parts)


def _study_panels(replication: Replication, folder: Path) -> str:
    """Per model, the pilot study report's figures and a link to the whole report."""
    parts = []
    for model, report in replication.studies.items():
        index = _relative(report / "index.html", folder)
        images = "".join(
            f"<img src='{html.escape(_relative(png, folder))}' alt='{html.escape(png.stem)}'>"
            for png in sorted(report.glob("*.png"))
        )
        parts.append(
            f"<h3>{html.escape(model)}</h3><p>The study's own report: "
            f"<a href='{html.escape(index)}'>{html.escape(index)}</a></p>"
            f"<div class='panels'>{images}</div>"
        )
    return "".join(parts)


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()


def write_replication_report(replication: Replication, folder: Path) -> Path:
    """Write ``index.html`` and ``findings.csv`` (and the figures) into ``folder``."""
    from stancelab.replicate._replication import NOT_COMPARED  # noqa: PLC0415 - a cycle

    folder.mkdir(parents=True, exist_ok=True)
    replication.table.to_csv(folder / "findings.csv", index=False)
    study = replication.paper in STUDY_PAPERS
    pilot = (
        f"<p class='pilot'><strong>A pilot:</strong> {html.escape(jiang2025.PILOT_NOTE)}. "
        "Simulated people are not people: these verdicts say whether the app, the model "
        "and the analysis run end to end and which way a model's chatbot moves, not how "
        "people respond.</p>"
        if study
        else ""
    )
    scale = f" at {html.escape(replication.scale)} scale" if replication.scale else ""
    panels = _study_panels(replication, folder) if study else _debate_panels(replication, folder)
    not_compared = (
        TUNING_NOT_COMPARED if replication.tuning else NOT_COMPARED.get(replication.paper, "")
    )
    findings = replication.table.to_html(
        index=False, na_rep="–", float_format=lambda v: f"{v:.3g}", border=0
    )
    page = f"""<!doctype html><html><head><meta charset='utf-8'>
<title>Replication of {html.escape(replication.paper)}</title><style>{STYLE}</style></head>
<body><h1>Replication of {html.escape(replication.paper)}{scale}</h1>{pilot}
<p>Models: {html.escape(", ".join(replication.models))}. Runs under
<code>{html.escape(str(replication.out))}</code>.
Verdicts: <em>reproduced</em> when the 95% CI lies wholly on the paper's side of the
claim's threshold, <em>not reproduced</em> when wholly on the other side,
<em>inconclusive</em> otherwise or when too few observations were there to test
(docs/replicate.md).</p>
<h2>Claims by model</h2>{_verdict_table(replication)}
<h2>The paper's own numbers</h2><p>{html.escape(not_compared)}</p>
<h2>Each model's figures</h2>{panels}{_tuning_section(replication, folder)}
<h2>All findings</h2><p>Also in <a href='findings.csv'>findings.csv</a>.</p>{findings}
</body></html>"""
    path = folder / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
