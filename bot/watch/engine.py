"""The poll engine: lease what is due, ask the API once per import, save, notify.

One tick polls every due import (in leased batches, ``concurrency`` requests
at a time) and then delivers what the channels should be told. One slow or
failing import never holds up the others: each request has its own timeout
and its failure only moves that import's next poll.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.metrics import METRICS
from bot.mypreferences.client import NO_RETRY, MyPreferencesClient
from bot.mypreferences.errors import ApiError, Unavailable
from bot.store.repo import DueImport, PollResult, Store
from bot.watch.notifier import Notifier
from bot.watch.rules import EXPIRED, Outcome, Rules, decide
from bot.watch.schedule import Schedule, next_poll_at

log = logging.getLogger(__name__)


def rules_from(settings: Settings) -> Rules:
    return Rules(
        expiry_warning=timedelta(minutes=settings.expiry_warning_minutes),
        trouble_after=timedelta(minutes=settings.api_trouble_minutes),
    )


def schedule_from(settings: Settings) -> Schedule:
    return Schedule(
        active_interval=settings.poll_interval_seconds,
        idle_interval=settings.idle_poll_interval_seconds,
        max_backoff=settings.max_backoff_seconds,
        expiry_warning=timedelta(minutes=settings.expiry_warning_minutes),
    )


@dataclass(frozen=True)
class TickReport:
    polled: int
    notifications: int
    delivered: int
    seconds: float


def _outcome_seen(future: asyncio.Future[list[PollResult]]) -> None:
    """Retrieve an abandoned batch's outcome, so asyncio does not log it as unhandled."""
    if not future.cancelled():
        future.exception()


class Watcher:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        api: MyPreferencesClient,
        notifier: Notifier,
        owner: str,
        *,
        clock: Clock = utcnow,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.api = api
        self.notifier = notifier
        self.owner = owner
        self.clock = clock
        self.jitter = jitter
        self.rules = rules_from(settings)
        self.schedule = schedule_from(settings)
        self.lease_seconds = settings.lease_seconds
        self.concurrency = settings.poll_concurrency
        self.batch_size = max(100, settings.poll_concurrency * 4)
        self.last_tick_at: datetime | None = None
        self.stopping = False
        self._limit = asyncio.Semaphore(settings.poll_concurrency)

    async def tick(self) -> TickReport:
        """Poll every due import, then deliver what is due. Never raises."""
        started = time.perf_counter()
        polled = notifications = delivered = 0
        try:
            polled, notifications = await self.poll_due()
            if not self.stopping:
                delivered = await self.notifier.deliver_due()
        except Exception:
            log.exception("watcher tick failed; the next tick will try again")
        seconds = time.perf_counter() - started
        METRICS.tick_duration.observe(seconds)
        self.last_tick_at = self.clock()
        return TickReport(polled, notifications, delivered, seconds)

    async def poll_due(self) -> tuple[int, int]:
        """Poll due imports batch by batch until none is due; returns (polled, events).

        Two batches overlap: the next one is leased and its polls queued while the
        previous one is still being answered and saved. So the requests never pause
        at a batch boundary (``concurrency`` alone bounds them) and the database
        work runs while requests are in flight.
        """
        polled = created = 0
        unsaved: list[asyncio.Future[list[PollResult]]] = []  # at most two batches
        try:
            batch = await self._claim() if not self.stopping else []
            while batch:
                unsaved.append(asyncio.gather(*(self._poll(item) for item in batch)))
                polled += len(batch)
                more = len(batch) == self.batch_size
                if len(unsaved) == 2:
                    created += await self._save(await unsaved[0])
                    unsaved.pop(0)
                batch = await self._claim() if more and not self.stopping else []
            while unsaved:
                created += await self._save(await unsaved[0])
                unsaved.pop(0)
        finally:
            for polls in unsaved:  # after an error or a cancel: their leases simply expire
                polls.cancel()
                polls.add_done_callback(_outcome_seen)
        return polled, created

    async def _claim(self) -> list[DueImport]:
        return await asyncio.to_thread(
            self.store.claim_due_imports,
            self.owner,
            self.clock(),
            self.batch_size,
            self.lease_seconds,
        )

    async def _save(self, results: list[PollResult]) -> int:
        return await asyncio.to_thread(self.store.save_poll_results, self.owner, results)

    async def _poll(self, item: DueImport) -> PollResult:
        async with self._limit:
            outcome = await self._fetch(item)
        now = self.clock()
        decision = decide(item.memory, outcome, now, self.rules)
        memory = decision.memory
        status = memory.status
        error = outcome if isinstance(outcome, ApiError) else None
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
        )

    async def _fetch(self, item: DueImport) -> Outcome:
        status = item.memory.status
        if (
            status is not None
            and status.expires is not None
            and not status.status.is_terminal
            and self.clock() >= status.expires
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
