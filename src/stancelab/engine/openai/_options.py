"""Settings of the ``openai`` backend (``options:`` in a model config), checked by pydantic."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OpenAIOptions(BaseModel):
    """Settings of the ``openai`` backend (``options:`` in a model config)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=120.0, gt=0)
    """Longest one attempt may take, connection to last byte."""
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    """Further attempts after the first one fails with a retryable error."""
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=30.0, ge=0)
    max_retry_after_s: float = Field(default=120.0, ge=0)
    """Cap on a server's Retry-After, so a bad header cannot stall a run for hours."""
    cooldown_s: float = Field(default=5.0, ge=0)
    """How long a replica that refused or dropped a connection is skipped."""
    routing: Literal["affinity", "least_in_flight"] = "affinity"
    """affinity: every conversation stays on one replica (consistent hashing of its
    conversation id), moves only while that replica is down, and comes back; requests
    without a conversation go to the least busy replica. least_in_flight: every request
    goes to the least busy replica."""
    session_headers: list[str] = Field(
        default_factory=lambda: ["X-Session-ID", "X-SMG-Routing-Key"]
    )
    """Headers that carry the conversation id, for session-aware routers in front of the
    replicas: vLLM production-stack (``--routing-logic session --session-key
    X-Session-ID``) and SGLang's model gateway (``--policy consistent_hashing`` reads
    ``X-SMG-Routing-Key``); an empty list sends none."""
    session_field: str | None = None
    """A JSON field that carries the conversation id too (e.g. OpenAI's
    ``prompt_cache_key``); None sends none."""
    logprobs: bool | None = None
    """False: the server has none (survey must use generate mode); None: find out."""
    max_logprobs: int | None = Field(default=None, ge=1)
    """Cap on top log-probabilities per request (OpenAI completions: 5, vLLM default: 20)."""
    path_bias: bool | None = None
    """Steer survey paths with llama.cpp's text logit bias; None: only where the server
    says it is llama.cpp (others want token ids and get plain greedy paths)."""
    max_stop: int | None = Field(default=None, ge=0)
    """Cap on stop strings per request (OpenAI: 4); the debate also cuts replies itself."""
    check_model: bool = True
    """Check at start that the servers list the model name (catches typos early)."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Extra JSON fields for every request (e.g. vLLM's ``top_k``)."""
    continue_final_message: bool = False
    """vLLM: continue a trailing assistant message instead of starting a new one."""
    stream: bool = True
    """Stream replies that are read as they grow (``generate_stream``: ``stream: true``
    with ``stream_options.include_usage`` for the token counts); false sends them whole,
    for a gateway that cannot stream."""
    trust_env: bool = True
    """Use HTTP(S)_PROXY / NO_PROXY from the environment (false for loopback servers)."""

    @model_validator(mode="before")
    @classmethod
    def _price_moved(cls, data: Any) -> Any:
        # Before 0.4 the price was two options per 1,000 tokens; one price now lives in the
        # model entry, where the cost estimate and the engine's count both read it.
        if isinstance(data, dict) and {"price_per_1k_prompt", "price_per_1k_completion"} & set(
            data
        ):
            raise ValueError(
                "price_per_1k_prompt/price_per_1k_completion moved: set price_per_million: "
                "{input: USD, output: USD} in the model entry (1,000x the old values)"
            )
        return data
