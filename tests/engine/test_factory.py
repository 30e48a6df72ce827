"""Model entries are checked before any engine starts: options named and typed."""

from __future__ import annotations

import pytest

from stancelab.engine._errors import ConfigError
from stancelab.engine._factory import ModelConfig, check_model


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"options": {"thread": 2}}, r"unknown llamacpp option 'thread'; known: threads"),
        (
            {"options": {"sampling": {"topk": 40}}},
            r"unknown llama.cpp sampling setting\(s\) "
            r"\['topk'\]",
        ),
        ({"options": {"sampling": {"top_p": "high"}}}, "option sampling.top_p: Input should be"),
        ({"options": {"sampling": [40]}}, "option sampling: Input should be a valid dictionary"),
        (
            {
                "backend": "openai",
                "base_urls": ["http://127.0.0.1:9"],
                "options": {"timeout_s": "soon"},
            },
            "option timeout_s",
        ),
        (
            {"backend": "openai", "base_urls": ["http://127.0.0.1:9"], "options": {"max_retry": 3}},
            "unknown openai option 'max_retry'",
        ),
    ],
)
def test_bad_options_are_refused_with_their_name(entry: dict[str, object], message: str) -> None:
    config = ModelConfig.model_validate({"name": "smollm2-135m", **entry})
    with pytest.raises(ConfigError, match=message):
        check_model(config)


def test_good_options_pass() -> None:
    check_model(
        ModelConfig.model_validate(
            {
                "name": "smollm2-135m",
                "options": {
                    "threads": 1,
                    "cache_ram_mib": 0,
                    "sampling": {"top_k": 40, "min_p": 0.05},
                },
            }
        )
    )
