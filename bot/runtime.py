"""Builds the running bot from settings: the one place where the parts are wired together."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import text

from bot.archive.archiver import Archiver
from bot.archive.csvfile import sweep_stale
from bot.config import Settings
from bot.domain.settings import canonical_zone
from bot.metrics import METRICS
from bot.mypreferences.client import MyPreferencesClient
from bot.mypreferences.pace import Pace
from bot.service import ImportService
from bot.slack.app import build_app
from bot.slack.batch_delivery import BatchDelivery
from bot.slack.calls import SlackCalls
from bot.slack.channel_posts import ChannelPostSender
from bot.slack.delivery import MAX_LEASE_SECONDS, Delivery
from bot.slack.digests import SlackDigestPoster
from bot.slack.links import Permalinks
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.exceptions import ExceptionsRequests
from bot.slack.uploads import ThreadUploads
from bot.store import Store
from bot.store.engine import make_engine, migrate
from bot.watch.digest import DigestJob
from bot.watch.jobs import PollerJobs
from bot.watch.poller import Poller

log = logging.getLogger(__name__)

# Two failed ticks in a row, not one: a single lost race with another writer is not news.
UNHEALTHY_AFTER_FAILED_TICKS = 2
# The senders and the archiver are woken when this process makes work for them (the
# poller's events, the watch command's card, a queued notice); their idle look only
# finds what another replica or a retry's time made due, and at most once a second is
# soon enough for that. Each look is a write transaction: at TICK_SECONDS=0.25 four
# loops looking four times a second kept an idle bot busy.
MIN_IDLE_SECONDS = 1.0
# Allocations (less deallocations) of tracked objects between young collections; see
# settle_heap.
YOUNG_GC_THRESHOLD = 10_000


def settle_heap() -> None:
    """Set the garbage collector for a long-running service; once, after start-up.

    CPython's default (a young collection every 700 allocations) suits a short
    script. The watcher keeps up to POLL_CONCURRENCY polls in flight, each alive
    for the API's round trip: at 700 their objects are caught alive, promoted, and
    swept again by the older generations' collections, which also walk everything
    made at start (Bolt, SQLAlchemy, the app). That was an eighth of the poll
    cycle's CPU at C=200 (bench/README.md, "The garbage collector"). So: collect
    once, freeze what start-up made (it lives as long as the process and is never
    scanned again), and let the young generation grow to YOUNG_GC_THRESHOLD, so a
    poll's objects are mostly freed before the collector looks. Reference cycles
    are still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


class _WakeAll:
    """Wakes every delivery loop at once (the poller knows only ``wake()``)."""

    def __init__(self, *loops: Delivery | BatchDelivery) -> None:
        self.loops = loops

    def wake(self) -> None:
        for loop in self.loops:
            loop.wake()


class Runtime:
    """The bot, its watcher and their connections, for one process (one replica)."""

    def __init__(self, settings: Settings, *, socket_mode: bool = False) -> None:
        self.settings = settings
        self.socket_mode = socket_mode
        idle_seconds = max(settings.tick_seconds, MIN_IDLE_SECONDS)
        # Names this replica in leases; unique even when PIDs repeat across containers.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.engine = make_engine(settings.database_url)
        self.store = Store(self.engine)
        self.api = MyPreferencesClient(
            settings, max_connections=max(100, settings.poll_concurrency + 20)
        )
        self.slack = AsyncWebClient(token=settings.slack_bot_token, base_url=settings.slack_api_url)
        calls = SlackCalls(self.slack)
        permalinks = Permalinks(self.slack)
        # Alerts, settings notices and notes: posts outside any card's thread.
        self.posts = ChannelPostSender(
            self.store.channel_posts,
            self.store.outbox,
            calls,
            permalinks,
            self.owner,
            lease_seconds=min(settings.lease_seconds, MAX_LEASE_SECONDS),
            idle_seconds=idle_seconds,
        )
        self.delivery = Delivery(
            self.store.outbox,
            self.slack,
            self.owner,
            lease_seconds=settings.lease_seconds,
            idle_seconds=idle_seconds,
            alerts=self.posts,
            card_edits_per_minute=settings.slack_card_edits_per_minute,
        )
        self.batch_delivery = BatchDelivery(
            self.store.batches,
            self.store.outbox,
            calls,
            self.owner,
            alerts=self.posts,
            lease_seconds=min(settings.lease_seconds, MAX_LEASE_SECONDS),
            idle_seconds=idle_seconds,
        )
        self.poller = Poller(
            settings,
            self.store.polls,
            self.api,
            _WakeAll(self.delivery, self.batch_delivery),
            self.owner,
        )
        # One polite pace per account for everything that pages through exceptions.
        self.pace = Pace(settings.exceptions_requests_per_second)
        self.archiver = Archiver(
            settings,
            self.store.archives,
            self.api,
            self.pace,
            ThreadUploads(self.slack, settings, self.delivery),
            self.owner,
        )
        self.digest = DigestJob(
            self.store.channel_settings,
            self.store.history,
            self.store.digests,
            SlackDigestPoster(calls, permalinks, self.store.outbox),
            self.owner,
            lease_seconds=settings.lease_seconds,
        )
        self.jobs = PollerJobs(
            self.poller,
            settings.tick_seconds,
            digest=self.digest,
            digest_seconds=settings.digest_check_seconds,
            archiver=self.archiver,
            archive_seconds=idle_seconds,
        )
        self.access = AccessControl(settings)
        self.service = ImportService(
            settings,
            self.store.subscriptions,
            self.api,
            self.delivery,
            batches=self.store.batches,
            batch_cards=self.batch_delivery,
        )
        self.exceptions = ExceptionsRequests(
            settings,
            self.service,
            self.api,
            self.pace,
            self.slack,
            channel_mode=self.store.archives.channel_mode,
        )
        self.app = build_app(
            client=self.slack,
            signing_secret=None if socket_mode else settings.slack_signing_secret,
            service=self.service,
            access=self.access,
            subscriptions=self.store.subscriptions,
            channel_settings=self.store.channel_settings,
            history=self.store.history,
            exceptions=self.exceptions,
            notices=self.posts,
        )
        # The time-zone list is read from disk on first use: read it now, not inside the
        # first request that names a zone (which must be acknowledged within 3 s).
        canonical_zone("UTC")
        self.socket_handler: AsyncSocketModeHandler | None = None
        self._socket_task: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()

    def migrate(self) -> str:
        return migrate(self.engine)

    async def start(self) -> None:
        # Archive files a killed process left behind (older than any token lives).
        removed = await asyncio.to_thread(sweep_stale, Path(self.settings.exceptions_dir))
        if removed:
            log.info("removed %d stale exceptions archive folders", removed)
        # One aiohttp session (one connection pool) for every Web API call: without one,
        # slack_sdk's AsyncWebClient opens a session, and a connection, for each call.
        # Made here because a session belongs to the running event loop.
        self.slack.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.slack.timeout)
        )
        self.jobs.start()
        self.delivery.start()
        self.batch_delivery.start()
        self.posts.start()
        if self.socket_mode:
            self.socket_handler = AsyncSocketModeHandler(
                self.app, str(self.settings.slack_app_token)
            )
            self._socket_task = asyncio.create_task(self._connect_socket(self.socket_handler))
        log.info("bot started as %s", self.owner)

    async def _connect_socket(self, handler: AsyncSocketModeHandler) -> None:
        """Connect to Slack, retrying with backoff: a Slack outage at start is not fatal.

        Once connected, slack-sdk's client reconnects by itself.
        """
        delay = 1.0
        while True:
            try:
                await handler.connect_async()
                log.info("Socket Mode connected")
                return
            except Exception as exc:
                log.error(
                    "Socket Mode connection failed (%s); retrying in %.0f s",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)

    async def stop(self) -> None:
        """Graceful: stop ticking, let the current tick finish (or release it), close."""
        log.info("shutting down")
        if self._socket_task is not None:
            self._socket_task.cancel()
        if self.socket_handler is not None:
            await self.socket_handler.close_async()
        await self.jobs.stop(timeout=max(1.0, min(8.0, self.settings.lease_seconds)))
        await self.delivery.stop(timeout=2.0)
        await self.batch_delivery.stop(timeout=2.0)
        await self.posts.stop()
        if self.slack.session is not None:
            await self.slack.session.close()
        await asyncio.to_thread(self.store.release_leases, self.owner)
        await self.api.aclose()
        self.engine.dispose()
        log.info("stopped")

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Whether the database answers and the watcher ticks; the reason when not.

        The watcher's time is that of its last *successful* tick: a tick whose
        writes the database refused (read-only, full) does not count, and
        ``UNHEALTHY_AFTER_FAILED_TICKS`` failed ticks in a row make the replica
        unhealthy at once; the next successful tick makes it healthy again.
        """
        body: dict[str, Any] = {"replica": self.owner}
        problems: list[str] = []
        try:
            await asyncio.wait_for(asyncio.to_thread(self._ping_database), timeout=3)
            body["database"] = "ok"
        except Exception as exc:
            body["database"] = "unreachable"
            problems.append(f"database: {type(exc).__name__}")
        last = self.poller.last_tick_at
        failed = self.poller.failed_ticks_in_a_row
        limit = max(60.0, self.settings.tick_seconds * 10)
        if last is None:
            age = time.monotonic() - self.started_at
            body["watcher"] = {"last_tick_seconds_ago": None, "failed_ticks_in_a_row": failed}
            if age > limit:
                problems.append("watcher: no tick succeeded since start")
        else:
            age = (self.poller.clock() - last).total_seconds()
            body["watcher"] = {
                "last_tick_seconds_ago": round(age, 1),
                "failed_ticks_in_a_row": failed,
            }
            if age > limit:
                problems.append(f"watcher: last successful tick {age:.0f} s ago")
        if failed >= UNHEALTHY_AFTER_FAILED_TICKS:
            problems.append(f"watcher: the last {failed} ticks failed ({self.poller.last_failure})")
        if self.socket_handler is not None:
            connected = await self.socket_handler.client.is_connected()
            body["socket"] = "connected" if connected else "disconnected"
            if not connected:
                problems.append("socket: disconnected")
        body["status"] = "ok" if not problems else "unhealthy"
        if problems:
            body["problems"] = problems
        return not problems, body

    def _ping_database(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def refresh_gauges(self) -> None:
        METRICS.set_watched(self.store.subscriptions.watched_imports_by_status())
