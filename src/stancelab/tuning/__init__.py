"""Self-fine-tuning intervention (paper section 5 and 7): question bank, self-generated
partisan datasets, LoRA next-token training, DPO, GGUF adapter export, capability checks.

Heavy dependencies (torch, transformers, peft, trl, lm_eval) are imported lazily, inside
the functions that need them.
"""

from __future__ import annotations

from stancelab.tuning.config import FinetuneConfig

__all__ = ["FinetuneConfig"]
