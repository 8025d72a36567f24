"""Brings each subscription's channel up to date: the tracking card and its thread.

Render, compare with what was last posted, and only then edit or post. Each
notification is marked sent in the database as soon as Slack accepts it, so
after a crash at most the one message in flight can repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock import Clock, utcnow
from bot.domain.eta import estimate_seconds_left
from bot.metrics import METRICS
from bot.slack import render
from bot.slack.render_exceptions import card_line
from bot.store.interface import OutboxStore
from bot.store.records import DeliveryState, PendingNotification

log = logging.getLogger(__name__)

# The channel is gone for the bot: end the subscription instead of retrying forever.
LOST_CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived"})
REVOKED_ERRORS = frozenset(
    {"token_revoked", "invalid_auth", "account_inactive", "not_authed", "team_not_found"}
)
CARD_GONE_ERRORS = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# Slack errors worth trying again later; any other error means this message can never
# be sent as it is, so it is given up after MAX_ATTEMPTS.
TRANSIENT_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
MAX_ATTEMPTS = 8
# Rate-limit waits up to this long are waited out in place; longer ones are rescheduled.
MAX_INLINE_WAIT_SECONDS = 10.0
MAX_RETRY_DELAY_SECONDS = 600.0


class _Stop(Exception):
    """This subscription can do no more now (rescheduled, or ended)."""


class Delivery:
    """Brings channels up to date, one leased subscription at a time."""

    def __init__(
        self,
        outbox: OutboxStore,
        slack: AsyncWebClient,
        owner: str,
        *,
        lease_seconds: float = 60.0,
        concurrency: int = 10,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.outbox = outbox
        self.slack = slack
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.sleep = sleep
        self._limit = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency

    async def deliver_due(self) -> int:
        """Deliver everything that is due, for every subscription this replica can lease."""
        attempted: set[int] = set()
        batch = self._concurrency * 10
        while True:
            ids = await asyncio.to_thread(
                self.outbox.claim_deliveries, self.owner, self.clock(), batch, self.lease_seconds
            )
            fresh = [i for i in ids if i not in attempted]
            for stale in set(ids) - set(fresh):
                # Tried once this tick already (e.g. a card edit Slack refused): next tick.
                await asyncio.to_thread(self.outbox.release_subscription, stale, self.owner)
            await asyncio.gather(*(self._deliver_leased(i) for i in fresh))
            attempted.update(fresh)
            if len(ids) < batch or not fresh:
                return len(attempted)

    async def deliver_now(self, subscription_id: int) -> None:
        """Deliver one subscription right away (the watch command posts its card)."""
        leased = await asyncio.to_thread(
            self.outbox.claim_subscription,
            subscription_id,
            self.owner,
            self.clock(),
            self.lease_seconds,
        )
        if leased:
            await self._deliver_leased(subscription_id)

    async def _deliver_leased(self, subscription_id: int) -> None:
        async with self._limit:
            try:
                delivery = await asyncio.to_thread(self.outbox.delivery, subscription_id)
                if delivery is not None:
                    await self._deliver(delivery)
            except _Stop:
                pass
            except Exception:
                log.exception("delivery failed", extra={"subscription": subscription_id})
            finally:
                await asyncio.to_thread(
                    self.outbox.release_subscription, subscription_id, self.owner
                )

    async def _deliver(self, d: DeliveryState) -> None:
        now = self.clock()
        ts = d.tracking_ts
        if ts is None:
            if not d.active and not d.notifications:
                await asyncio.to_thread(
                    self.outbox.mark_card_done, d.subscription_id, d.card_wanted
                )
                return
            ts = await self._post_card(d)
        elif d.card_done < d.card_wanted:
            card = self._card(d)
            try:
                await self._call(
                    d, None, "chat_update", channel=d.channel_id, ts=ts, **card.as_kwargs()
                )
            except _CardGone:
                ts = await self._post_card(d)
            else:
                await asyncio.to_thread(
                    self.outbox.mark_card_done, d.subscription_id, d.card_wanted
                )
        for notification in d.notifications:
            if notification.next_attempt_at > now:
                break  # keep the thread in order: nothing overtakes a message that must wait
            message = render.event_message(
                notification.event, notification.snapshot, d.subscribed_by, now
            )
            response = await self._call(
                d,
                notification,
                "chat_postMessage",
                channel=d.channel_id,
                thread_ts=ts,
                reply_broadcast=notification.event.broadcast,
                **message.as_kwargs(),
            )
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

    async def _post_card(self, d: DeliveryState) -> str:
        card = self._card(d)
        response = await self._call(
            d, None, "chat_postMessage", channel=d.channel_id, **card.as_kwargs()
        )
        ts = str(response["ts"])
        # Stored before anything else is posted: the thread hangs off this ts.
        await asyncio.to_thread(
            self.outbox.set_tracking_message, d.subscription_id, ts, d.card_wanted
        )
        return ts

    async def _call(
        self,
        d: DeliveryState,
        notification: PendingNotification | None,
        method: str,
        **kwargs: Any,
    ) -> Any:
        """Call Slack; on failure decide between waiting, rescheduling and ending."""
        while True:
            try:
                return await getattr(self.slack, method)(**kwargs)
            except SlackApiError as exc:
                error = str(exc.response.get("error", "")) if exc.response else ""
                status = exc.response.status_code if exc.response is not None else 0
                if error == "ratelimited" or status == 429:
                    wait = _retry_after(exc)
                    METRICS.slack_rate_limit_waits.inc()
                    if wait <= MAX_INLINE_WAIT_SECONDS:
                        log.info(
                            "Slack rate limit: waiting %.1f s",
                            wait,
                            extra={"channel": d.channel_id},
                        )
                        await self.sleep(wait)
                        continue
                    await self._reschedule(notification, "ratelimited", wait)
                    raise _Stop() from exc
                if error in CARD_GONE_ERRORS and method == "chat_update":
                    raise _CardGone() from exc
                if error in LOST_CHANNEL_ERRORS or error in REVOKED_ERRORS:
                    await self._end(d, error)
                    raise _Stop() from exc
                if notification is None and error and error not in TRANSIENT_ERRORS:
                    # A card Slack will never accept: log it once and stop editing it.
                    log.error(
                        "Slack refused the tracking card (%s)",
                        error,
                        extra={"channel": d.channel_id, "token": d.access_token},
                    )
                    await asyncio.to_thread(
                        self.outbox.mark_card_done, d.subscription_id, d.card_wanted
                    )
                    raise _Stop() from exc
                permanent = bool(error) and error not in TRANSIENT_ERRORS
                await self._reschedule(notification, error or f"HTTP {status}", None, permanent)
                raise _Stop() from exc
            except (TimeoutError, OSError) as exc:
                await self._reschedule(notification, type(exc).__name__, None)
                raise _Stop() from exc

    async def _reschedule(
        self,
        notification: PendingNotification | None,
        error: str,
        wait: float | None,
        permanent: bool = False,
    ) -> None:
        if notification is None:
            return  # a card edit is simply tried again on a later tick
        if permanent or notification.attempts + 1 >= MAX_ATTEMPTS:
            log.error(
                "giving up on a notification after %d attempts (%s)",
                notification.attempts + 1,
                error,
                extra={"event": notification.event.key},
            )
            METRICS.notifications.labels(
                kind=notification.event.kind.value, outcome="dropped"
            ).inc()
            await asyncio.to_thread(self.outbox.drop_notification, notification.id, error)
            return
        delay = (
            wait
            if wait is not None
            else min(MAX_RETRY_DELAY_SECONDS, 2.0 * 2**notification.attempts)
        )
        METRICS.notifications.labels(kind=notification.event.kind.value, outcome="retry").inc()
        log.warning(
            "Slack refused a notification (%s); retrying in %.0f s",
            error,
            delay,
            extra={"event": notification.event.key},
        )
        await asyncio.to_thread(
            self.outbox.mark_attempt_failed,
            notification.id,
            error,
            self.clock() + timedelta(seconds=delay),
        )

    async def _end(self, d: DeliveryState, error: str) -> None:
        log.warning(
            "ending subscription: Slack says %s",
            error,
            extra={"team": d.team_id, "channel": d.channel_id, "token": d.access_token},
        )
        METRICS.notifications.labels(kind="subscription", outcome=error).inc()
        await asyncio.to_thread(
            self.outbox.end_subscription, d.subscription_id, f"Slack: {error}", self.clock()
        )


class _CardGone(Exception):
    """The tracking message was deleted or can no longer be edited."""


def _retry_after(exc: SlackApiError) -> float:
    headers = exc.response.headers if exc.response is not None else {}
    raw = headers.get("Retry-After") or headers.get("retry-after") or "1"
    try:
        return max(0.0, float(raw if isinstance(raw, str) else raw[0]))
    except (TypeError, ValueError):
        return 1.0
