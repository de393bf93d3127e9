"""A clock the test moves: deadlines and expiry without waiting for real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


class ManualClock:
    """A :data:`~services.runtime.Clock` that stands still until :meth:`advance`."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now
