"""Posting a channel's daily digest: render it, link its threads, send it."""

from __future__ import annotations

import logging

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.domain.digest import DigestSummary
from bot.slack.delivery import TRANSIENT_ERRORS
from bot.slack.links import Permalinks
from bot.slack.render_reports import digest_message
from bot.watch.digest import DigestNotSent

log = logging.getLogger(__name__)


class SlackDigestPoster:
    """The digest job's way into Slack (``bot.watch.digest.DigestPoster``)."""

    def __init__(self, client: AsyncWebClient, permalinks: Permalinks) -> None:
        self.client = client
        self.permalinks = permalinks

    async def post_digest(self, team_id: str, channel_id: str, summary: DigestSummary) -> str:
        places = [(w.channel_id, w.tracking_ts) for w in summary.finished]
        places += [(w.channel_id, w.tracking_ts) for w in summary.running]
        links = await self.permalinks.links(team_id, places)
        message = digest_message(summary, links)
        try:
            answer = await self.client.chat_postMessage(
                channel=channel_id, unfurl_links=False, unfurl_media=False, **message.as_kwargs()
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if exc.response is not None else ""
            status = exc.response.status_code if exc.response is not None else 0
            transient = error in TRANSIENT_ERRORS or status == 429 or status >= 500 or not error
            raise DigestNotSent(error or f"HTTP {status}", permanent=not transient) from exc
        except (TimeoutError, OSError, aiohttp.ClientError) as exc:
            raise DigestNotSent(type(exc).__name__, permanent=False) from exc
        return str(answer["ts"])
