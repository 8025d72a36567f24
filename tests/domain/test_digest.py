"""When a channel's digest is due, and what it sums up."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from bot.domain.digest import due_day, summarise
from bot.domain.history import ActiveWatch, FinishedWatch, Outcome, outcome_of
from bot.domain.settings import Digest
from bot.domain.status import ImportStatus, Status

PARIS_9 = Digest(time(9, 0), "Europe/Paris")
# 2026-12-01 is winter: Paris is UTC+1, so 09:00 Paris is 08:00 UTC.
DAY = date(2026, 12, 1)


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


def test_due_from_the_local_digest_time_until_local_midnight() -> None:
    assert due_day(at(7, 59), PARIS_9, since=None) is None
    assert due_day(at(8, 0), PARIS_9, since=None) == DAY
    # A bot that was down at 09:00 posts when it comes back, the same local day.
    assert due_day(at(22, 59), PARIS_9, since=None) == DAY
    # 23:00 UTC is already the next day in Paris, before its digest time.
    assert due_day(at(23, 0), PARIS_9, since=None) is None


def test_a_digest_time_chosen_after_it_passed_starts_the_next_day() -> None:
    assert due_day(at(12), PARIS_9, since=at(10)) is None
    assert due_day(at(8, 0, day=2), PARIS_9, since=at(10)) == date(2026, 12, 2)
    assert due_day(at(12), PARIS_9, since=at(7)) == DAY


def test_the_day_is_the_channels_local_day() -> None:
    tokyo = Digest(time(8, 0), "Asia/Tokyo")  # UTC+9: 08:00 is 23:00 UTC the day before
    assert due_day(at(23, 0), tokyo, since=None) == date(2026, 12, 2)
    assert due_day(at(22, 59), tokyo, since=None) is None  # 07:59 on the 2nd in Tokyo
    assert due_day(at(14, 59), tokyo, since=None) == DAY  # 23:59 on the 1st in Tokyo


def test_a_time_skipped_by_daylight_saving_is_still_due_that_day() -> None:
    # 2026-03-29: Paris jumps from 02:00 to 03:00.
    skipped = Digest(time(2, 30), "Europe/Paris")
    assert due_day(datetime(2026, 3, 29, 2, 0, tzinfo=UTC), skipped, None) == date(2026, 3, 29)


def _finished(reason: str, ended: datetime, **counts: int) -> FinishedWatch:
    status = ImportStatus(access_token=1, status=Status.COMPLETED, **counts)
    return FinishedWatch(
        team_id="T",
        channel_id="C",
        access_token=1,
        name="n",
        status=status,
        subscribed_by="U",
        subscribed_at=ended - timedelta(hours=1),
        ended_at=ended,
        ended_reason=reason,
        tracking_ts="1.2",
    )


def test_outcomes_read_back_from_the_stored_reasons() -> None:
    assert outcome_of("Completed") is Outcome.COMPLETED
    assert outcome_of("Failed") is Outcome.FAILED
    assert outcome_of("token expired") is Outcome.EXPIRED
    assert outcome_of("unwatched by <@U1>") is Outcome.STOPPED
    assert outcome_of(None) is Outcome.STOPPED


def test_summary_counts_the_last_24_hours_of_finished_imports() -> None:
    until = at(8)
    finished = [
        _finished("Completed", until - timedelta(hours=1), processed=100, exceptions=2),
        _finished("Failed", until - timedelta(hours=2), processed=0, validation_failed=5),
        _finished("token expired", until - timedelta(hours=3), processed=7, not_honored=1),
        _finished("Completed", until - timedelta(hours=25), processed=1000),  # too old
        _finished("unwatched by <@U1>", until - timedelta(hours=1), processed=50),
    ]
    summary = summarise(DAY, until, finished, [])
    assert [summary.count(o) for o in (Outcome.COMPLETED, Outcome.FAILED, Outcome.EXPIRED)] == [
        1,
        1,
        1,
    ]
    assert summary.processed == 107
    assert summary.failures == 8
    assert not summary.empty
    assert [w.ended_reason for w in summary.finished] == ["token expired", "Failed", "Completed"]


def test_nothing_finished_and_nothing_running_is_an_empty_digest() -> None:
    until = at(8)
    old = [_finished("Completed", until - timedelta(days=2))]
    assert summarise(DAY, until, old, []).empty
    running = ActiveWatch("T", "C", 2, "r", None, "U", until, None)
    assert not summarise(DAY, until, old, [running]).empty
