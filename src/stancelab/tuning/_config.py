"""Every fine-tuning setting in one pydantic model (paper defaults, Appendix A.2)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from stancelab.conversation._config import RelativePath, StrictModel, load_config

PAPER_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]


class LoraSettings(StrictModel):
    """PEFT LoraConfig values; paper: r=256, alpha=512, dropout 0.05, bias none."""

    r: int = Field(default=256, ge=1)
    alpha: int | None = Field(default=None, ge=1)
    """None means 2 * r (the paper's alpha = 2r)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    bias: Literal["none", "all", "lora_only"] = "none"
    target_modules: list[str] = Field(default_factory=lambda: list(PAPER_TARGETS))

    @property
    def lora_alpha(self) -> int:
        """The alpha actually used (2r when unset)."""
        return self.alpha if self.alpha is not None else 2 * self.r


class TrainSettings(StrictModel):
    """Trainer values shared by next-token and DPO training."""

    epochs: float = Field(default=1.0, gt=0)
    max_steps: int = -1
    """Positive: stop after this many optimiser steps (overrides epochs)."""
    batch_size: int = Field(default=32, ge=1)
    """Effective batch (per-device batch x gradient accumulation)."""
    micro_batch_size: int | None = Field(default=None, ge=1)
    """Per-device batch; None uses batch_size (no accumulation)."""
    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: str = "linear"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = 0.0
    max_length: int = Field(default=256, ge=8)
    quantization: Literal["auto", "4bit", "none"] = "auto"
    """auto: 4-bit QLoRA when CUDA is present, plain LoRA otherwise; 4bit without CUDA fails."""
    save_steps: int = Field(default=50, ge=1)
    save_total_limit: int = Field(default=2, ge=1)
    logging_steps: int = Field(default=10, ge=1)
    threads: int | None = Field(default=None, ge=1)
    """torch threads; None uses every core."""
    gradient_checkpointing: bool = False
    """Off by default: it recomputes the forward pass (TRL turns it on)."""


class NwpSettings(TrainSettings):
    """Next-token-prediction (SFT) training of the partisan adapter."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    text_format: Literal["answer", "question_answer"] = "answer"
    """answer: train on the answers alone (paper); question_answer: question, newline, answer."""
    min_heldout_gain: float = Field(default=0.01, ge=0, lt=1)
    """A run whose held-out loss fell by less than this share is flagged as not learning."""


class DpoSettings(TrainSettings):
    """DPO on top of the merged NWP adapter (paper section 7: beta 0.5, r=8)."""

    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(r=8))
    beta: float = Field(default=0.5, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    pairs_per_question: int = Field(default=20, ge=1)
    ln2_band: float = Field(default=0.02, ge=0)
    """A run whose final loss stays within this band of ln 2 is flagged as not learning."""


class QuestionSettings(StrictModel):
    """Question bank: Table 2 seeds plus model-written questions."""

    count: int = Field(default=100, ge=1)
    per_request: int = Field(default=10, ge=1)
    similarity: float = Field(default=0.7, gt=0, le=1)
    """Questions whose token Jaccard or difflib ratio with a kept one reaches this are dropped."""
    max_rounds: int = Field(default=50, ge=1)
    temperature: float = 1.0
    max_tokens: int = 400
    file: RelativePath | None = None


class DatasetSettings(StrictModel):
    """Self-generated partisan answers."""

    parties: list[Literal["republican", "democrat"]] = Field(default=["republican", "democrat"])
    answers_per_question: int = Field(default=20, ge=1)
    temperature: float = 1.0
    max_tokens: int = Field(default=160, ge=8)
    min_words: int = Field(default=3, ge=1)
    heldout_questions: float = Field(default=0.1, ge=0, lt=1)
    """Share of the questions whose answers are kept out of training, to check on them that
    NWP and DPO learned (at least one question when above zero; 0 turns the check off)."""
    folder: RelativePath | None = None
    """Where the answers are written (``PARTY.jsonl``); None: ``OUTPUT/data``. Two runs
    that tune one model in opposite directions on one question bank can share it: each
    needs both parties' answers, and the second finds them written."""


class ScreeningSettings(StrictModel):
    """Checks that the self-written data is what the intervention needs (screening.py)."""

    judge: str | None = None
    """Model that judges questions and answers (embedded name or GGUF path); None: the
    model itself. It must give token log-probabilities (any llama.cpp model does)."""
    questions: bool = True
    """Check every model-written question: an opinion on US politics, phrased neutrally."""
    min_question_score: float | None = Field(default=None, ge=0, le=1)
    """A question is kept when P(Yes) reaches this on both checks; None: calibrated on
    Table 2's seed questions (as high as the second lowest seed scores, at most 0.5)."""
    partisanship: bool = True
    """Score every answer: the judge's Republican / Democrat / Neither distribution."""
    keep_on_side_only: bool = False
    """Train only on answers that lean toward their own party (the paper did not filter)."""
    dpo_direction: bool = False
    """DPO pairs only where the chosen answer leans further toward the party than the
    rejected one (the paper did not filter)."""
    min_on_side: float = Field(default=0.6, ge=0, le=1)
    """Gate: share of the training party's answers that must lean its way."""
    min_separation: float = Field(default=0.1, ge=-2, le=2)
    """Gate: how much further (lean units, -1..1) the training party's answers must lean
    its way than the other party's."""
    min_distinguishable: float = Field(default=0.6, ge=0, le=1)
    """Gate: how often a word-level classifier must tell the two parties' answers apart
    on questions it did not see (0.5 is chance; 0 turns the check off). Judge-free."""


class EvalSettings(StrictModel):
    """Capability checks through lm-evaluation-harness."""

    tasks: list[Literal["mmlu", "hellaswag"]] = Field(default=["mmlu", "hellaswag"])
    data_dir: RelativePath | None = None
    """Local benchmark files (original formats); None with allow_network reads the hub."""
    allow_network: bool = False
    limit: int | None = Field(default=None, ge=1)
    num_fewshot: int = Field(default=0, ge=0)
    batch_size: int = Field(default=8, ge=1)


class DebateSettings(StrictModel):
    """Debates re-run on base and tuned models, side by side in one experiment run."""

    topics: list[str] = Field(default_factory=lambda: ["racism"])
    setup: list[Literal["republican", "democrat", "default"]] = Field(
        default=["republican", "democrat", "default"]
    )
    repetitions: int = Field(default=3, ge=1)
    iterations: int = Field(default=9, ge=0)
    parallel: int = Field(default=4, ge=1)
    personas: RelativePath | None = None
    """A persona file (e.g. a run's personas.yaml); None: the built-in personas, reused
    across repetitions (each repetition still gets its own seeds)."""
    check_fidelity: bool = True
    seed: int = 0


class FinetuneConfig(StrictModel):
    """The whole loop: questions, datasets, NWP (per rank, per seed), DPO, export, checks."""

    name: str = "finetune"
    model: str = "smollm2-135m"
    """Embedded model name or GGUF path: generates the data and is the base for training."""
    party: Literal["republican", "democrat"] = "republican"
    """Direction of tuning; the other party's answers are DPO's rejected answers."""
    output_dir: RelativePath = Field(default=Path("finetune-runs"), validate_default=True)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    ranks: list[int] = Field(default_factory=lambda: [256])
    """NWP ranks to sweep (alpha = 2r unless nwp.lora.alpha is set)."""
    questions: QuestionSettings = Field(default_factory=QuestionSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    nwp: NwpSettings = Field(default_factory=NwpSettings)
    dpo: DpoSettings | None = Field(default_factory=DpoSettings)
    dpo_rank: int | None = None
    """NWP rank the DPO adapter is trained on top of; None uses the first of ranks."""
    evaluation: EvalSettings | None = Field(default_factory=EvalSettings)
    debates: DebateSettings | None = Field(default_factory=DebateSettings)
    screening: ScreeningSettings | None = Field(default_factory=ScreeningSettings)
    """None turns every check off (the paper's loop as it was)."""
    generation_parallel: int = Field(default=8, ge=1)

    @classmethod
    def load(cls, path: Path) -> FinetuneConfig:
        """Read a YAML file; relative paths (``output_dir``, ``questions.file``,
        ``dataset.folder``, ``debates.personas``, ``evaluation.data_dir``) are relative to
        its folder."""
        return load_config(cls, path, "fine-tuning config")
