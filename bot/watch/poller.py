"""The poll engine: lease what is due, ask the API once per import, save, notify.

A tick streams due imports through ``concurrency`` requests at a time, saving
finished polls in batches and waking delivery (which runs on its own loop)
when they produced notifications. One slow or failing import never holds up the others: each request
has its own timeout, its poll finishes in the background if need be, and its
failure only moves that import's next poll.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.domain.expiry import is_expired
from bot.domain.rules import EXPIRED, Expired, Failure, Outcome, decide
from bot.domain.schedule import next_poll_at
from bot.domain.status import ImportStatus
from bot.metrics import METRICS
from bot.mypreferences.client import NO_RETRY, RetryPolicy
from bot.mypreferences.errors import ApiError, TokenRejected, Unavailable
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
    polled: int
    notifications: int
    seconds: float


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
        self.lease_seconds = settings.lease_seconds
        self.concurrency = settings.poll_concurrency
        # Leased imports in flight at once: enough to keep ``concurrency`` requests
        # busy between two refills, few enough that none waits near its lease's end.
        self.capacity = max(100, settings.poll_concurrency * 8)
        # Polls in flight, by import id (a slow one is never started twice).
        self._in_flight: dict[asyncio.Future[PollResult], int] = {}
        self.last_tick_at: datetime | None = None
        self.stopping = False
        self._limit = asyncio.Semaphore(settings.poll_concurrency)

    async def tick(self) -> TickReport:
        """Poll what is due and have the channels told. Never raises; never waits on Slack.

        The tick streams: it keeps up to ``capacity`` leased imports in flight
        (``concurrency`` requests at a time), and every ``FLUSH_SECONDS`` it
        saves the polls that have finished (one batched transaction), wakes
        delivery for the notifications they produced, and leases more due imports. It ends
        when nothing is due; polls still waiting on a slow API then go on in the
        background and the next tick saves them, so one slow import never delays
        the others' notifications.
        """
        started = time.perf_counter()
        polled = created = 0
        nothing_due_since: float | None = None
        try:
            while not self.stopping:
                claimed = await self._refill()
                saved, new_events = await self._flush()
                polled += saved
                created += new_events
                if new_events:
                    self.delivery.wake()
                self.last_tick_at = self.clock()
                if not claimed and not self._in_flight:
                    break
                if claimed:
                    nothing_due_since = None
                elif nothing_due_since is None:
                    nothing_due_since = time.perf_counter()
                elif time.perf_counter() - nothing_due_since > STRAGGLER_GRACE_SECONDS:
                    break  # only slow polls are left: they finish in the background
                await asyncio.wait(self._in_flight, timeout=FLUSH_SECONDS)
        except Exception:
            log.exception("watcher tick failed; the next tick will try again")
        seconds = time.perf_counter() - started
        METRICS.tick_duration.observe(seconds)
        self.last_tick_at = self.clock()
        return TickReport(polled, created, seconds)

    async def _refill(self) -> int:
        """Lease due imports up to the free capacity and start polling them."""
        free = self.capacity - len(self._in_flight)
        if free <= 0:
            return 0
        batch = await asyncio.to_thread(
            self.polls.claim_due_imports,
            self.owner,
            self.clock(),
            free,
            self.lease_seconds,
            self.schedule.active_interval,
        )
        busy = set(self._in_flight.values())
        for item in batch:
            if item.id not in busy:
                self._in_flight[asyncio.ensure_future(self._poll(item))] = item.id
        return len(batch)

    async def _flush(self) -> tuple[int, int]:
        """Save every finished poll in one transaction; returns (saved, notifications)."""
        finished = [task for task in self._in_flight if task.done()]
        if not finished:
            return 0, 0
        for task in finished:
            del self._in_flight[task]
        results = [t.result() for t in finished if not t.cancelled() and t.exception() is None]
        for task in finished:
            if not task.cancelled() and task.exception() is not None:
                log.error("a poll failed unexpectedly", exc_info=task.exception())
        created = await asyncio.to_thread(self.polls.save_poll_results, self.owner, results)
        return len(results), created

    async def drain(self, timeout: float) -> None:
        """At shutdown: let polls in flight finish (up to ``timeout``) and save them.

        Polls still running after that are cancelled; their leases are released
        by the caller, so another replica (or the next start) polls them again.
        """
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout)
        abandoned = [i for task, i in self._in_flight.items() if not task.done()]
        for task in self._in_flight:
            task.cancel()
        if self._in_flight:
            await asyncio.wait(self._in_flight)
        await self._flush()
        await asyncio.to_thread(self.polls.abandon_polls, self.owner, abandoned, self.clock())

    async def _poll(self, item: DueImport) -> PollResult:
        async with self._limit:
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
        METRICS.polls.labels(outcome=outcome_label).inc()
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
        started = time.perf_counter()
        try:
            return await self.api.get_status(item.access_token, retry=NO_RETRY)
        except ApiError as exc:
            return exc
        except Exception as exc:  # a bug must not stop the other imports being polled
            log.exception("unexpected error polling", extra={"token": item.access_token})
            return Unavailable(type(exc).__name__)
        finally:
            METRICS.api_latency.observe(time.perf_counter() - started)


def _as_outcome(fetched: ImportStatus | ApiError | Expired) -> Outcome:
    """What the rules are told: an API error becomes a Failure in the user's words."""
    if isinstance(fetched, ApiError):
        return Failure(fetched.user_message, token_rejected=isinstance(fetched, TokenRejected))
    return fetched
