"""The estimated time to finish, from the processing rate seen so far.

The rate is measured from a base: the first Processing observation (time and
records done), kept with the import and moved only when the count goes back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.domain.status import ImportStatus, Status


def rate_base(
    base_at: datetime | None, base_done: int | None, new: ImportStatus, now: datetime
) -> tuple[datetime | None, int | None]:
    """The base to keep after seeing ``new``: the first Processing observation.

    Outside Processing there is no base; a count that went back starts a new one.
    """
    if new.status is not Status.PROCESSING or new.done is None:
        return None, None
    if base_at is not None and base_done is not None and new.done >= base_done:
        return base_at, base_done
    return now, new.done


def estimate_seconds_left(
    status: ImportStatus, base_at: datetime | None, base_done: int | None, now: datetime
) -> float | None:
    """Seconds until Processing finishes at the rate seen since ``base``; None if unknown."""
    if status.status is not Status.PROCESSING or base_at is None or base_done is None:
        return None
    done, total = status.done, status.validation_successful
    elapsed = (now - base_at).total_seconds()
    if done is None or not total or elapsed <= 0 or done <= base_done:
        return None
    rate = (done - base_done) / elapsed
    return max(0.0, (total - done) / rate)


@dataclass(frozen=True)
class Forecast:
    """When Processing should end, and since when the rate behind it was measured."""

    #: The rate base: the first Processing observation, itself a poll.
    since: datetime
    #: The moment the last record should be done, at the rate seen since ``since``.
    finish_at: datetime


def finish_forecast(
    status: ImportStatus | None, base_at: datetime | None, base_done: int | None, now: datetime
) -> Forecast | None:
    """The forecast the poll schedule uses; None while the rate is unknown."""
    if status is None or base_at is None:
        return None
    left = estimate_seconds_left(status, base_at, base_done, now)
    if left is None:
        return None
    return Forecast(since=base_at, finish_at=now + timedelta(seconds=left))
