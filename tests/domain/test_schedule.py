"""When an import is polled next: adaptive intervals, backoff with jitter, expiry wake-ups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
