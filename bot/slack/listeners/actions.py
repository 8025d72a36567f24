"""The buttons on status messages and tracking cards: Watch, Refresh, Stop watching."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.mypreferences.tokens import InvalidAccessToken, parse_access_token
from bot.slack import render
from bot.slack.incoming import id_of
from bot.slack.listeners.commands import CommandHandler, guarded

log = logging.getLogger(__name__)


class ActionHandler:
    def __init__(self, commands: CommandHandler) -> None:
        self.commands = commands

    def register(self, app: AsyncApp) -> None:
        app.action(render.ACTION_WATCH)(self.watch)
        app.action(render.ACTION_REFRESH)(self.refresh)
        app.action(render.ACTION_UNWATCH)(self.unwatch)

    async def watch(self, ack: AsyncAck, respond: AsyncRespond, body: dict[str, Any]) -> None:
        await ack()
        click = _Click.from_body(body)
        if click.token is None:
            await respond(
                **render.usage_message("That button carried no access token.").as_kwargs(),
                response_type="ephemeral",
                replace_original=False,
            )
            return
        denial = await self.commands.access.check(click.team, click.channel, click.user, "watch")
        token = click.token
        message = (
            render.notice(denial)
            if denial
            else await guarded(
                token, lambda: self.commands.watch(click.team, click.channel, click.user, token)
            )
        )
        await respond(response_type="ephemeral", replace_original=False, **message.as_kwargs())

    async def refresh(self, ack: AsyncAck, respond: AsyncRespond, body: dict[str, Any]) -> None:
        await ack()
        click = _Click.from_body(body)
        token = click.token
        if token is None:
            return
        denial = await self.commands.access.check(click.team, click.channel, click.user, "lookup")
        if denial:
            await respond(
                response_type="ephemeral",
                replace_original=False,
                **render.notice(denial).as_kwargs(),
            )
            return

        # The command's own lookup: a failed Refresh counts double, as a failed lookup does.
        message = await guarded(
            token, lambda: self.commands.lookup(click.team, click.channel, click.user, token)
        )
        # An ephemeral status message is replaced in place; a click on the channel's
        # card gets a private answer (the card itself belongs to the watcher).
        await respond(
            response_type="ephemeral", replace_original=click.ephemeral, **message.as_kwargs()
        )

    async def unwatch(self, ack: AsyncAck, respond: AsyncRespond, body: dict[str, Any]) -> None:
        await ack()
        click = _Click.from_body(body)
        token = click.token
        if token is None:
            return
        denial = await self.commands.access.check(click.team, click.channel, click.user, "unwatch")
        if denial:
            await respond(
                response_type="ephemeral",
                replace_original=False,
                **render.notice(denial).as_kwargs(),
            )
            return
        message = await guarded(
            token, lambda: self.commands.unwatch(click.team, click.channel, click.user, token)
        )
        await respond(response_type="ephemeral", replace_original=False, **message.as_kwargs())


class _Click:
    """The parts of a block_actions payload a button handler needs."""

    def __init__(
        self, team: str, channel: str, user: str, token: int | None, ephemeral: bool
    ) -> None:
        self.team, self.channel, self.user = team, channel, user
        self.token, self.ephemeral = token, ephemeral

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> _Click:
        actions = body.get("actions") or [{}]
        try:
            token: int | None = parse_access_token(str(actions[0].get("value", "")))
        except InvalidAccessToken:
            token = None
        return cls(
            team=id_of(body.get("team")),
            channel=id_of(body.get("channel")),
            user=id_of(body.get("user")),
            token=token,
            ephemeral=bool((body.get("container") or {}).get("is_ephemeral")),
        )
