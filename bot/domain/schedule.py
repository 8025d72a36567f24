"""When to poll an import next: the one place the polling schedule is decided."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.domain.expiry import warning_at
from bot.domain.status import Status


@dataclass(frozen=True)
class Schedule:
    active_interval: float  # Queued, Processing
    idle_interval: float  # Initiated, Staging, unknown
    max_backoff: float
    expiry_warning: timedelta


def next_poll_at(
    now: datetime,
    status: Status | None,
    failures: int,
    expires: datetime | None,
    schedule: Schedule,
    jitter: float,
    retry_after: float | None = None,
) -> datetime:
    """The next time to ask the API about an import.

    ``jitter`` is a number in [0, 1) from the caller's random source, so that
    imports that failed together do not all retry together.
    """
    if status is not None and status.is_active:
        delay = schedule.active_interval
    else:
        delay = schedule.idle_interval
    if failures > 0:
        # Grows from the import's own interval, so an idle import is never polled
        # more often when failing than when healthy.
        backoff = min(schedule.max_backoff, delay * 2 ** min(failures - 1, 30))
        # "Equal jitter": at least half the backoff, never more than all of it.
        delay = backoff * (0.5 + 0.5 * jitter)
        if retry_after is not None:
            delay = max(delay, min(retry_after, schedule.max_backoff))
    when = now + timedelta(seconds=delay)
    if expires is not None:
        # Wake up in time for the expiry warning and for the expiry itself.
        for moment in (warning_at(expires, schedule.expiry_warning), expires):
            if now < moment < when:
                when = moment
                break
    return when
