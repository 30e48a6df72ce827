"""The retry policy of every remote backend, built on tenacity.

Exponential backoff with full jitter (spreads many clients' retries), at least what a
server's Retry-After asks for (capped), and no wait at all when another replica is up
and the server did not ask to wait: the retry fails over at once.
"""

from __future__ import annotations

from collections.abc import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from stancelab.engine.openai._transport import Retryable


class FailoverWait:
    """tenacity wait: 0 when ``can_fail_over()``, else jittered backoff or Retry-After."""

    def __init__(
        self,
        base_s: float,
        max_s: float,
        max_retry_after_s: float,
        can_fail_over: Callable[[], bool] = lambda: False,
    ) -> None:
        self._jitter = wait_random_exponential(multiplier=base_s, max=max_s)
        self._max_retry_after_s = max_retry_after_s
        self.can_fail_over = can_fail_over

    def __call__(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is None and self.can_fail_over():
            return 0.0
        delay = float(self._jitter(state))
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self._max_retry_after_s))
        return delay


def retrying(
    max_retries: int,
    wait: FailoverWait,
    sleep: Callable[[float], None],
    before_sleep: Callable[[RetryCallState], None] | None = None,
) -> Retrying:
    """A tenacity controller: Retryable errors only, ``max_retries`` further attempts, the
    last error re-raised."""
    return Retrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=wait,
        retry=retry_if_exception_type(Retryable),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
