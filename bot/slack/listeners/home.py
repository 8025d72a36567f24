"""The App Home tab: published for a person when they open it, and its buttons.

Refreshed when opened (``app_home_opened``) or when its Refresh button is
clicked, never on a poll: a Home tab nobody looks at costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock import Clock, utcnow
from bot.mypreferences.tokens import InvalidAccessToken, parse_access_token
from bot.service import ImportService
from bot.slack.incoming import id_of
from bot.slack.links import Permalinks
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.attention import slack_error
from bot.slack.render_reports import (
    ACTION_HOME_REFRESH,
    ACTION_HOME_UNWATCH,
    HOME_RECENT,
    home_view,
    parse_home_unwatch_value,
)
from bot.store.interface import HistoryStore

log = logging.getLogger(__name__)


class HomeTab:
    """Publishes each person's Home tab and answers its buttons."""

    def __init__(
        self,
        history: HistoryStore,
        service: ImportService,
        access: AccessControl,
        permalinks: Permalinks,
        clock: Clock = utcnow,
    ) -> None:
        self.history = history
        self.service = service
        self.access = access
        self.permalinks = permalinks
        self.clock = clock

    def register(self, app: AsyncApp) -> None:
        app.event("app_home_opened")(self.opened)
        app.action(ACTION_HOME_REFRESH)(self.refresh)
        app.action(ACTION_HOME_UNWATCH)(self.unwatch)

    async def opened(
        self, body: dict[str, Any], event: dict[str, Any], client: AsyncWebClient
    ) -> None:
        # The Messages tab opens with the same event; only the Home tab is ours to draw.
        if event.get("tab", "home") != "home":
            return
        await self.publish(client, str(body.get("team_id", "")), str(event.get("user", "")))

    async def refresh(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        await ack()
        team, user = _who(body)
        await self.publish(client, team, user)

    async def unwatch(self, ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient) -> None:
        """Stop one of the person's own watches, then redraw the tab."""
        await ack()
        team, user = _who(body)
        value = str(((body.get("actions") or [{}])[0]).get("value", ""))
        parsed = parse_home_unwatch_value(value)
        token: int | None = None
        if parsed is not None:
            try:
                token = parse_access_token(parsed[1])
            except InvalidAccessToken:
                token = None
        if parsed is not None and token is not None:
            channel = parsed[0]
            denial = await self.access.check(team, channel, user, "unwatch")
            mine = await asyncio.to_thread(self.history.active, team, subscribed_by=user)
            # Only the person's own watches have this button; a forged click changes nothing.
            if denial is None and any(
                w.channel_id == channel and w.access_token == token for w in mine
            ):
                await self.service.unwatch(
                    team_id=team, channel_id=channel, user_id=user, access_token=token
                )
        await self.publish(client, team, user)

    async def publish(self, client: AsyncWebClient, team: str, user: str) -> None:
        """Draw the person's Home tab now."""
        if not team or not user:
            return
        denial = await self.access.check(team, None, user, "home")
        if denial:
            view = home_view(
                user, mine=[], active=[], recent=[], links={}, now=self.clock(), denial=denial
            )
        else:
            active = await asyncio.to_thread(self.history.active, team)
            recent = await asyncio.to_thread(self.history.finished, team, limit=HOME_RECENT)
            mine = [w for w in active if w.subscribed_by == user]
            places = [(w.channel_id, w.tracking_ts) for w in active]
            places += [(w.channel_id, w.tracking_ts) for w in recent]
            links = await self.permalinks.links(team, places)
            view = home_view(
                user, mine=mine, active=active, recent=recent, links=links, now=self.clock()
            )
        try:
            await client.views_publish(user_id=user, view=view)
        except Exception as exc:  # a Home tab that cannot be drawn now is drawn next time
            log.warning(
                "could not publish the Home tab (%s)",
                slack_error(exc),
                extra={"team": team, "user": user},
            )


def _who(body: dict[str, Any]) -> tuple[str, str]:
    user = body.get("user")
    user_team = user.get("team_id") if isinstance(user, dict) else None
    team = id_of(body.get("team")) or (user_team if isinstance(user_team, str) else "")
    return team, id_of(user)
