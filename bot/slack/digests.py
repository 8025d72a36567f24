"""Posting a channel's daily digest: render it, link its threads, send it, by delivery's rules.

Nothing is posted while Slack has the channel wait (``channel_waits``, shared with
the cards and replies); a 429 records such a wait for everyone; every other
failure takes its fate from ``bot/slack/errors.py`` (``SlackCalls``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from bot.clock import Clock, utcnow
from bot.domain.digest import DigestSummary
from bot.metrics import METRICS
from bot.slack.calls import POST_FLAGS, SlackCallFailed, SlackCalls
from bot.slack.errors import Fate
from bot.slack.links import Permalinks
from bot.slack.render_reports import digest_message
from bot.store.interface import ChannelWaitStore
from bot.watch.digest import DigestNotSent

log = logging.getLogger(__name__)


class SlackDigestPoster:
    """The digest job's way into Slack (``bot.watch.digest.DigestPoster``)."""

    def __init__(
        self,
        calls: SlackCalls,
        permalinks: Permalinks,
        waits: ChannelWaitStore,
        clock: Clock = utcnow,
    ) -> None:
        self.calls = calls
        self.permalinks = permalinks
        self.waits = waits
        self.clock = clock

    async def post_digest(self, team_id: str, channel_id: str, summary: DigestSummary) -> str:
        wait = await asyncio.to_thread(self.waits.channel_wait, team_id, channel_id)
        if wait is not None and wait > self.clock():
            raise DigestNotSent("ratelimited", permanent=False, not_before=wait)
        places = [(w.channel_id, w.tracking_ts) for w in summary.finished]
        places += [(w.channel_id, w.tracking_ts) for w in summary.running]
        links = await self.permalinks.links(team_id, places)
        message = digest_message(summary, links)
        try:
            answer = await self.calls.call(
                "chat_postMessage", channel=channel_id, **message.as_kwargs(), **POST_FLAGS
            )
        except SlackCallFailed as failed:
            if failed.error.fate is Fate.RATE_LIMITED:
                METRICS.slack_rate_limit_waits.inc()
                until = self.clock() + timedelta(seconds=failed.retry_after or 1.0)
                await asyncio.to_thread(
                    self.waits.wait_channel,
                    team_id,
                    channel_id,
                    until,
                    f"{failed.method}: ratelimited",
                )
                raise DigestNotSent(failed.detail, permanent=False, not_before=until) from failed
            raise DigestNotSent(failed.detail, permanent=failed.error.fate.permanent) from failed
        return str(answer["ts"])
