"""The poller, with a fake store, a fake API and a virtual clock: no processes, no sleeps.

Every test runs on ``VirtualTimeLoop``: waits and timeouts take no real time,
and each step happens at the same virtual moment on every run. The fake store
keeps the real store's lease rules (due, unleased or leased by the asker or
expired, not excluded), so two pollers sharing it behave as two replicas.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import Settings
from bot.domain.rules import Memory
from bot.domain.status import ImportStatus, Status
from bot.metrics import METRICS
from bot.mypreferences.client import DEFAULT_RETRY, RetryPolicy
from bot.mypreferences.errors import ApiError, RateLimited, Unavailable
from bot.store.records import DueImport, PollResult
from bot.watch.poller import Poller, TickReport
from tests.watch.virtual_time import inline_to_thread, run_virtual

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
INTERVAL = 1.0
HTTP_TIMEOUT = 3.0
SETTINGS = Settings(
    client_id="ACME",
    poll_interval_seconds=INTERVAL,
    idle_poll_interval_seconds=3 * INTERVAL,
    max_backoff_seconds=60.0,
    http_timeout_seconds=HTTP_TIMEOUT,
    lease_seconds=60.0,  # the default: the lease must end on schedule all the same
    poll_concurrency=4,
    tick_seconds=0.25,
)


@pytest.fixture(autouse=True)
def _no_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fakes are in memory: a thread would only let the virtual clock run on.
    monkeypatch.setattr(asyncio, "to_thread", inline_to_thread)


def now() -> datetime:
    """The virtual loop's clock as the poller sees it."""
    return T0 + timedelta(seconds=asyncio.get_running_loop().time())


def seconds(when: datetime) -> float:
    return round((when - T0).total_seconds(), 6)


def status(token: int, value: Status = Status.PROCESSING, processed: int = 0) -> ImportStatus:
    return ImportStatus(
        access_token=token,
        status=value,
        name=f"Import {token}",
        validation_successful=1000,
        processed=processed,
        expires=T0 + timedelta(days=1),
    )


# --------------------------------------------------------------------------- fakes


@dataclass
class _Row:
    id: int
    access_token: int
    memory: Memory
    next_poll_at: datetime
    lease_owner: str | None = None
    lease_until: datetime | None = None


@dataclass
class Claim:
    owner: str
    at: float
    ids: list[int]
    lease_seconds: float
    exclude: frozenset[int]


class FakePolls:
    """The ``imports`` table in memory, with the lease rules of ``store.polls.Polls``."""

    def __init__(self) -> None:
        self.rows: dict[int, _Row] = {}
        self.claims: list[Claim] = []
        self.saves: list[list[int]] = []  # the import ids of each save_poll_results call
        self.abandoned: list[int] = []
        self.fail_with: Exception | None = None
        self.on_claim: Callable[[Claim], None] | None = None

    def add(self, import_id: int, memory: Memory, due: datetime = T0) -> None:
        token = memory.status.access_token if memory.status else import_id
        self.rows[import_id] = _Row(import_id, token, memory, due)

    def claim_due_imports(
        self,
        owner: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        expected_interval: float | None = None,
        *,
        exclude: Collection[int] = (),
    ) -> list[DueImport]:
        if self.fail_with is not None:
            raise self.fail_with
        expected = now + timedelta(
            seconds=lease_seconds if expected_interval is None else expected_interval
        )
        due = sorted(
            (
                r
                for r in self.rows.values()
                if r.next_poll_at <= now
                and (r.lease_until is None or r.lease_until < now or r.lease_owner == owner)
                and r.id not in exclude
            ),
            key=lambda r: r.next_poll_at,
        )[:limit]
        for row in due:
            row.lease_owner = owner
            row.lease_until = now + timedelta(seconds=lease_seconds)
            row.next_poll_at = expected
        claim = Claim(owner, seconds(now), [r.id for r in due], lease_seconds, frozenset(exclude))
        self.claims.append(claim)
        if self.on_claim is not None:
            self.on_claim(claim)
        return [DueImport(r.id, "ACME", r.access_token, r.memory, expected) for r in due]

    def save_poll_results(self, owner: str, results: Iterable[PollResult]) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        batch = list(results)
        self.saves.append([r.import_id for r in batch])
        created = 0
        for result in batch:
            row = self.rows[result.import_id]
            if not result.needs_saving() or row.lease_owner != owner:
                continue
            row.memory = result.decision.memory
            row.next_poll_at = result.next_poll_at
            row.lease_owner = row.lease_until = None
            created += len(result.decision.events)
        return created

    def abandon_polls(self, owner: str, import_ids: list[int], now: datetime) -> None:
        for import_id in import_ids:
            row = self.rows[import_id]
            if row.lease_owner == owner:
                self.abandoned.append(import_id)
                row.next_poll_at, row.lease_owner, row.lease_until = now, None, None

    def release_leases(self, owner: str) -> None:
        for row in self.rows.values():
            if row.lease_owner == owner:
                row.lease_owner = row.lease_until = None

    def claimed_by(self, owner: str) -> list[tuple[float, int]]:
        return [(c.at, i) for c in self.claims if c.owner == owner for i in c.ids]


Answer = Callable[[int], Awaitable[ImportStatus]]


@dataclass
class FakeApi:
    """Answers from a script per access token; records when each call started and ended."""

    answers: dict[int, Answer] = field(default_factory=dict)
    started: list[tuple[float, int]] = field(default_factory=list)
    ended: list[tuple[float, int]] = field(default_factory=list)
    retries: list[RetryPolicy] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0

    async def get_status(
        self, access_token: int, *, retry: RetryPolicy = DEFAULT_RETRY
    ) -> ImportStatus:
        loop = asyncio.get_running_loop()
        self.started.append((round(loop.time(), 6), access_token))
        self.retries.append(retry)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            answer = self.answers.get(access_token)
            return await answer(access_token) if answer else status(access_token)
        finally:
            self.running -= 1
            self.ended.append((round(loop.time(), 6), access_token))

    def calls(self, token: int) -> list[float]:
        return [at for at, t in self.started if t == token]


def after(delay: float, value: ImportStatus | None = None) -> Answer:
    """An answer that takes ``delay`` seconds (a slow or trickling API)."""

    async def answer(token: int) -> ImportStatus:
        await asyncio.sleep(delay)
        return value or status(token)

    return answer


def raising(error: ApiError) -> Answer:
    async def answer(token: int) -> ImportStatus:
        raise error

    return answer


def hanging() -> Answer:
    """An API that accepts the request and never answers."""

    async def answer(token: int) -> ImportStatus:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return answer


class FakeDelivery:
    """Delivery runs on its own loop: the poller only wakes it."""

    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


def poller(
    polls: FakePolls, api: FakeApi, owner: str = "A", settings: Settings = SETTINGS
) -> Poller:
    return Poller(settings, polls, api, FakeDelivery(), owner, clock=now, jitter=lambda: 1.0)


def watched(polls: FakePolls, *tokens: int, value: Status = Status.PROCESSING) -> None:
    for token in tokens:
        polls.add(token, Memory(status(token, value)))


async def tick_every(p: Poller, period: float, until: float) -> list[TickReport]:
    """Run ticks on a schedule, as APScheduler does (no overlap), until virtual ``until``."""
    loop = asyncio.get_running_loop()
    reports = []
    while loop.time() < until:
        begun = loop.time()
        reports.append(await p.tick())
        await asyncio.sleep(max(0.0, begun + period - loop.time()))
    return reports


def settle(p: Poller) -> None:
    """Cancel whatever the poller still has in flight (the test's loop is closing)."""
    for task in list(p._in_flight):
        task.cancel()


# --------------------------------------------------------------------------- leases


def test_the_lease_ends_one_http_timeout_after_the_next_due_time() -> None:
    polls, api = FakePolls(), FakeApi()
    watched(polls, 1)

    async def main() -> None:
        await poller(polls, api).tick()

    run_virtual(main)

    claim = polls.claims[0]
    assert claim.ids == [1]
    # LEASE_SECONDS is 60, but the import is due again in INTERVAL: the lease ends one
    # request's time (HTTP_TIMEOUT) after that, not 60 s later.
    assert claim.lease_seconds == INTERVAL + HTTP_TIMEOUT


def test_a_dead_replicas_import_is_polled_again_one_http_timeout_after_it_is_due() -> None:
    polls = FakePolls()
    watched(polls, 7)
    dead_api, live_api = FakeApi({7: hanging()}), FakeApi()

    async def main() -> None:
        dead, live = poller(polls, dead_api, "dead"), poller(polls, live_api, "live")
        # Leases import 7, starts its poll, and then the replica dies.
        await asyncio.wait_for(dead.tick(), timeout=30)
        dead.stopping = True
        await tick_every(live, SETTINGS.tick_seconds, until=10.0)
        settle(dead)
        settle(live)

    run_virtual(main)

    assert polls.claimed_by("dead") == [(0.0, 7)]
    first_takeover = polls.claimed_by("live")[0]
    # Due again at INTERVAL; the lease lets the survivor take it HTTP_TIMEOUT later
    # (plus at most one tick): 4 s, not LEASE_SECONDS (60 s).
    assert first_takeover[1] == 7
    assert INTERVAL + HTTP_TIMEOUT < first_takeover[0] <= INTERVAL + HTTP_TIMEOUT + 0.25
    # From then on the survivor polls it at its normal interval.
    takeovers = [at for at, _ in polls.claimed_by("live")]
    gaps = [b - a for a, b in itertools.pairwise(takeovers)]
    assert gaps and all(INTERVAL - 1e-6 <= gap <= INTERVAL + 0.25 for gap in gaps), gaps


def test_a_replica_keeps_polling_its_own_imports_every_interval() -> None:
    polls, api = FakePolls(), FakeApi()
    watched(polls, 1, 2)

    async def main() -> None:
        await tick_every(poller(polls, api), SETTINGS.tick_seconds, until=5.0)

    run_virtual(main)

    for token in (1, 2):
        calls = api.calls(token)
        assert len(calls) == 5, calls  # t = 0, 1, 2, 3, 4
        assert all(b - a == pytest.approx(INTERVAL) for a, b in itertools.pairwise(calls))


def test_a_poll_that_cannot_start_before_the_import_is_due_again_is_given_back_unpolled() -> None:
    polls = FakePolls()
    watched(polls, 1, 2, 3)
    # One request at a time, each taking 0.8 s: import 3's turn (1.6 s) comes after
    # it is due again (1 s), when its answer could outlive the lease.
    api = FakeApi({t: after(0.8) for t in (1, 2, 3)})
    settings = replace(SETTINGS, poll_concurrency=1)

    async def main() -> list[TickReport]:
        p = poller(polls, api, settings=settings)
        reports = await tick_every(p, SETTINGS.tick_seconds, until=1.8)
        settle(p)
        return reports

    reports = run_virtual(main)

    assert api.started[:3] == [(0.0, 1), (0.8, 2), (1.6, 3)]
    assert polls.abandoned == [3]
    assert sum(r.given_back for r in reports) == 1
    # Polled means asked and saved: the given-back import is not counted.
    assert sum(r.polled for r in reports) == sum(len(ids) for ids in polls.saves)
    # Its first lease was given back untouched; it was polled under a fresh one.
    assert [c.at for c in polls.claims if 3 in c.ids] == [0.0, 1.6]


# --------------------------------------------------------------------------- batching


def test_finished_polls_are_saved_in_batches_and_requests_stay_within_the_concurrency() -> None:
    polls = FakePolls()
    tokens = list(range(1, 21))
    watched(polls, *tokens, value=Status.QUEUED)
    # Every import moves (Queued -> Processing), so every poll must be saved.
    api = FakeApi({t: after(0.05, status(t, Status.PROCESSING)) for t in tokens})

    async def main() -> TickReport:
        return await poller(polls, api).tick()

    report = run_virtual(main)

    assert report.polled == 20 and report.notifications == 20
    assert sorted(i for ids in polls.saves for i in ids) == tokens
    assert len(polls.saves) < 20, "each poll was saved on its own"
    assert api.most_at_once == SETTINGS.poll_concurrency
    assert all(
        row.memory.status and row.memory.status.status is Status.PROCESSING
        for row in polls.rows.values()
    )


def test_a_slow_import_does_not_hold_back_the_others_results() -> None:
    polls = FakePolls()
    watched(polls, 1, 2, 3, value=Status.QUEUED)
    api = FakeApi(
        {
            1: after(2.5, status(1, Status.PROCESSING)),
            2: after(0.01, status(2, Status.PROCESSING)),
            3: after(0.01, status(3, Status.PROCESSING)),
        }
    )
    saved_at: dict[int, float] = {}
    real_save = polls.save_poll_results

    def save(owner: str, results: Iterable[PollResult]) -> int:
        batch = list(results)
        for r in batch:
            saved_at.setdefault(r.import_id, asyncio.get_running_loop().time())
        return real_save(owner, batch)

    polls.save_poll_results = save  # type: ignore[method-assign]

    async def main() -> list[TickReport]:
        return await tick_every(poller(polls, api), SETTINGS.tick_seconds, until=3.0)

    reports = run_virtual(main)

    assert saved_at[2] <= 0.1 and saved_at[3] <= 0.1
    # The first tick ended without waiting for the slow one; a later tick saved it.
    assert reports[0].seconds < 1.0 and reports[0].polled == 2
    assert 2.5 <= saved_at[1] <= 2.5 + SETTINGS.tick_seconds + 0.1
    assert len(api.calls(1)) == 1, "the slow import was asked twice"


def test_a_tick_with_every_slot_taken_waits_for_them_instead_of_ending() -> None:
    # Nothing finishes for a whole second while all 100 leased slots are busy and
    # more imports are due: the tick must not take that for "only stragglers are
    # left" and end after 0.5 s, leaving the rest for the next tick.
    settings = replace(SETTINGS, poll_interval_seconds=60.0, idle_poll_interval_seconds=180.0)
    polls = FakePolls()
    tokens = list(range(1, 201))
    watched(polls, *tokens)
    api = FakeApi({t: after(1.0) for t in tokens})
    p_capacity = 100

    async def main() -> TickReport:
        p = poller(polls, api, settings=settings)
        assert p.capacity == p_capacity
        report = await p.tick()
        settle(p)
        return report

    report = run_virtual(main)

    # Every import was started in this one tick, and only the last stragglers (those
    # started once nothing was left to lease) finish after it.
    assert report.started == len(tokens) and report.given_back == 0
    assert report.polled >= len(tokens) - p_capacity
    assert all(len(api.calls(t)) <= 1 for t in tokens)


# --------------------------------------------------------------------------- backoff


def test_failures_back_off_exponentially_from_the_interval() -> None:
    polls = FakePolls()
    watched(polls, 1)
    api = FakeApi({1: raising(Unavailable("HTTP 503"))})

    async def main() -> None:
        await tick_every(poller(polls, api), SETTINGS.tick_seconds, until=16.0)

    run_virtual(main)

    calls = api.calls(1)
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(calls)]
    # jitter 1.0: the whole backoff, 1, 2, 4, 8 s (each rounded up to the next tick).
    assert gaps[:4] == pytest.approx([1.0, 2.0, 4.0, 8.0], abs=0.26), gaps
    assert polls.rows[1].memory.failures == len(calls)


def test_retry_after_is_honoured() -> None:
    polls = FakePolls()
    watched(polls, 1)
    api = FakeApi({1: raising(RateLimited("HTTP 429", retry_after=30.0))})

    async def main() -> None:
        await tick_every(poller(polls, api), SETTINGS.tick_seconds, until=40.0)

    run_virtual(main)

    calls = api.calls(1)
    assert calls[0] == 0.0
    assert 30.0 <= calls[1] <= 30.0 + SETTINGS.tick_seconds, calls
    assert seconds(polls.rows[1].next_poll_at) >= calls[-1] + 30.0


# --------------------------------------------------------------------------- the tick


def test_a_trickling_answer_is_cut_off_at_the_http_timeout() -> None:
    polls = FakePolls()
    watched(polls, 1)
    api = FakeApi({1: after(30.0)})  # bytes keep coming, slowly: no read timeout fires

    async def main() -> None:
        await tick_every(poller(polls, api), SETTINGS.tick_seconds, until=4.0)

    run_virtual(main)

    assert api.ended and api.ended[0] == (HTTP_TIMEOUT, 1)
    assert polls.rows[1].memory.failures == 1
    # Saved within the lease (due at INTERVAL, lease until INTERVAL + HTTP_TIMEOUT).
    assert polls.rows[1].lease_owner is None
    # The client is asked for one attempt bounded by the same timeout.
    assert api.retries[0].attempts == 1 and api.retries[0].budget_seconds == HTTP_TIMEOUT


def test_a_hanging_api_neither_holds_the_tick_open_nor_counts_as_polled() -> None:
    polls = FakePolls()
    watched(polls, 1, 2)
    api = FakeApi({1: hanging()})

    async def main() -> list[TickReport]:
        p = poller(polls, api)
        # The tick must end on its own; 30 virtual seconds is a generous bound.
        first = await asyncio.wait_for(p.tick(), timeout=30)
        await asyncio.sleep(1.0 - asyncio.get_running_loop().time())
        second = await asyncio.wait_for(p.tick(), timeout=30)
        settle(p)
        return [first, second]

    first, second = run_virtual(main)

    assert first.seconds < INTERVAL, "the tick waited for the hanging poll"
    assert (first.started, first.polled) == (2, 1)  # import 1 is in flight, not polled
    # Due again at 1 s while still in flight: not leased again, not started twice.
    assert second.started == 1 and len(api.calls(1)) == 1
    assert all(1 not in c.ids for c in polls.claims[1:])
    assert all(1 in c.exclude for c in polls.claims[1:])


def test_an_answer_landing_while_the_tick_claims_does_not_crash_the_tick(
    caplog: pytest.LogCaptureFixture,
) -> None:
    polls = FakePolls()
    watched(polls, 1)
    answered = asyncio.Event()

    async def trickle(token: int) -> ImportStatus:
        await answered.wait()
        return status(token)

    api = FakeApi({1: trickle})

    def on_claim(claim: Claim) -> None:
        # The slow answer arrives exactly while the poller is asking for more work.
        if len(polls.claims) >= 2 and seconds(now()) >= INTERVAL:
            answered.set()

    polls.on_claim = on_claim

    async def main() -> list[TickReport]:
        p = poller(polls, api)
        first = await asyncio.wait_for(p.tick(), timeout=30)
        # Import 1 is due again while its answer is still trickling in.
        await asyncio.sleep(max(0.0, INTERVAL - asyncio.get_running_loop().time()))
        second = await asyncio.wait_for(p.tick(), timeout=30)
        return [first, second]

    with caplog.at_level(logging.ERROR):
        reports = run_virtual(main)

    assert "watcher tick failed" not in caplog.text
    assert not any(r.failed for r in reports)
    assert sum(r.polled for r in reports) == 1 and len(api.calls(1)) == 1


def test_a_failing_database_fails_the_tick_and_the_next_success_clears_it() -> None:
    polls, api = FakePolls(), FakeApi()
    watched(polls, 1)
    failed_before = (
        METRICS.registry.get_sample_value("import_status_ticks_total", {"outcome": "failed"}) or 0.0
    )

    async def main() -> tuple[Poller, list[TickReport], datetime | None]:
        p = poller(polls, api)
        reports = [await p.tick()]
        healthy_at = p.last_tick_at
        polls.fail_with = RuntimeError("attempt to write a readonly database")
        await asyncio.sleep(0.25)
        reports.append(await p.tick())
        await asyncio.sleep(0.25)
        reports.append(await p.tick())
        assert p.failed_ticks_in_a_row == 2 and p.last_tick_at == healthy_at
        assert p.last_failure == "RuntimeError"
        polls.fail_with = None
        await asyncio.sleep(0.25)
        reports.append(await p.tick())
        return p, reports, healthy_at

    p, reports, healthy_at = run_virtual(main)

    assert [r.failed for r in reports] == [False, True, True, False]
    assert p.failed_ticks_in_a_row == 0
    assert p.last_tick_at is not None and healthy_at is not None and p.last_tick_at > healthy_at
    failed_after = METRICS.registry.get_sample_value(
        "import_status_ticks_total", {"outcome": "failed"}
    )
    assert failed_after == failed_before + 2


def test_an_unexpected_error_from_the_source_is_a_failed_poll_not_a_failed_tick() -> None:
    polls = FakePolls()
    watched(polls, 1)

    async def broken(token: int) -> ImportStatus:
        raise KeyError("a bug")

    api = FakeApi({1: broken})

    async def main() -> TickReport:
        return await poller(polls, api).tick()

    report = run_virtual(main)

    assert not report.failed and report.polled == 1
    assert polls.rows[1].memory.failures == 1


def test_drain_gives_back_what_did_not_finish() -> None:
    polls = FakePolls()
    watched(polls, 1, 2)
    api = FakeApi({1: hanging()})

    async def main() -> None:
        p = poller(polls, api)
        await asyncio.wait_for(p.tick(), timeout=30)
        await p.drain(timeout=0.5)

    run_virtual(main)

    assert polls.rows[1].lease_owner is None and 1 in polls.abandoned
    assert polls.rows[2].memory.failures == 0


# --------------------------------------------------------------------------- ETA-aware polling


def steady(finish: float) -> Answer:
    """An import processing 1,000 records evenly from virtual time 0, Completed at ``finish``."""

    async def answer(token: int) -> ImportStatus:
        t = asyncio.get_running_loop().time()
        if t >= finish:
            return status(token, Status.COMPLETED, 1000)
        return status(token, Status.PROCESSING, int(1000 * t / finish))

    return answer


@pytest.mark.parametrize(
    ("finish", "min_spacing", "expected_calls"),
    [
        # Seen 0.5 s (5 % of the interval) after the finish, not at 30 s.
        (25.0, 1.0, [0.0, 10.0, 25.5]),
        # Just after the regular poll's time: that poll waits for it.
        (20.3, 1.0, [0.0, 10.0, 21.0]),
        # A minimum spacing of the interval is fixed-interval polling, as before.
        (25.0, 10.0, [0.0, 10.0, 20.0, 30.0]),
    ],
)
def test_a_steady_import_is_polled_just_after_its_predicted_finish(
    finish: float, min_spacing: float, expected_calls: list[float]
) -> None:
    settings = replace(
        SETTINGS,
        poll_interval_seconds=10.0,
        idle_poll_interval_seconds=30.0,
        poll_min_spacing_seconds=min_spacing,
    )
    polls = FakePolls()
    watched(polls, 1)
    api = FakeApi({1: steady(finish)})

    async def main() -> None:
        await tick_every(poller(polls, api, settings=settings), settings.tick_seconds, until=35.0)

    run_virtual(main)

    # Polled at 0 (the rate base), 10 (the rate is known), then just after the finish,
    # rounded up to the next tick.
    assert api.calls(1) == pytest.approx(expected_calls, abs=1e-6)
    final = polls.rows[1].memory.status
    assert final is not None and final.status is Status.COMPLETED
