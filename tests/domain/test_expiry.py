"""The expiry-warning window and "expired": the one place both are decided."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.domain.expiry import in_warning_window, is_expired, warning_at

EXPIRES = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WARNING = timedelta(minutes=60)


def test_the_warning_is_due_the_warning_time_before_expiry() -> None:
    assert warning_at(EXPIRES, WARNING) == datetime(2030, 1, 1, 11, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (EXPIRES - WARNING - timedelta(seconds=1), False),
        (EXPIRES - WARNING, True),  # the window opens at the warning time
        (EXPIRES - timedelta(seconds=1), True),
        (EXPIRES, False),  # at Expires the token has expired: no warning any more
        (EXPIRES + timedelta(hours=1), False),
    ],
)
def test_the_warning_window_runs_from_the_warning_time_until_expiry(
    now: datetime, inside: bool
) -> None:
    assert in_warning_window(EXPIRES, now, WARNING) is inside


@pytest.mark.parametrize(
    ("now", "expired"),
    [
        (EXPIRES - timedelta(microseconds=1), False),
        (EXPIRES, True),  # the API answers 401 from Expires on
        (EXPIRES + timedelta(days=1), True),
    ],
)
def test_a_token_has_expired_from_its_expires_on(now: datetime, expired: bool) -> None:
    assert is_expired(EXPIRES, now) is expired


def test_an_unknown_expiry_never_warns_and_never_expires() -> None:
    assert in_warning_window(None, EXPIRES, WARNING) is False
    assert is_expired(None, EXPIRES) is False
