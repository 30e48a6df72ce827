"""MMLU and HellaSwag through EleutherAI's lm-evaluation-harness, from local files.

Local layout (the original datasets' formats, as published on the Hugging Face hub):

- ``DATA_DIR/mmlu/``: ``test`` file(s) and optional ``dev`` file(s) for few-shot examples,
  JSONL/JSON/Parquet rows ``{question, subject, choices: [4 strings], answer: 0-3}``
  (``cais/mmlu``), or the original Hendrycks CSVs ``*_test.csv`` / ``*_dev.csv``
  (no header: question, A, B, C, D, answer letter).
- ``DATA_DIR/hellaswag/``: ``validation`` file(s), JSONL/JSON/Parquet rows
  ``{ind, activity_label, ctx_a, ctx_b, ctx, endings: [4 strings], label}``
  (``Rowan/hellaswag``; the original ``hellaswag_val.jsonl`` has the same fields).

The prompts, choices and metrics are those of lm-eval's own ``mmlu`` (default, reported
here as the accuracy over all items) and ``hellaswag`` (``acc_norm``) tasks. With
``allow_network=True`` and no data_dir the harness's hub tasks are used unchanged.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stancelab.tuning._errors import BenchmarkError
from stancelab.tuning._hf import base_checkpoint, cuda_available, set_offline
from stancelab.tuning._train import check_adapter_base

TASKS = ("mmlu", "hellaswag")
METRIC = {"mmlu": "acc", "hellaswag": "acc_norm"}
SPLIT = {"mmlu": ("test",), "hellaswag": ("val",)}
"""The words that name a task's scored split's files."""
HUB_ITEMS = {"mmlu": 14042, "hellaswag": 10042}
"""Items of the hub datasets' scored splits (cais/mmlu test, Rowan/hellaswag validation)."""
CHOICES = 4
"""Answer choices per item in both tasks: lm-eval scores each one (a request each)."""
_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


def _files(folder: Path, words: Sequence[str]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in _SUFFIXES and any(w in p.name.lower() for w in words)
    )


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 - lazy: pyarrow is heavy to import

        return list(pq.read_table(path).to_pylist())
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            return list(data if isinstance(data, list) else data.get("data", []))
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (json.JSONDecodeError, AttributeError) as exc:
        raise BenchmarkError(f"{path} is not valid JSON/JSONL: {exc}") from exc


def _mmlu_csv(path: Path) -> list[dict[str, Any]]:
    subject = path.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, rec in enumerate(csv.reader(handle), start=1):
            if len(rec) != 6 or rec[5].strip().upper() not in ("A", "B", "C", "D"):
                raise BenchmarkError(
                    f"{path}:{number} is not an MMLU CSV row (question, A, B, C, D, answer letter)"
                )
            rows.append(
                {
                    "question": rec[0],
                    "subject": subject,
                    "choices": rec[1:5],
                    "answer": "ABCD".index(rec[5].strip().upper()),
                }
            )
    return rows


def check_mmlu_row(row: Any, where: str) -> dict[str, Any]:
    """Validate one MMLU row (cais/mmlu format) and return it normalised."""
    ok = (
        isinstance(row, dict)
        and isinstance(row.get("question"), str)
        and isinstance(row.get("choices"), list)
        and len(row["choices"]) == 4
        and str(row.get("answer", "")).strip() in ("0", "1", "2", "3")
    )
    if not ok:
        raise BenchmarkError(
            f"{where} is not in MMLU format: expected fields question, "
            "choices (4 strings), answer (0-3)"
        )
    return {
        "question": row["question"],
        "subject": str(row.get("subject", "")),
        "choices": [str(c) for c in row["choices"]],
        "answer": int(row["answer"]),
    }


def check_hellaswag_row(row: Any, where: str) -> dict[str, Any]:
    """Validate one HellaSwag row (Rowan/hellaswag format) and return it normalised."""
    keys = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
    ok = (
        isinstance(row, dict)
        and all(k in row for k in keys)
        and isinstance(row["endings"], list)
        and len(row["endings"]) == 4
        and str(row["label"]).strip() in ("0", "1", "2", "3")
    )
    if not ok:
        raise BenchmarkError(
            f"{where} is not in HellaSwag format: expected fields "
            "activity_label, ctx_a, ctx_b, endings (4 strings), label (0-3)"
        )
    out = dict(row)
    out["label"] = str(row["label"]).strip()
    out.setdefault("ctx", f"{row['ctx_a']} {row['ctx_b']}".strip())
    return out


def _load_split(folder: Path, words: Sequence[str], task: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in _files(folder, words):
        raw = _mmlu_csv(path) if (path.suffix == ".csv" and task == "mmlu") else _rows(path)
        check = check_mmlu_row if task == "mmlu" else check_hellaswag_row
        rows.extend(check(r, f"{path}:{i}") for i, r in enumerate(raw, start=1))
    return rows


def item_count(task: str, data_dir: Path | None) -> int:
    """The items a task scores: its local split's rows (validated), else the hub's size."""
    if task not in TASKS:
        raise BenchmarkError(f"unknown benchmark {task!r}; choose from {', '.join(TASKS)}")
    if data_dir is None:
        return HUB_ITEMS[task]
    return len(_load_split(data_dir / task, SPLIT[task], task))


def local_task(task: str, data_dir: Path, work: Path, num_fewshot: int = 0) -> dict[str, Any]:
    """An lm-eval task config reading ``data_dir/<task>/`` files (validated first)."""
    folder = data_dir / task
    if not folder.is_dir():
        raise BenchmarkError(f"benchmark folder {folder} does not exist")
    if task == "mmlu":
        test = _load_split(folder, SPLIT[task], task)
        if not test:
            raise BenchmarkError(f"{folder} has no MMLU test file (*test*.jsonl/.parquet/.csv)")
        dev = _load_split(folder, ("dev",), task)
        splits = {"test": test, **({"dev": dev} if dev else {})}
    elif task == "hellaswag":
        val = _load_split(folder, SPLIT[task], task)
        if not val:
            raise BenchmarkError(f"{folder} has no HellaSwag validation file (*val*.jsonl)")
        splits = {"validation": val}
    else:
        raise BenchmarkError(f"unknown benchmark {task!r}; choose from {', '.join(TASKS)}")
    files = {}
    for split, rows in splits.items():
        path = work / f"{task}_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        files[split] = str(path)
    if num_fewshot and task == "mmlu" and "dev" not in files:
        raise BenchmarkError(f"{num_fewshot}-shot MMLU needs a dev file in {folder}")
    if task == "mmlu":
        return {
            "task": "stancelab_mmlu",
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": files},
            "test_split": "test",
            **(
                {"fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"}}
                if "dev" in files
                else {}
            ),
            "output_type": "multiple_choice",
            "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\n"
            "C. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "answer",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "num_fewshot": num_fewshot,
            "metadata": {"version": 1.0},
        }
    from lm_eval.tasks.hellaswag.utils import process_docs  # noqa: PLC0415 - lazy: lm-evaluation-harness is heavy to import

    return {
        "task": "stancelab_hellaswag",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "validation_split": "validation",
        "process_docs": process_docs,
        "output_type": "multiple_choice",
        "doc_to_text": "{{query}}",
        "doc_to_target": "{{label}}",
        "doc_to_choice": "choices",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "num_fewshot": num_fewshot,
        "metadata": {"version": 1.0},
    }


def load_model(
    model: str, adapters: Sequence[Path] = (), allow_network: bool = False
) -> tuple[Any, Any]:
    """Base checkpoint with PEFT adapters merged in order (NWP, then DPO)."""
    import torch  # noqa: PLC0415 - lazy: torch is heavy to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415 - lazy: transformers is heavy to import

    checkpoint, sha = base_checkpoint(model, allow_network)
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    hf_model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32)
    if adapters:
        from peft import PeftModel  # noqa: PLC0415 - lazy: peft is heavy to import

        for adapter in adapters:
            if (adapter / "stancelab_adapter.json").is_file():
                check_adapter_base(adapter, sha)
            hf_model = PeftModel.from_pretrained(hf_model, str(adapter)).merge_and_unload()
    hf_model.eval()  # type: ignore[no-untyped-call]
    return hf_model, tokenizer


def evaluate(
    model: str,
    tasks: Sequence[str] = TASKS,
    data_dir: Path | None = None,
    *,
    adapters: Sequence[Path] = (),
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 8,
    allow_network: bool = False,
) -> dict[str, float]:
    """Accuracy (%) per task for a base model plus optional adapters, via lm-eval."""
    set_offline(allow_network)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise BenchmarkError(f"unknown benchmark(s) {unknown}; choose from {', '.join(TASKS)}")
    if data_dir is None and not allow_network:
        raise BenchmarkError(
            "no benchmark data folder given; pass data_dir (local files) or "
            "allow the network to read the hub datasets"
        )
    with tempfile.TemporaryDirectory(prefix="stancelab-eval-") as tmp:
        if data_dir is not None:
            configs: list[Any] = [local_task(t, data_dir, Path(tmp), num_fewshot) for t in tasks]
            names = {t: f"stancelab_{t}" for t in tasks}
        else:
            configs = list(tasks)
            names = {t: t for t in tasks}
        import lm_eval  # noqa: PLC0415 - lazy: lm-evaluation-harness is heavy to import
        from lm_eval.models.huggingface import HFLM  # noqa: PLC0415 - lazy: lm-evaluation-harness is heavy to import
        from lm_eval.tasks import TaskManager  # noqa: PLC0415 - lazy: lm-evaluation-harness is heavy to import

        # Local task configs need no index of the harness's thousands of task files.
        manager = TaskManager(include_defaults=data_dir is None)

        hf_model, tokenizer = load_model(model, adapters, allow_network)
        lm = HFLM(
            pretrained=hf_model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            device="cuda" if _cuda() else "cpu",
        )
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=configs,
            limit=limit,
            log_samples=False,
            num_fewshot=None if data_dir is not None else num_fewshot,
            bootstrap_iters=0,
            verbosity="ERROR",
            task_manager=manager,
        )
    if results is None:
        raise BenchmarkError("lm-eval returned no results")
    out: dict[str, float] = {}
    for task, name in names.items():
        metrics = results["results"].get(name, {})
        value = metrics.get(f"{METRIC[task]},none")
        if value is None:
            raise BenchmarkError(f"lm-eval produced no {METRIC[task]} for {task}")
        out[task] = round(100.0 * float(value), 2)
    return out


def _cuda() -> bool:

    return cuda_available()
