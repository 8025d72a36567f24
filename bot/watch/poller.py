"""The poll engine: lease what is due, ask the API once per import, save, notify.

A tick streams due imports through ``concurrency`` requests at a time, saving
finished polls in batches and waking delivery (which runs on its own loop)
when they produced notifications. One slow or failing import never holds up the others: each request
has its own timeout, its poll finishes in the background if need be, and its
failure only moves that import's next poll.

Leases end on schedule: an import is leased until its next due time plus one
HTTP timeout, and a poll that could not start before its due time is given
back unpolled, so a lease never covers a request that may outlive it and a
dead replica's imports are polled again at most one HTTP timeout late.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.domain.eta import finish_forecast
from bot.domain.expiry import is_expired
from bot.domain.rules import EXPIRED, Expired, Failure, Outcome, decide
from bot.domain.schedule import next_poll_at
from bot.domain.status import ImportStatus
from bot.metrics import METRICS
from bot.mypreferences.client import RetryPolicy
from bot.mypreferences.errors import ApiError, Timeout, TokenRejected
from bot.store.interface import PollStore
from bot.store.records import DueImport, PollResult

log = logging.getLogger(__name__)


class StatusSource(Protocol):
    """Where statuses come from: the MyPreferences client, or a fake in tests."""

    async def get_status(self, access_token: int, *, retry: RetryPolicy = ...) -> ImportStatus: ...


class Deliverer(Protocol):
    """What the poller asks of delivery: look for channels to bring up to date.

    Delivery runs on its own loop; waking it returns at once, so a tick never
    waits on Slack.
    """

    def wake(self) -> None: ...


@dataclass(frozen=True)
class TickReport:
    """What one tick did. ``polled`` counts polls that asked the API and were saved."""

    polled: int
    notifications: int
    seconds: float
    #: Polls this tick started (some may finish in a later tick).
    started: int = 0
    #: Leased imports given back unpolled: their turn came after their due time.
    given_back: int = 0
    #: The tick stopped on an error (the database refused a write, say).
    failed: bool = False


# How often a tick saves finished polls, delivers, and leases more due imports.
FLUSH_SECONDS = 0.1
# How long a tick with nothing left to lease waits for slow polls before ending.
STRAGGLER_GRACE_SECONDS = 0.5


class Poller:
    """Polls due imports, saves what each poll decided, and has the channels told."""

    def __init__(
        self,
        settings: Settings,
        polls: PollStore,
        api: StatusSource,
        delivery: Deliverer,
        owner: str,
        *,
        clock: Clock = utcnow,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.polls = polls
        self.api = api
        self.delivery = delivery
        self.owner = owner
        self.clock = clock
        self.jitter = jitter
        self.rules = settings.rules()
        self.schedule = settings.schedule()
        self.concurrency = settings.poll_concurrency
        # One request, bounded as a whole (a trickling answer included).
        self.request_seconds = settings.http_timeout_seconds
        self.retry = RetryPolicy(attempts=1, budget_seconds=settings.http_timeout_seconds)
        # An import is leased until it is due again plus one request's time: a dead
        # replica's imports are free again one HTTP timeout after they are due.
        self.lease_seconds = min(
            settings.lease_seconds, self.schedule.active_interval + self.request_seconds
        )
        # Leased imports in flight at once: enough to keep ``concurrency`` requests
        # busy between two refills, few enough that none waits near its lease's end.
        self.capacity = max(100, settings.poll_concurrency * 8)
        # Polls in flight, by import id (a slow one is never started twice).
        self._in_flight: dict[asyncio.Future[PollResult | None], int] = {}
        #: When the last tick (or round of a long tick) finished without an error.
        self.last_tick_at: datetime | None = None
        #: Ticks that failed since the last one that did not; /healthz reads it.
        self.failed_ticks_in_a_row = 0
        self.last_failure: str | None = None
        self.stopping = False
        self._limit = asyncio.Semaphore(settings.poll_concurrency)
        # The poll counter per outcome, looked up once: labels() takes a lock and
        # builds a key on every call, thousands of times a second at full speed.
        self._polls_counted = {
            outcome: METRICS.polls.labels(outcome=outcome)
            for outcome in ("error", "expired", "changed", "unchanged")
        }

    async def tick(self) -> TickReport:
        """Poll what is due and have the channels told. Never raises; never waits on Slack.

        The tick streams: it keeps up to ``capacity`` leased imports in flight
        (``concurrency`` requests at a time), and every ``FLUSH_SECONDS`` it
        saves the polls that have finished (one batched transaction), wakes
        delivery for the notifications they produced, and leases more due imports. It ends
        when nothing is due; polls still waiting on a slow API then go on in the
        background and the next tick saves them, so one slow import never delays
        the others' notifications.

        ``last_tick_at`` moves only when the database took the tick's writes; a
        tick that fails counts in ``failed_ticks_in_a_row`` and the metrics.
        """
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        polled = created = started = given_back = 0
        nothing_due_since: float | None = None
        failed = False
        try:
            while not self.stopping:
                # With every slot taken, nothing could be leased: that is not "nothing due".
                full = len(self._in_flight) >= self.capacity
                started_now = await self._refill()
                started += started_now
                saved, new_events, returned = await self._flush()
                polled += saved
                created += new_events
                given_back += returned
                if new_events:
                    self.delivery.wake()
                self._succeeded()
                if not started_now and not self._in_flight:
                    break
                if started_now or full:
                    nothing_due_since = None
                elif nothing_due_since is None:
                    nothing_due_since = loop.time()
                elif loop.time() - nothing_due_since > STRAGGLER_GRACE_SECONDS:
                    break  # only slow polls are left: they finish in the background
                if self._in_flight:
                    await asyncio.wait(self._in_flight, timeout=FLUSH_SECONDS)
        except Exception as exc:
            failed = True
            self.failed_ticks_in_a_row += 1
            self.last_failure = type(exc).__name__
            if self.failed_ticks_in_a_row == 1:
                log.exception("watcher tick failed; the next tick will try again")
            else:
                # The traceback was logged with the first failure: one line per tick now.
                reason = str(exc).splitlines()[0][:200] if str(exc) else ""
                log.error(
                    "watcher tick failed again (%d in a row): %s: %s",
                    self.failed_ticks_in_a_row,
                    type(exc).__name__,
                    reason,
                )
        else:
            self._succeeded()
        seconds = loop.time() - started_at
        METRICS.tick_duration.observe(seconds)
        METRICS.ticks.labels(outcome="failed" if failed else "ok").inc()
        return TickReport(polled, created, seconds, started, given_back, failed)

    def _succeeded(self) -> None:
        self.last_tick_at = self.clock()
        self.failed_ticks_in_a_row = 0

    async def _refill(self) -> int:
        """Lease due imports up to the free capacity and start polling them; returns how many."""
        free = self.capacity - len(self._in_flight)
        if free <= 0:
            return 0
        busy = set(self._in_flight.values())
        now = self.clock()
        batch = await asyncio.to_thread(
            self.polls.claim_due_imports,
            self.owner,
            now,
            free,
            self.lease_seconds,
            self.schedule.active_interval,
            exclude=busy,
        )
        # A poll that has not started by the import's next due time (or its lease's
        # end, if sooner) is given back unpolled: with the usual lease (due time plus
        # one request) every request that starts can finish within its lease.
        start_by = now + timedelta(seconds=min(self.schedule.active_interval, self.lease_seconds))
        started = 0
        for item in batch:
            if item.id in busy:
                continue  # already in flight (a store that ignored ``exclude``)
            self._in_flight[asyncio.ensure_future(self._poll(item, start_by))] = item.id
            started += 1
        return started

    async def _flush(self) -> tuple[int, int, int]:
        """Save every finished poll in one transaction.

        Returns (polls saved, notifications created, imports given back unpolled).
        """
        finished = [task for task in self._in_flight if task.done()]
        if not finished:
            return 0, 0, 0
        results: list[PollResult] = []
        unpolled: list[int] = []
        for task in finished:
            import_id = self._in_flight.pop(task)
            if task.cancelled():
                unpolled.append(import_id)
            elif task.exception() is not None:
                log.error("a poll failed unexpectedly", exc_info=task.exception())
                unpolled.append(import_id)
            elif (result := task.result()) is None:
                unpolled.append(import_id)
            else:
                results.append(result)
        if unpolled:
            # Due again now, for any replica: a less busy one may take them at once.
            await asyncio.to_thread(self.polls.abandon_polls, self.owner, unpolled, self.clock())
        created = 0
        if results:
            created = await asyncio.to_thread(self.polls.save_poll_results, self.owner, results)
        return len(results), created, len(unpolled)

    async def drain(self, timeout: float) -> None:
        """At shutdown: let polls in flight finish (up to ``timeout``) and save them.

        Polls still running after that are cancelled and given back (due now, for
        any replica), so another replica (or the next start) polls them again.
        """
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout)
        for task in self._in_flight:
            task.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        await self._flush()  # saves what finished, gives back what was cancelled

    async def _poll(self, item: DueImport, start_by: datetime) -> PollResult | None:
        """Ask the API about one leased import; None when it is given back unpolled."""
        async with self._limit:
            if self.clock() > start_by:
                return None  # its turn came too late: the answer could outlive the lease
            outcome = await self._fetch(item)
        now = self.clock()
        error = outcome if isinstance(outcome, ApiError) else None
        decision = decide(item.memory, _as_outcome(outcome), now, self.rules)
        memory = decision.memory
        status = memory.status
        next_at = next_poll_at(
            now,
            status.status if status else None,
            memory.failures,
            status.expires if status else None,
            self.schedule,
            self.jitter(),
            retry_after=error.retry_after if error else None,
            forecast=finish_forecast(status, memory.rate_base_at, memory.rate_base_done, now),
        )
        if error is not None:
            log.warning(
                "poll failed (%s); next try at %s",
                type(error).__name__,
                next_at.isoformat(timespec="seconds"),
                extra={"token": item.access_token, "failures": memory.failures},
            )
        outcome_label = (
            "error"
            if error
            else "expired"
            if outcome is EXPIRED
            else "changed"
            if decision.changed
            else "unchanged"
        )
        self._polls_counted[outcome_label].inc()
        return PollResult(
            import_id=item.id,
            decision=decision,
            polled_at=now,
            next_poll_at=next_at,
            error=type(error).__name__ if error else None,
            previous=item.memory,
            expected_next_poll_at=item.expected_next_poll_at,
        )

    async def _fetch(self, item: DueImport) -> ImportStatus | ApiError | Expired:
        status = item.memory.status
        if (
            status is not None
            and not status.status.is_terminal
            and is_expired(status.expires, self.clock())
        ):
            return EXPIRED  # an expired token answers 401 forever: do not ask
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # The client bounds the request too; this bound holds whatever the source.
            async with asyncio.timeout(self.request_seconds):
                return await self.api.get_status(item.access_token, retry=self.retry)
        except ApiError as exc:
            return exc
        except TimeoutError:
            return Timeout("no answer within HTTP_TIMEOUT_SECONDS")
        except Exception as exc:  # a bug must not stop the other imports being polled
            log.exception("unexpected error polling", extra={"token": item.access_token})
            return ApiError(type(exc).__name__)
        finally:
            METRICS.api_latency.observe(loop.time() - started)


def _as_outcome(fetched: ImportStatus | ApiError | Expired) -> Outcome:
    """What the rules are told: an API error becomes a Failure in the user's words."""
    if isinstance(fetched, ApiError):
        return Failure(fetched.user_message, token_rejected=isinstance(fetched, TokenRejected))
    return fetched
