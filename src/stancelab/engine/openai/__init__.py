"""The OpenAI wire protocol, in pieces the backends share.

Public: ``OpenAIOptions``, the ``openai`` backend's settings. Private: ``_codec`` builds
request payloads and reads answers (both log-probability shapes) for the in-process
llama.cpp engine and the HTTP backend alike; ``_transport`` is one HTTP exchange;
``_retry`` the retry policy (tenacity); ``_routing`` picks a replica (least-in-flight, or
consistent hashing by conversation); ``_accounting`` keeps the token and cost totals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stancelab._lazy import lazy_package

if TYPE_CHECKING:
    from stancelab.engine.openai._options import OpenAIOptions

_SOURCES = {
    "OpenAIOptions": ("stancelab.engine.openai._options", "OpenAIOptions"),
}
"""Public name -> (private module, attribute), imported on first use."""

__all__ = [
    "OpenAIOptions",
]

lazy_package(__name__)
