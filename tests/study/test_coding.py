"""Strategy coding a reviewer accepts: the codebook file, the blinded sample for human
coders, their codes read back (all or nothing), agreement against hand-computed values,
and the multi-label judge (scripted for the orchestration, Qwen2.5-Coder-0.5B for real)."""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from stancelab.engine._base import ChoiceRequest, ChoiceScores
from stancelab.engine._errors import ConfigError, StoreError
from stancelab.engine._fake import FakeChatModel
from stancelab.engine._llamacpp import LlamaCppEngine, load_engine
from stancelab.study._cli import study_app
from stancelab.study._coding import (
    CODER_COLUMN,
    SHEET_COLUMNS,
    Codebook,
    Strategy,
    agreement_table,
    cohens_kappa,
    export_sample,
    import_codes,
    krippendorff_alpha,
    load_codebook,
    resolve_codebook,
)
from stancelab.study._config import load_study
from stancelab.study._store import StrategyCodeRow, StudyStore
from stancelab.study._strategies import (
    LABELS,
    YES_NO,
    JudgeCoverageError,
    code_study,
    judge_name,
)

from .conftest import config_dict

TWO_LABELS = Codebook(
    (
        Strategy("question", "asks the other side for their view", "What do you think?"),
        Strategy("evidence", "facts, numbers or study results", "Sea levels rose 20 cm."),
    ),
    name="two",
)


def _study(store: StudyStore, participants: int = 3, turns: int = 2) -> list[int]:
    """Participants in two conditions with ``turns`` exchanges each; their message ids."""
    rng = random.Random(0)
    for i in range(participants):
        p = store.create_participant(
            "pilot", f"PID-{i}", ["standard", "personalised"], ["climate change"], rng
        )
        for turn in range(1, turns + 1):
            store.add_exchange(
                p.id, turn, f"person {i} turn {turn}: what do you think?", 5, f"reply {i}.{turn}"
            )
    return sorted(m.id for m in store.all_messages())


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the codebook ------------------------------------------------------------------------


def test_builtin_codebook_holds_the_eight_labels_with_examples(tmp_path: Path) -> None:
    book = load_codebook()
    assert book.labels == LABELS and len(LABELS) == 8
    assert all(s.definition and s.example for s in book.strategies)
    rendered = book.render()
    assert rendered.count("\n- ") == 7 and "- personal story: the speaker" in rendered
    # the CSV written for coders is itself a codebook file with the same entries
    again = load_codebook(book.write_csv(tmp_path / "book.csv"))
    assert again.strategies == book.strategies and again.digest == book.digest


def test_codebook_yaml_bare_list_and_csv(tmp_path: Path) -> None:
    yaml_book = load_codebook(
        _write(tmp_path / "b.yml", "- label: question\n  definition: asks for a view\n")
    )
    csv_book = load_codebook(
        _write(tmp_path / "b.csv", "label,definition\nquestion,asks for a view\n")
    )
    assert yaml_book.strategies == csv_book.strategies == (Strategy("question", "asks for a view"),)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        (
            "dup.yaml",
            "strategies:\n- {label: a, definition: x}\n- {label: A, definition: y}\n",
            "entry 2: label 'A' is given twice (first at entry 1)",
        ),
        (
            "dup.csv",
            "label,definition,example\na,x,\nb,y,\na,z,\n",
            "line 4: label 'a' is given twice (first at line 2)",
        ),
        (
            "nodef.yaml",
            "strategies:\n- {label: a, definition: x}\n- {label: b}\n",
            "entry 2 (label 'b') has no definition",
        ),
        ("nodef.csv", "label,definition\na,\n", "line 2 (label 'a') has no definition"),
        ("empty.yaml", "  \n", "is empty"),
        ("empty.csv", "", "is empty"),
        ("header.csv", "label,definition,example\n", "lists no strategies"),
        ("cols.csv", "label,definition,colour\na,x,red\n", "unknown column(s) ['colour']"),
        (
            "keys.yaml",
            "strategies:\n- {label: a, definiton: x}\n",
            "entry 1: unknown key(s) ['definiton']",
        ),
        ("top.yaml", "labels: []\n", "unknown key(s) ['labels']"),
        ("nolabel.csv", "label,definition\n,x\n", "line 2 has no label"),
        ("reserved.csv", "label,definition\ncoder,x\n", "label 'coder' is a coding-sheet column"),
        ("number.yaml", "- {label: 7, definition: x}\n", "entry 1: label must be text"),
        ("book.txt", "label,definition\na,x\n", "use a .yaml, .yml or .csv file"),
        ("bad.yaml", "strategies: [\n", "is not valid YAML"),
    ],
)
def test_codebook_bad_input_is_one_line_naming_file_and_row(
    tmp_path: Path, name: str, text: str, expected: str
) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(ConfigError) as caught:
        load_codebook(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and expected in message, message


def test_missing_codebook_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read codebook .*none\.yaml"):
        load_codebook(tmp_path / "none.yaml")


def test_study_file_names_a_codebook_beside_it_and_an_option_overrides_it(
    tmp_path: Path,
) -> None:
    import yaml

    folder = tmp_path / "study"
    folder.mkdir()
    TWO_LABELS.write_csv(folder / "mine.csv")
    (folder / "study.yaml").write_text(yaml.safe_dump(config_dict(codebook="mine.csv")))
    config = load_study(folder / "study.yaml")
    assert config.codebook == folder / "mine.csv"
    assert resolve_codebook(None, config).labels == ("question", "evidence")
    assert resolve_codebook(None, None).labels == LABELS
    other = load_codebook().write_csv(tmp_path / "other.csv")
    assert resolve_codebook(other, config).labels == LABELS
    # a mapping has no file: a relative path is read from the working folder (the one rule)
    assert load_study(config_dict(codebook="x.yaml")).codebook == Path.cwd() / "x.yaml"


# --- the blinded sample -------------------------------------------------------------------


def test_export_is_blinded_sized_and_reproducible(store: StudyStore, tmp_path: Path) -> None:
    ids = _study(store, participants=4)  # 16 messages
    # the judge's codes exist, and must not reach the sheet
    code_study(store, FakeChatModel(continuations=_yes_for_questions), TWO_LABELS)
    sheet, book_path, count = export_sample(store, tmp_path / "s1.csv", n=10, seed=7)
    assert count == 10 and book_path == tmp_path / "s1-codebook.csv"
    assert load_codebook(book_path).labels == LABELS
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*SHEET_COLUMNS, *LABELS, CODER_COLUMN]
    assert len(rows) == 10 and len({r["message_id"] for r in rows}) == 10
    assert {int(r["message_id"]) for r in rows} <= set(ids)
    assert all(r[label] == "" for r in rows for label in (*LABELS, CODER_COLUMN))
    assert {r["speaker"] for r in rows} <= {"person", "chatbot"}
    text = sheet.read_text()
    for p in store.participants():
        assert p.id not in text and p.pid not in text
    for secret in ("standard", "personalised", "condition", "participant", "judge", "stance"):
        assert secret not in text.lower()
    # the same seed gives the same sample in the same order; another seed another one
    again, _, _ = export_sample(store, tmp_path / "s2.csv", n=10, seed=7)
    assert again.read_text() == text
    other, _, _ = export_sample(store, tmp_path / "s3.csv", n=10, seed=8)
    assert other.read_text() != text
    # asking for more than there are gives all of them; a filled sheet is never overwritten
    assert export_sample(store, tmp_path / "all.csv", n=500)[2] == 16
    with pytest.raises(ConfigError, match="exists"):
        export_sample(store, tmp_path / "s1.csv")
    with pytest.raises(StoreError, match="no messages of study 'other'"):
        export_sample(store, tmp_path / "none.csv", study="other")


# --- codes read back ---------------------------------------------------------------------


def _fill(sheet: Path, out: Path, coder: str, codes: dict[int, dict[str, str]]) -> Path:
    """A coder's filled copy of an exported sheet (rows not in ``codes`` left empty)."""
    with sheet.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        filled = codes.get(int(row["message_id"]))
        if filled:
            row.update(filled)
            row[CODER_COLUMN] = coder
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def _codes(store: StudyStore, coder: str) -> dict[tuple[int, str], bool]:
    return {(c.message_id, c.label): c.present for c in store.codes() if c.coder == coder}


def test_import_round_trip_and_reimport_replaces(store: StudyStore, tmp_path: Path) -> None:
    _study(store)
    sheet, _, _ = export_sample(store, tmp_path / "s.csv", n=4, seed=1, codebook=TWO_LABELS)
    ids = [int(r["message_id"]) for r in csv.DictReader(sheet.open())]
    filled = _fill(
        sheet,
        tmp_path / "ann.csv",
        "ann",
        {ids[0]: {"question": "1", "evidence": "0"}, ids[1]: {"question": "1"}},
    )
    summary = import_codes(store, filled, codebook=TWO_LABELS)
    assert (summary.coders, summary.messages, summary.codes) == (("ann",), 2, 4)
    # an empty cell in a coded row is 0; a row with no code is not imported
    assert _codes(store, "ann") == {
        (ids[0], "question"): True,
        (ids[0], "evidence"): False,
        (ids[1], "question"): True,
        (ids[1], "evidence"): False,
    }
    assert {c.source for c in store.codes()} == {"human"}
    assert all(c.probability is None for c in store.codes())
    # re-importing the same coder's sheet replaces their codes for those messages
    again = _fill(sheet, tmp_path / "ann2.csv", "", {ids[0]: {"evidence": "1"}})
    import_codes(store, again, coder="ann", codebook=TWO_LABELS)
    assert _codes(store, "ann") == {
        (ids[0], "question"): False,
        (ids[0], "evidence"): True,
        (ids[1], "question"): True,
        (ids[1], "evidence"): False,
    }


@pytest.fixture
def coded(store: StudyStore, tmp_path: Path) -> Iterator[tuple[StudyStore, Path, list[int]]]:
    """A database with ann's codes imported, and the sheet they came from."""
    _study(store)
    sheet, _, _ = export_sample(store, tmp_path / "s.csv", n=4, seed=1, codebook=TWO_LABELS)
    ids = [int(r["message_id"]) for r in csv.DictReader(sheet.open())]
    import_codes(
        store,
        _fill(sheet, tmp_path / "ann.csv", "ann", {i: {"question": "1"} for i in ids}),
        codebook=TWO_LABELS,
    )
    yield store, sheet, ids


HEADER = "message_id,speaker,topic,text,question,evidence,coder\n"


@pytest.mark.parametrize(
    ("text", "coder", "expected"),
    [
        (
            HEADER + "{a},person,t,x,0,1,ann\n99999,person,t,x,1,0,ann\n",
            None,
            "line 3, column 'message_id': message 99999 does not exist",
        ),
        (
            "message_id,question,evidence\n{a},1,0\n",
            None,
            "no 'coder' column; add one or pass --coder",
        ),
        (
            HEADER.replace("evidence", "humour") + "{a},person,t,x,1,0,ann\n",
            None,
            "column 'humour' is not a label of codebook two",
        ),
        (
            HEADER + "{a},person,t,x,1,0,ann\n{b},person,t,x,yes,0,ann\n",
            None,
            "line 3, column 'question': 'yes' is not 0, 1 or empty",
        ),
        (HEADER + "{a},person,t,x,1,2,ann\n", None, "line 2, column 'evidence': '2' is not 0, 1"),
        (HEADER + "{a},person,t,x,1,0,\n", None, "line 2, column 'coder' is empty"),
        (HEADER + "{a},person,t,x,1,0,bob\n", "ann", "line 2, column 'coder': 'bob' differs"),
        (
            HEADER + "{a},person,t,x,1,0,ann\n{a},person,t,x,0,0,ann\n",
            None,
            "line 3: message {a} is coded twice by 'ann' (first at line 2)",
        ),
        (HEADER + "abc,person,t,x,1,0,ann\n", None, "line 2, column 'message_id': 'abc'"),
        (HEADER + "{a},person,t,x,,,ann\n", None, "has no coded row"),
        ("speaker,question\nperson,1\n", None, "is not a coding sheet: it has no 'message_id'"),
        ("\x89PNG\r\n\x1a\n\x00\x00", None, "is not a"),
    ],
)
def test_import_bad_input_is_one_line_and_imports_nothing(
    coded: tuple[StudyStore, Path, list[int]],
    tmp_path: Path,
    text: str,
    coder: str | None,
    expected: str,
) -> None:
    store, _, ids = coded
    before = _codes(store, "ann")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(text.format(a=ids[0], b=ids[1]).encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        import_codes(store, bad, coder=coder, codebook=TWO_LABELS)
    message = str(caught.value)
    assert "\n" not in message and str(bad) in message
    assert expected.format(a=ids[0]) in message, message
    # all or nothing: ann's earlier codes untouched, no new coder, no new rows
    assert _codes(store, "ann") == before and len(store.codes()) == 2 * len(ids)


def test_a_human_coder_cannot_take_a_judge_name(
    coded: tuple[StudyStore, Path, list[int]], tmp_path: Path
) -> None:
    store, sheet, ids = coded
    code_study(store, FakeChatModel(continuations=_yes_for_questions), TWO_LABELS, judge="j")
    filled = _fill(sheet, tmp_path / "j.csv", "j", {ids[0]: {"question": "1"}})
    with pytest.raises(ConfigError, match=r"coder name\(s\) \['j'\] belong to a judge"):
        import_codes(store, filled, codebook=TWO_LABELS)


def test_semicolon_sheet_from_a_spreadsheet_imports(
    coded: tuple[StudyStore, Path, list[int]], tmp_path: Path
) -> None:
    store, _, ids = coded
    sheet = _write(
        tmp_path / "excel.csv", f"\ufeffmessage_id;question;evidence;coder\n{ids[0]};0;1;bob\n"
    )
    assert import_codes(store, sheet, codebook=TWO_LABELS).codes == 2
    assert _codes(store, "bob") == {(ids[0], "question"): False, (ids[0], "evidence"): True}


# --- agreement against hand-computed values -------------------------------------------------


def test_cohens_kappa_by_hand() -> None:
    # a: 1 1 1 0 0 0 1 0 1 1    b: 1 1 0 0 0 1 1 0 0 1
    # table (a, b): (1,1)=4 (1,0)=2 (0,1)=1 (0,0)=3; n = 10
    # po = (4 + 3) / 10 = 0.7
    # P(a=1) = 6/10, P(b=1) = 5/10 -> pe = 0.6*0.5 + 0.4*0.5 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = [bool(x) for x in (1, 1, 1, 0, 0, 0, 1, 0, 1, 1)]
    b = [bool(x) for x in (1, 1, 0, 0, 0, 1, 1, 0, 0, 1)]
    value, low, high, note = cohens_kappa(a, b)
    assert value == pytest.approx(0.4) and low < 0.4 < high and note == ""
    # both raters constant on the same code: 0/0, undefined
    value, low, high, note = cohens_kappa([True] * 3, [True] * 3)
    assert math.isnan(value) and math.isnan(low) and "same code" in note
    # one rater constant: po = pe, so kappa is 0 whatever the other did; no CI
    value, low, _, note = cohens_kappa([False] * 4, [True, False, False, False])
    assert value == 0.0 and math.isnan(low) and "0 by construction" in note


def test_krippendorff_alpha_by_hand() -> None:
    # raters x units, nan = not coded; unit 4 has one value and is not pairable.
    # coincidences (weight 1/(m_u - 1) = 1): u1 (1,1): o11 += 2; u2 (1,0): o10 += 1,
    # o01 += 1; u3 (0,0): o00 += 2 -> n = 6, n1 = 3, n0 = 3
    # Do = (o10 + o01) / n = 2/6; De = 2*n1*n0 / (n (n-1)) = 18/30
    # alpha = 1 - (1/3) / (3/5) = 4/9
    alpha, n, note = krippendorff_alpha([[1, 1, 0, math.nan], [1, 0, 0, 1]])
    assert alpha == pytest.approx(4 / 9) and n == 3 and note == ""
    alpha, n, note = krippendorff_alpha([[1, 1], [1, 1]])
    assert math.isnan(alpha) and n == 2 and "undefined" in note
    alpha, n, note = krippendorff_alpha([[1, math.nan], [math.nan, 0]])
    assert math.isnan(alpha) and n == 0 and "no message was coded by two" in note


def _put(store: StudyStore, coder: str, source: str, codes: dict[str, dict[int, int]]) -> None:
    """Store one coder's codes, {label: {message id: 0/1}} (replacing theirs for those
    messages)."""
    judged = source == "judge"
    store.replace_codes(
        [
            StrategyCodeRow(
                message_id=m,
                coder=coder,
                label=label,
                present=bool(v),
                probability=(0.9 if v else 0.1) if judged else None,
                coverage=0.8 if judged else None,
                source=source,
            )
            for label, by_message in codes.items()
            for m, v in by_message.items()
        ]
    )


def test_agreement_table_by_hand(store: StudyStore) -> None:
    m1, m2, m3, m4 = _study(store, participants=1)  # 4 messages
    # label question: judge 1 1 0 0 | ann 1 0 0 0 | bob 1 0 0 - (bob skipped m4);
    # label evidence: every code 0
    none = {m1: 0, m2: 0, m3: 0, m4: 0}
    _put(store, "judge", "judge", {"question": {m1: 1, m2: 1, m3: 0, m4: 0}, "evidence": none})
    _put(store, "ann", "human", {"question": {m1: 1, m2: 0, m3: 0, m4: 0}, "evidence": none})
    _put(
        store,
        "bob",
        "human",
        {"question": {m1: 1, m2: 0, m3: 0}, "evidence": {m1: 0, m2: 0, m3: 0}},
    )
    _put(store, "other-judge", "judge", {"question": {m1: 0}})
    table = agreement_table(store, judge="judge", codebook=TWO_LABELS)
    assert "other-judge" not in " ".join(table["raters"])
    kappa = table[table["measure"] == "cohen_kappa"].set_index(["label", "raters"])
    # judge|ann on question, n=4: (1,1)=1 (1,0)=1 (0,0)=2; po = 3/4;
    # P(judge=1) = 1/2, P(ann=1) = 1/4 -> pe = 1/2*1/4 + 1/2*3/4 = 1/2
    # kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2
    row = kappa.loc[("question", "judge | ann")]
    assert row["value"] == pytest.approx(0.5) and row["n"] == 4
    assert row["percent_agreement"] == pytest.approx(0.75)
    # judge|bob, n=3: judge 1 1 0, bob 1 0 0; po = 2/3; pe = 2/3*1/3 + 1/3*2/3 = 4/9
    # kappa = (2/3 - 4/9) / (5/9) = 2/5
    row = kappa.loc[("question", "judge | bob")]
    assert row["value"] == pytest.approx(0.4) and row["n"] == 3
    # ann|bob, n=3: identical 1 0 0 -> kappa 1
    assert kappa.loc[("question", "ann | bob")]["value"] == pytest.approx(1.0)
    # evidence: every rater constant on 0 -> undefined, with a note
    row = kappa.loc[("evidence", "judge | ann")]
    assert math.isnan(row["value"]) and "same code" in row["note"]
    alpha = table[table["measure"] == "krippendorff_alpha"].set_index(["label", "raters"])
    every = "all raters: judge, ann, bob"
    # alpha on question, units (judge, ann, bob): m1 (1,1,1) m2 (1,0,0) m3 (0,0,0) m4 (0,0)
    # coincidences, weight 1/(m_u-1): m1 o11 += 6*1/2 = 3; m2 o10 += 1, o01 += 1, o00 += 1;
    # m3 o00 += 3; m4 o00 += 2 -> o11 = 3, o10 = o01 = 1, o00 = 6; n = 11, n1 = 4, n0 = 7
    # Do = 2/11; De = 2*4*7/(11*10) = 56/110; alpha = 1 - (2/11)/(56/110) = 1 - 20/56 = 9/14
    row = alpha.loc[("question", every)]
    assert row["value"] == pytest.approx(9 / 14) and row["n"] == 4
    assert math.isnan(alpha.loc[("evidence", every)]["value"])
    # over both labels (8 units): evidence adds o00 += 3+3+3+2 = 11 -> o00 = 17, n = 22,
    # n1 = 4, n0 = 18; Do = 2/22; De = 2*4*18/(22*21) = 144/462
    # alpha = 1 - (2/22)/(144/462) = 1 - 924/3168 = 1 - 7/24 = 17/24
    row = alpha.loc[("(all labels)", every)]
    assert row["value"] == pytest.approx(17 / 24) and row["n"] == 8  # every unit pairable
    # the human coders alone on question: m1 (1,1) m2 (0,0) m3 (0,0): perfect agreement
    assert alpha.loc[("question", "human coders: ann, bob")]["value"] == pytest.approx(1.0)
    with pytest.raises(StoreError, match="no strategy codes by judge 'nobody'"):
        agreement_table(store, judge="nobody")


def test_agreement_needs_two_raters(store: StudyStore) -> None:
    (m1, *_) = _study(store, participants=1)
    assert agreement_table(store).empty
    _put(store, "ann", "human", {"question": {m1: 1}})
    table = agreement_table(store)
    assert table.empty and "value" in table.columns


# --- the multi-label judge ------------------------------------------------------------------


def _yes_for_questions(base: str) -> dict[str, float]:
    """A scripted judge: "Yes" to the question label when the message asks something."""
    message = base.split('"""')[1]
    asks = base.rstrip().endswith(
        "use question: asks the other side for their view? Answer yes or no."
    )
    if asks and "?" in message:
        return {"Yes": 0.7, "yes": 0.1, "No": 0.2}
    return {"No": 0.6, "no": 0.2, "Yes": 0.2}


def test_judge_decides_every_label_separately(store: StudyStore) -> None:
    ids = _study(store, participants=1)  # 2 questions from the person, 2 replies
    judge = FakeChatModel(continuations=_yes_for_questions)
    assert code_study(store, judge, TWO_LABELS, judge="j", batch=3) == 4
    assert code_study(store, judge, TWO_LABELS, judge="j") == 0  # idempotent
    codes = {(c.message_id, c.label): c for c in store.codes()}
    assert len(codes) == 8 and {c.source for c in codes.values()} == {"judge"}
    by_role = {m.id: m.role for m in store.all_messages()}
    for (message_id, label), code in codes.items():
        asks = label == "question" and by_role[message_id] == "user"
        assert code.present is asks
        assert code.probability == pytest.approx(0.8 if asks else 0.2)
        assert code.coverage == pytest.approx(1.0)
    assert sorted({m for m, _ in codes}) == ids
    # the prompt lists the codebook and asks about one label
    prompt = judge.scored_prompts[0]
    assert "- evidence: facts, numbers or study results." in prompt
    assert 'Example: "What do you think?"' in prompt
    # the stored name carries the codebook's digest: a reworded codebook is another coder
    assert judge_name(judge, "v2", TWO_LABELS) == f"fake-chat/judge.v2/two@{TWO_LABELS.digest}"


def test_judge_threshold_is_configurable(store: StudyStore) -> None:
    _study(store, participants=1)
    code_study(store, FakeChatModel(continuations=_yes_for_questions), TWO_LABELS, threshold=0.1)
    assert all(c.present for c in store.codes())  # every P(yes) >= 0.2
    with pytest.raises(ConfigError, match="between 0 and 1"):
        code_study(store, FakeChatModel(), TWO_LABELS, threshold=1.0)


def test_judge_below_coverage_stores_nothing_of_that_batch(store: StudyStore) -> None:
    _study(store, participants=2)  # 8 messages: messages 5-8 belong to the second person

    def blind_on_second(base: str) -> dict[str, float]:
        if "person 1 " in base or "reply 1." in base:
            return {"banana": 1.0}
        return _yes_for_questions(base)

    with pytest.raises(JudgeCoverageError) as caught:
        code_study(
            store, FakeChatModel(continuations=blind_on_second), TWO_LABELS, judge="b", batch=4
        )
    message = str(caught.value)
    assert "\n" not in message and "'b'" in message and "0.0%" in message
    assert "(4 message(s) labelled)" in message
    assert len(store.coded_message_ids("b")) == 4 and len(store.codes()) == 8


def test_withdrawal_deletes_codes(store: StudyStore) -> None:
    _study(store, participants=1)
    code_study(store, FakeChatModel(continuations=_yes_for_questions), TWO_LABELS)
    store.withdraw(store.participants()[0].id)
    assert store.codes() == []


# --- the commands ------------------------------------------------------------------------

app = typer.Typer()
app.add_typer(study_app, name="study")
runner = CliRunner()


def test_coding_commands_end_to_end(store: StudyStore, tmp_path: Path) -> None:
    _study(store)
    db = store.url.removeprefix("sqlite:///")
    code_study(store, FakeChatModel(continuations=_yes_for_questions), TWO_LABELS, judge="j")
    book = TWO_LABELS.write_csv(tmp_path / "two.csv")
    sheet = tmp_path / "sheet.csv"
    result = runner.invoke(
        app,
        [
            "study",
            "coding",
            "export",
            db,
            "--n",
            "5",
            "--seed",
            "3",
            "--out",
            str(sheet),
            "--codebook",
            str(book),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5 message(s) to code" in result.output and (tmp_path / "sheet-codebook.csv").is_file()
    roles = {m.id: m.role for m in store.all_messages()}
    ids = [int(r["message_id"]) for r in csv.DictReader(sheet.open())]
    for coder in ("ann", "bob"):
        filled = _fill(
            sheet,
            tmp_path / f"{coder}.csv",
            "",
            {i: {"question": "1" if roles[i] == "user" else "0", "evidence": "0"} for i in ids},
        )
        result = runner.invoke(
            app,
            [
                "study",
                "coding",
                "import",
                db,
                str(filled),
                "--coder",
                coder,
                "--codebook",
                str(book),
            ],
        )
        assert result.exit_code == 0, result.output
        assert f"imported 10 code(s) of 5 message(s) by {coder}" in result.output
    out = tmp_path / "agreement.csv"
    result = runner.invoke(
        app,
        [
            "study",
            "coding",
            "agreement",
            db,
            "--judge",
            "j",
            "--codebook",
            str(book),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    kappa = {(r["label"], r["raters"]): r for r in rows if r["measure"] == "cohen_kappa"}
    # ann and bob coded exactly what the scripted judge decides for "question"
    assert float(kappa[("question", "j | ann")]["value"]) == pytest.approx(1.0)
    assert kappa[("question", "ann | bob")]["n"] == "5"


def test_coding_commands_fail_with_one_line(store: StudyStore, tmp_path: Path) -> None:
    _study(store, participants=1)
    db = store.url.removeprefix("sqlite:///")
    result = runner.invoke(app, ["study", "coding", "export", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no database at" in result.output
    bad_book = _write(tmp_path / "b.csv", "label,definition\na,x\nA,y\n")
    result = runner.invoke(
        app, ["study", "coding", "export", db, "--codebook", str(bad_book), "--out", "x.csv"]
    )
    assert result.exit_code == 2 and "label 'A' is given twice" in result.output
    assert not Path("x.csv").exists()
    sheet = _write(tmp_path / "s.csv", "message_id,question\n1,1\n")
    result = runner.invoke(app, ["study", "coding", "import", db, str(sheet)])
    assert result.exit_code == 2 and "no 'coder' column" in result.output
    result = runner.invoke(app, ["study", "coding", "agreement", db])
    assert result.exit_code == 2 and "at least two raters" in result.output


class _CountingJudge(FakeChatModel):
    """The scripted judge, keeping every scoring request it is sent."""

    def __init__(self) -> None:
        super().__init__(continuations=_yes_for_questions)
        self.sent: list[ChoiceRequest] = []

    def score_choices(
        self, requests: Sequence[ChoiceRequest], top_k: int = 40
    ) -> list[ChoiceScores]:
        self.sent.extend(requests)
        return super().score_choices(requests, top_k)


def test_report_with_a_judge_scores_each_message_once(
    store: StudyStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import stancelab.study._cli as cli

    _study(store, participants=1)
    store.update(store.participants()[0].id, step="done")
    judge = _CountingJudge()
    monkeypatch.setattr(cli, "open_model", lambda _name: judge)
    book = TWO_LABELS.write_csv(tmp_path / "two.csv")
    db = store.url.removeprefix("sqlite:///")
    command = ["study", "report", db, "--judge", "x", "--codebook", str(book), "--out"]
    result = runner.invoke(app, [*command, str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "coded 4 message(s) x 2 label(s)" in result.output
    # one pass: each message's yes/no question about each label, once; no single-label pass
    sent = judge.sent
    prompts = [r.prompt if isinstance(r.prompt, str) else r.prompt[0]["content"] for r in sent]
    asked = [(prompt.split('"""')[1], prompt) for prompt in prompts]
    assert len(sent) == 4 * 2 and all(r.choices == YES_NO for r in sent)
    assert len(set(asked)) == 8 and len({text for text, _ in asked}) == 4
    assert len(store.codes()) == 8 and not store.labelled_message_ids("fake-chat/judge.v1")
    # the counts are the codes: the person asks in both messages, the chatbot never does
    counts = (tmp_path / "rep" / "strategy_counts.csv").read_text().splitlines()
    condition = store.participants()[0].condition
    assert counts[0] == "speaker,condition,strategy,messages_with_label,messages_judged,share"
    assert f"human,{condition},question,2,2,1.0" in counts
    assert f"llm,{condition},question,0,2,0.0" in counts
    page = (tmp_path / "rep" / "index.html").read_text()
    assert f"<strong>{judge_name(judge, 'v2', TWO_LABELS)}</strong>" in page
    # a second report scores nothing again: every message is coded already
    judge.sent.clear()
    result = runner.invoke(app, [*command, str(tmp_path / "rep2")])
    assert result.exit_code == 0 and "coded 0 message(s)" in result.output
    assert judge.sent == []


# --- a real judge ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen() -> Iterator[LlamaCppEngine]:
    """Qwen2.5-Coder-0.5B on the in-process engine (the smallest model that answers yes/no)."""
    engine = load_engine("qwen2.5-coder-0.5b", n_parallel=4, ctx_per_slot=2048)
    yield engine
    engine.close()


@pytest.mark.engine
def test_real_judge_codes_messages_into_the_table(qwen: LlamaCppEngine, store: StudyStore) -> None:
    rng = random.Random(0)
    p = store.create_participant("pilot", "REAL", ["standard"], ["climate change"], rng)
    store.add_exchange(
        p.id,
        1,
        "What do you think about carbon taxes?",
        5,
        "Studies show carbon taxes cut emissions by about 2% a year in Sweden.",
    )
    store.add_exchange(p.id, 2, "My farm flooded twice last year.", 5, None)
    assert code_study(store, qwen, TWO_LABELS) == 3
    codes = store.codes()
    assert len(codes) == 3 * 2
    name = judge_name(qwen, "v2", TWO_LABELS)
    for code in codes:
        assert code.coder == name and code.source == "judge"
        assert code.probability is not None and 0.0 <= code.probability <= 1.0
        assert code.present is (code.probability >= 0.5)
        # the coverage check passed: the judge put most of its mass on yes/no
        assert code.coverage is not None and 0.2 <= code.coverage <= 1.0
    # a human coder on the same messages: agreement is computed, not crashed
    _put(store, "ann", "human", {"question": {c.message_id: 1 for c in codes}})
    table = agreement_table(store, judge=name, codebook=TWO_LABELS)
    row = table[(table["measure"] == "cohen_kappa") & (table["label"] == "question")].iloc[0]
    assert row["n"] == 3 and (not math.isnan(row["value"]) or row["note"])
