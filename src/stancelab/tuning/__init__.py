"""Self-fine-tuning intervention (paper section 5 and 7): question bank, self-generated
partisan datasets, LoRA next-token training, DPO, GGUF adapter export, capability checks.

Heavy dependencies (torch, transformers, peft, trl, lm_eval) are imported lazily, inside
the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stancelab._lazy import lazy_package

if TYPE_CHECKING:
    from stancelab.tuning._config import (
        DpoSettings,
        FinetuneConfig,
        LoraSettings,
        NwpSettings,
    )
    from stancelab.tuning._errors import (
        BenchmarkError,
        DatasetError,
        FinetuneError,
        HardwareError,
    )
    from stancelab.tuning._estimate import (
        FinetuneEstimate,
        estimate_finetune,
    )
    from stancelab.tuning._evaluate import evaluate
    from stancelab.tuning._export import export_lora_gguf
    from stancelab.tuning._labelled import (
        judge_accuracy,
        labelled_rows,
    )
    from stancelab.tuning._learning import (
        dpo_verdict,
        loss_curve,
        nwp_verdict,
    )
    from stancelab.tuning._pipeline import (
        STAGE_NAMES,
        STAGES,
        FinetuneRun,
        Stage,
        run_finetune,
    )
    from stancelab.tuning._questions import (
        Question,
        generate_questions,
        load_questions,
        save_questions,
    )
    from stancelab.tuning._report import table
    from stancelab.tuning._train import (
        train_dpo,
        train_nwp,
    )

_SOURCES = {
    "DpoSettings": ("stancelab.tuning._config", "DpoSettings"),
    "FinetuneConfig": ("stancelab.tuning._config", "FinetuneConfig"),
    "LoraSettings": ("stancelab.tuning._config", "LoraSettings"),
    "NwpSettings": ("stancelab.tuning._config", "NwpSettings"),
    "STAGES": ("stancelab.tuning._pipeline", "STAGES"),
    "STAGE_NAMES": ("stancelab.tuning._pipeline", "STAGE_NAMES"),
    "FinetuneRun": ("stancelab.tuning._pipeline", "FinetuneRun"),
    "Stage": ("stancelab.tuning._pipeline", "Stage"),
    "run_finetune": ("stancelab.tuning._pipeline", "run_finetune"),
    "BenchmarkError": ("stancelab.tuning._errors", "BenchmarkError"),
    "DatasetError": ("stancelab.tuning._errors", "DatasetError"),
    "FinetuneError": ("stancelab.tuning._errors", "FinetuneError"),
    "HardwareError": ("stancelab.tuning._errors", "HardwareError"),
    "Question": ("stancelab.tuning._questions", "Question"),
    "generate_questions": ("stancelab.tuning._questions", "generate_questions"),
    "load_questions": ("stancelab.tuning._questions", "load_questions"),
    "save_questions": ("stancelab.tuning._questions", "save_questions"),
    "train_dpo": ("stancelab.tuning._train", "train_dpo"),
    "train_nwp": ("stancelab.tuning._train", "train_nwp"),
    "export_lora_gguf": ("stancelab.tuning._export", "export_lora_gguf"),
    "evaluate": ("stancelab.tuning._evaluate", "evaluate"),
    "FinetuneEstimate": ("stancelab.tuning._estimate", "FinetuneEstimate"),
    "estimate_finetune": ("stancelab.tuning._estimate", "estimate_finetune"),
    "dpo_verdict": ("stancelab.tuning._learning", "dpo_verdict"),
    "loss_curve": ("stancelab.tuning._learning", "loss_curve"),
    "nwp_verdict": ("stancelab.tuning._learning", "nwp_verdict"),
    "judge_accuracy": ("stancelab.tuning._labelled", "judge_accuracy"),
    "labelled_rows": ("stancelab.tuning._labelled", "labelled_rows"),
    "table": ("stancelab.tuning._report", "table"),
}
"""Public name -> (private module, attribute), imported on first use."""

__all__ = [
    "STAGES",
    "STAGE_NAMES",
    "BenchmarkError",
    "DatasetError",
    "DpoSettings",
    "FinetuneConfig",
    "FinetuneError",
    "FinetuneEstimate",
    "FinetuneRun",
    "HardwareError",
    "LoraSettings",
    "NwpSettings",
    "Question",
    "Stage",
    "dpo_verdict",
    "estimate_finetune",
    "evaluate",
    "export_lora_gguf",
    "generate_questions",
    "judge_accuracy",
    "labelled_rows",
    "load_questions",
    "loss_curve",
    "nwp_verdict",
    "run_finetune",
    "save_questions",
    "table",
    "train_dpo",
    "train_nwp",
]

lazy_package(__name__)
