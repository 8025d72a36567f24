"""Fetching an import's exceptions into summaries and files, against an API in memory."""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.archive.csvfile import ArchiveFile
from bot.archive.fetch import ArchiveOptions, FetchResult, fetch_exceptions
from bot.domain.exceptions import DEFAULT_PERSONAL_FIELDS, DEFAULT_REASON_FIELDS, ExceptionsFile
from bot.mypreferences import errors
from bot.mypreferences.client import NO_RETRY, RetryPolicy
from bot.mypreferences.pace import Pace
from bot.mypreferences.paging import PagingPlan
from bot.mypreferences.parsing import ExceptionsPage

REDACTED, FULL, NONE = ExceptionsFile.REDACTED, ExceptionsFile.FULL, ExceptionsFile.NONE
EXPIRES = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Api:
    """Retrieve exceptions over ``total`` profile-like records; ``fail``: request -> error."""

    total: int
    fail: dict[int, errors.ApiError] = field(default_factory=dict)
    requests: int = 0
    on_request: Any = None

    async def get_exceptions(
        self,
        access_token: int,
        *,
        limit: int = 1000,
        offset: int = 1,
        retry: RetryPolicy = NO_RETRY,
        max_bytes: int = 0,
    ) -> ExceptionsPage:
        self.requests += 1
        if self.on_request is not None:
            self.on_request(self.requests)
        if self.requests in self.fail:
            raise self.fail[self.requests]
        numbers = range(offset, min(offset + limit, self.total + 1))
        return ExceptionsPage(
            count=len(numbers),
            has_more=offset + limit <= self.total,
            limit=limit,
            offset=offset,
            total_results=self.total,
            records=[
                {
                    "RecordNumber": n,
                    "EmailAddress": f"person.{n}@example.com",
                    "ErrorMessage": "Invalid email address" if n % 4 else "Missing consent",
                }
                for n in numbers
            ],
        )


class Clock:
    def __init__(self) -> None:
        self.now = EXPIRES - timedelta(hours=1)

    def __call__(self) -> datetime:
        return self.now


def options(directory: Path, page_size: int = 1000, max_records: int = 1_000_000) -> ArchiveOptions:
    return ArchiveOptions(
        directory=directory,
        max_records=max_records,
        reason_fields=DEFAULT_REASON_FIELDS,
        personal_fields=DEFAULT_PERSONAL_FIELDS,
        plan=PagingPlan(page_size=page_size, max_records=max_records),
    )


def rows(archive: ArchiveFile) -> list[list[str]]:
    raw = archive.path.read_bytes()
    if archive.gzipped:
        raw = gzip.decompress(raw)
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def leftovers(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


async def fetch(
    api: Api, directory: Path, modes: list[ExceptionsFile], **kwargs: Any
) -> FetchResult:
    page_size = kwargs.pop("page_size", 1000)
    max_records = kwargs.pop("max_records", 1_000_000)
    return await fetch_exceptions(
        api, 42, modes, options(directory, page_size, max_records), Pace(1e9), **kwargs
    )


async def test_one_fetch_makes_a_summary_and_a_file_for_each_mode(tmp_path: Path) -> None:
    result = await fetch(Api(2500), tmp_path, [REDACTED, FULL, NONE])
    assert (result.records, result.expected, result.pages, result.stopped) == (2500, 2500, 3, None)
    assert set(result.files) == {REDACTED, FULL}  # none has no file
    redacted, full = rows(result.files[REDACTED]), rows(result.files[FULL])
    assert len(redacted) == len(full) == 2501  # header + records
    assert redacted[1][1] == "p***@example.com" and full[1][1] == "person.1@example.com"
    for mode in (REDACTED, FULL, NONE):
        report = result.reports[mode]
        assert report.total == 2500
        assert (report.top_reasons[0].reason, report.top_reasons[0].count) == (
            "Invalid email address",
            1875,
        )
    # The summary shown in Slack follows the personal-data rule of its mode.
    assert "person.1@example.com" not in str(result.reports[NONE].samples)
    assert "person.1@example.com" in str(result.reports[FULL].samples)
    result.discard()
    assert leftovers(tmp_path) == []


async def test_no_records_means_no_file_and_nothing_left_on_disk(tmp_path: Path) -> None:
    result = await fetch(Api(0), tmp_path, [REDACTED])
    assert result.records == 0 and result.files == {} and result.stopped is None
    assert result.reports[REDACTED].total == 0
    assert leftovers(tmp_path) == []


async def test_the_token_expiring_mid_paging_keeps_what_was_fetched(tmp_path: Path) -> None:
    clock = Clock()
    api = Api(2500)

    def expire_after_two_pages(request: int) -> None:
        if request == 2:
            clock.now = EXPIRES  # page 2 is answered, then the token's time is up

    api.on_request = expire_after_two_pages
    result = await fetch(api, tmp_path, [REDACTED], expires=EXPIRES, clock=clock)
    assert (result.records, result.stopped) == (2000, "the token expired")
    assert result.partial_text() == "2,000 of 2,500 records; the token expired"
    assert rows(result.files[REDACTED])[-1] == [
        "# partial: 2,000 of 2,500 records; the token expired"
    ]
    assert api.requests == 2  # no request is sent once Expires has passed
    result.discard()


async def test_a_401_at_expiry_is_the_token_expiring(tmp_path: Path) -> None:
    clock = Clock()
    clock.now = EXPIRES - timedelta(seconds=30)  # within the skew: clocks differ a little
    api = Api(2500, fail={3: errors.TokenRejected("HTTP 401")})
    result = await fetch(api, tmp_path, [REDACTED], expires=EXPIRES, clock=clock)
    assert (result.records, result.stopped) == (2000, "the token expired")
    result.discard()


async def test_a_401_long_before_expiry_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    api = Api(2500, fail={2: errors.TokenRejected("HTTP 401")})
    with pytest.raises(errors.TokenRejected):
        await fetch(api, tmp_path, [REDACTED, FULL], expires=EXPIRES, clock=Clock())
    assert leftovers(tmp_path) == []


async def test_an_api_failure_is_raised_unless_a_partial_file_is_wanted(tmp_path: Path) -> None:
    failing = {2: errors.Unavailable("HTTP 503")}
    with pytest.raises(errors.Unavailable):
        await fetch(Api(2500, fail=dict(failing)), tmp_path, [REDACTED])
    assert leftovers(tmp_path) == []
    result = await fetch(
        Api(2500, fail=dict(failing)), tmp_path, [REDACTED], keep_partial_on_error=True
    )
    assert result.records == 1000
    assert result.partial_text() == (
        "1,000 of 2,500 records; MyPreferences stopped answering (HTTP 503)"
    )
    result.discard()


async def test_a_failure_on_the_first_page_is_raised_even_when_partial_is_wanted(
    tmp_path: Path,
) -> None:
    with pytest.raises(errors.Unavailable):
        await fetch(
            Api(10, fail={1: errors.Unavailable()}),
            tmp_path,
            [REDACTED],
            keep_partial_on_error=True,
        )
    assert leftovers(tmp_path) == []


async def test_max_records_cuts_the_file_without_fetching_the_rest(tmp_path: Path) -> None:
    api = Api(2500)
    result = await fetch(api, tmp_path, [FULL], max_records=1500)
    assert (result.records, result.cut, api.requests) == (1500, True, 2)
    assert rows(result.files[FULL])[-1] == [
        "# cut at 1,500 of 2,500 records (EXCEPTIONS_MAX_RECORDS)"
    ]
    result.discard()


async def test_on_page_is_told_the_records_so_far(tmp_path: Path) -> None:
    seen: list[int] = []

    async def on_page(records: int) -> None:
        seen.append(records)

    result = await fetch(Api(2500), tmp_path, [NONE], on_page=on_page)
    assert seen == [1000, 2000, 2500]
    result.discard()


async def test_modes_are_needed(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await fetch(Api(1), tmp_path, [])
