"""Strategy coding a reviewer accepts: the codebook as a file, a blinded sample for human
coders, their codes read back, and agreement between the judge and every coder.

A codebook lists strategies (label, definition, example) in YAML or CSV. Codes live in
``study_strategy_codes``: one row per message, coder and label, so a message may carry
several labels and judges and people are stored the same way (``source`` tells them apart).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stancelab.conversation._export import formula_safe
from stancelab.engine import ConfigError, StoreError
from stancelab.study._config import StudyConfig
from stancelab.study._store import StrategyCodeRow, StudyStore

if TYPE_CHECKING:
    import pandas as pd

CODEBOOK_COLUMNS = ("label", "definition", "example")
BUILTIN_CODEBOOK = "codebook.v1.yaml"
"""The built-in codebook (package data beside the prompt templates)."""
SPEAKERS = {"user": "person", "assistant": "chatbot"}
"""The roles a strategy is coded for, as coders and the judge read them."""
SHEET_COLUMNS = ("message_id", "speaker", "topic", "text")
"""What a coder sees of a message: nothing that tells its condition, participant or stances."""
CODER_COLUMN = "coder"
AGREEMENT_COLUMNS = (
    "measure",
    "label",
    "raters",
    "rater_a",
    "rater_b",
    "n",
    "value",
    "ci_low",
    "ci_high",
    "percent_agreement",
    "note",
)
ALL_LABELS = "(all labels)"


@dataclass(frozen=True)
class Strategy:
    """One codebook entry."""

    label: str
    definition: str
    example: str = ""


@dataclass(frozen=True)
class Codebook:
    """The strategies coders and the judge decide on, one yes/no decision per label."""

    strategies: tuple[Strategy, ...]
    name: str = "codebook.v1"

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels in codebook order."""
        return tuple(s.label for s in self.strategies)

    @property
    def digest(self) -> str:
        """Short sha256 of the entries: codes made with different wordings never share a
        judge name."""
        text = "\0".join(f"{s.label}\0{s.definition}\0{s.example}" for s in self.strategies)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def strategy(self, label: str) -> Strategy:
        """The entry of one label."""
        for s in self.strategies:
            if s.label == label:
                return s
        raise ConfigError(f"codebook {self.name} has no label {label!r}")

    def render(self) -> str:
        """The codebook as the judge prompt lists it, one strategy a line."""
        lines = []
        for s in self.strategies:
            example = f' Example: "{s.example}"' if s.example else ""
            lines.append(f"- {s.label}: {s.definition.rstrip('.')}.{example}")
        return "\n".join(lines)

    def write_csv(self, path: Path) -> Path:
        """The codebook as CSV (label, definition, example), readable by ``load_codebook``."""
        import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

        frame = pd.DataFrame([vars(s) for s in self.strategies], columns=list(CODEBOOK_COLUMNS))
        path.write_text(formula_safe(frame).to_csv(index=False), encoding="utf-8")
        return path


def load_codebook(path: Path | str | None = None) -> Codebook:
    """Read a codebook file: YAML (``strategies:`` list of {label, definition, example},
    or the bare list) or CSV with columns label, definition (and example); None reads
    the built-in one.

    Any flaw (unreadable or empty file, unknown column or key, a missing label or
    definition, a label given twice or named like a coding-sheet column) is one
    ConfigError naming the file and the row."""
    if path is None:
        where = f"built-in {BUILTIN_CODEBOOK}"
        text = resources.files("stancelab.study.prompts").joinpath(BUILTIN_CODEBOOK).read_text()
        suffix, name = ".yaml", "codebook.v1"
    else:
        file = Path(path)
        where, suffix, name = f"codebook {file}", file.suffix.lower(), file.stem
        if suffix not in (".yaml", ".yml", ".csv"):
            raise ConfigError(f"{where}: use a .yaml, .yml or .csv file")
        try:
            text = file.read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(f"cannot read {where}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} is not UTF-8 text (byte {exc.start})") from exc
    if not text.strip():
        raise ConfigError(f"{where} is empty")
    entries = _csv_entries(text, where) if suffix == ".csv" else _yaml_entries(text, where)
    if not entries:
        raise ConfigError(f"{where} lists no strategies")
    return Codebook(_strategies(entries, where), name=name)


def _yaml_entries(text: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"strategies"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; use 'strategies'")
        data = data.get("strategies")
    if not isinstance(data, list):
        raise ConfigError(f"{where}: 'strategies' must be a list of {{label, definition, example}}")
    entries = []
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: entry {number} is not a mapping of label, definition")
        entries.append((f"entry {number}", item))
    return entries


def _csv_entries(text: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in columns if c not in CODEBOOK_COLUMNS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown column(s) {unknown}; use {', '.join(CODEBOOK_COLUMNS)}"
        )
    entries = []
    for row in reader:
        place = f"line {reader.line_num}"
        if None in row:
            raise ConfigError(f"{where}: {place} has more cells than the header")
        entries.append((place, {k.strip(): v for k, v in row.items() if v is not None}))
    return entries


def _strategies(entries: list[tuple[str, dict[str, Any]]], where: str) -> tuple[Strategy, ...]:
    seen: dict[str, str] = {}
    out = []
    for place, item in entries:
        unknown = sorted(set(item) - set(CODEBOOK_COLUMNS))
        if unknown:
            raise ConfigError(
                f"{where}: {place}: unknown key(s) {unknown}; use {', '.join(CODEBOOK_COLUMNS)}"
            )
        fields = {}
        for key in CODEBOOK_COLUMNS:
            value = item.get(key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{where}: {place}: {key} must be text, not {value!r}")
            fields[key] = " ".join((value or "").split())  # one line: it goes into a prompt
        label = fields["label"]
        if not label:
            raise ConfigError(f"{where}: {place} has no label")
        if not fields["definition"]:
            raise ConfigError(f"{where}: {place} (label {label!r}) has no definition")
        if label.casefold() in {c.casefold() for c in (*SHEET_COLUMNS, CODER_COLUMN)}:
            raise ConfigError(f"{where}: {place}: label {label!r} is a coding-sheet column name")
        if label.casefold() in seen:
            raise ConfigError(
                f"{where}: {place}: label {label!r} is given twice (first at "
                f"{seen[label.casefold()]})"
            )
        seen[label.casefold()] = place
        out.append(Strategy(**fields))
    return tuple(out)


def resolve_codebook(path: Path | None = None, config: StudyConfig | None = None) -> Codebook:
    """The codebook to use: ``path`` (a command's ``--codebook``), else the study file's
    ``codebook``, else the built-in one."""
    return load_codebook(path or (config.codebook if config is not None else None))


# --- the blinded sample and the codes read back ----------------------------------------


def _codable_messages(store: StudyStore, study: str | None) -> list[tuple[int, str, str, str]]:
    """(message id, speaker, topic, text) of every message a strategy is coded for."""
    topics = {p.id: p.topic for p in store.participants(study)}
    return [
        (m.id, SPEAKERS[m.role], topics[m.participant_id], m.text)
        for m in store.all_messages()
        if m.role in SPEAKERS and m.status != "failed" and m.participant_id in topics
    ]


def export_sample(
    store: StudyStore,
    out: Path,
    n: int = 200,
    seed: int = 1,
    study: str | None = None,
    codebook: Codebook | None = None,
) -> tuple[Path, Path, int]:
    """Write a blinded random sample of messages for human coders, and the codebook beside
    it (``<out stem>-codebook.csv``); returns both paths and the number of messages.

    The sheet has message_id, speaker, topic, text, one empty 0/1 column per label and an
    empty ``coder`` column, in random order: nothing tells a message's condition,
    participant, turn, stances or the judge's labels. The same seed gives the same sample.
    An existing sheet is never overwritten (it may hold a coder's work).

    Args:
        store: the study database.
        out: the CSV to write.
        n: messages to sample (all of them when there are fewer).
        seed: seed of the sample.
        study: only this study's messages.
        codebook: the labels (default: the built-in codebook).
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    book = codebook or load_codebook()
    if n < 1:
        raise ConfigError(f"--n must be at least 1, not {n}")
    sheet_book = out.with_name(f"{out.stem}-codebook.csv")
    for path in (out, sheet_book):
        if path.exists():
            raise ConfigError(f"{path} exists (it may hold a coder's work); choose another --out")
    messages = _codable_messages(store, study)
    if not messages:
        where = f" of study {study!r}" if study else ""
        raise StoreError(f"no messages{where} to code in {store.url.split('@')[-1]}")
    chosen = random.Random(seed).sample(messages, min(n, len(messages)))
    frame = pd.DataFrame(chosen, columns=list(SHEET_COLUMNS))
    for label in book.labels:
        frame[label] = ""
    frame[CODER_COLUMN] = ""
    out.parent.mkdir(parents=True, exist_ok=True)
    book.write_csv(sheet_book)
    out.write_text(formula_safe(frame).to_csv(index=False), encoding="utf-8")
    return out, sheet_book, len(chosen)


@dataclass(frozen=True)
class ImportSummary:
    """What ``import_codes`` stored."""

    coders: tuple[str, ...]
    messages: int
    codes: int


def import_codes(
    store: StudyStore,
    path: Path,
    coder: str | None = None,
    codebook: Codebook | None = None,
) -> ImportSummary:
    """Read a filled coding sheet into ``study_strategy_codes`` (source 'human').

    A row whose label cells are all empty is not coded (skipped); in a coded row an empty
    label cell means 0. Re-importing a coder's sheet replaces that coder's codes for the
    messages in it. Any flaw (not a UTF-8 CSV, no message_id column, a column that is not a
    label of the codebook, a cell other than 0/1/empty, an unknown message id, no coder)
    is one ConfigError naming the line and column, and nothing is imported.

    Args:
        store: the study database.
        path: the filled sheet.
        coder: the coder's name for rows whose ``coder`` cell is empty (a filled cell
            must then match it); required when the sheet has no ``coder`` column.
        codebook: the labels the sheet was exported with (default: the built-in codebook).
    """
    book = codebook or load_codebook()
    header, rows = _read_sheet(path)
    where = f"coding sheet {path}"
    known = {*SHEET_COLUMNS, CODER_COLUMN, *book.labels}
    for column in header:
        if column not in known:
            raise ConfigError(
                f"{where}: column {column!r} is not a label of codebook {book.name} "
                f"({', '.join(book.labels)}); pass the codebook it was exported with"
            )
    label_columns = [c for c in header if c in book.labels]
    if not label_columns:
        raise ConfigError(f"{where} has no label column of codebook {book.name}")
    if CODER_COLUMN not in header and coder is None:
        raise ConfigError(f"{where} has no {CODER_COLUMN!r} column; add one or pass --coder NAME")
    coder = coder.strip() if coder is not None else None
    if coder == "":
        raise ConfigError("--coder must not be empty")
    codes: list[StrategyCodeRow] = []
    first_line: dict[tuple[str, int], int] = {}
    for line, cells in rows:
        row = dict(zip(header, cells, strict=False))
        label_cells = {c: row.get(c, "").strip() for c in label_columns}
        if not any(label_cells.values()):
            continue  # not coded
        raw_id = row.get("message_id", "").strip()
        try:
            message_id = int(raw_id)
        except ValueError:
            raise ConfigError(
                f"{where}: line {line}, column 'message_id': {raw_id!r} is not a message id"
            ) from None
        name = row.get(CODER_COLUMN, "").strip()
        if coder is not None and name and name != coder:
            raise ConfigError(
                f"{where}: line {line}, column 'coder': {name!r} differs from --coder {coder!r}"
            )
        name = coder or name
        if not name:
            raise ConfigError(f"{where}: line {line}, column 'coder' is empty (or pass --coder)")
        if (name, message_id) in first_line:
            raise ConfigError(
                f"{where}: line {line}: message {message_id} is coded twice by {name!r} "
                f"(first at line {first_line[name, message_id]})"
            )
        first_line[name, message_id] = line
        for label, cell in label_cells.items():
            if cell not in ("", "0", "1"):
                raise ConfigError(
                    f"{where}: line {line}, column {label!r}: {cell!r} is not 0, 1 or empty"
                )
            codes.append(
                StrategyCodeRow(
                    message_id=message_id,
                    coder=name,
                    label=label,
                    present=cell == "1",
                    probability=None,
                    coverage=None,
                    source="human",
                )
            )
    if not codes:
        raise ConfigError(f"{where} has no coded row (every label cell is empty)")
    existing = store.message_ids([m for _, m in first_line])
    missing = [(line, m) for (_, m), line in first_line.items() if m not in existing]
    if missing:
        line, message_id = min(missing)
        raise ConfigError(
            f"{where}: line {line}, column 'message_id': message {message_id} does not exist "
            f"in the database ({len(missing)} unknown id(s) in all)"
        )
    coders = sorted({name for name, _ in first_line})
    judges = {c.coder for c in store.codes() if c.source == "judge"} & set(coders)
    if judges:
        raise ConfigError(f"{where}: coder name(s) {sorted(judges)} belong to a judge model")
    store.replace_codes(codes)
    return ImportSummary(tuple(coders), len(first_line), len(codes))


def _read_sheet(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (line, cells) of each non-blank row of a CSV coding sheet."""
    where = f"coding sheet {path}"
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not a UTF-8 CSV file (byte {exc.start})") from exc
    if "\0" in text or not text.strip():
        raise ConfigError(f"{where} is not a CSV file (it is empty or binary)")
    first = text.splitlines()[0]
    try:  # a spreadsheet may save with semicolons or tabs
        dialect: Any = csv.Sniffer().sniff(first, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = [c.strip() for c in next(reader)]
        rows = []
        for cells in reader:
            if any(c.strip() for c in cells):
                if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
                    raise ConfigError(
                        f"{where}: line {reader.line_num} has more cells than the header"
                    )
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise ConfigError(f"{where} is not a valid CSV file: {exc}") from exc
    if "message_id" not in header:
        raise ConfigError(
            f"{where} is not a coding sheet: it has no 'message_id' column "
            "(write one with `stancelab study coding export`)"
        )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ConfigError(f"{where}: column(s) {duplicated} appear twice in the header")
    return header, rows


# --- agreement ---------------------------------------------------------------------------


def cohens_kappa(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, float, float, str]:
    """Cohen's kappa of two raters' yes/no codes of the same messages, with its asymptotic
    95% CI (statsmodels) and a note when it cannot be read as usual.

    Both raters giving the same single code to every message leaves kappa undefined (0/0:
    nan). A rater giving one code to every message makes kappa 0 by construction,
    whatever the other did (as statsmodels, scikit-learn and R compute it): the value is
    kept, the CI is nan and the note says so."""
    from statsmodels.stats.inter_rater import (  # noqa: PLC0415 - lazy: heavy import
        cohens_kappa as kappa_of_table,
    )

    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two equally long, non-empty code lists")
    table = [[0, 0], [0, 0]]
    for x, y in zip(a, b, strict=True):
        table[int(x)][int(y)] += 1
    constant_a = len(set(a)) == 1
    constant_b = len(set(b)) == 1
    if constant_a and constant_b and a[0] == b[0]:
        return math.nan, math.nan, math.nan, "both raters gave every message the same code"
    if constant_a or constant_b:
        return 0.0, math.nan, math.nan, "a rater gave every message one code: 0 by construction"
    result = kappa_of_table(table)
    return float(result.kappa), float(result.kappa_low), float(result.kappa_upp), ""


def krippendorff_alpha(units: Sequence[Sequence[float]]) -> tuple[float, int, str]:
    """Nominal Krippendorff's alpha of a raters x units matrix (nan = not coded), the
    number of units coded by at least two raters, and a note when alpha is undefined."""
    import krippendorff  # noqa: PLC0415 - lazy: imports numpy
    import numpy as np  # noqa: PLC0415

    data = np.array(units, dtype=float)
    pairable = int((np.sum(~np.isnan(data), axis=0) >= 2).sum()) if data.size else 0
    if pairable == 0:
        return math.nan, 0, "no message was coded by two raters"
    values = data[:, np.sum(~np.isnan(data), axis=0) >= 2]
    if len(set(values[~np.isnan(values)].tolist())) < 2:
        return math.nan, pairable, "every code is the same: alpha is undefined"
    alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    return float(alpha), pairable, ""


def agreement_table(
    store: StudyStore, judge: str | None = None, codebook: Codebook | None = None
) -> pd.DataFrame:
    """Agreement on strategy codes, one row per measure: Cohen's kappa per label for each
    pair of raters (the judge with each human coder, coders with each other) on the
    messages both coded, and nominal Krippendorff's alpha per label and over all labels
    (every (message, label) a unit), among all raters and among the human coders alone.

    Columns: measure ('cohen_kappa'/'krippendorff_alpha'), label (or '(all labels)'),
    raters, rater_a, rater_b, n (messages both coded; for alpha, units coded by at least
    two raters), value, ci_low, ci_high (kappa's asymptotic 95% CI), percent_agreement
    (kappa rows), note (why a value is nan or degenerate). Fewer than two raters gives
    an empty table with these columns.

    Args:
        store: the study database.
        judge: the judge whose codes to compare (default: every judge with codes).
        codebook: the labels to report, in its order (default: every label coded).
    """
    import pandas as pd  # noqa: PLC0415 - lazy: pandas is heavy to import

    codes = store.codes()
    judges = sorted({c.coder for c in codes if c.source == "judge"})
    if judge is not None:
        if judge not in judges:
            raise StoreError(f"no strategy codes by judge {judge!r}")
        judges = [judge]
    humans = sorted({c.coder for c in codes if c.source == "human"})
    raters = [*judges, *humans]
    labels = list(codebook.labels) if codebook else list(dict.fromkeys(c.label for c in codes))
    coded: dict[tuple[str, str, int], bool] = {
        (c.coder, c.label, c.message_id): c.present
        for c in codes
        if c.coder in raters and c.label in labels
    }
    if len(raters) < 2:
        return pd.DataFrame(columns=list(AGREEMENT_COLUMNS))
    rows: list[dict[str, Any]] = []
    for label in labels:
        for i, rater_a in enumerate(raters):
            for rater_b in raters[i + 1 :]:
                rows.append(_kappa_row(coded, label, rater_a, rater_b))
    messages = sorted({m for _, _, m in coded})
    groups = [("all raters", raters)]
    if len(humans) >= 2 and judges:
        groups.append(("human coders", humans))
    for name, group in groups:
        for label in [*labels, ALL_LABELS]:
            units = [
                [
                    float(coded[r, lab, m]) if (r, lab, m) in coded else math.nan
                    for lab in (labels if label == ALL_LABELS else [label])
                    for m in messages
                ]
                for r in group
            ]
            alpha, n, note = krippendorff_alpha(units)
            rows.append(
                {
                    "measure": "krippendorff_alpha",
                    "label": label,
                    "raters": f"{name}: {', '.join(group)}",
                    "n": n,
                    "value": alpha,
                    "note": note,
                }
            )
    return pd.DataFrame(rows, columns=list(AGREEMENT_COLUMNS))


def _kappa_row(
    coded: dict[tuple[str, str, int], bool], label: str, rater_a: str, rater_b: str
) -> dict[str, Any]:
    both = sorted(
        m for r, lab, m in coded if r == rater_a and lab == label and (rater_b, label, m) in coded
    )
    row: dict[str, Any] = {
        "measure": "cohen_kappa",
        "label": label,
        "raters": f"{rater_a} | {rater_b}",
        "rater_a": rater_a,
        "rater_b": rater_b,
        "n": len(both),
    }
    if not both:
        return {**row, "value": math.nan, "note": "no message coded by both"}
    a = [coded[rater_a, label, m] for m in both]
    b = [coded[rater_b, label, m] for m in both]
    value, low, high, note = cohens_kappa(a, b)
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(both)
    return {
        **row,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "percent_agreement": agree,
        "note": note,
    }
