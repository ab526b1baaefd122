"""Retry policy: exponential backoff with jitter, each delay capped (the seed: 5 retries, ≤ 1 h).

Dagster's own `RetryPolicy` has no cap, so the delay is computed here and handed to Dagster as
`RetryRequested(seconds_to_wait=...)`.

Trade-off: a run that waits for a retry keeps its process (a pod on Kubernetes) and its run
concurrency slot for the whole wait. The defaults (10 s base, 5 retries: about 10+20+40+80+160 s,
~5 minutes of waiting at most) ride out connection blips and failovers without parking slots for
an hour; raise `DW_RETRY_BASE_DELAY_SECONDS` for longer outages and the cap keeps any one wait
at or under `DW_RETRY_MAX_DELAY_SECONDS`.
"""

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    base_delay_seconds: float = 10.0
    max_delay_seconds: float = 3600.0
    jitter: float = 0.1  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry `retry_number` (0 for the first retry)."""
        raw = self.base_delay_seconds * (2**retry_number)
        factor = 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(self.max_delay_seconds, min(raw, self.max_delay_seconds) * factor))

    def schedule(self) -> list[float]:
        """The delays without jitter, for documentation and tests."""
        return [
            min(self.max_delay_seconds, self.base_delay_seconds * (2**n))
            for n in range(self.max_retries)
        ]
