"""Brings each batch's channel up to date: its one card, and its imports' replies.

A batch is delivered like a single watch (``delivery.py``), with the same rules:
render, compare with what was last posted, then edit or post; each reply is
marked sent as soon as Slack accepts it; nothing is sent while the channel
waits; every failure takes its fate from ``bot/slack/errors.py``. The batch is
leased as a whole (its imports never on their own), and before every Slack
call the lease is extended past the call's time limit, so no other replica can
send the same message meanwhile.

What differs: the card sums its imports up (``render_batch``); the thread takes
only each import's end and what went wrong (``bot.domain.routing``, in_batch);
a reply that must wait holds back only its own import's later replies; and
when every import has ended, the batch ends with one reply that sums it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from bot.clock import Clock, utcnow
from bot.domain.batch import ALL_ENDED, BatchMember, BatchSummary
from bot.domain.eta import estimate_seconds_left
from bot.domain.routing import Route, batch_end_route, route
from bot.metrics import METRICS
from bot.service import CardOutcome, CardResult
from bot.slack import render
from bot.slack.calls import (
    POST_FLAGS,
    UPDATE_FLAGS,
    SlackCallFailed,
    SlackCalls,
    attempt_limit,
    retry_in,
)
from bot.slack.channel_posts import Alert, AlertQueue
from bot.slack.errors import Fate
from bot.slack.render_batch import batch_card, batch_summary_message
from bot.store.batches import BatchState, MemberNotification
from bot.store.interface import BatchStore, OutboxStore

log = logging.getLogger(__name__)

_POSTED = CardResult(CardOutcome.POSTED)


class _Stop(Exception):
    """Nothing more can be done for this batch now; ``result`` says why."""

    def __init__(self, result: CardResult) -> None:
        super().__init__(result.outcome.value)
        self.result = result


class BatchDelivery:
    """Brings batches' channels up to date, one leased batch per task, on a loop of its own."""

    def __init__(
        self,
        batches: BatchStore,
        outbox: OutboxStore,
        calls: SlackCalls,
        owner: str,
        *,
        alerts: AlertQueue | None = None,
        lease_seconds: float = 15.0,
        concurrency: int = 10,
        idle_seconds: float = 1.0,
        clock: Clock = utcnow,
    ) -> None:
        self.batches = batches
        self.outbox = outbox
        self.calls = calls
        self.owner = owner
        self.alerts = alerts
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._in_flight: dict[int, asyncio.Task[CardResult]] = {}
        self._wakeup = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        # Lease extensions get a thread of their own, as delivery's renewals do.
        self._renewals = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-lease")

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Start the loop. Call with the event loop running."""
        self._stopping = False
        self._loop = asyncio.create_task(self._run(), name="batch-delivery")

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop leasing; let deliveries in flight finish for up to ``timeout``, then cancel."""
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
            except Exception:
                log.exception("batch delivery loop failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.idle_seconds)
            self._wakeup.clear()

    async def _fill(self, skip: frozenset[int] = frozenset()) -> list[int]:
        free = self.concurrency - len(self._in_flight)
        if free <= 0 or self._stopping:
            return []
        ids = await asyncio.to_thread(
            self.batches.claim_batches, self.owner, self.clock(), free, self.lease_seconds
        )
        started: list[int] = []
        for batch_id in ids:
            if batch_id in self._in_flight or batch_id in skip:
                await asyncio.to_thread(self.batches.release_batch, batch_id, self.owner)
                continue
            task = asyncio.ensure_future(self._run_leased(batch_id))
            self._in_flight[batch_id] = task
            task.add_done_callback(functools.partial(self._finished, batch_id))
            started.append(batch_id)
        return started

    def _finished(self, batch_id: int, _: object = None) -> None:
        self._in_flight.pop(batch_id, None)
        self._wakeup.set()

    async def deliver_due(self) -> int:
        """One full pass over everything due now (tests and one-off callers)."""
        attempted: set[int] = set()
        while True:
            started = await self._fill(frozenset(attempted))
            attempted.update(started)
            if self._in_flight:
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
            if not started:
                return len(attempted)

    async def deliver_new(self, batch_id: int) -> CardResult:
        """Post the card of a batch the watch command just made, leased to us.

        A refusal is returned, not acted on: the command forgets the batch (the
        lease is kept until then, so no loop picks the batch up in between).
        """
        return await self._run_leased(batch_id, new=True)

    async def _run_leased(self, batch_id: int, *, new: bool = False) -> CardResult:
        result = CardResult(CardOutcome.LATER)
        try:
            result = await self._load_and_deliver(batch_id, new)
        except Exception:
            log.exception("batch delivery failed", extra={"event": f"batch:{batch_id}"})
        finally:
            if not (new and result.outcome is CardOutcome.REFUSED):
                await asyncio.to_thread(self.batches.release_batch, batch_id, self.owner)
        return result

    async def _load_and_deliver(self, batch_id: int, new: bool) -> CardResult:
        state = await asyncio.to_thread(self.batches.batch_state, batch_id)
        if state is None:
            return CardResult(CardOutcome.LATER)
        try:
            return await self._deliver(state, new=new)
        except _Stop as stop:
            return stop.result

    async def _held(self, state: BatchState) -> None:
        """Before each Slack call: hold the lease past the call's time limit, or stop."""
        now = self.clock()
        held = await asyncio.get_running_loop().run_in_executor(
            self._renewals,
            self.batches.renew_batch_lease,
            state.batch_id,
            self.owner,
            now,
            self.lease_seconds + self.calls.timeout,
        )
        if not held:
            log.warning(
                "lost a batch's lease before sending; stopped",
                extra={"event": f"batch:{state.batch_id}"},
            )
            raise _Stop(CardResult(CardOutcome.LATER))

    # ------------------------------------------------------------------ one batch

    async def _deliver(self, state: BatchState, *, new: bool = False) -> CardResult:
        """The card first, then the replies, then (all imports over) the batch's end."""
        now = self.clock()
        if _later(state.channel_wait_until, now):
            return CardResult(CardOutcome.LATER, "ratelimited")
        ts = state.tracking_ts
        if ts is None:
            if not state.active:
                await asyncio.to_thread(self.batches.mark_batch_card_done, state)
                return _POSTED
            if _later(state.card_retry_at, now):
                return CardResult(CardOutcome.LATER, state.card_error)
            ts = await self._post_card(state, new=new)
        elif state.card_due and not _later(state.card_retry_at, now):
            ts = await self._edit_card(state, ts)
        replied = await self._post_replies(state, ts, now)
        ending = state.active and replied and all(m.ended_reason for m in state.members)
        if ending:
            summary = summarise(state, now)
            await asyncio.to_thread(
                self.batches.end_batch,
                state.batch_id,
                ALL_ENDED,
                self.clock(),
                summary=not summary.all_stopped,
            )
            log.info("batch ended", extra={"team": state.team_id, "channel": state.channel_id})
        if ending or state.summary_state == "pending":
            fresh = await asyncio.to_thread(self.batches.batch_state, state.batch_id)
            if fresh is not None:
                await self._post_summary(fresh, ts)
                if fresh.card_due:
                    await self._edit_card(fresh, ts)
        return _POSTED

    def _summary(self, state: BatchState) -> BatchSummary:
        return summarise(state, self.clock())

    def _card(self, state: BatchState) -> render.Message:
        forced = state.ended_reason if state.ended_reason not in (None, ALL_ENDED) else None
        return batch_card(
            self._summary(state),
            self.clock(),
            subscriber_id=state.subscribed_by,
            subscribed_at=state.subscribed_at,
            ended_reason=forced,
            compact=state.settings.compact,
        )

    async def _post_card(self, state: BatchState, *, new: bool = False) -> str:
        card = self._card(state)
        await self._held(state)
        try:
            answer = await self.calls.call(
                "chat_postMessage", channel=state.channel_id, **card.as_kwargs(), **POST_FLAGS
            )
        except SlackCallFailed as failed:
            raise _Stop(await self._card_failed(state, failed, posting=True, new=new)) from failed
        ts = str(answer["ts"])
        # Stored before any reply: the batch's thread (and each import's) hangs off it.
        await asyncio.to_thread(self.batches.set_batch_card, state, ts)
        return ts

    async def _edit_card(self, state: BatchState, ts: str) -> str:
        """Edit the card; a card that is gone is posted afresh. Returns the card's ts."""
        card = self._card(state)
        await self._held(state)
        try:
            await self.calls.call(
                "chat_update",
                channel=state.channel_id,
                ts=ts,
                **card.as_kwargs(),
                **UPDATE_FLAGS,
            )
        except SlackCallFailed as failed:
            if failed.error.fate is Fate.CARD_GONE:
                log.info(
                    "a batch's card is gone (%s); posting a new one",
                    failed.detail,
                    extra={"channel": state.channel_id},
                )
                return await self._post_card(state)
            result = await self._card_failed(state, failed, posting=False)
            if result.outcome is CardOutcome.REFUSED or failed.error.fate is Fate.RATE_LIMITED:
                raise _Stop(result) from failed
            return ts  # an edit that is backing off holds back no reply
        await asyncio.to_thread(self.batches.mark_batch_card_done, state)
        return ts

    async def _post_replies(self, state: BatchState, ts: str, now: datetime) -> bool:
        """Each import's replies in order; True when none is left waiting."""
        held_back: set[int] = set()
        for item in state.notifications:
            notification = item.notification
            if item.subscription_id in held_back or notification.next_attempt_at > now:
                held_back.add(item.subscription_id)  # its later replies wait behind it
                continue
            where = route(
                notification.event,
                notification.snapshot,
                state.settings,
                state.subscribed_by,
                in_batch=True,
            )
            await self._queue_alert(state, item, where, ts)
            if not where.reply:
                await asyncio.to_thread(self.outbox.mark_skipped, notification.id)
                continue
            message = render.event_message(
                notification.event, notification.snapshot, state.subscribed_by, now, route=where
            )
            await self._held(state)
            try:
                answer = await self.calls.call(
                    "chat_postMessage",
                    channel=state.channel_id,
                    thread_ts=ts,
                    reply_broadcast=where.broadcast,
                    **message.as_kwargs(),
                    **POST_FLAGS,
                )
            except SlackCallFailed as failed:
                if not await self._reply_failed(state, item, failed):
                    held_back.add(item.subscription_id)
                continue
            await asyncio.to_thread(
                self.outbox.mark_sent, notification.id, answer.get("ts"), self.clock()
            )
            METRICS.notifications.labels(kind=notification.event.kind.value, outcome="sent").inc()
        return not held_back

    async def _queue_alert(
        self, state: BatchState, item: MemberNotification, where: Route, ts: str
    ) -> None:
        if where.alert_channel is None or self.alerts is None:
            return
        notification = item.notification
        await self.alerts.queue_alert(
            Alert(
                team_id=state.team_id,
                alert_channel=where.alert_channel,
                key=f"alert:{notification.id}",
                event=notification.event,
                status=notification.snapshot,
                source_channel=state.channel_id,
                thread_ts=ts,
                mention=where.alert_mention,
                subscriber_id=state.subscribed_by,
                compact=where.compact,
            )
        )

    async def _post_summary(self, state: BatchState, ts: str) -> None:
        """The one reply that sums up an ended batch, sent once."""
        if state.summary_state != "pending" or _later(state.summary_next_at, self.clock()):
            return
        summary = self._summary(state)
        where = batch_end_route(summary.went_wrong, state.settings, state.subscribed_by)
        message = batch_summary_message(summary, where)
        await self._held(state)
        try:
            answer = await self.calls.call(
                "chat_postMessage",
                channel=state.channel_id,
                thread_ts=ts,
                reply_broadcast=where.broadcast,
                **message.as_kwargs(),
                **POST_FLAGS,
            )
        except SlackCallFailed as failed:
            attempts = state.summary_attempts + 1
            give_up = failed.error.fate.permanent or attempts >= attempt_limit(failed.error)
            if failed.error.fate is Fate.RATE_LIMITED:
                await self._wait(state, failed)
            retry = (
                None if give_up else self.clock() + timedelta(seconds=retry_in(failed, attempts))
            )
            await asyncio.to_thread(self.batches.summary_failed, state.batch_id, retry)
            if give_up:
                log.error("giving up on a batch's summary (%s)", failed.detail)
            raise _Stop(CardResult(CardOutcome.LATER, failed.detail)) from failed
        await asyncio.to_thread(self.batches.summary_sent, state.batch_id, answer.get("ts"))

    # ------------------------------------------------------------------ failures

    async def _card_failed(
        self, state: BatchState, failed: SlackCallFailed, *, posting: bool, new: bool = False
    ) -> CardResult:
        error, now = failed.error, self.clock()
        if error.fate.permanent:
            if new:  # the watch command tells the person; nothing is kept
                return CardResult(CardOutcome.REFUSED, failed.detail, error.hint)
            if state.active or posting:
                await self._end(state, failed)
            else:
                await asyncio.to_thread(self.batches.mark_batch_card_done, state)
            return CardResult(CardOutcome.REFUSED, failed.detail, error.hint)
        attempts = state.card_attempts + 1
        if error.fate is Fate.RATE_LIMITED:
            await self._wait(state, failed)
        if attempts >= attempt_limit(error):
            if posting:
                await self._end(state, failed)
                return CardResult(CardOutcome.REFUSED, failed.detail, None)
            log.error("giving up on editing a batch's card (%s)", failed.detail)
            await asyncio.to_thread(self.batches.mark_batch_card_done, state)
            return CardResult(CardOutcome.LATER, failed.detail)
        retry_at = now + timedelta(seconds=retry_in(failed, attempts))
        await asyncio.to_thread(
            self.batches.mark_batch_card_failed, state.batch_id, failed.detail, retry_at
        )
        return CardResult(CardOutcome.LATER, failed.detail)

    async def _reply_failed(
        self, state: BatchState, item: MemberNotification, failed: SlackCallFailed
    ) -> bool:
        """Decide what a failed reply means. True when it was dropped (the next may go)."""
        error, notification = failed.error, item.notification
        if error.fate.ends_subscription:
            await self._end(state, failed)
            raise _Stop(CardResult(CardOutcome.REFUSED, failed.detail, error.hint))
        attempts = notification.attempts + 1
        if error.fate.permanent or error.fate is Fate.CARD_GONE or attempts >= attempt_limit(error):
            log.error(
                "giving up on a batch's reply (%s)",
                failed.detail,
                extra={"event": notification.event.key},
            )
            METRICS.notifications.labels(
                kind=notification.event.kind.value, outcome="dropped"
            ).inc()
            await asyncio.to_thread(self.outbox.drop_notification, notification.id, failed.detail)
            return True
        if error.fate is Fate.RATE_LIMITED:
            await self._wait(state, failed)
            retry_at = self.clock() + timedelta(seconds=retry_in(failed, attempts))
            await asyncio.to_thread(
                self.outbox.mark_attempt_failed, notification.id, failed.detail, retry_at
            )
            raise _Stop(CardResult(CardOutcome.LATER, "ratelimited"))  # nothing more goes now
        retry_at = self.clock() + timedelta(seconds=retry_in(failed, attempts))
        await asyncio.to_thread(
            self.outbox.mark_attempt_failed, notification.id, failed.detail, retry_at
        )
        return False

    async def _wait(self, state: BatchState, failed: SlackCallFailed) -> None:
        """Slack said wait: store it, so that no replica calls before it is over."""
        METRICS.slack_rate_limit_waits.inc()
        seconds = failed.retry_after or 1.0
        await asyncio.to_thread(
            self.outbox.wait_channel,
            state.team_id,
            state.channel_id,
            self.clock() + timedelta(seconds=seconds),
            f"{failed.method}: ratelimited",
        )

    async def _end(self, state: BatchState, failed: SlackCallFailed) -> None:
        """End the batch and its imports: one log line, a metric, a word to the subscriber."""
        log.warning(
            "ending a batch: Slack says %s (%s)",
            failed.detail,
            failed.error.fate.value,
            extra={"team": state.team_id, "channel": state.channel_id},
        )
        METRICS.notifications.labels(kind="subscription", outcome=failed.detail).inc()
        await asyncio.to_thread(
            self.batches.end_batch_now, state.batch_id, f"Slack: {failed.detail}", self.clock()
        )
        hint = failed.error.hint
        if not hint or failed.error.fate not in (Fate.LOST_CHANNEL, Fate.FORBIDDEN):
            return
        tokens = ", ".join(str(m.access_token) for m in state.members)
        text = f"I stopped watching the batch of imports {tokens} in <#{state.channel_id}>. {hint}"
        with contextlib.suppress(SlackCallFailed):
            opened = await self.calls.call("conversations_open", users=state.subscribed_by)
            dm = str((opened.get("channel") or {}).get("id", ""))
            await self.calls.call("chat_postMessage", channel=dm, text=text, **POST_FLAGS)


def summarise(state: BatchState, now: datetime) -> BatchSummary:
    """What the batch amounts to now (each watched import's ETA included)."""
    members = []
    for m in state.members:
        eta = (
            estimate_seconds_left(m.status, m.rate_base_at, m.rate_base_done, now)
            if m.status is not None and m.ended_reason is None
            else None
        )
        members.append(BatchMember(m.access_token, m.status, m.ended_reason, eta))
    return BatchSummary(tuple(members))


def _later(when: datetime | None, now: datetime) -> bool:
    return when is not None and when > now
