"""What the commands and buttons do, independent of how Slack delivered them.

Lookups go to the API; watching stores a subscription after the API has
confirmed the import exists; delivery (``deliver_now``) then posts the
tracking card.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum

from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.domain.expiry import warning_at
from bot.domain.schedule import next_poll_at
from bot.domain.status import ImportStatus
from bot.mypreferences.client import MyPreferencesClient, RetryPolicy
from bot.store.interface import SubscriptionStore
from bot.store.records import Watch

log = logging.getLogger(__name__)


class WatchResult(Enum):
    STARTED = "started"
    ALREADY = "already"
    FINISHED = "finished"  # Completed or Failed already: shown, not watched


@dataclass(frozen=True)
class WatchOutcome:
    result: WatchResult
    status: ImportStatus


class ImportService:
    def __init__(
        self,
        settings: Settings,
        subscriptions: SubscriptionStore,
        api: MyPreferencesClient,
        deliver_now: Callable[[int], Awaitable[None]],
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.api = api
        #: Brings one subscription's channel up to date now (posts the card).
        self.deliver_now = deliver_now
        self.clock = clock
        self.schedule = settings.schedule()
        self.retry = RetryPolicy(budget_seconds=settings.lookup_budget_seconds)

    async def lookup(self, access_token: int) -> ImportStatus:
        """The import's current status. Raises ``ApiError`` with words for the user."""
        return await self.api.get_status(access_token, retry=self.retry)

    async def watch(
        self, *, team_id: str, channel_id: str, user_id: str, access_token: int
    ) -> WatchOutcome:
        """Subscribe the channel after the API confirmed the import; nothing stored on error."""
        status = await self.lookup(access_token)
        if status.status.is_terminal:
            return WatchOutcome(WatchResult.FINISHED, status)
        now = self.clock()
        first_poll = next_poll_at(
            now, status.status, 0, status.expires, self.schedule, random.random()
        )
        if (
            status.expires is not None
            and warning_at(status.expires, self.schedule.expiry_warning) <= now
        ):
            # Already inside the warning window (or past it): poll at once so the warning is not
            # skipped by an idle interval that outlasts the token.
            first_poll = now
        subscribed = await asyncio.to_thread(
            self.subscriptions.subscribe,
            team_id=team_id,
            channel_id=channel_id,
            client_id=self.settings.client_id,
            status=status,
            user_id=user_id,
            now=now,
            next_poll_at=first_poll,
        )
        if not subscribed.created:
            return WatchOutcome(WatchResult.ALREADY, status)
        log.info(
            "watch started",
            extra={"team": team_id, "channel": channel_id, "token": access_token, "user": user_id},
        )
        await self.deliver_now(subscribed.subscription_id)
        return WatchOutcome(WatchResult.STARTED, status)

    async def unwatch(
        self, *, team_id: str, channel_id: str, user_id: str, access_token: int
    ) -> bool:
        """End the channel's watch; the card says who ended it. False if none."""
        ended = await asyncio.to_thread(
            self.subscriptions.unsubscribe,
            team_id=team_id,
            channel_id=channel_id,
            client_id=self.settings.client_id,
            access_token=access_token,
            reason=f"unwatched by <@{user_id}>",
            now=self.clock(),
        )
        if ended is None:
            return False
        log.info(
            "watch ended",
            extra={"team": team_id, "channel": channel_id, "token": access_token, "user": user_id},
        )
        await self.deliver_now(ended)
        return True

    async def watches(self, team_id: str, channel_id: str) -> list[Watch]:
        return await asyncio.to_thread(self.subscriptions.channel_watches, team_id, channel_id)

    async def is_watched(self, team_id: str, channel_id: str, access_token: int) -> bool:
        watches = await self.watches(team_id, channel_id)
        return any(w.access_token == access_token for w in watches)
