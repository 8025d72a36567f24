"""Posts to a channel outside any card's thread: alerts, settings notices, notes.

Each is queued once (a unique key in ``channel_posts``) and sent by this loop
under delivery's rules: never while Slack has asked the channel to wait
(``channel_waits``), a 429 records such a wait, and every failure takes its
fate from ``bot/slack/errors.py`` (transient: backoff, then given up;
permanent: dropped with one log line). A lost alert channel ends nothing but
the alert: the card's thread gets a note saying the alert could not be posted
and what would fix it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Any, Protocol

from bot.clock import Clock, utcnow
from bot.domain.events import Event
from bot.domain.status import ImportStatus
from bot.metrics import METRICS
from bot.slack.calls import POST_FLAGS, SlackCallFailed, SlackCalls, attempt_limit, retry_in
from bot.slack.errors import Fate
from bot.slack.links import Permalinks
from bot.slack.render import Message, notice
from bot.slack.render_alerts import alert_message
from bot.slack.render_reports import link_key
from bot.store.channel_posts import ALERT, NOTE, NOTICE, ChannelPost
from bot.store.interface import ChannelPostStore, ChannelWaitStore

log = logging.getLogger(__name__)


class _Outcome(Enum):
    """What became of one post."""

    SENT = "sent"
    WAIT = "wait"  # the channel must wait: the channel's other posts wait too
    LATER = "later"  # backing off
    DROPPED = "dropped"
    LOST = "lost"  # the lease was lost: another replica sends it


@dataclass(frozen=True)
class Alert:
    """One alert to queue: an event of an import watched in ``source_channel``."""

    team_id: str
    alert_channel: str
    #: Makes it sendable once (the notification it is about).
    key: str
    event: Event
    status: ImportStatus | None
    source_channel: str
    #: The card's ts: the alert links to its thread.
    thread_ts: str
    mention: str | None
    subscriber_id: str
    compact: bool = False


class AlertQueue(Protocol):
    """What delivery asks of the channel posts: queue an alert."""

    async def queue_alert(self, alert: Alert) -> None: ...


class ChannelPostSender:
    """Queues channel posts and sends them, each once, on a loop of its own."""

    def __init__(
        self,
        posts: ChannelPostStore,
        waits: ChannelWaitStore,
        calls: SlackCalls,
        permalinks: Permalinks,
        owner: str,
        *,
        lease_seconds: float = 15.0,
        idle_seconds: float = 1.0,
        batch: int = 20,
        clock: Clock = utcnow,
    ) -> None:
        self.posts = posts
        self.waits = waits
        self.calls = calls
        self.permalinks = permalinks
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.idle_seconds = idle_seconds
        self.batch = batch
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ queueing

    async def queue_alert(self, alert: Alert) -> None:
        """Queue one alert (again is harmless: its key makes it one)."""
        payload = {
            "event": alert.event.to_json(),
            "status": alert.status.to_json() if alert.status is not None else None,
            "source_channel": alert.source_channel,
            "thread_ts": alert.thread_ts,
            "mention": alert.mention,
            "subscriber": alert.subscriber_id,
            "compact": alert.compact,
        }
        await self._queue(alert.team_id, alert.alert_channel, ALERT, alert.key, payload)

    async def queue_notice(self, team_id: str, channel_id: str, key: str, message: Message) -> None:
        """Queue a message to the channel itself (the settings-change notice)."""
        payload = {"text": message.text, "blocks": message.blocks}
        await self._queue(team_id, channel_id, NOTICE, key, payload)

    async def _queue(
        self,
        team_id: str,
        channel_id: str,
        kind: str,
        key: str,
        payload: dict[str, Any],
        thread_ts: str | None = None,
    ) -> None:
        await asyncio.to_thread(
            self.posts.queue_post,
            team_id=team_id,
            channel_id=channel_id,
            kind=kind,
            key=key,
            payload=payload,
            now=self.clock(),
            thread_ts=thread_ts,
        )
        self.wake()

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Start the loop. Call with the event loop running."""
        self._stopping = False
        self._loop = asyncio.create_task(self._run(), name="channel-posts")

    def wake(self) -> None:
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop after the posts in flight (each is one bounded Slack call)."""
        self._stopping = True
        self._wakeup.set()
        if self._loop is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.send_due()
            except Exception:
                log.exception("sending channel posts failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.idle_seconds)
            self._wakeup.clear()

    async def send_due(self) -> int:
        """Send what is due now, channels side by side, each channel's in order."""
        claimed = await asyncio.to_thread(
            self.posts.claim_posts, self.owner, self.clock(), self.batch, self.lease_seconds
        )
        by_channel: dict[tuple[str, str], list[ChannelPost]] = defaultdict(list)
        for post in claimed:
            by_channel[(post.team_id, post.channel_id)].append(post)
        sent = await asyncio.gather(*(self._channel(posts) for posts in by_channel.values()))
        return sum(sent)

    async def _channel(self, posts: list[ChannelPost]) -> int:
        sent = 0
        for index, post in enumerate(posts):
            outcome = await self._send(post)
            if outcome is _Outcome.SENT:
                sent += 1
            elif outcome is _Outcome.WAIT:
                # The channel must wait: the others go when it may (leases run out).
                for later in posts[index + 1 :]:
                    await asyncio.to_thread(self.posts.release_post, later.id, self.owner)
                break
        return sent

    # ------------------------------------------------------------------ one post

    async def _send(self, post: ChannelPost) -> _Outcome:
        try:
            message = await self._render(post)
        except (KeyError, TypeError, ValueError):
            log.error("a channel post could not be read; dropped", extra={"event": post.key})
            await asyncio.to_thread(self.posts.drop_post, post.id, "unreadable")
            return _Outcome.DROPPED
        now = self.clock()
        # Held through the call (which is bounded): no other replica can send it meanwhile.
        held = await asyncio.to_thread(
            self.posts.extend_post,
            post.id,
            self.owner,
            now,
            self.lease_seconds + self.calls.timeout,
        )
        if not held:
            return _Outcome.LOST
        thread = {"thread_ts": post.thread_ts} if post.thread_ts else {}
        try:
            answer = await self.calls.call(
                "chat_postMessage",
                channel=post.channel_id,
                **thread,
                **message.as_kwargs(),
                **POST_FLAGS,
            )
        except SlackCallFailed as failed:
            return await self._failed(post, failed)
        await asyncio.to_thread(self.posts.post_sent, post.id, answer.get("ts"), self.clock())
        METRICS.notifications.labels(kind=post.kind, outcome="sent").inc()
        log.info(
            "%s posted",
            post.kind,
            extra={"team": post.team_id, "channel": post.channel_id, "event": post.key},
        )
        return _Outcome.SENT

    async def _render(self, post: ChannelPost) -> Message:
        payload = post.payload
        if post.kind in (NOTICE, NOTE):
            return Message(text=str(payload["text"]), blocks=list(payload["blocks"]))
        if post.kind != ALERT:
            raise ValueError(post.kind)
        source, ts = str(payload["source_channel"]), str(payload["thread_ts"])
        links = await self.permalinks.links(post.team_id, [(source, ts)])
        status = payload.get("status")
        return alert_message(
            Event.from_json(payload["event"]),
            ImportStatus.from_json(status) if status else None,
            source_channel=source,
            link=links.get(link_key(source, ts)),
            mention=payload.get("mention"),
            subscriber_id=str(payload.get("subscriber") or ""),
            now=self.clock(),
            compact=bool(payload.get("compact")),
        )

    async def _failed(self, post: ChannelPost, failed: SlackCallFailed) -> _Outcome:
        error, now = failed.error, self.clock()
        where = {"team": post.team_id, "channel": post.channel_id, "event": post.key}
        attempts = post.attempts + 1
        if error.fate.permanent or error.fate is Fate.CARD_GONE or attempts >= attempt_limit(error):
            why = (
                "Slack will never accept it" if error.fate.permanent else f"after {attempts} tries"
            )
            log.warning("giving up on a %s: %s (%s)", post.kind, why, failed.detail, extra=where)
            METRICS.notifications.labels(kind=post.kind, outcome="dropped").inc()
            await asyncio.to_thread(self.posts.drop_post, post.id, failed.detail)
            if (
                post.kind == ALERT
                and error.hint
                and error.fate in (Fate.LOST_CHANNEL, Fate.FORBIDDEN)
            ):
                await self._note_in_thread(post, error.hint)
            return _Outcome.DROPPED
        wait = retry_in(failed, attempts)
        if error.fate is Fate.RATE_LIMITED:
            METRICS.slack_rate_limit_waits.inc()
            await asyncio.to_thread(
                self.waits.wait_channel,
                post.team_id,
                post.channel_id,
                now + timedelta(seconds=wait),
                f"{failed.method}: ratelimited",
            )
        else:
            log.warning(
                "Slack refused a %s (%s); trying again in %.0f s",
                post.kind,
                failed.detail,
                wait,
                extra=where,
            )
        METRICS.notifications.labels(kind=post.kind, outcome="retry").inc()
        await asyncio.to_thread(
            self.posts.post_failed, post.id, failed.detail, now + timedelta(seconds=wait)
        )
        return _Outcome.WAIT if error.fate is Fate.RATE_LIMITED else _Outcome.LATER

    async def _note_in_thread(self, post: ChannelPost, hint: str) -> None:
        """Tell the watching channel, in the card's thread, that its alert went nowhere."""
        payload = post.payload
        source, ts = payload.get("source_channel"), payload.get("thread_ts")
        if not source or not ts:
            return
        text = (
            f":warning: I could not post an alert in <#{post.channel_id}>, the alert channel "
            f"set for this channel. {hint.replace('this channel', 'that channel')}"
        )
        message = notice(text)
        await self._queue(
            post.team_id,
            str(source),
            NOTE,
            f"note:{post.key}",
            {"text": message.text, "blocks": message.blocks},
            thread_ts=str(ts),
        )
