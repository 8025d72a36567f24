"""APScheduler wiring: one interval job per replica that runs the watcher's tick.

Replicas share work through database leases, not through APScheduler (its
3.x job stores cannot be shared between processes), so the job store is in
memory. ``max_instances=1`` and ``coalesce`` keep a slow tick from overlapping
itself or piling up missed runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.archive.archiver import Archiver
from bot.watch.digest import DigestJob
from bot.watch.poller import Poller

log = logging.getLogger(__name__)


class _SkipOverlapNotice(logging.Filter):
    """A tick longer than the interval is normal under load; the skipped run is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in record.getMessage()


class PollerJobs:
    def __init__(
        self,
        poller: Poller,
        tick_seconds: float,
        digest: DigestJob | None = None,
        digest_seconds: float = 60.0,
        archiver: Archiver | None = None,
        archive_seconds: float | None = None,
    ) -> None:
        self.poller = poller
        self.tick_seconds = tick_seconds
        self.digest = digest
        self.digest_seconds = digest_seconds
        #: the exceptions archive: its own job, so a long archive never delays a poll
        self.archiver = archiver
        self.archive_seconds = archive_seconds or tick_seconds
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._running: asyncio.Task[object] | None = None
        logging.getLogger("apscheduler.scheduler").addFilter(_SkipOverlapNotice())

    def start(self) -> None:
        """Start ticking now and every ``tick_seconds``. Call with the event loop running."""
        self._scheduler.add_job(
            self._tick,
            "interval",
            seconds=self.tick_seconds,
            id="watcher-tick",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=datetime.now(UTC),
        )
        if self.digest is not None:
            # Checked every minute (not a cron at each channel's time): each channel has its
            # own time and zone, and a digest missed while the bot was down is still due.
            self._scheduler.add_job(
                self._digest,
                "interval",
                seconds=self.digest_seconds,
                id="daily-digest",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=datetime.now(UTC),
            )
        if self.archiver is not None:
            # The tick only leases due archives and starts each in its own task.
            self._scheduler.add_job(
                self.archiver.tick,
                "interval",
                seconds=self.archive_seconds,
                id="archiver-tick",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=datetime.now(UTC),
            )
        self._scheduler.start()

    async def _digest(self) -> None:
        if self.digest is None or self.poller.stopping:
            return
        try:
            await self.digest.run()
        except Exception:
            log.exception("the digest job failed; it runs again at its next check")

    async def _tick(self) -> None:
        self._running = asyncio.current_task()
        try:
            await self.poller.tick()
        finally:
            self._running = None

    async def stop(self, timeout: float = 8.0) -> None:
        """Stop taking new work; let the current tick finish, or abandon it after ``timeout``.

        An abandoned tick leaves nothing half-done: its leases are released so
        another replica (or the next start) polls those imports again.
        """
        self.poller.stopping = True
        if self._scheduler.running:
            self._scheduler.pause()  # no new ticks; shutdown() would cancel the running one
        deadline = time.monotonic() + timeout
        task = self._running
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                log.warning("the current tick did not finish in %.0f s; abandoning it", timeout)
                task.cancel()
        # Polls still waiting on the API: finish and save them in the time left.
        await self.poller.drain(timeout=max(0.5, deadline - time.monotonic()))
        if self.archiver is not None:
            # An archive in progress is handed over (its lease released), not finished.
            await self.archiver.stop(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
            await asyncio.to_thread(self.archiver.store.release_leases, self.archiver.owner)
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        await asyncio.to_thread(self.poller.polls.release_leases, self.poller.owner)
