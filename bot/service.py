"""What the commands and buttons do, independent of how Slack delivered them.

Lookups go to the API; watching stores a subscription after the API has
confirmed the import exists, then has delivery post the tracking card right
away and says what became of it: posted, coming shortly (Slack asked to
wait), or refused, in which case nothing is kept.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Protocol

from bot.clock import Clock, utcnow
from bot.config import Settings
from bot.domain.expiry import warning_at
from bot.domain.schedule import next_poll_at
from bot.domain.status import ImportStatus
from bot.mypreferences.client import MyPreferencesClient, RetryPolicy
from bot.mypreferences.errors import ApiError
from bot.store.batches import NewMember
from bot.store.interface import BatchStore, SubscriptionStore
from bot.store.records import Watch

log = logging.getLogger(__name__)


class WatchResult(Enum):
    STARTED = "started"
    ALREADY = "already"
    FINISHED = "finished"  # Completed or Failed already: shown, not watched
    REFUSED = "refused"  # Slack refused the tracking card: nothing kept


class CardOutcome(Enum):
    """What became of a tracking card delivery was asked to post (or edit) now."""

    POSTED = "posted"  # the channel shows it
    LATER = "later"  # Slack asked to wait or failed for now: delivery tries again shortly
    REFUSED = "refused"  # Slack will never take it here: ``CardResult.error`` says why


@dataclass(frozen=True)
class CardResult:
    outcome: CardOutcome
    #: Slack's error code, when refused or delayed by an error.
    error: str | None = None
    #: What the person watching can do about a refusal, in their words (None: nothing).
    hint: str | None = None


class CardDelivery(Protocol):
    """What the service asks of delivery (``bot.slack.delivery.Delivery``)."""

    #: The replica's name in leases, and how long a lease lasts.
    owner: str
    lease_seconds: float

    async def deliver_new(self, subscription_id: int) -> CardResult:
        """Post the card of a subscription just created (and leased to ``owner``)."""
        ...

    async def deliver_now(self, subscription_id: int) -> CardResult:
        """Bring one subscription's channel up to date now (e.g. after unwatch)."""
        ...


class BatchCardDelivery(Protocol):
    """What the service asks of batch delivery (``bot.slack.batch_delivery.BatchDelivery``)."""

    owner: str
    lease_seconds: float

    async def deliver_new(self, batch_id: int) -> CardResult:
        """Post the card of a batch just made (and leased to ``owner``)."""
        ...

    def wake(self) -> None:
        """Look for batches to bring up to date now."""
        ...


class BatchLookupFailed(Exception):
    """One import of a batch could not be looked up: nothing was watched."""

    def __init__(self, access_token: int, error: ApiError, failures: int = 1) -> None:
        super().__init__(error.user_message)
        #: The first import that could not be looked up, and why.
        self.access_token = access_token
        self.error = error
        #: How many of the batch's imports could not be looked up.
        self.failures = failures


@dataclass(frozen=True)
class BatchWatchOutcome:
    """What became of ``watch TOKEN TOKEN ...``."""

    result: WatchResult
    statuses: tuple[ImportStatus, ...]
    #: What became of the batch's card (STARTED and REFUSED only).
    card: CardResult | None = None
    #: ALREADY: the imports this channel watches already (nothing was made).
    already: tuple[int, ...] = ()


@dataclass(frozen=True)
class WatchOutcome:
    result: WatchResult
    status: ImportStatus
    #: What became of the tracking card (STARTED and REFUSED only).
    card: CardResult | None = None


class ImportService:
    def __init__(
        self,
        settings: Settings,
        subscriptions: SubscriptionStore,
        api: MyPreferencesClient,
        cards: CardDelivery,
        clock: Clock = utcnow,
        *,
        batches: BatchStore | None = None,
        batch_cards: BatchCardDelivery | None = None,
    ) -> None:
        self.settings = settings
        self.subscriptions = subscriptions
        self.api = api
        #: Posts tracking cards now (delivery).
        self.cards = cards
        #: Batches (``watch TOKEN TOKEN ...``): None where this process has none.
        self.batches = batches
        self.batch_cards = batch_cards
        self.clock = clock
        self.schedule = settings.schedule()
        self.retry = RetryPolicy(budget_seconds=settings.lookup_budget_seconds)

    async def lookup(self, access_token: int) -> ImportStatus:
        """The import's current status. Raises ``ApiError`` with words for the user."""
        return await self.api.get_status(access_token, retry=self.retry)

    async def watch(
        self, *, team_id: str, channel_id: str, user_id: str, access_token: int
    ) -> WatchOutcome:
        """Subscribe the channel after the API confirmed the import, and post its card.

        Nothing is stored when the API refuses the token, nor when Slack refuses
        the card (the bot is not in the channel, a policy forbids it...).
        """
        status = await self.lookup(access_token)
        if status.status.is_terminal:
            return WatchOutcome(WatchResult.FINISHED, status)
        now = self.clock()
        first_poll = self._first_poll(status, now)
        subscribed = await asyncio.to_thread(
            self.subscriptions.subscribe,
            team_id=team_id,
            channel_id=channel_id,
            client_id=self.settings.client_id,
            status=status,
            user_id=user_id,
            now=now,
            next_poll_at=first_poll,
            # Leased to this replica's delivery, so that the card is posted here, now.
            lease_owner=self.cards.owner,
            lease_seconds=self.cards.lease_seconds,
        )
        if not subscribed.created:
            return WatchOutcome(WatchResult.ALREADY, status)
        where = {"team": team_id, "channel": channel_id, "token": access_token, "user": user_id}
        card = await self.cards.deliver_new(subscribed.subscription_id)
        if card.outcome is CardOutcome.REFUSED:
            await asyncio.to_thread(self.subscriptions.forget, subscribed.subscription_id)
            log.info("watch refused: Slack said %s; nothing kept", card.error, extra=where)
            return WatchOutcome(WatchResult.REFUSED, status, card)
        log.info("watch started", extra=where)
        if card.outcome is not CardOutcome.POSTED:
            log.info("the tracking card will follow (Slack said %s)", card.error, extra=where)
        return WatchOutcome(WatchResult.STARTED, status, card)

    def _first_poll(self, status: ImportStatus, now: datetime) -> datetime:
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
        return first_poll

    async def watch_batch(
        self, *, team_id: str, channel_id: str, user_id: str, access_tokens: tuple[int, ...]
    ) -> BatchWatchOutcome:
        """Watch several imports in the channel as one batch: one card, one thread.

        Every import is looked up first; if one cannot be, nothing is watched
        (``BatchLookupFailed`` names it). Nothing is made when all have finished
        already, when the channel watches one of them already, or when Slack
        refuses the batch's card.
        """
        if self.batches is None or self.batch_cards is None:
            raise RuntimeError("this process watches no batches")
        found = await asyncio.gather(
            *(self.lookup(token) for token in access_tokens), return_exceptions=True
        )
        errors = [
            (token, answer)
            for token, answer in zip(access_tokens, found, strict=True)
            if isinstance(answer, BaseException)
        ]
        for _, error in errors:
            if not isinstance(error, ApiError):
                raise error
        if errors:
            token, error = errors[0]
            assert isinstance(error, ApiError)
            raise BatchLookupFailed(token, error, failures=len(errors))
        statuses = tuple(a for a in found if isinstance(a, ImportStatus))
        if all(s.status.is_terminal for s in statuses):
            return BatchWatchOutcome(WatchResult.FINISHED, statuses)
        now = self.clock()
        created = await asyncio.to_thread(
            self.batches.create,
            team_id=team_id,
            channel_id=channel_id,
            client_id=self.settings.client_id,
            members=[NewMember(s, self._first_poll(s, now)) for s in statuses],
            user_id=user_id,
            now=now,
            lease_owner=self.batch_cards.owner,
            lease_seconds=self.batch_cards.lease_seconds,
        )
        if created.batch_id is None:
            return BatchWatchOutcome(WatchResult.ALREADY, statuses, already=created.already_watched)
        where = {"team": team_id, "channel": channel_id, "user": user_id}
        card = await self.batch_cards.deliver_new(created.batch_id)
        if card.outcome is CardOutcome.REFUSED:
            await asyncio.to_thread(self.batches.forget, created.batch_id)
            log.info("batch watch refused: Slack said %s; nothing kept", card.error, extra=where)
            return BatchWatchOutcome(WatchResult.REFUSED, statuses, card)
        log.info("batch watch started (%d imports)", len(statuses), extra=where)
        return BatchWatchOutcome(WatchResult.STARTED, statuses, card)

    async def unwatch_many(
        self, *, team_id: str, channel_id: str, user_id: str, access_tokens: tuple[int, ...]
    ) -> tuple[list[int], list[int]]:
        """End the channel's watch of each import: (stopped, not watched here)."""
        stopped: list[int] = []
        missing: list[int] = []
        for token in access_tokens:
            ended = await self.unwatch(
                team_id=team_id, channel_id=channel_id, user_id=user_id, access_token=token
            )
            (stopped if ended else missing).append(token)
        return stopped, missing

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
        await self.cards.deliver_now(ended)  # a batch's import: its batch's loop edits the card
        if self.batch_cards is not None:
            self.batch_cards.wake()
        return True

    async def watches(self, team_id: str, channel_id: str) -> list[Watch]:
        return await asyncio.to_thread(self.subscriptions.channel_watches, team_id, channel_id)

    async def is_watched(self, team_id: str, channel_id: str, access_token: int) -> bool:
        watches = await self.watches(team_id, channel_id)
        return any(w.access_token == access_token for w in watches)
