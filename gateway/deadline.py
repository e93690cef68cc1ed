"""Per-request time budget derived from the client's deadline and the configured default."""

from __future__ import annotations

import time

from gateway.errors import DeadlineExceeded


class Budget:
    """The time left for one request, measured on the monotonic clock."""

    __slots__ = ("_expires",)

    def __init__(self, seconds: float, now: float | None = None) -> None:
        self._expires = (time.monotonic() if now is None else now) + seconds

    @classmethod
    def for_request(cls, client_remaining_s: float | None, default_s: float) -> Budget:
        """The smaller of the client's remaining deadline (if it sent one) and the default."""
        if client_remaining_s is None:
            return cls(default_s)
        return cls(min(client_remaining_s, default_s))

    def remaining(self) -> float:
        """Seconds left; negative once expired."""
        return self._expires - time.monotonic()

    def check(self, stage: str) -> None:
        """Raises DeadlineExceeded when no time is left before `stage` starts."""
        if self.remaining() <= 0:
            raise DeadlineExceeded(f"deadline exceeded before stage {stage}")
