"""When an import is polled next: adaptive intervals, backoff with jitter, expiry wake-ups."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.domain.eta import Forecast
from bot.domain.schedule import Schedule, next_poll_at
from bot.domain.status import Status

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SCHEDULE = Schedule(
    active_interval=30,
    idle_interval=300,
    max_backoff=900,
    expiry_warning=timedelta(minutes=30),
)


def delay(
    status: Status | None = Status.PROCESSING,
    failures: int = 0,
    expires: datetime | None = None,
    jitter: float = 0.0,
    retry_after: float | None = None,
) -> float:
    """Seconds from NOW until the next poll."""
    when = next_poll_at(NOW, status, failures, expires, SCHEDULE, jitter, retry_after)
    return (when - NOW).total_seconds()


@pytest.mark.parametrize("status", [Status.QUEUED, Status.PROCESSING])
def test_active_import_is_polled_at_the_active_interval(status: Status) -> None:
    assert delay(status) == 30


@pytest.mark.parametrize(
    "status",
    [Status.INITIATED, Status.STAGING, Status.UNKNOWN, None, Status.COMPLETED, Status.FAILED],
)
def test_idle_or_unknown_import_is_polled_at_the_idle_interval(status: Status | None) -> None:
    assert delay(status) == 300


def test_jitter_does_not_spread_healthy_polls() -> None:
    assert delay(Status.PROCESSING, jitter=0.9) == 30


@pytest.mark.parametrize(
    ("failures", "backoff"),
    [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 900), (7, 900), (1000, 900)],
)
def test_backoff_doubles_per_failure_and_is_capped(failures: int, backoff: float) -> None:
    assert delay(failures=failures, jitter=0.0) == backoff / 2
    assert delay(failures=failures, jitter=0.5) == backoff * 0.75
    assert delay(failures=failures, jitter=0.999999) == pytest.approx(backoff, rel=1e-5)


@pytest.mark.parametrize(
    ("status", "usual"), [(Status.STAGING, 300), (Status.PROCESSING, 30), (None, 300)]
)
def test_backoff_grows_from_the_imports_own_interval(status: Status | None, usual: int) -> None:
    # Third failure: 4x the usual interval (capped), equal jitter at its lowest is half.
    assert delay(status, failures=3, jitter=0.0) == min(900, usual * 4) / 2


def test_failing_idle_import_is_not_polled_more_often_than_a_healthy_one_after_one_retry() -> None:
    assert delay(Status.STAGING, failures=2, jitter=0.0) >= delay(Status.STAGING)


@settings(max_examples=200, deadline=None)
@given(failures=st.integers(1, 200), jitter=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_is_equal_jitter_between_half_and_all_of_the_capped_backoff(
    failures: int, jitter: float
) -> None:
    backoff = min(SCHEDULE.max_backoff, SCHEDULE.active_interval * 2 ** (failures - 1))

    seconds = delay(failures=failures, jitter=jitter)

    assert 0.5 * backoff <= seconds <= backoff
    assert seconds <= SCHEDULE.max_backoff


def test_retry_after_longer_than_the_backoff_is_honoured() -> None:
    assert delay(failures=1, jitter=0.0, retry_after=120) == 120


def test_retry_after_shorter_than_the_backoff_does_not_shorten_it() -> None:
    assert delay(failures=4, jitter=0.0, retry_after=5) == 120


def test_retry_after_is_capped_at_max_backoff() -> None:
    assert delay(failures=1, jitter=0.0, retry_after=86_400) == 900


def test_wake_up_for_the_expiry_warning_when_it_comes_before_the_next_poll() -> None:
    expires = NOW + timedelta(minutes=32)  # the warning is due in 2 minutes

    assert delay(Status.STAGING, expires=expires) == 120


def test_no_wake_up_when_the_warning_is_after_the_next_poll() -> None:
    expires = NOW + timedelta(minutes=40)

    assert delay(Status.STAGING, expires=expires) == 300


def test_inside_the_warning_window_wake_up_at_the_expiry_moment() -> None:
    expires = NOW + timedelta(minutes=3)

    assert delay(Status.STAGING, expires=expires) == 180


def test_backoff_is_also_clamped_to_the_expiry_warning() -> None:
    expires = NOW + timedelta(minutes=40)  # the warning is due in 10 minutes

    assert delay(Status.PROCESSING, failures=20, jitter=0.9, expires=expires) == 600


def test_expiry_already_passed_does_not_pull_the_poll_into_the_past() -> None:
    expires = NOW - timedelta(minutes=1)

    assert delay(Status.PROCESSING, expires=expires) == 30


def test_warning_moment_equal_to_now_wakes_up_at_expiry_instead() -> None:
    expires = NOW + timedelta(minutes=30)  # warning moment is exactly now

    when = next_poll_at(NOW, Status.STAGING, 0, expires, SCHEDULE, 0.0)

    assert when > NOW
    assert when == NOW + timedelta(seconds=300)


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from([*Status, None]),
    failures=st.integers(0, 50),
    jitter=st.floats(0.0, 1.0, exclude_max=True),
    retry_after=st.one_of(st.none(), st.floats(0, 100_000)),
    until_expiry=st.one_of(st.none(), st.integers(-3600, 7200)),
)
def test_next_poll_is_always_in_the_future_and_never_past_a_moment_that_matters(
    status: Status | None,
    failures: int,
    jitter: float,
    retry_after: float | None,
    until_expiry: int | None,
) -> None:
    expires = NOW + timedelta(seconds=until_expiry) if until_expiry is not None else None

    when = next_poll_at(NOW, status, failures, expires, SCHEDULE, jitter, retry_after)

    assert NOW < when <= NOW + timedelta(seconds=SCHEDULE.idle_interval + SCHEDULE.max_backoff)
    if expires is not None:
        for moment in (expires - SCHEDULE.expiry_warning, expires):
            assert not NOW < moment < when


# --------------------------------------------------------------------------- ETA-aware polling

# Polled every 30 s, early polls at most 5 s after the one before.
ETA_SCHEDULE = Schedule(
    active_interval=30,
    idle_interval=300,
    max_backoff=900,
    expiry_warning=timedelta(minutes=30),
    min_spacing=5,
)
# The first Processing observation was 50 s ago: NOW is in the cell [30 s, 60 s) of
# the rate base's grid, the next cell starts in 10 s, the regular poll is in 30 s.
SINCE = NOW - timedelta(seconds=50)


def eta_delay(
    finish_in: float | None,
    *,
    status: Status | None = Status.PROCESSING,
    failures: int = 0,
    expires: datetime | None = None,
    retry_after: float | None = None,
    since: datetime = SINCE,
    now: datetime = NOW,
    schedule: Schedule = ETA_SCHEDULE,
) -> float:
    """Seconds from ``now`` to the next poll when the import should finish in ``finish_in`` s."""
    forecast = (
        Forecast(since=since, finish_at=now + timedelta(seconds=finish_in))
        if finish_in is not None
        else None
    )
    when = next_poll_at(
        now, status, failures, expires, schedule, 0.0, retry_after, forecast=forecast
    )
    return (when - now).total_seconds()


def test_finish_before_the_regular_poll_is_polled_just_after_it() -> None:
    # Predicted in 15 s; polled 5 % of the interval (1.5 s) later, not at 30 s.
    assert eta_delay(15) == 16.5


def test_finish_far_off_keeps_the_regular_interval() -> None:
    assert eta_delay(300) == 30


def test_without_a_known_rate_the_regular_interval_stands() -> None:
    assert eta_delay(None) == 30


def test_early_poll_never_comes_closer_than_the_minimum_spacing() -> None:
    # NOW is 5 s before the next cell: a finish predicted in 1 s is polled no sooner
    # than the minimum spacing (and the cell's start) allow.
    since = NOW - timedelta(seconds=25)

    assert eta_delay(1, since=since) == 5


def test_early_poll_never_comes_before_the_next_cell() -> None:
    # NOW is early in its cell (5 s in): the next cell starts in 25 s, so a finish
    # predicted in 3 s is polled then; a second poll in this cell would cost a call
    # fixed-interval polling does not make.
    since = NOW - timedelta(seconds=5)

    assert eta_delay(3, since=since) == 25


def test_an_early_poll_that_found_it_unfinished_is_followed_by_the_regular_poll() -> None:
    # The early poll came 16.5 s after NOW, in the cell [60 s, 90 s); the import had not
    # finished and now should finish any moment: the next poll is the regular one at the
    # start of the next cell (90 s after the base), not another early one.
    early = NOW + timedelta(seconds=16.5)

    assert eta_delay(0, now=early) == 23.5
    assert eta_delay(0.5, now=early) == 23.5


def test_finish_late_in_the_next_cell_is_polled_just_after_it_instead_of_the_regular_poll() -> None:
    # Predicted in 35 s (5 s after the regular poll, still in the next cell): the poll
    # waits for it rather than polling at 30 s and again after the finish.
    assert eta_delay(35) == 36.5


@pytest.mark.parametrize(
    "status",
    [Status.QUEUED, Status.INITIATED, Status.STAGING, Status.UNKNOWN, None, Status.COMPLETED],
)
def test_only_processing_imports_are_moved_by_the_forecast(status: Status | None) -> None:
    assert eta_delay(15, status=status) == eta_delay(None, status=status)


@pytest.mark.parametrize("retry_after", [None, 120.0])
def test_a_failing_import_backs_off_whatever_the_forecast(retry_after: float | None) -> None:
    assert eta_delay(15, failures=2, retry_after=retry_after) == eta_delay(
        None, failures=2, retry_after=retry_after
    )


def test_the_expiry_warning_before_the_early_poll_still_wins() -> None:
    expires = NOW + timedelta(minutes=30, seconds=8)  # the warning is due in 8 s

    assert eta_delay(15, expires=expires) == 8


def test_a_minimum_spacing_of_the_interval_turns_early_polls_off() -> None:
    fixed = Schedule(30, 300, 900, timedelta(minutes=30), min_spacing=30)

    assert eta_delay(15, schedule=fixed) == 30


@settings(max_examples=500, deadline=None)
@given(
    interval=st.integers(2, 600),
    spacing_share=st.floats(0.01, 0.99),
    life_share=st.floats(0.0, 12.0),
    # Per poll: how late it actually came (tick, queueing) and the forecast it saw,
    # as an offset from the poll in intervals (None: rate unknown). Any error at all.
    polls=st.lists(
        st.tuples(
            st.integers(0, 5_000),
            st.one_of(st.none(), st.floats(-2.0, 6.0)),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_eta_aware_polling_never_makes_more_calls_than_fixed_interval_polling(
    interval: int,
    spacing_share: float,
    life_share: float,
    polls: list[tuple[int, float | None]],
) -> None:
    """The budget: from the first Processing poll to the poll that sees the finish,
    at most ceil(life / interval) + 1 calls, at most one per interval-long cell, and
    never two closer than the minimum spacing (whatever the forecasts said)."""
    schedule = Schedule(
        interval, 5 * interval, 900, timedelta(minutes=30), interval * spacing_share
    )
    since = NOW
    finish = since + timedelta(seconds=life_share * interval)
    step = timedelta(seconds=interval)
    times = [since]
    while times[-1] < finish:
        late_ms, offset = polls[(len(times) - 1) % len(polls)]
        now = times[-1]
        forecast = (
            Forecast(since, now + timedelta(seconds=offset * interval))
            if offset is not None
            else None
        )
        when = next_poll_at(now, Status.PROCESSING, 0, None, schedule, 0.0, forecast=forecast)
        assert when - now >= timedelta(seconds=schedule.min_spacing)
        times.append(when + timedelta(milliseconds=late_ms))

    fixed_calls = math.ceil((finish - since) / step) + 1
    assert len(times) <= fixed_calls
    cells = [(t - since) // step for t in times]
    assert len(set(cells)) == len(cells)
