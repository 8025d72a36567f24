"""The archiver: fetches each due exceptions archive once and has it posted to every thread.

It runs on its own APScheduler job (``bot.watch.jobs``), so a long archive never
holds up a poll. Each tick leases due archives (the soonest token expiry first, at
most ``concurrency`` at a time per replica) and works on each in its own task:

1. the archive's uploads (one per watching subscription): ones nobody wants any
   more (unwatched, channel lost) are dropped;
2. one fetch (``fetch.fetch_exceptions``) for every EXCEPTIONS_FILE mode the
   channels need, while the lease is renewed every third of ``LEASE_SECONDS``:
   a replica that loses it stops at once, and one that dies is taken over when
   it runs out; the new holder starts the paging again (the files are local);
3. each upload goes to the ``Publisher`` (Slack's side, ``bot.slack.uploads``) once
   its card is posted and its thread is up to date, and is marked sent as soon as
   Slack accepts it. The publisher has the subscription's delivery pass make it, so
   it honours the channel's waits and the fates of Slack's errors like a reply; what
   it answers (``Fate``) is counted here, and an upload that keeps failing is given
   up after ``MAX_UPLOAD_ATTEMPTS`` (``MAX_RATE_LIMITED_UPLOADS`` for rate limits).

Exactly once: an upload marked sent is never made again, and a crash before the
mark repeats nothing Slack showed, except in the one window between Slack accepting
the upload (``files.completeUploadExternal``) and ``mark_upload_sent`` committing,
as for messages (tests/archive/test_archiver.py shows that no other crash point
posts twice).

Failures: a fetch that fails is tried again with backoff, at most ``MAX_ATTEMPTS``
times and never past the token's expiry; the last try keeps what it fetched
(partial). What could not be fetched at all is said once in each thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Protocol

from bot.archive.fetch import ArchiveOptions, FetchResult, fetch_exceptions
from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.domain.exceptions import ExceptionsFile
from bot.mypreferences.client import RetryPolicy
from bot.mypreferences.errors import ApiError, TokenRejected
from bot.mypreferences.pace import Pace
from bot.mypreferences.paging import ExceptionsSource
from bot.store.archives import DueArchive, UploadTarget
from bot.store.interface import ArchiveStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
FIRST_BACKOFF_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 900.0
# Failed tries of one upload before it is given up: errors after MAX_UPLOAD_ATTEMPTS;
# rate limits (contention in a busy channel, each answered after Retry-After) after
# MAX_RATE_LIMITED_UPLOADS, as for delivery's replies.
MAX_UPLOAD_ATTEMPTS = 8
MAX_RATE_LIMITED_UPLOADS = 100
FIRST_UPLOAD_BACKOFF_SECONDS = 2.0
# How long a fetched archive waits for a thread to be ready (its card posted, the
# replies before it sent) before it is posted anyway, or kept for later.
READY_WAIT_SECONDS = 30.0
READY_POLL_SECONDS = 0.5
# Waits for a thread (Slack's Retry-After, a backoff, earlier replies) are waited out
# while the file is at hand, up to this long in all; a longer one releases the archive
# (it is fetched again when due).
MAX_INLINE_WAIT_SECONDS = 30.0
MIN_WAIT_SECONDS = 0.05
# A thread that cannot take its archive this long after it was decided (its card never
# posted, say) is given up: nothing waits for ever.
MAX_THREAD_WAIT = timedelta(hours=24)
# Per page: a few tries within a minute; the archive's own backoff comes on top.
PAGE_RETRY = RetryPolicy(attempts=4, base_delay=1.0, max_delay=10.0, budget_seconds=60.0)
TOKEN_GONE = "the token expired before the exceptions could be fetched"


@dataclass(frozen=True)
class ArchivePost:
    """What one thread is to get: the fetch for its mode, or why there is none."""

    archive: DueArchive
    target: UploadTarget
    mode: ExceptionsFile
    result: FetchResult | None
    #: why nothing could be fetched (words for the channel), when ``result`` is None
    error: str | None = None


class Fate(Enum):
    """What became of one post (the ``Publisher`` says; the archiver acts on it)."""

    SENT = "sent"  # Slack accepted it: mark it sent
    DROP = "drop"  # it can never be posted (channel gone, refused for good)
    RETRY = "retry"  # it failed (Slack's trouble, the network): counted, tried again with backoff
    WAIT = "wait"  # Slack said wait (rate limit): counted (a larger limit), tried after the wait
    LATER = "later"  # not tried: the thread cannot take it yet; not a failure


@dataclass(frozen=True)
class Published:
    """What became of one post."""

    fate: Fate
    file_id: str | None = None
    ts: str | None = None
    error: str | None = None
    #: for WAIT and LATER (and RETRY, if given): seconds before it is tried again
    wait_seconds: float | None = None


class Publisher(Protocol):
    """Slack's side of an archive (``bot.slack.uploads.ThreadUploads``)."""

    async def publish(self, post: ArchivePost) -> Published: ...


class _LeaseLost(Exception):
    pass


class Archiver:
    """Fetches due archives and has them posted; one per replica, ticked by its job."""

    def __init__(
        self,
        settings: Settings,
        store: ArchiveStore,
        source: ExceptionsSource,
        pace: Pace,
        publisher: Publisher,
        owner: str,
        *,
        concurrency: int = 2,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        ready_wait_seconds: float = READY_WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.source = source
        self.pace = pace
        self.publisher = publisher
        self.owner = owner
        self.concurrency = concurrency
        self.clock = clock
        self.sleep = sleep
        self.ready_wait_seconds = ready_wait_seconds
        self.lease_seconds = settings.lease_seconds
        self.options = ArchiveOptions.from_settings(settings, PAGE_RETRY)
        self.stopping = False
        self._running: dict[int, asyncio.Task[None]] = {}

    async def tick(self) -> int:
        """Lease due archives up to the free capacity and start each. Never raises."""
        if self.stopping:
            return 0
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        try:
            due = await asyncio.to_thread(
                self.store.claim_due_archives, self.owner, self.clock(), free, self.lease_seconds
            )
        except Exception:
            log.exception("claiming exceptions archives failed; the next tick tries again")
            return 0
        for archive in due:
            if archive.id in self._running:
                continue
            task = asyncio.create_task(self.run(archive), name=f"archive-{archive.id}")
            self._running[archive.id] = task
            task.add_done_callback(self._forget)
        return len(due)

    def _forget(self, task: asyncio.Task[None]) -> None:
        for key, running in list(self._running.items()):
            if running is task:
                del self._running[key]

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no archive is in progress (tests, shutdown)."""
        tasks = list(self._running.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def stop(self, timeout: float) -> None:
        """Stop taking archives; give running ones ``timeout``, then cancel them.

        Their leases are released by the caller (``Store.release_leases``), so another
        replica (or the next start) takes them over at once.
        """
        self.stopping = True
        await self.wait_idle(timeout)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def run(self, archive: DueArchive) -> None:
        """Fetch one leased archive and post it. Never raises (except cancellation)."""
        try:
            async with self._leased(archive.id):
                await self._run(archive)
        except _LeaseLost:
            log.warning(
                "lost the lease of an exceptions archive; another replica has it",
                extra={"token": archive.access_token},
            )
        except Exception:
            log.exception("exceptions archive failed", extra={"token": archive.access_token})
            with contextlib.suppress(Exception):
                await self._retry(archive, "internal error", count=True)

    @contextlib.asynccontextmanager
    async def _leased(self, archive_id: int) -> AsyncIterator[None]:
        """Renew the lease every third of its length; cancel the work if it is lost."""
        current = asyncio.current_task()
        assert current is not None
        lost = False

        async def keep() -> None:
            nonlocal lost
            while True:
                await self.sleep(self.lease_seconds / 3)
                try:
                    held = await asyncio.to_thread(
                        self.store.renew_lease,
                        archive_id,
                        self.owner,
                        self.clock(),
                        self.lease_seconds,
                    )
                except Exception:
                    log.exception("renewing an archive lease failed; trying again")
                    continue
                if not held:
                    lost = True
                    current.cancel()
                    return

        keeper = asyncio.create_task(keep())
        try:
            yield
        except asyncio.CancelledError:
            if not lost:
                raise
            current.uncancel()
            raise _LeaseLost() from None
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    def mode_of(self, target: UploadTarget) -> ExceptionsFile:
        """The channel's own setting, else EXCEPTIONS_FILE."""
        if target.mode:
            with contextlib.suppress(ValueError):
                return ExceptionsFile(target.mode)
        return self.settings.exceptions_file

    async def _run(self, archive: DueArchive) -> None:
        targets = await self._wanted_targets(archive)
        if not targets:
            await asyncio.to_thread(self.store.finish_archive, archive.id, self.owner, self.clock())
            return
        modes = {self.mode_of(t) for t in targets}
        result: FetchResult | None = None
        error: str | None = None
        now = self.clock()
        if archive.expires_at is not None and now >= archive.expires_at:
            error = TOKEN_GONE
        else:
            last_try = self._is_last_try(archive, now)
            started = time.monotonic()
            try:
                result = await fetch_exceptions(
                    self.source,
                    archive.access_token,
                    modes,
                    self.options,
                    self.pace,
                    expires=archive.expires_at,
                    keep_partial_on_error=last_try,
                    clock=self.clock,
                )
            except TokenRejected as exc:
                # Before Expires: MyPreferences does not know the token. No retry helps.
                error = exc.user_message
            except ApiError as exc:
                if not last_try:
                    await self._retry(archive, exc.user_message, count=True)
                    return
                error = exc.user_message
            if result is not None:
                log.info(
                    "exceptions fetched: %d records in %d pages, %.1f s",
                    result.records,
                    result.pages,
                    time.monotonic() - started,
                    extra={"token": archive.access_token, "partial": result.stopped},
                )
        try:
            await asyncio.to_thread(
                self.store.record_fetch,
                archive.id,
                self.owner,
                records=result.records if result else None,
                expected=result.expected if result else None,
                pages=result.pages if result else None,
                stopped=result.stopped if result else None,
                cut=result.cut if result else False,
                error=error,
            )
            await self._post_all(archive, targets, result, error)
        finally:
            if result is not None:
                result.discard()

    async def _wanted_targets(self, archive: DueArchive) -> list[UploadTarget]:
        targets = await asyncio.to_thread(self.store.upload_targets, archive.id)
        wanted = []
        for target in targets:
            if target.wanted:
                wanted.append(target)
            else:
                await asyncio.to_thread(
                    self.store.drop_upload, target.upload_id, "the watch ended first"
                )
        return wanted

    def _is_last_try(self, archive: DueArchive, now: datetime) -> bool:
        if archive.attempts + 1 >= MAX_ATTEMPTS:
            return True
        if archive.expires_at is None:
            return False
        return now + timedelta(seconds=self._backoff(archive.attempts)) >= archive.expires_at

    @staticmethod
    def _backoff(attempts: int) -> float:
        return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** min(attempts, 20))

    async def _retry(self, archive: DueArchive, error: str | None, *, count: bool) -> None:
        delay = self._backoff(archive.attempts) if count else READY_WAIT_SECONDS
        log.warning(
            "exceptions archive will be tried again in %.0f s (%s)",
            delay,
            error or "waiting for its threads",
            extra={"token": archive.access_token},
        )
        await asyncio.to_thread(
            self.store.retry_archive,
            archive.id,
            self.owner,
            error,
            self.clock() + timedelta(seconds=delay),
            count=count,
        )

    async def _post_all(
        self,
        archive: DueArchive,
        targets: list[UploadTarget],
        result: FetchResult | None,
        error: str | None,
    ) -> None:
        later: float | None = None
        for target in await self._ready(archive, targets):
            # A thread not ready yet (no card, replies before it unsent) is brought up to
            # date by the post's own delivery pass, or the publisher says LATER.
            post = ArchivePost(archive, target, self.mode_of(target), result, error)
            wait = await self._post_one(post)
            if wait is not None:
                later = wait if later is None else min(later, wait)
        if later is None:
            await asyncio.to_thread(self.store.finish_archive, archive.id, self.owner, self.clock())
            return
        await asyncio.to_thread(
            self.store.retry_archive,
            archive.id,
            self.owner,
            None,
            self.clock() + timedelta(seconds=later),
            count=False,
        )

    async def _ready(self, archive: DueArchive, targets: list[UploadTarget]) -> list[UploadTarget]:
        """The targets once their threads are ready, or as they are after the wait.

        Read again first: the fetch may have taken minutes, and a channel may have
        stopped watching (or lost the bot) meanwhile.
        """
        deadline = time.monotonic() + self.ready_wait_seconds
        while True:
            fresh = {t.upload_id: t for t in await self._wanted_targets(archive)}
            targets = [fresh[t.upload_id] for t in targets if t.upload_id in fresh]
            if all(t.ready for t in targets) or time.monotonic() >= deadline:
                return targets
            await self.sleep(READY_POLL_SECONDS)

    async def _post_one(self, post: ArchivePost) -> float | None:
        """Post into one thread; None when settled, else seconds until it should be tried again.

        Failures are counted (``attempts``) and given up after their limit, so nothing
        is tried for ever; waits of up to ``MAX_INLINE_WAIT_SECONDS`` in all are waited
        out here, with the file at hand.
        """
        target = post.target
        attempts = target.attempts
        waited = 0.0
        while True:
            published = await self.publisher.publish(post)
            if published.fate is Fate.SENT:
                await asyncio.to_thread(
                    self.store.mark_upload_sent,
                    target.upload_id,
                    mode=post.mode.value,
                    file_id=published.file_id,
                    ts=published.ts,
                    now=self.clock(),
                )
                return None
            if published.fate is Fate.LATER and self._too_late(post.archive):
                published = Published(
                    Fate.DROP, error=f"the thread never became ready ({published.error})"
                )
            if published.fate in (Fate.RETRY, Fate.WAIT):
                attempts += 1
                limit = (
                    MAX_RATE_LIMITED_UPLOADS if published.fate is Fate.WAIT else MAX_UPLOAD_ATTEMPTS
                )
                if attempts >= limit:
                    published = Published(Fate.DROP, error=published.error)
                else:
                    await asyncio.to_thread(
                        self.store.note_upload_failure,
                        target.upload_id,
                        published.error or "failed",
                    )
            if published.fate is Fate.DROP:
                log.error(
                    "giving up on posting exceptions into a thread (%s)",
                    published.error,
                    extra={"channel": target.channel_id, "token": post.archive.access_token},
                )
                await asyncio.to_thread(
                    self.store.drop_upload, target.upload_id, published.error or "refused"
                )
                return None
            wait = published.wait_seconds
            if wait is None:
                wait = _upload_backoff(attempts)
            wait = max(wait, MIN_WAIT_SECONDS)  # never a busy loop
            if waited + wait > MAX_INLINE_WAIT_SECONDS:
                return wait
            await self.sleep(wait)
            waited += wait

    def _too_late(self, archive: DueArchive) -> bool:
        """True once an archive has waited for a thread longer than anyone would want it."""
        return self.clock() - archive.created_at > MAX_THREAD_WAIT


def _upload_backoff(attempts: int) -> float:
    """2 s, 4 s, 8 s ... after the 1st, 2nd, 3rd failed upload; at most MAX_BACKOFF_SECONDS."""
    return min(
        MAX_BACKOFF_SECONDS, FIRST_UPLOAD_BACKOFF_SECONDS * 2 ** min(max(0, attempts - 1), 20)
    )
