"""Paging through Retrieve exceptions: offsets, the end, defences, pace and memory.

A fake source plays the API in memory (no sockets); the last tests run the real
client against httpx.MockTransport for the page body limit.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from bot.config import Secret, Settings
from bot.mypreferences import errors
from bot.mypreferences.client import NO_RETRY, MyPreferencesClient, RetryPolicy
from bot.mypreferences.pace import Pace
from bot.mypreferences.paging import ExceptionPager, OffsetMode, PagingPlan
from bot.mypreferences.parsing import ExceptionsPage


@dataclass
class FakeApi:
    """Retrieve exceptions over ``total`` records, with the quirks a real API might have."""

    total: int
    mode: OffsetMode = OffsetMode.RECORD
    ignore_offset: bool = False
    has_more_always: bool = False
    no_has_more: bool = False
    no_total: bool = False
    max_limit: int | None = None  # the server sends at most this many, whatever is asked
    fail_on_request: int | None = None  # raise on this request (1-based)
    duplicates_at_boundary: bool = False
    requests: list[tuple[int, int]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def record(self, n: int) -> dict[str, Any]:
        if self.duplicates_at_boundary:
            return {"Reason": "Duplicate record"}  # every record alike
        return {"RecordNumber": n, "Reason": f"reason {n % 3}"}

    async def get_exceptions(
        self,
        access_token: int,
        *,
        limit: int = 1000,
        offset: int = 1,
        retry: RetryPolicy = NO_RETRY,
        max_bytes: int = 0,
    ) -> ExceptionsPage:
        self.requests.append((limit, offset))
        if self.fail_on_request == len(self.requests):
            raise errors.Unavailable("HTTP 503")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        size = min(limit, self.max_limit or limit)
        if self.ignore_offset:
            offset = 1
        start = offset if self.mode is OffsetMode.RECORD else (offset - 1) * size + 1
        numbers = list(range(start, min(start + size, self.total + 1)))
        has_more = True if self.has_more_always else numbers[-1] < self.total if numbers else False
        return ExceptionsPage(
            count=len(numbers),
            has_more=None if self.no_has_more else has_more,
            limit=limit,
            offset=offset,
            total_results=None if self.no_total else self.total,
            records=[self.record(n) for n in numbers],
        )


FAST = Pace(1e9)


async def collect(api: FakeApi, **plan: Any) -> tuple[ExceptionPager, list[dict[str, Any]]]:
    pager = ExceptionPager(api, 42, FAST, PagingPlan(**plan))
    records: list[dict[str, Any]] = []
    async with pager:
        async for page in pager:
            records.extend(page.records)
    return pager, records


def numbers(records: list[dict[str, Any]]) -> list[int]:
    return [r["RecordNumber"] for r in records]


@pytest.mark.parametrize("mode", list(OffsetMode))
async def test_every_record_arrives_once_in_either_offset_mode(mode: OffsetMode) -> None:
    api = FakeApi(2500, mode=mode)
    pager, records = await collect(api, page_size=1000, offset_mode=mode)
    assert numbers(records) == list(range(1, 2501))
    assert (pager.pages, pager.records, pager.total_results) == (3, 2500, 2500)
    assert pager.stopped is None and not pager.cut
    expected = [1, 1001, 2001] if mode is OffsetMode.RECORD else [1, 2, 3]
    assert [offset for _, offset in api.requests] == expected


async def test_a_server_that_sends_less_than_asked_loses_nothing_in_record_mode() -> None:
    api = FakeApi(2500, max_limit=400)
    pager, records = await collect(api, page_size=1000)
    assert numbers(records) == list(range(1, 2501))
    assert pager.pages == 7


async def test_an_import_without_records_is_one_request() -> None:
    api = FakeApi(0)
    pager, records = await collect(api)
    assert records == [] and pager.pages == 1 and pager.stopped is None


async def test_an_api_that_ignores_offset_is_not_read_twice() -> None:
    api = FakeApi(2500, ignore_offset=True)
    pager, records = await collect(api, page_size=1000)
    assert numbers(records) == list(range(1, 1001))
    assert pager.stopped is not None
    assert "already sent" in pager.stopped and "MYPREFERENCES_EXCEPTIONS_OFFSET" in pager.stopped
    assert len(api.requests) == 2


async def test_page_numbers_sent_to_an_api_that_counts_records_stop_at_the_overlap() -> None:
    # The operator set "page", the API reads offset 2 as "from record 2".
    api = FakeApi(2500, mode=OffsetMode.RECORD)
    pager, records = await collect(api, page_size=1000, offset_mode=OffsetMode.PAGE)
    assert numbers(records) == list(range(1, 1001))
    assert pager.stopped is not None and "already sent" in pager.stopped


async def test_record_offsets_sent_to_an_api_that_counts_pages_stop_with_a_hint() -> None:
    api = FakeApi(2500, mode=OffsetMode.PAGE)
    pager, records = await collect(api, page_size=1000, offset_mode=OffsetMode.RECORD)
    assert numbers(records) == list(range(1, 1001))
    assert pager.stopped == (
        "MyPreferences sent an empty page at offset 1,001 (check MYPREFERENCES_EXCEPTIONS_OFFSET)"
    )


async def test_identical_records_at_a_page_boundary_are_not_mistaken_for_a_repeat() -> None:
    # Three pages of records that are all alike: the offsets move, so this is not a repeat...
    api = FakeApi(7, duplicates_at_boundary=True)
    pager, records = await collect(api, page_size=3)
    # ...but a page made only of records the previous one held in order cannot be told
    # from a repeated page: paging stops and says why rather than loop.
    assert len(records) == 3 and pager.stopped is not None


async def test_one_identical_record_across_a_page_boundary_is_a_duplicate_not_a_repeat() -> None:
    class Boundary(FakeApi):
        def record(self, n: int) -> dict[str, Any]:
            # Records 3 and 4 are the same profile failing twice; 3 ends page 1.
            return {"Reason": "Duplicate"} if n in (3, 4) else super().record(n)

    pager, records = await collect(Boundary(9), page_size=3)
    assert len(records) == 9 and pager.stopped is None


async def test_has_more_that_never_ends_stops_at_total_results() -> None:
    api = FakeApi(2500, has_more_always=True)
    pager, records = await collect(api, page_size=1000)
    assert len(records) == 2500 and pager.stopped is None
    assert len(api.requests) == 3


async def test_has_more_forever_without_total_results_ends_on_the_empty_page() -> None:
    api = FakeApi(2500, has_more_always=True, no_total=True)
    pager, records = await collect(api, page_size=1000)
    assert len(records) == 2500 and pager.stopped is None
    assert len(api.requests) == 4


async def test_without_has_more_a_short_page_is_the_last() -> None:
    api = FakeApi(2500, no_has_more=True)
    _, records = await collect(api, page_size=1000)
    assert len(records) == 2500 and len(api.requests) == 3


@pytest.mark.parametrize(("max_records", "cut"), [(1500, True), (2500, False), (999, True)])
async def test_max_records_stops_paging_and_says_whether_more_existed(
    max_records: int, cut: bool
) -> None:
    api = FakeApi(2500)
    pager, records = await collect(api, page_size=1000, max_records=max_records)
    assert len(records) == max_records
    assert pager.cut is cut
    assert len(api.requests) == -(-max_records // 1000)


async def test_an_error_mid_paging_is_raised_after_the_pages_before_it() -> None:
    api = FakeApi(2500, fail_on_request=2)
    pager = ExceptionPager(api, 42, FAST, PagingPlan(page_size=1000))
    seen = 0
    with pytest.raises(errors.Unavailable):
        async with pager:
            async for page in pager:
                seen += len(page.records)
    assert seen == 1000 and pager.records == 1000


async def test_lookahead_keeps_at_most_one_request_ahead() -> None:
    api = FakeApi(5000)
    pager = ExceptionPager(api, 42, FAST, PagingPlan(page_size=1000))
    async with pager:
        async for _ in pager:
            await asyncio.sleep(0.001)  # the consumer is slower than the API
    assert api.most_in_flight == 1
    assert len(api.requests) == 5


async def test_stopping_early_cancels_the_request_in_flight() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    class Slow(FakeApi):
        async def get_exceptions(self, *args: Any, **kwargs: Any) -> ExceptionsPage:
            if self.requests:
                started.set()
                await release.wait()
            return await super().get_exceptions(*args, **kwargs)

    api = Slow(5000)
    pager = ExceptionPager(api, 42, FAST, PagingPlan(page_size=1000))
    async with pager:
        async for _ in pager:
            await started.wait()
            break
    assert pager._pending is None  # nothing left running


async def test_the_pace_spaces_requests() -> None:
    now = [0.0]
    starts: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    pace = Pace(2.0, clock=lambda: now[0], sleep=sleep)

    class Timed(FakeApi):
        async def get_exceptions(self, *args: Any, **kwargs: Any) -> ExceptionsPage:
            starts.append(now[0])
            return await super().get_exceptions(*args, **kwargs)

    pager = ExceptionPager(Timed(5000), 42, pace, PagingPlan(page_size=1000, lookahead=False))
    async with pager:
        async for _ in pager:
            pass
    assert starts == [0.0, 0.5, 1.0, 1.5, 2.0]


async def test_one_pace_is_shared_first_come_first_served() -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    pace = Pace(4.0, clock=lambda: 0.0, sleep=sleep)
    # Five callers at the same moment: the first goes at once, the others in 0.25 s steps.
    await asyncio.gather(*(pace.wait() for _ in range(5)))
    assert waits == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError):
        Pace(0)


def test_a_bad_plan_is_refused() -> None:
    with pytest.raises(ValueError):
        PagingPlan(page_size=0)
    with pytest.raises(ValueError):
        PagingPlan(max_records=0)


async def test_a_pager_pages_once() -> None:
    pager = ExceptionPager(FakeApi(1), 42, FAST)
    async with pager:
        async for _ in pager:
            pass
        with pytest.raises(RuntimeError):
            pager.__aiter__()


# --- the real client: a page may be larger than a status, within a limit -------------


def _client(body: bytes) -> MyPreferencesClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"Content-Type": "application/json"})

    settings = Settings(
        api_url="https://mp.test/Profiles/", client_id="ACME", authorization=Secret("x")
    )
    return MyPreferencesClient(settings, transport=httpx.MockTransport(handler))


async def test_an_exceptions_page_of_several_mib_is_read() -> None:
    records = [{"RecordNumber": n, "Note": "x" * 3000} for n in range(1000)]  # ~3 MiB
    body = json.dumps({"Count": 1000, "HasMore": False, "Records": records}).encode()
    assert len(body) > 2 * 1024 * 1024
    page = await _client(body).get_exceptions(42, retry=NO_RETRY)
    assert len(page.records) == 1000


async def test_an_exceptions_page_above_the_limit_is_refused_without_keeping_it() -> None:
    body = json.dumps({"Records": [{"Note": "x" * (9 * 1024 * 1024)}]}).encode()
    with pytest.raises(errors.MalformedResponse) as caught:
        await _client(body).get_exceptions(42, retry=NO_RETRY)
    assert "larger than 8 MiB" in str(caught.value)
