"""Brings each subscription's channel up to date: the tracking card and its thread.

Render, compare with what was last posted, and only then edit or post. Each
notification is marked sent in the database as soon as Slack accepts it, so
after a crash at most the one message in flight can repeat.

Delivery runs on its own loop, beside the poller: the poller only wakes it, so
a poll never waits on Slack. The loop leases subscriptions that have work and
delivers each in its own task; a channel that is slow, failing or rate-limited
holds up only itself. Nothing sleeps in place: when Slack says "wait"
(HTTP 429, Retry-After) the wait is stored for that (workspace, channel) and
the subscription is simply not leased again before it ends. Every Slack error
has a fate (``bot/slack/errors.py``): transient ones back off exponentially,
cards included, and are given up after ``MAX_ATTEMPTS`` (a rate-limited message
after ``MAX_RATE_LIMITED_ATTEMPTS``, each after Retry-After); permanent ones end the
subscription with one log line and a metric, and tell whoever subscribed when
they can fix it and Slack still lets the bot speak.

While a subscription is being delivered its lease is renewed every third of
``lease_seconds``, so it never runs out under a holder that is still sending,
and a dead replica's subscriptions are taken over at most ``lease_seconds``
after it died.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock import Clock, utcnow
from bot.domain.eta import estimate_seconds_left
from bot.domain.routing import Route, route
from bot.metrics import METRICS
from bot.service import CardOutcome, CardResult
from bot.slack import render
from bot.slack.calls import (
    POST_FLAGS,
    SLACK_CALL_TIMEOUT_SECONDS,
    UPDATE_FLAGS,
    SlackCallFailed,
    SlackCalls,
    attempt_limit,
    backoff,
    describe,
)
from bot.slack.channel_posts import Alert, AlertQueue
from bot.slack.errors import (
    NETWORK,
    Fate,
    SlackError,
    classify,
    retry_after_seconds,
)
from bot.slack.pacing import Pacer
from bot.slack.render_compact import compact_card
from bot.slack.render_exceptions import card_line
from bot.slack.uploads import ThreadUpload
from bot.store.interface import OutboxStore
from bot.store.records import DeliveryState, PendingNotification

log = logging.getLogger(__name__)

# A subscription lease never needs to be longer: it is renewed while the holder sends.
MAX_LEASE_SECONDS = 15.0
# Finished waits are swept from the database this often.
SWEEP_SECONDS = 300.0

# Slack's limits, kept by spacing the calls (bot/slack/pacing.py), 5 % slower than
# documented so that jitter on the way does not make a call arrive early. Messages:
# "1 per second per channel", "short bursts" (Slack gives no number; 5 is what the
# emulator allows; a smaller real burst costs one 429, honoured as always).
# Card edits: chat.update is Tier 3, 50 a minute per workspace (SLACK_CARD_EDITS_PER_MINUTE),
# with a minute's worth as the burst ("sporadic bursts are welcome").
CHANNEL_MESSAGE_INTERVAL = 1.0 * 1.05
CHANNEL_BURST = 5
CARD_EDITS_PER_MINUTE = 50.0
# A card's booked turn is forgotten this long after it passed unused (the
# subscription ended, or another replica edited the card).
CARD_TURN_MEMORY = timedelta(hours=1)

_POSTED = CardResult(CardOutcome.POSTED)


@dataclass
class _Stop(Exception):
    """Nothing more can be done for this subscription now; ``result`` says why."""

    def __init__(self, result: CardResult) -> None:
        super().__init__(result.outcome.value)
        self.result = result


class Delivery:
    """Brings channels up to date, one leased subscription per task."""

    def __init__(
        self,
        outbox: OutboxStore,
        slack: AsyncWebClient,
        owner: str,
        *,
        lease_seconds: float = 60.0,
        concurrency: int = 20,
        idle_seconds: float = 1.0,
        call_timeout: float = SLACK_CALL_TIMEOUT_SECONDS,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        alerts: AlertQueue | None = None,
        card_edits_per_minute: float = CARD_EDITS_PER_MINUTE,
    ) -> None:
        self.outbox = outbox
        #: Where alerts go (the channel posts); None: no alerts are sent.
        self.alerts = alerts
        self.slack = slack
        self.owner = owner
        self.lease_seconds = min(lease_seconds, MAX_LEASE_SECONDS)
        self.concurrency = concurrency
        self.idle_seconds = idle_seconds
        self._calls = SlackCalls(slack, timeout=call_timeout)
        self.clock = clock
        self.sleep = sleep
        self._in_flight: dict[int, asyncio.Task[CardResult]] = {}
        self._wakeup = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._swept_at: datetime | None = None
        # Lease renewals get a thread of their own: queued behind the other database
        # work of a busy replica, a renewal could come too late and let another
        # replica send the same message.
        self._renewals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lease-renewal")
        # When each lease this replica holds ends, as far as it knows.
        self._held: dict[int, datetime] = {}
        # Messages are spaced per (workspace, channel), card edits per workspace.
        # A channel whose next message must wait is left alone until then
        # (``_paced_until``); a card edit that must wait books its turn
        # (``_card_turns``) and is not leased again before it.
        self.channel_pace: Pacer[tuple[str, str]] = Pacer(CHANNEL_MESSAGE_INTERVAL, CHANNEL_BURST)
        self.card_pace: Pacer[str] = Pacer(
            60 / card_edits_per_minute * 1.05, int(card_edits_per_minute)
        )
        self._paced_until: dict[tuple[str, str], datetime] = {}
        self._card_turns: dict[int, datetime] = {}
        # Card turns booked during a delivery, stored when its lease is released.
        self._unsaved_card_turns: dict[int, datetime] = {}

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Start the delivery loop. Call with the event loop running."""
        self._stopping = False
        self._loop = asyncio.create_task(self._run(), name="delivery")

    def wake(self) -> None:
        """Something may be due (the poller saved events): look now, not at the next idle tick."""
        self._wakeup.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop leasing; let deliveries in flight finish for up to ``timeout``, then cancel.

        The caller releases this replica's leases afterwards.
        """
        self._stopping = True
        self._wakeup.set()
        if self._loop is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        running = list(self._in_flight.values())
        if running:
            await asyncio.wait(running, timeout=timeout)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        self._renewals.shutdown(wait=False)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._fill()
                await self._sweep()
            except Exception:
                log.exception("delivery loop failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self._idle())
            self._wakeup.clear()

    def _idle(self) -> float:
        """How long to wait for a wake-up: the idle tick, or less when a paced channel
        or a booked card turn comes due sooner."""
        now = self.clock()
        soonest = min(
            (at for at in (*self._paced_until.values(), *self._card_turns.values()) if at > now),
            default=None,
        )
        if soonest is None:
            return self.idle_seconds
        return min(self.idle_seconds, max(0.01, (soonest - now).total_seconds()))

    async def _fill(self, skip: frozenset[int] = frozenset()) -> list[int]:
        """Lease due subscriptions up to the free slots and start delivering each."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0 or self._stopping:
            return []
        now = self.clock()
        for key in [k for k, at in self._paced_until.items() if at <= now]:
            del self._paced_until[key]
        # One subscription per channel at a time, none in a channel being paced: every
        # channel gets its turn, and none waits behind another's rate limit.
        ids = await asyncio.to_thread(
            functools.partial(
                self.outbox.claim_channel_heads,
                self.owner,
                now,
                free,
                self.lease_seconds,
                skip_channels=frozenset(self._paced_until),
                skip_subscriptions=skip | frozenset(self._in_flight),
                served_channels=self.channel_pace.spent(now.timestamp()),
            )
        )
        until = now + timedelta(seconds=self.lease_seconds)
        started: list[int] = []
        for subscription_id in ids:
            self._held[subscription_id] = until
            task = asyncio.ensure_future(self._run_leased(subscription_id))
            self._in_flight[subscription_id] = task
            task.add_done_callback(functools.partial(self._finished, subscription_id))
            started.append(subscription_id)
        return started

    def _finished(self, subscription_id: int, _: object = None) -> None:
        self._in_flight.pop(subscription_id, None)
        self._wakeup.set()  # a slot is free: lease more

    async def _sweep(self) -> None:
        now = self.clock()
        if self._swept_at is None or (now - self._swept_at).total_seconds() >= SWEEP_SECONDS:
            self._swept_at = now
            for sid in [s for s, at in self._card_turns.items() if at < now - CARD_TURN_MEMORY]:
                del self._card_turns[sid]
            await asyncio.to_thread(self.outbox.clear_waits, now)

    async def deliver_due(self) -> int:
        """One full pass: deliver everything due now, and return how many subscriptions.

        The loop does this continuously; tests and one-off callers use this.
        """
        attempted: set[int] = set()
        while True:
            started = await self._fill(frozenset(attempted))
            attempted.update(started)
            if self._in_flight:
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
            if not started:
                return len(attempted)

    async def deliver_new(self, subscription_id: int) -> CardResult:
        """Post the card of a subscription the watch command just created, leased to us.

        A refusal is returned, not acted on: the watch command tells the person and
        forgets the subscription. The lease is then kept until it runs out, so that
        no delivery picks the subscription up before it is forgotten.
        """
        return await self._run_leased(subscription_id, new=True, urgent=True)

    async def deliver_now(self, subscription_id: int) -> CardResult:
        """Bring one subscription's channel up to date now (unwatch edits its card)."""
        now = self.clock()
        leased = await asyncio.to_thread(
            self.outbox.claim_subscription, subscription_id, self.owner, now, self.lease_seconds
        )
        if not leased:
            # Being delivered right now (here or by another replica): it will see the change.
            return CardResult(CardOutcome.LATER)
        self._held[subscription_id] = now + timedelta(seconds=self.lease_seconds)
        return await self._run_leased(subscription_id, urgent=True)

    async def _run_leased(
        self, subscription_id: int, *, new: bool = False, urgent: bool = False
    ) -> CardResult:
        result = CardResult(CardOutcome.LATER)
        try:
            result = await self._holding(
                subscription_id, self._load_and_deliver(subscription_id, new, urgent)
            )
        except Exception:
            log.exception("delivery failed", extra={"subscription": subscription_id})
        finally:
            if new and result.outcome is CardOutcome.REFUSED:
                self._forget(subscription_id)
            else:
                await self._release(subscription_id)
        return result

    def _forget(self, subscription_id: int) -> datetime | None:
        """What this replica keeps of a lease it is done with; the card turn it booked."""
        self._held.pop(subscription_id, None)
        return self._unsaved_card_turns.pop(subscription_id, None)

    async def _release(self, subscription_id: int) -> None:
        """Give the lease back, with the card turn booked while it was held."""
        card_turn = self._forget(subscription_id)
        await asyncio.to_thread(
            self.outbox.release_subscription, subscription_id, self.owner, card_turn
        )

    async def _load_and_deliver(
        self, subscription_id: int, new: bool, urgent: bool = False
    ) -> CardResult:
        delivery = await asyncio.to_thread(self.outbox.delivery, subscription_id)
        if delivery is None:
            return CardResult(CardOutcome.LATER)
        return await self._deliver(delivery, new=new, urgent=urgent)

    async def _holding(
        self, subscription_id: int, work: Coroutine[Any, Any, CardResult]
    ) -> CardResult:
        """Run ``work`` while renewing the lease; stop it if the lease is lost."""
        task = asyncio.ensure_future(work)
        renewing = asyncio.ensure_future(self._renew(subscription_id))
        try:
            await asyncio.wait({task, renewing}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # shutting down: the message in flight may repeat once, no more
            raise
        finally:
            renewing.cancel()
        if not task.done():
            # The lease was lost (another replica may hold it now): stop sending at once.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.warning(
                "lost a delivery lease while sending; stopped",
                extra={"subscription": subscription_id},
            )
            return CardResult(CardOutcome.LATER)
        return task.result()

    async def _renew(self, subscription_id: int) -> None:
        """Every third of a lease, extend it; return when it cannot be extended."""
        while True:
            await self.sleep(self.lease_seconds / 3)
            if not await self._extend(subscription_id):
                return

    async def _extend(self, subscription_id: int) -> bool:
        """Extend one lease now; False when another replica holds it."""
        now = self.clock()
        renewed = await asyncio.get_running_loop().run_in_executor(
            self._renewals,
            self.outbox.renew_lease,
            subscription_id,
            self.owner,
            now,
            self.lease_seconds,
        )
        if renewed:
            self._held[subscription_id] = now + timedelta(seconds=self.lease_seconds)
        return bool(renewed)

    async def _still_held(self, d: DeliveryState) -> None:
        """Before each call to Slack: is the lease surely ours for a while? Else renew
        it first, and stop if another replica has it (it may be sending the same)."""
        until = self._held.get(d.subscription_id)
        margin = timedelta(seconds=self.lease_seconds / 3)
        if until is not None and until - self.clock() > margin:
            return
        if not await self._extend(d.subscription_id):
            log.warning(
                "lost a delivery lease before sending; stopped",
                extra={"subscription": d.subscription_id},
            )
            raise _Stop(CardResult(CardOutcome.LATER))

    # ------------------------------------------------------------------ one subscription

    async def _deliver(
        self, d: DeliveryState, *, new: bool = False, urgent: bool = False
    ) -> CardResult:
        """The card first (posted or edited), then the thread's replies, in order.

        ``urgent`` (someone is waiting: watch, unwatch): the card is posted or edited
        without waiting its turn at the pace; the turn is still counted.
        """
        now = self.clock()
        if _later(d.channel_wait_until, now):
            return CardResult(CardOutcome.LATER, "ratelimited")
        try:
            ts = d.tracking_ts
            if ts is None:
                if not d.active and not d.notifications:
                    await asyncio.to_thread(
                        self.outbox.mark_card_done, d.subscription_id, d.card_wanted
                    )
                    return _POSTED
                if _later(d.card_retry_at, now):
                    return CardResult(CardOutcome.LATER, d.card_error)
                self._pace_message(d, urgent)
                ts = await self._post_card(d, new=new)
            elif (
                d.card_done < d.card_wanted
                and (not _later(d.card_retry_at, now) or (urgent and _deferred(d)))
                and await self._card_turn(d, urgent)
            ):
                ts = await self._edit_card(d, ts)
            await self._post_replies(d, ts, now)
        except _Stop as stop:
            return stop.result
        return _POSTED

    def _pace_message(self, d: DeliveryState, urgent: bool = False) -> None:
        """Before a message to the channel: its turn now, or stop until the turn comes.

        The subscription is released and its channel left alone until then (the loop
        wakes for it), so a channel waiting for its pace holds no slot.
        """
        key = (d.team_id, d.channel_id)
        now = self.clock()
        if urgent:
            self.channel_pace.reserve(key, now.timestamp())
        else:
            wait = self.channel_pace.take(key, now.timestamp())
            if wait > 0:
                self._paced_until[key] = now + timedelta(seconds=wait)
                raise _Stop(CardResult(CardOutcome.LATER, "paced"))
        # When this message used the channel's last turn, no other subscription of the
        # channel is leased before the next: leasing and loading one only to find it
        # must wait would cost as much as a message.
        after = self.channel_pace.delay(key, now.timestamp())
        if after > 0:
            self._paced_until[key] = now + timedelta(seconds=after)

    async def _card_turn(self, d: DeliveryState, urgent: bool) -> bool:
        """Whether the card may be edited now. If not, its turn under the workspace's
        chat.update limit is booked and stored as the card's retry time; the replies
        go on meanwhile (a card edit never holds back a message)."""
        now = self.clock()
        booked_here = self._card_turns.pop(d.subscription_id, None) is not None
        if _deferred(d):
            # Its turn has come (or someone is waiting for it): it needs no other. A
            # turn another replica booked is counted here too.
            if not booked_here:
                self.card_pace.reserve(d.team_id, now.timestamp())
            return True
        wait = self.card_pace.reserve(d.team_id, now.timestamp())
        if urgent or wait <= 0:
            return True
        turn = now + timedelta(seconds=wait)
        self._card_turns[d.subscription_id] = turn
        # Stored with the release of the lease, in the same transaction (no other
        # replica can lease the subscription before): a write less per message.
        self._unsaved_card_turns[d.subscription_id] = turn
        return False

    async def _post_card(self, d: DeliveryState, *, new: bool = False) -> str:
        card = self._card(d)
        await self._still_held(d)
        try:
            response = await self._call(
                "chat_postMessage", channel=d.channel_id, **card.as_kwargs(), **POST_FLAGS
            )
        except SlackCallFailed as failed:
            raise _Stop(await self._card_failed(d, failed, posting=True, new=new)) from failed
        ts = str(response["ts"])
        # Stored before anything else is posted: the thread hangs off this ts.
        await asyncio.to_thread(
            self.outbox.set_tracking_message, d.subscription_id, ts, d.card_wanted
        )
        return ts

    async def _edit_card(self, d: DeliveryState, ts: str) -> str:
        """Edit the card; a card that is gone is posted afresh. Returns the card's ts."""
        card = self._card(d)
        await self._still_held(d)
        try:
            await self._call(
                "chat_update", channel=d.channel_id, ts=ts, **card.as_kwargs(), **UPDATE_FLAGS
            )
        except SlackCallFailed as failed:
            if failed.error.fate is Fate.CARD_GONE:
                log.info(
                    "the tracking card is gone (%s); posting a new one",
                    failed.detail,
                    extra={"channel": d.channel_id, "token": d.access_token},
                )
                return await self._post_card(d)
            result = await self._card_failed(d, failed, posting=False)
            if result.outcome is CardOutcome.REFUSED:
                raise _Stop(result) from failed  # the watch has ended: no reply goes
            # An edit that is backing off, or waiting out chat.update's workspace-wide
            # limit, holds back no reply: chat.postMessage has a limit of its own.
            return ts
        await asyncio.to_thread(self.outbox.mark_card_done, d.subscription_id, d.card_wanted)
        return ts

    async def _post_replies(self, d: DeliveryState, ts: str, now: datetime) -> None:
        for notification in d.notifications:
            if notification.next_attempt_at > now:
                return  # keep the thread in order: nothing overtakes a message that must wait
            where = self._route(d, notification)
            if not await self._aside(d, notification, where, ts):
                continue
            self._pace_message(d)
            message = render.event_message(
                notification.event, notification.snapshot, d.subscribed_by, now, route=where
            )
            await self._still_held(d)
            try:
                response = await self._call(
                    "chat_postMessage",
                    channel=d.channel_id,
                    thread_ts=ts,
                    reply_broadcast=where.broadcast,
                    **message.as_kwargs(),
                    **POST_FLAGS,
                )
            except SlackCallFailed as failed:
                if await self._reply_failed(d, notification, failed):
                    continue  # dropped for good: the next reply may go
                return
            await asyncio.to_thread(
                self.outbox.mark_sent, notification.id, response.get("ts"), self.clock()
            )
            METRICS.notifications.labels(kind=notification.event.kind.value, outcome="sent").inc()
            lag = (self.clock() - notification.created_at).total_seconds()
            METRICS.notification_lag.observe(max(0.0, lag))
            log.info(
                "notification sent",
                extra={
                    "event": notification.event.key,
                    "team": d.team_id,
                    "channel": d.channel_id,
                    "token": d.access_token,
                },
            )

    def _card(self, d: DeliveryState) -> render.Message:
        now = self.clock()
        eta = (
            estimate_seconds_left(d.status, d.rate_base_at, d.rate_base_done, now)
            if d.status is not None and d.active
            else None
        )
        if d.settings.compact:
            return compact_card(
                d.status,
                d.access_token,
                now,
                subscriber_id=d.subscribed_by,
                eta_seconds=eta,
                ended_reason=None if d.active else (d.ended_reason or "ended"),
                exceptions_line=card_line(d.exceptions) if d.exceptions is not None else None,
            )
        return render.tracking_card(
            d.status,
            d.access_token,
            now,
            subscriber_id=d.subscribed_by,
            subscribed_at=d.subscribed_at,
            eta_seconds=eta,
            ended_reason=None if d.active else (d.ended_reason or "ended"),
            exceptions_line=card_line(d.exceptions) if d.exceptions is not None else None,
        )

    # ------------------------------------------------------------------ the channel's settings

    def _route(self, d: DeliveryState, notification: PendingNotification) -> Route:
        """Where this reply goes, as the channel's settings say (``bot.domain.routing``)."""
        return route(notification.event, notification.snapshot, d.settings, d.subscribed_by)

    async def _aside(
        self, d: DeliveryState, notification: PendingNotification, where: Route, ts: str
    ) -> bool:
        """Queue the reply's alert (once: keyed by the notification); record a reply the
        channel does not want as skipped. False when the reply itself is not to be posted."""
        if where.alert_channel and self.alerts is not None:
            await self.alerts.queue_alert(
                Alert(
                    team_id=d.team_id,
                    alert_channel=where.alert_channel,
                    key=f"alert:{notification.id}",
                    event=notification.event,
                    status=notification.snapshot,
                    source_channel=d.channel_id,
                    thread_ts=ts,
                    mention=where.alert_mention,
                    subscriber_id=d.subscribed_by,
                    compact=where.compact,
                )
            )
        if where.reply:
            return True
        await asyncio.to_thread(self.outbox.mark_skipped, notification.id)
        METRICS.notifications.labels(kind=notification.event.kind.value, outcome="skipped").inc()
        return False

    # ------------------------------------------------------------------ Slack, and its errors

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """One Slack call, bounded in time; any failure is ``SlackCallFailed`` with its fate."""
        return await self._calls.call(method, **kwargs)

    async def _card_failed(
        self, d: DeliveryState, failed: SlackCallFailed, *, posting: bool, new: bool = False
    ) -> CardResult:
        """Decide what a failed card post or edit means; returns what became of the card.

        The caller stops after a failed post (replies need the card); after an edit
        that must wait, the replies go on.
        """
        error, now = failed.error, self.clock()
        where = {"team": d.team_id, "channel": d.channel_id, "token": d.access_token}
        if error.fate.permanent:
            if new:  # the watch command tells the person; nothing is kept
                return CardResult(CardOutcome.REFUSED, failed.detail, error.hint)
            if d.active or posting:
                await self._end(d, failed)
            else:
                # The watch had ended already: its last edit cannot be made. Leave it.
                log.error("Slack refused the final card edit (%s)", failed.detail, extra=where)
                await asyncio.to_thread(
                    self.outbox.mark_card_done, d.subscription_id, d.card_wanted
                )
            return CardResult(CardOutcome.REFUSED, failed.detail, error.hint)
        attempts = d.card_attempts + 1
        if error.fate is Fate.RATE_LIMITED and not posting:
            # chat.update's limit is not chat.postMessage's: this card waits Retry-After,
            # the channel's messages go on. Other cards keep to the pace (``card_pace``):
            # one channel's 429 stalls no other channel's card.
            wait = failed.retry_after or 1.0
            METRICS.slack_rate_limit_waits.inc()
            log.info(
                "Slack rate limit on %s: this card waits %.0f s",
                failed.method,
                wait,
                extra={"team": d.team_id, "channel": d.channel_id},
            )
        elif error.fate is Fate.RATE_LIMITED:
            wait = failed.retry_after or 1.0
            await self._wait(d.team_id, d.channel_id, now, wait, failed.method)
        else:
            wait = backoff(attempts)
        if attempts >= attempt_limit(error):
            if posting:
                await self._end(d, failed, gave_up=attempts)
                return CardResult(CardOutcome.REFUSED, failed.detail, None)
            log.error(
                "giving up on editing the tracking card after %d attempts (%s)",
                attempts,
                failed.detail,
                extra=where,
            )
            await asyncio.to_thread(self.outbox.mark_card_done, d.subscription_id, d.card_wanted)
            return CardResult(CardOutcome.LATER, failed.detail)
        if error.fate is not Fate.RATE_LIMITED:
            log.warning(
                "Slack refused to %s the tracking card (%s); trying again in %.0f s",
                "post" if posting else "edit",
                failed.detail,
                wait,
                extra=where,
            )
        await asyncio.to_thread(
            self.outbox.mark_card_failed,
            d.subscription_id,
            failed.detail,
            now + timedelta(seconds=wait),
        )
        return CardResult(CardOutcome.LATER, failed.detail)

    async def _reply_failed(
        self, d: DeliveryState, notification: PendingNotification, failed: SlackCallFailed
    ) -> bool:
        """Decide what a failed reply means. True when it was dropped and the next may go."""
        error, now = failed.error, self.clock()
        kind = notification.event.kind.value
        if error.fate.ends_subscription:
            await self._end(d, failed)
            return False
        if error.fate.permanent or error.fate is Fate.CARD_GONE:
            self._drop(notification, failed.detail, "Slack will never accept it")
            await asyncio.to_thread(self.outbox.drop_notification, notification.id, failed.detail)
            return True
        attempts = notification.attempts + 1
        if attempts >= attempt_limit(error):
            self._drop(notification, failed.detail, f"after {attempts} attempts")
            await asyncio.to_thread(self.outbox.drop_notification, notification.id, failed.detail)
            return False
        if error.fate is Fate.RATE_LIMITED:
            wait = failed.retry_after or 1.0
            await self._wait(d.team_id, d.channel_id, now, wait, failed.method)
        else:
            wait = backoff(attempts)
            log.warning(
                "Slack refused a notification (%s); retrying in %.0f s",
                failed.detail,
                wait,
                extra={"event": notification.event.key, "channel": d.channel_id},
            )
        METRICS.notifications.labels(kind=kind, outcome="retry").inc()
        await asyncio.to_thread(
            self.outbox.mark_attempt_failed,
            notification.id,
            failed.detail,
            now + timedelta(seconds=wait),
        )
        return False

    def _drop(self, notification: PendingNotification, error: str, why: str) -> None:
        log.error(
            "giving up on a notification %s (%s)",
            why,
            error,
            extra={"event": notification.event.key},
        )
        METRICS.notifications.labels(kind=notification.event.kind.value, outcome="dropped").inc()

    async def _wait(
        self, team_id: str, channel_id: str, now: datetime, seconds: float, method: str
    ) -> None:
        """Slack said wait: store it, so that no replica calls before it is over."""
        METRICS.slack_rate_limit_waits.inc()
        log.info(
            "Slack rate limit on %s: waiting %.0f s",
            method,
            seconds,
            extra={"team": team_id, "channel": channel_id},
        )
        await asyncio.to_thread(
            self.outbox.wait_channel,
            team_id,
            channel_id,
            now + timedelta(seconds=seconds),
            f"{method}: ratelimited",
        )

    async def _end(self, d: DeliveryState, failed: SlackCallFailed, gave_up: int = 0) -> None:
        """End the subscription: one log line, a metric, and a word to the subscriber."""
        error = failed.error
        why = f"gave up after {gave_up} attempts" if gave_up else error.fate.value
        log.warning(
            "ending subscription: Slack says %s (%s)",
            failed.detail,
            why,
            extra={"team": d.team_id, "channel": d.channel_id, "token": d.access_token},
        )
        METRICS.notifications.labels(kind="subscription", outcome=failed.detail).inc()
        await asyncio.to_thread(
            self.outbox.end_subscription,
            d.subscription_id,
            f"Slack: {failed.detail}",
            self.clock(),
        )
        if error.hint and error.fate in (Fate.LOST_CHANNEL, Fate.FORBIDDEN):
            await self._tell_subscriber(d, error)

    async def _tell_subscriber(self, d: DeliveryState, error: SlackError) -> None:
        """One message to whoever subscribed, if Slack still lets the bot speak to them.

        In the channel (privately) when the bot is still in it, else in a direct
        message (that needs the ``im:write`` scope). Each is tried once.
        """
        text = f"I stopped watching import {d.access_token} in <#{d.channel_id}>. {error.hint}"
        if error.fate is Fate.FORBIDDEN:
            with contextlib.suppress(SlackCallFailed):
                await self._call(
                    "chat_postEphemeral", channel=d.channel_id, user=d.subscribed_by, text=text
                )
                return
        try:
            opened = await self._call("conversations_open", users=d.subscribed_by)
            dm = str((opened.get("channel") or {}).get("id", ""))
            await self._call("chat_postMessage", channel=dm, text=text, **POST_FLAGS)
        except SlackCallFailed as failed:
            log.debug("could not tell the subscriber (%s)", failed.detail)

    # ------------------------------------------------------------------ exceptions uploads

    async def deliver_upload(self, subscription_id: int, upload: ThreadUpload) -> None:
        """Bring a subscription's thread up to date, then post ``upload`` into it.

        An exceptions archive's post (``bot/slack/uploads.py``) is the last step of a
        pass, under the subscription's lease: after the card and every reply from
        before the archive, never while the channel must wait, and a failure has the
        fate a reply's would have (a 429 makes the channel wait, a lost channel ends
        the subscription). ``upload.outcome`` says what became of it; the archiver
        counts the failures and gives up in the end.
        """
        now = self.clock()
        leased = await asyncio.to_thread(
            self.outbox.claim_subscription, subscription_id, self.owner, now, self.lease_seconds
        )
        if not leased:
            upload.later(0, "the thread is being delivered")
            return
        self._held[subscription_id] = now + timedelta(seconds=self.lease_seconds)
        try:
            await self._holding(subscription_id, self._pass_then_upload(subscription_id, upload))
        except Exception:
            log.exception("posting exceptions failed", extra={"subscription": subscription_id})
        finally:
            await self._release(subscription_id)

    async def _pass_then_upload(self, subscription_id: int, upload: ThreadUpload) -> CardResult:
        result = await self._load_and_deliver(subscription_id, False)
        d = await asyncio.to_thread(self.outbox.delivery, subscription_id)
        if d is None:
            upload.later(0, "the subscription is gone")
            return result
        waiting = upload.waits_for(d, self.clock())
        if waiting is not None or d.tracking_ts is None:
            upload.later(*(waiting or (0, "the card is not posted yet")))
            return result
        try:
            await self._still_held(d)
            await asyncio.wait_for(
                upload.send(d.channel_id, d.tracking_ts), timeout=upload.timeout_seconds
            )
        except _Stop:
            upload.later(0, "the delivery lease was lost")
        except (
            SlackApiError,
            SlackRequestError,
            TimeoutError,
            aiohttp.ClientError,
            OSError,
        ) as exc:
            await self._upload_failed(d, upload, _upload_failure(exc))
        return result

    async def _upload_failed(
        self, d: DeliveryState, upload: ThreadUpload, failed: SlackCallFailed
    ) -> None:
        """What a refused upload means for the channel; the archiver is told through ``upload``."""
        error = failed.error
        if error.fate is Fate.RATE_LIMITED:
            wait = failed.retry_after or 1.0
            await self._wait(d.team_id, d.channel_id, self.clock(), wait, failed.method)
        elif error.fate.ends_subscription:
            await self._end(d, failed)
        else:
            log.warning(
                "Slack refused the exceptions upload (%s)%s",
                failed.detail,
                "; giving it up" if error.fate.permanent else "; trying again later",
                extra={"channel": d.channel_id, "token": d.access_token},
            )
        upload.failed(error, failed.detail, failed.retry_after)


def _upload_failure(exc: BaseException) -> SlackCallFailed:
    """A failed upload as ``_call`` would describe a failed call: its fate, from errors.py."""
    method = "files upload"
    if isinstance(exc, SlackApiError):
        code, status, retry_after = describe(exc)
        error, detail = classify(code, status), code or f"HTTP {status}"
        with contextlib.suppress(Exception):
            method = str(exc.response.api_url).rsplit("/", 1)[-1] or method
    else:  # the upload URL refused the bytes, a timeout, the network
        error, detail, retry_after = NETWORK, type(exc).__name__, None
    METRICS.slack_errors.labels(error=error.code, fate=error.fate.value).inc()
    wait = retry_after_seconds(retry_after) if error.fate is Fate.RATE_LIMITED else None
    return SlackCallFailed(error, method, detail, wait)


def _deferred(d: DeliveryState) -> bool:
    """The card's edit waits for its turn at the pace (stored by ``release_subscription``),
    not after a failure."""
    return d.card_retry_at is not None and d.card_error is None


def _later(when: datetime | None, now: datetime) -> bool:
    return when is not None and when > now
