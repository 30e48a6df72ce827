"""Real (tiny) LoRA next-token and DPO training runs on the embedded SmolLM2-135M."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stancelab.tuning._config import DpoSettings, LoraSettings, NwpSettings
from stancelab.tuning._errors import AdapterError, DatasetError, HardwareError

pytest.importorskip("trl")

TEXTS = [
    "Secure the border first.",
    "Lower taxes help families.",
    "Guns keep families safe.",
    "Energy jobs matter most.",
]
SMALL = LoraSettings(r=4, dropout=0.0)


def _settings(**extra: object) -> NwpSettings:
    values: dict[str, object] = {
        "lora": SMALL,
        "batch_size": 2,
        "max_steps": 2,
        "save_steps": 1,
        "logging_steps": 1,
        "max_length": 32,
    }
    values.update(extra)
    return NwpSettings.model_validate(values)


def test_nwp_trains_resumes_and_dpo_builds_on_it(
    tmp_path: Path, smol_base: tuple[Path, str]
) -> None:
    from stancelab.tuning._train import check_adapter_base, train_dpo, train_nwp

    out = tmp_path / "nwp"
    first = train_nwp("smollm2-135m", TEXTS, out, _settings(), seed=0)
    assert first.steps == 2 and not first.skipped
    assert first.final_loss is not None and first.final_loss > 0
    config = json.loads((first.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(config["target_modules"]) == sorted(SMALL.target_modules)
    meta = json.loads((first.adapter_dir / "stancelab_adapter.json").read_text())
    assert meta["base_sha256"] == smol_base[1] and meta["kind"] == "nwp"
    # A finished adapter is reused; an interrupted one resumes from its last checkpoint.
    assert train_nwp("smollm2-135m", TEXTS, out, _settings(), seed=0).skipped
    shutil.rmtree(first.adapter_dir)
    resumed = train_nwp("smollm2-135m", TEXTS, out, _settings(max_steps=3), seed=0)
    assert resumed.resumed_from is not None and resumed.resumed_from.endswith("checkpoint-2")
    assert resumed.steps == 3
    with pytest.raises(AdapterError, match="trained for base model"):
        check_adapter_base(resumed.adapter_dir, "0" * 64)

    pairs = [
        {
            "prompt": "What matters most?\n",
            "chosen": TEXTS[0],
            "rejected": "Welcoming immigrants matters most.",
        },
        {
            "prompt": "What about guns?\n",
            "chosen": TEXTS[2],
            "rejected": "Stricter gun laws save lives.",
        },
    ]
    dpo = DpoSettings(
        lora=LoraSettings(r=2, dropout=0.0),
        batch_size=2,
        max_steps=1,
        logging_steps=1,
        max_length=32,
    )
    result = train_dpo("smollm2-135m", pairs, resumed.adapter_dir, tmp_path / "dpo", dpo)
    assert result.steps == 1
    meta = json.loads((result.adapter_dir / "stancelab_adapter.json").read_text())
    assert meta["kind"] == "dpo" and meta["beta"] == 0.5
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 2


def test_bad_training_inputs(tmp_path: Path, smol_base: tuple[Path, str]) -> None:
    from stancelab.tuning._train import train_dpo, train_nwp

    with pytest.raises(DatasetError, match="no usable training texts"):
        train_nwp("smollm2-135m", ["", "  "], tmp_path / "a", _settings())
    with pytest.raises(HardwareError, match="needs a CUDA GPU"):
        train_nwp("smollm2-135m", TEXTS, tmp_path / "b", _settings(quantization="4bit"))
    # k_proj/v_proj of SmolLM2 are 576 -> 192 wide.
    with pytest.raises(AdapterError, match="rank 256 is larger than the width 192"):
        train_nwp("smollm2-135m", TEXTS, tmp_path / "c", _settings(lora=LoraSettings(r=256)))
    with pytest.raises(DatasetError, match="no DPO pairs"):
        train_dpo("smollm2-135m", [], tmp_path / "x", tmp_path / "d", DpoSettings())


def test_paper_defaults() -> None:
    settings = NwpSettings()
    assert (settings.lora.r, settings.lora.lora_alpha, settings.lora.dropout) == (256, 512, 0.05)
    assert settings.lora.bias == "none" and len(settings.lora.target_modules) == 7
    assert settings.batch_size == 32 and settings.epochs == 1
    dpo = DpoSettings()
    assert dpo.beta == 0.5 and dpo.lora.r == 8 and dpo.lora.lora_alpha == 16
