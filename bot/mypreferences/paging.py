"""Paging through Retrieve exceptions: an async iterator of pages, at a polite pace.

The public pages only say that ``limit`` defaults to 1000 and ``offset`` to 1, so
how ``offset`` counts is a setting (``MYPREFERENCES_EXCEPTIONS_OFFSET``):

- ``record``: the 1-based index of the first record; the next offset is this
  offset plus the records this page held (so a server that sends fewer records
  than asked for loses none);
- ``page``: the 1-based page number; the next offset is this one plus 1.

Memory stays flat whatever the number of records: one page is handled while at
most the next one is on its way (``lookahead``: the next request starts as soon
as a page has arrived, so the time spent on a page overlaps the API's latency).

Paging stops, with the reason in ``stopped`` when records may be missing:

- when HasMore is false (or, without HasMore, a page is shorter than asked for);
- on an empty page (MyPreferences announced more: the offset setting may be wrong);
- when a page starts with records the previous page already held (an API that
  ignores ``offset``, or reads it the other way): never looping over one page;
- when TotalResults records have arrived, whatever HasMore says (an API that
  says HasMore forever stops there);
- at ``max_records`` (``cut`` is then true when more were announced).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

from bot.mypreferences.client import DEFAULT_RETRY, MAX_EXCEPTIONS_PAGE_BYTES, RetryPolicy
from bot.mypreferences.pace import Pace
from bot.mypreferences.parsing import ExceptionsPage

# Consecutive records that must repeat, in order, before a page counts as a repeat:
# two real records can be identical (a duplicate is a common reason to fail).
OVERLAP_RUN = 3
OFFSET_HINT = "check MYPREFERENCES_EXCEPTIONS_OFFSET"


class OffsetMode(StrEnum):
    RECORD = "record"
    PAGE = "page"


class ExceptionsSource(Protocol):
    """Where pages come from: the MyPreferences client, or a fake in tests."""

    async def get_exceptions(
        self,
        access_token: int,
        *,
        limit: int = ...,
        offset: int = ...,
        retry: RetryPolicy = ...,
        max_bytes: int = ...,
    ) -> ExceptionsPage: ...


@dataclass(frozen=True)
class PagingPlan:
    """How to page: the page size, how offsets count, and where to stop at the latest."""

    page_size: int = 1000
    offset_mode: OffsetMode = OffsetMode.RECORD
    max_records: int | None = None
    retry: RetryPolicy = DEFAULT_RETRY
    lookahead: bool = True

    def __post_init__(self) -> None:
        if self.page_size < 1:
            raise ValueError("page_size must be at least 1")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError("max_records must be at least 1")


class ExceptionPager:
    """The pages of one import's exceptions, as ``async for page in pager``.

    Use it as an async context manager so a request still in flight is cancelled
    when the caller stops early. API errors are raised as they come (typed
    ``ApiError``s from the client); what was yielded before stays valid.
    """

    def __init__(
        self,
        source: ExceptionsSource,
        access_token: int,
        pace: Pace,
        plan: PagingPlan = PagingPlan(),
        *,
        on_request: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.source = source
        self.access_token = access_token
        self.pace = pace
        self.plan = plan
        #: called before each request (after the pace): e.g. "stop, the token has expired"
        self.on_request = on_request
        self.pages = 0  # pages received (empty and repeated ones included)
        self.records = 0  # records yielded
        self.total_results: int | None = None  # TotalResults of the first page that had it
        self.stopped: str | None = None  # why paging ended early, when records may be missing
        self.cut = False  # stopped at max_records while more were announced
        self._pending: asyncio.Task[ExceptionsPage] | None = None
        self._iterated = False

    async def __aenter__(self) -> ExceptionPager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the request in flight, if any."""
        task, self._pending = self._pending, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def __aiter__(self) -> AsyncIterator[ExceptionsPage]:
        if self._iterated:
            raise RuntimeError("an ExceptionPager pages once")
        self._iterated = True
        return self._pages()

    def _start(self, offset: int) -> asyncio.Task[ExceptionsPage]:
        self._pending = asyncio.ensure_future(self._fetch(offset))
        return self._pending

    async def _fetch(self, offset: int) -> ExceptionsPage:
        await self.pace.wait()
        if self.on_request is not None:
            await self.on_request()
        return await self.source.get_exceptions(
            self.access_token,
            limit=self.plan.page_size,
            offset=offset,
            retry=self.plan.retry,
            max_bytes=MAX_EXCEPTIONS_PAGE_BYTES,
        )

    async def _pages(self) -> AsyncIterator[ExceptionsPage]:
        plan = self.plan
        offset = 1
        previous: list[dict[str, Any]] = []
        fetch = self._start(offset)
        while True:
            page = await fetch
            self._pending = None
            self.pages += 1
            if self.total_results is None:
                self.total_results = page.total_results
            records = page.records
            if not records:
                if self.total_results is not None and self.records < self.total_results:
                    self.stopped = (
                        f"MyPreferences sent an empty page at offset {offset:,} ({OFFSET_HINT})"
                    )
                return
            if _repeats(previous, records):
                self.stopped = f"MyPreferences sent records it had already sent ({OFFSET_HINT})"
                return
            more = self._more(page)
            room = None if plan.max_records is None else plan.max_records - self.records
            if room is not None and len(records) >= room:
                self.cut = len(records) > room or more
                more = False
                if len(records) > room:
                    page = replace(page, records=records[:room])
            self.records += len(page.records)
            if self.total_results is not None and self.records >= self.total_results:
                more = False  # everything announced has arrived, whatever HasMore says
            next_offset = (
                offset + len(records) if plan.offset_mode is OffsetMode.RECORD else (offset + 1)
            )
            if more and plan.lookahead:
                fetch = self._start(next_offset)
            yield page
            if not more:
                return
            if not plan.lookahead:
                fetch = self._start(next_offset)
            previous = records
            offset = next_offset

    def _more(self, page: ExceptionsPage) -> bool:
        if page.has_more is not None:
            return page.has_more
        # No HasMore: a full page may have a successor; an empty one ends it (see above).
        return len(page.records) >= self.plan.page_size


def _repeats(previous: list[dict[str, Any]], records: list[dict[str, Any]]) -> bool:
    """True when ``records`` starts with a run of ``previous`` (an offset not honoured).

    A run of ``OVERLAP_RUN`` records (or all of ``records`` when shorter) must match
    in order: one identical record at a page boundary is a duplicate, not a repeat.
    Dict equality stops at the first differing value, so this costs little.
    """
    if not previous:
        return False
    run = min(OVERLAP_RUN, len(records))
    head = records[0]
    for start, candidate in enumerate(previous):
        if (
            candidate == head
            and start + run <= len(previous)
            and all(previous[start + i] == records[i] for i in range(1, run))
        ):
            return True
    return False
