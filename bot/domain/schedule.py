"""When to poll an import next: the one place the polling schedule is decided.

ETA-aware polling. A Processing import is polled every ``active_interval``
(I), except near its end: when the rate seen so far says it will finish
before the next regular poll could see it, it is polled just after that
moment instead, and at the regular time after that if it had not finished.

The call budget, and why it holds. Cut time into cells of length I starting
at the rate base ``since`` (the first Processing observation, itself a poll):
cell k is [since + k·I, since + (k+1)·I). While an import is Processing and
healthy, every poll schedules the next one in a later cell than its own: a
regular poll (now + I) always lands in the next cell, and an early poll is
never placed before the next cell starts. So there is at most one poll per
cell. Fixed-interval polling from ``since`` polls at the start of every cell,
once each, until the first poll at or after the finish; so however the
estimate errs, ETA-aware polling makes no more calls over the import's life
than fixed-interval polling would (ceil(life / I) + 1 from ``since``, the
polls before ``since`` being the same in both). The poll an early one takes
the place of is the next cell's regular poll ("borrowed"): a finish predicted
late in the next cell is polled just after the predicted moment, and then, if
it had not finished, at the start of the cell after.

Failures, Retry-After and the expiry wake-ups are decided as before and win
over the forecast (they may poll sooner, as they did under fixed-interval
polling); Queued and idle imports are never moved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.domain.eta import Forecast
from bot.domain.expiry import warning_at
from bot.domain.status import Status

# How long after the predicted finish the early poll comes, as a share of the interval:
# room for the estimate's own error (a request's latency, counts rounded to records).
ETA_MARGIN = 0.05


@dataclass(frozen=True)
class Schedule:
    active_interval: float  # Queued, Processing
    idle_interval: float  # Initiated, Staging, unknown
    max_backoff: float
    expiry_warning: timedelta
    #: The closest an ETA-aware poll comes to the one before it; at or above
    #: ``active_interval`` there are no early polls (fixed-interval polling).
    min_spacing: float = math.inf


def next_poll_at(
    now: datetime,
    status: Status | None,
    failures: int,
    expires: datetime | None,
    schedule: Schedule,
    jitter: float,
    retry_after: float | None = None,
    forecast: Forecast | None = None,
) -> datetime:
    """The next time to ask the API about an import.

    ``jitter`` is a number in [0, 1) from the caller's random source, so that
    imports that failed together do not all retry together. ``forecast`` (when
    the processing rate is known) may move a healthy Processing import's next
    poll to just after its predicted finish; see the module's docstring.
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
    if status is Status.PROCESSING and failures == 0 and forecast is not None:
        when = _after_finish(now, forecast, schedule) or when
    if expires is not None:
        # Wake up in time for the expiry warning and for the expiry itself.
        for moment in (warning_at(expires, schedule.expiry_warning), expires):
            if now < moment < when:
                when = moment
                break
    return when


def _after_finish(now: datetime, forecast: Forecast, schedule: Schedule) -> datetime | None:
    """Just after the predicted finish, if that is in the next cell; else None (regular).

    Never before the next cell starts (at most one poll per cell: the call
    budget), never closer than ``min_spacing`` to this poll.
    """
    if schedule.min_spacing >= schedule.active_interval:
        return None
    # In whole microseconds (timedelta arithmetic), so that no rounding can put two
    # polls in one cell.
    interval = timedelta(seconds=schedule.active_interval)
    cell = (now - forecast.since) // interval
    next_cell = forecast.since + (cell + 1) * interval
    target = max(
        forecast.finish_at + ETA_MARGIN * interval,
        now + timedelta(seconds=schedule.min_spacing),
        next_cell,
    )
    if target >= next_cell + interval:
        return None  # the finish is further off: the regular poll comes first
    return target
