"""Links to threads: one ``chat.getPermalink`` per workspace, then built from each ts.

Slack's permalink of a top-level message is ``{workspace URL}archives/{channel}/p{ts
without its dot}``. Asking Slack once per workspace for the workspace URL keeps
a history of 50 watches to one Web API call instead of 50.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable

from slack_sdk.web.async_client import AsyncWebClient

from bot.slack.render_reports import link_key

log = logging.getLogger(__name__)

_PERMALINK = re.compile(r"(https://[^\s<>|]+/)archives/[A-Z0-9]+/p\d+(?:\?.*)?")
_TS = re.compile(r"(\d{1,12})\.(\d{6})")
LOOKUP_TIMEOUT_SECONDS = 2.0


class Permalinks:
    """Thread links for history, the digest and App Home."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._bases: dict[str, str] = {}  # team id -> workspace URL with a trailing slash

    async def links(self, team_id: str, places: Iterable[tuple[str, str | None]]) -> dict[str, str]:
        """{link_key(channel, ts): URL} for each (channel, ts) that has a ts; {} if unknown."""
        wanted = [(c, ts) for c, ts in places if ts and _TS.fullmatch(ts)]
        if not wanted:
            return {}
        base = self._bases.get(team_id)
        for channel, ts in wanted[:3]:  # a deleted card cannot answer; another may
            if base is not None:
                break
            base = await self._learn(team_id, channel, ts)
        if base is None:
            return {}
        return {
            link_key(channel, ts): f"{base}archives/{channel}/p{ts.replace('.', '')}"
            for channel, ts in wanted
        }

    async def _learn(self, team_id: str, channel_id: str, ts: str) -> str | None:
        try:
            answer = await asyncio.wait_for(
                self.client.chat_getPermalink(channel=channel_id, message_ts=ts),
                LOOKUP_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # links are a nicety: any failure just leaves them out
            log.info(
                "no thread links: chat.getPermalink failed (%s)",
                type(exc).__name__,
                extra={"team": team_id, "channel": channel_id},
            )
            return None
        found = _PERMALINK.fullmatch(str(answer.get("permalink", "")))
        if found is None:
            return None
        self._bases[team_id] = found.group(1)
        return found.group(1)
