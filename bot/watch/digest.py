"""The daily digest job: which channels are due, one lease per channel and day, then post.

Runs every ``DIGEST_CHECK_SECONDS`` on the watcher's scheduler (``jobs.py``).
Each replica looks at every channel with a digest time; the ``digests``
table's unique (team, channel, day) key and its lease decide which replica
posts, so a day's digest is posted once however many replicas run and
however often they restart. Posting itself is handed in (``DigestPoster``,
in ``bot/slack``), as delivery is handed to the poller.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, timedelta
from typing import Protocol

from bot.clock import Clock, utcnow
from bot.domain.digest import DIGEST_WINDOW, DigestSummary, due_day, summarise
from bot.store.digests import EMPTY, SENT, DayKey
from bot.store.interface import DigestStore, HistoryStore, SettingsStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
# Enough for any one channel's day; the message shows at most a few dozen lines.
MAX_FINISHED = 500
# A post (its links and the message) that takes longer is given up and tried again later.
POST_BUDGET_SECONDS = 20.0


class DigestNotSent(Exception):
    """Slack did not take the digest; ``permanent`` when trying again cannot help.

    ``not_before``: Slack has the channel wait until then (a 429 now, or earlier);
    waiting is not a failure, so no attempt is counted.
    """

    def __init__(self, error: str, *, permanent: bool, not_before: datetime | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.permanent = permanent
        self.not_before = not_before


class DigestPoster(Protocol):
    async def post_digest(self, team_id: str, channel_id: str, summary: DigestSummary) -> str:
        """Post the digest; returns the message ts. Raises ``DigestNotSent``."""
        ...


class DigestJob:
    """Posts each channel's digest once per local day."""

    def __init__(
        self,
        settings: SettingsStore,
        history: HistoryStore,
        digests: DigestStore,
        poster: DigestPoster,
        owner: str,
        *,
        lease_seconds: float = 60.0,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.history = history
        self.digests = digests
        self.poster = poster
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock

    async def run(self) -> int:
        """Post every digest that is due and not yet settled; returns how many were posted."""
        now = self.clock()
        channels = await asyncio.to_thread(self.settings.digest_channels)
        due: dict[DayKey, date] = {}
        for channel in channels:
            day = due_day(now, channel.digest, channel.since)
            if day is not None:
                due[(channel.team_id, channel.channel_id, day.isoformat())] = day
        if not due:
            return 0
        settled = await asyncio.to_thread(self.digests.settled, list(due))
        posted = 0
        for key in sorted(due.keys() - settled):
            posted += await self._one(key, due[key])
        return posted

    async def _one(self, key: DayKey, day: date) -> int:
        now = self.clock()
        attempts = await asyncio.to_thread(
            self.digests.claim, key, self.owner, now, self.lease_seconds
        )
        if attempts is None:
            return 0  # another replica has it, or it waits for a retry
        team_id, channel_id, _ = key
        extra = {"team": team_id, "channel": channel_id, "event": f"digest:{day.isoformat()}"}
        finished = await asyncio.to_thread(
            self.history.finished,
            team_id,
            channel_id=channel_id,
            since=now - DIGEST_WINDOW,
            limit=MAX_FINISHED,
        )
        running = await asyncio.to_thread(self.history.active, team_id, channel_id=channel_id)
        summary = summarise(day, now, finished, running)
        if summary.empty:
            await asyncio.to_thread(self.digests.finish, key, self.owner, EMPTY, now)
            log.info("digest skipped: nothing happened", extra=extra)
            return 0
        # Held past the post's time limit: no other replica can take the day over meanwhile.
        held = await asyncio.to_thread(
            self.digests.extend,
            key,
            self.owner,
            self.clock(),
            self.lease_seconds + POST_BUDGET_SECONDS,
        )
        if not held:
            return 0
        try:
            ts = await asyncio.wait_for(
                self.poster.post_digest(team_id, channel_id, summary), POST_BUDGET_SECONDS
            )
        except (DigestNotSent, TimeoutError) as raised:
            exc = (
                raised
                if isinstance(raised, DigestNotSent)
                else DigestNotSent("timeout", permanent=False)
            )
            await self._not_sent(key, attempts, exc, extra)
            return 0
        await asyncio.to_thread(self.digests.finish, key, self.owner, SENT, self.clock(), ts)
        log.info("digest posted", extra=extra)
        return 1

    async def _not_sent(
        self, key: DayKey, attempts: int, exc: DigestNotSent, extra: dict[str, str]
    ) -> None:
        """A wait postpones the day (no attempt counted); a failure retries or gives up."""
        if exc.not_before is not None:
            log.info("digest waits: Slack has the channel wait", extra=extra)
            await asyncio.to_thread(self.digests.postpone, key, self.owner, exc.not_before)
            return
        give_up = exc.permanent or attempts + 1 >= MAX_ATTEMPTS
        delay = min(600.0, 30.0 * 2**attempts)
        log.warning(
            "digest not sent (%s)%s",
            exc.error,
            "; giving up for today" if give_up else f"; retrying in {delay:.0f} s",
            extra=extra,
        )
        await asyncio.to_thread(
            self.digests.failed,
            key,
            self.owner,
            exc.error,
            self.clock() + timedelta(seconds=delay),
            give_up,
        )
