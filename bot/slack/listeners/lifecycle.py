"""Workspace lifecycle events: uninstalling the app or revoking its tokens ends the watches."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from slack_bolt.async_app import AsyncApp

from bot.clock import utcnow
from bot.store.interface import SubscriptionStore

log = logging.getLogger(__name__)


class WorkspaceEvents:
    def __init__(self, subscriptions: SubscriptionStore) -> None:
        self.subscriptions = subscriptions

    def register(self, app: AsyncApp) -> None:
        app.event("app_uninstalled")(self.uninstalled)
        app.event("tokens_revoked")(self.tokens_revoked)

    async def uninstalled(self, body: dict[str, Any]) -> None:
        await self._end(body, "the app was uninstalled")

    async def tokens_revoked(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        # Only the bot token matters to us; a user token being revoked changes nothing.
        if (event.get("tokens") or {}).get("bot"):
            await self._end(body, "the bot token was revoked")

    async def _end(self, body: dict[str, Any], reason: str) -> None:
        team_id = str(body.get("team_id", ""))
        ended = await asyncio.to_thread(self.subscriptions.end_team, team_id, reason, utcnow())
        log.warning("%s: ended %d subscription(s)", reason, ended, extra={"team": team_id})
