"""Fetching one import's exception records into summaries and CSV files.

The one place that turns Retrieve exceptions into what people get: for each
``EXCEPTIONS_FILE`` mode asked for, a summary (``SummaryBuilder``) and, unless the
mode is ``none``, a file (``CsvArchiveWriter``). Pages stream through: memory does
not grow with the number of records, and the blocking work on each page (masking,
counting, spooling to disk) runs in a thread so the event loop keeps answering Slack.

Used by the watcher's archive (``archiver.py``), by ``/import-status exceptions``
and by ``import-status-bot exceptions``. Nothing here knows Slack.

When the records cannot all be fetched, what was fetched is kept and marked
partial (``FetchResult.stopped``, e.g. "the token expired"):

- the token expires mid-paging (a 401 once Expires has passed, give or take
  ``EXPIRY_SKEW``; no request is even sent after Expires);
- paging stops early for a reason ``ExceptionPager`` gives (offsets not honoured);
- with ``keep_partial_on_error``, MyPreferences fails after some pages.

Any other error is raised (a typed ``ApiError``) and every file made is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bot.archive.csvfile import GZIP_ABOVE_BYTES, ArchiveFile, CsvArchiveWriter
from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.domain.exceptions import (
    ExceptionsFile,
    ExceptionsReport,
    Masker,
    SummaryBuilder,
    describe_partial,
)
from bot.metrics import METRICS
from bot.mypreferences.client import DEFAULT_RETRY, RetryPolicy
from bot.mypreferences.errors import ApiError, TokenRejected
from bot.mypreferences.pace import Pace
from bot.mypreferences.paging import ExceptionPager, ExceptionsSource, OffsetMode, PagingPlan

log = logging.getLogger(__name__)

# A 401 this close to Expires means the token expired: clocks differ a little.
EXPIRY_SKEW = timedelta(minutes=2)
TOKEN_EXPIRED = "the token expired"


class _TokenExpired(Exception):
    """Expires has passed: no request is sent any more."""


@dataclass(frozen=True)
class ArchiveOptions:
    """What every fetch needs from the settings."""

    directory: Path
    max_records: int
    reason_fields: tuple[str, ...]
    personal_fields: tuple[str, ...]
    plan: PagingPlan
    #: gzip files larger than this (None: never; 0: always)
    gzip_above_bytes: int | None = GZIP_ABOVE_BYTES

    @classmethod
    def from_settings(cls, settings: Settings, retry: RetryPolicy | None = None) -> ArchiveOptions:
        """The options ``settings`` describe; ``retry`` is per page (default: the client's)."""
        plan = PagingPlan(
            page_size=settings.exceptions_page_size,
            offset_mode=OffsetMode(settings.exceptions_offset),
            max_records=settings.exceptions_max_records,
            retry=retry if retry is not None else DEFAULT_RETRY,
        )
        return cls(
            directory=Path(settings.exceptions_dir),
            max_records=settings.exceptions_max_records,
            reason_fields=settings.exceptions_reason_fields,
            personal_fields=settings.exceptions_personal_fields,
            plan=plan,
        )


@dataclass
class FetchResult:
    """What one fetch produced. Call ``discard()`` once the files are used (or moved)."""

    access_token: int
    records: int
    #: TotalResults as the API announced it, when it did
    expected: int | None
    pages: int
    #: why records may be missing (the file says "partial"), or None when complete
    stopped: str | None
    #: paging stopped at EXCEPTIONS_MAX_RECORDS while more existed
    cut: bool
    reports: dict[ExceptionsFile, ExceptionsReport]
    #: one file per mode that has one, and only when there were records
    files: dict[ExceptionsFile, ArchiveFile] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return self.stopped is not None

    def partial_text(self) -> str | None:
        """``1,500 of 2,500 records; the token expired``, or None when complete."""
        if self.stopped is None:
            return None
        return describe_partial(self.records, self.expected, self.stopped)

    def discard(self) -> None:
        """Remove every file of this fetch. Safe to call twice."""
        for archive in self.files.values():
            archive.discard()


async def fetch_exceptions(
    source: ExceptionsSource,
    access_token: int,
    modes: Iterable[ExceptionsFile],
    options: ArchiveOptions,
    pace: Pace,
    *,
    expires: datetime | None = None,
    keep_partial_on_error: bool = False,
    clock: Clock = utcnow,
    on_page: Callable[[int], Awaitable[None]] | None = None,
) -> FetchResult:
    """Page through an import's exceptions into one summary per mode and the files.

    ``expires`` is the token's Expires (paging stops there, keeping what it has).
    ``on_page`` is awaited after each page with the records so far (e.g. to renew a
    lease). Raises ``ApiError`` when nothing usable could be fetched (see the module).
    """
    wanted = list(dict.fromkeys(modes))
    if not wanted:
        raise ValueError("at least one EXCEPTIONS_FILE mode is needed")
    summaries = {
        mode: SummaryBuilder(Masker(mode, options.personal_fields), options.reason_fields)
        for mode in wanted
    }

    async def check_expiry() -> None:
        if expires is not None and clock() >= expires:
            raise _TokenExpired()

    with contextlib.ExitStack() as stack:
        writers = {
            mode: stack.enter_context(
                CsvArchiveWriter(
                    options.directory,
                    access_token,
                    Masker(mode, options.personal_fields),
                    max_records=options.max_records,
                    gzip_above_bytes=options.gzip_above_bytes,
                )
            )
            for mode in wanted
            if mode.has_file
        }
        pager = ExceptionPager(source, access_token, pace, options.plan, on_request=check_expiry)
        stopped: str | None = None
        try:
            async with pager:
                async for page in pager:
                    await asyncio.to_thread(_take, page.records, summaries, writers)
                    METRICS.exception_pages.inc()
                    METRICS.exception_records.inc(len(page.records))
                    if on_page is not None:
                        await on_page(pager.records)
        except _TokenExpired:
            stopped = TOKEN_EXPIRED
        except TokenRejected:
            if expires is None or clock() < expires - EXPIRY_SKEW:
                raise
            stopped = TOKEN_EXPIRED
        except ApiError as exc:
            if not keep_partial_on_error or pager.records == 0:
                raise
            stopped = f"MyPreferences stopped answering ({_short(exc)})"
        stopped = stopped or pager.stopped
        if stopped is not None:
            log.warning(
                "exceptions incomplete: %s",
                describe_partial(pager.records, pager.total_results, stopped),
                extra={"token": access_token},
            )
        files: dict[ExceptionsFile, ArchiveFile] = {}
        try:
            if pager.records:
                for mode, writer in writers.items():
                    files[mode] = await asyncio.to_thread(
                        writer.finish,
                        partial=stopped,
                        expected_total=pager.total_results,
                        cut=pager.cut,
                    )
        except BaseException:
            for archive in files.values():
                archive.discard()
            raise
        # Writers that were not finished (no records) remove their folders on exit.
        return FetchResult(
            access_token=access_token,
            records=pager.records,
            expected=pager.total_results,
            pages=pager.pages,
            stopped=stopped,
            cut=pager.cut,
            reports={mode: summary.report() for mode, summary in summaries.items()},
            files=files,
        )
    raise AssertionError("unreachable")  # pragma: no cover (mypy: ExitStack may swallow)


def _take(
    records: Sequence[Any],
    summaries: dict[ExceptionsFile, SummaryBuilder],
    writers: dict[ExceptionsFile, CsvArchiveWriter],
) -> None:
    """Count and spool one page of records (blocking: runs in a thread)."""
    for summary in summaries.values():
        for record in records:
            summary.add(record)
    for writer in writers.values():
        for record in records:
            writer.add(record)


def _short(error: ApiError) -> str:
    return error.detail or type(error).__name__
