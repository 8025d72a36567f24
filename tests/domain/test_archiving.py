"""When a watched import's exceptions are archived: decided from one poll, without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.domain.archiving import ArchiveKind, archives_for, failed_records, has_failures
from bot.domain.rules import Memory, Rules, decide
from bot.domain.status import ImportStatus, Status

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
RULES = Rules(expiry_warning=timedelta(minutes=60), trouble_after=timedelta(minutes=5))
LATER = NOW + timedelta(hours=6)  # a token that is nowhere near its expiry warning
SOON = NOW + timedelta(minutes=30)  # inside the 60-minute warning window


def status(
    value: Status,
    *,
    exceptions: int | None = 0,
    not_honored: int | None = 0,
    validation_failed: int | None = 0,
    expires: datetime = LATER,
) -> ImportStatus:
    return ImportStatus(
        access_token=42,
        status=value,
        validation_successful=1000,
        processed=500,
        exceptions=exceptions,
        not_honored=not_honored,
        validation_failed=validation_failed,
        expires=expires,
    )


def archives(old: ImportStatus, new: ImportStatus) -> list[ArchiveKind]:
    return archives_for(decide(Memory(status=old), new, NOW, RULES))


@pytest.mark.parametrize(
    "failures",
    [{"exceptions": 60}, {"not_honored": 1}, {"validation_failed": 800}],
)
@pytest.mark.parametrize("end", [Status.COMPLETED, Status.FAILED])
def test_an_import_that_ends_with_any_failures_is_archived_once(
    failures: dict[str, int], end: Status
) -> None:
    assert archives(status(Status.PROCESSING), status(end, **failures)) == [ArchiveKind.FINAL]


def test_a_clean_finish_is_not_archived() -> None:
    assert archives(status(Status.PROCESSING), status(Status.COMPLETED)) == []


def test_unknown_counts_are_not_failures() -> None:
    unknown = status(Status.COMPLETED, exceptions=None, not_honored=None, validation_failed=None)
    assert archives(status(Status.PROCESSING), unknown) == []
    assert failed_records(unknown) == 0 and not has_failures(unknown)


def test_a_poll_that_sees_a_finished_import_again_archives_nothing() -> None:
    done = status(Status.COMPLETED, exceptions=60)
    assert archives(done, done) == []


def test_failures_while_still_running_are_not_archived_before_the_warning() -> None:
    assert archives(status(Status.PROCESSING), status(Status.PROCESSING, exceptions=5)) == []


def test_the_expiry_warning_on_a_running_import_with_failures_archives_what_exists() -> None:
    running = status(Status.PROCESSING, exceptions=5, expires=SOON)
    assert archives(status(Status.PROCESSING, expires=SOON), running) == [ArchiveKind.PARTIAL]


def test_the_expiry_warning_without_failures_archives_nothing() -> None:
    running = status(Status.PROCESSING, expires=SOON)
    assert archives(running, running) == []


def test_finishing_inside_the_warning_window_is_the_final_archive_only() -> None:
    ended = status(Status.COMPLETED, exceptions=5, expires=SOON)
    assert archives(status(Status.PROCESSING, exceptions=5, expires=SOON), ended) == [
        ArchiveKind.FINAL
    ]


def test_an_expired_token_is_not_archived() -> None:
    expired = status(Status.PROCESSING, exceptions=5, expires=NOW - timedelta(seconds=1))
    decision = decide(Memory(status=expired), expired, NOW, RULES)
    assert decision.finished and archives_for(decision) == []
