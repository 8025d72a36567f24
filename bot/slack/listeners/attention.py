"""The channel's attention: ``history``, ``settings``, ``set`` and the settings modal.

``set KEY VALUE`` and the modal go through the same parser
(``bot.domain.settings.parse_setting``) and the same store call, so they
reach the same stored settings and refuse the same values. Changing a
setting follows the allow-lists; the channel is told who changed what, and
so is the log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Protocol

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.clock import Clock, utcnow
from bot.domain.settings import ChannelSettings, InvalidSetting, parse_setting
from bot.slack import render
from bot.slack.incoming import id_of
from bot.slack.links import Permalinks
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.commands import HISTORY_MAX, Command, answer, guarded
from bot.slack.render_reports import history_message
from bot.slack.render_settings import (
    SETTINGS_CALLBACK_ID,
    block_of,
    change_notice,
    form_texts,
    modal_channel,
    settings_error_message,
    settings_message,
    settings_modal,
)
from bot.store.interface import HistoryStore, SettingsStore

log = logging.getLogger(__name__)

# views.open must beat the trigger_id's 3 seconds; waiting longer is pointless.
MODAL_OPEN_TIMEOUT_SECONDS = 2.5
# Modal error texts are plain text: the bot's mrkdwn backquotes would show literally.
_MODAL_ERROR_LIMIT = 300


class NoticeQueue(Protocol):
    """Queues a message to a channel (``ChannelPostSender.queue_notice``)."""

    async def queue_notice(
        self, team_id: str, channel_id: str, key: str, message: render.Message
    ) -> None: ...


class AttentionHandler:
    """history, settings and set (called by the command handler) and the settings modal."""

    def __init__(
        self,
        settings: SettingsStore,
        history: HistoryStore,
        access: AccessControl,
        permalinks: Permalinks,
        clock: Clock = utcnow,
        notices: NoticeQueue | None = None,
    ) -> None:
        self.settings = settings
        self.history = history
        self.access = access
        self.permalinks = permalinks
        self.clock = clock
        #: Where the channel's "who changed what" notice goes (None: the log only).
        self.notices = notices

    def register(self, app: AsyncApp) -> None:
        app.view(SETTINGS_CALLBACK_ID)(self.submit)

    async def command(
        self,
        parsed: Command,
        ack: AsyncAck,
        respond: AsyncRespond,
        command: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        """Answer ``history``, ``settings`` or ``set`` (acknowledging first, as every answer)."""
        team = str(command.get("team_id", ""))
        channel = str(command.get("channel_id", ""))
        user = str(command.get("user_id", ""))
        # The command handler has checked already; kept here so no other caller skips it.
        denial = await self.access.check(team, channel, user, parsed.verb)
        if denial:
            await ack(response_type="ephemeral", **render.notice(denial).as_kwargs())
            return
        if parsed.verb == "history":
            count = parsed.count or 10
            work = guarded(None, lambda: self._history(team, channel, count))
            await answer(ack, respond, work, "Looking up this channel's finished watches…")
        elif parsed.verb == "settings":
            await self._show(ack, respond, client, team, channel, user, command)
        elif parsed.verb == "set":
            await self._set(ack, team, channel, user, parsed.words)

    # --- history ------------------------------------------------------------------------

    async def _history(self, team: str, channel: str, count: int) -> render.Message:
        shown = min(count, HISTORY_MAX)
        watches = await asyncio.to_thread(
            self.history.finished, team, channel_id=channel, limit=shown
        )
        links = await self.permalinks.links(team, [(w.channel_id, w.tracking_ts) for w in watches])
        note = f"History shows at most {HISTORY_MAX} watches." if count > HISTORY_MAX else None
        return history_message(watches, links, note=note)

    # --- settings -----------------------------------------------------------------------

    async def _show(
        self,
        ack: AsyncAck,
        respond: AsyncRespond,
        client: AsyncWebClient,
        team: str,
        channel: str,
        user: str,
        command: dict[str, Any],
    ) -> None:
        current = await asyncio.to_thread(self.settings.get, team, channel)
        await ack(response_type="ephemeral", **settings_message(current).as_kwargs())
        trigger_id = str(command.get("trigger_id") or "")
        if not trigger_id:
            return
        try:
            await asyncio.wait_for(
                client.views_open(
                    trigger_id=trigger_id, view=settings_modal(current, team, channel)
                ),
                MODAL_OPEN_TIMEOUT_SECONDS,
            )
        except Exception as exc:  # the text above already shows everything; say why no form
            log.warning(
                "could not open the settings modal (%s)",
                slack_error(exc),
                extra={"team": team, "channel": channel, "user": user},
            )
            await respond(
                response_type="ephemeral",
                replace_original=False,
                **render.notice(
                    "I could not open the settings form; "
                    "`/import-status set KEY VALUE` changes a setting just as well."
                ).as_kwargs(),
            )

    async def _set(
        self, ack: AsyncAck, team: str, channel: str, user: str, words: tuple[str, ...]
    ) -> None:
        try:
            key, value = parse_setting(words[0], " ".join(words[1:]), channel_id=channel)
        except InvalidSetting as exc:
            await ack(response_type="ephemeral", **settings_error_message(str(exc)).as_kwargs())
            return
        before, after = await asyncio.to_thread(
            self.settings.update, team, channel, {key: value}, user, self.clock()
        )
        if before == after:
            note = f"Nothing changed: `{key}` already had that value."
            await ack(response_type="ephemeral", **settings_message(after, note=note).as_kwargs())
            return
        saved = f":white_check_mark: Saved. `{key}` is now set for this channel."
        if key == "alerts" and after.alerts:
            saved += f" Make sure I am a member of <#{after.alerts}> (`/invite @import-status`)."
        await ack(response_type="ephemeral", **settings_message(after, note=saved).as_kwargs())
        await self._announce(team, channel, user, before, after)

    async def submit(self, ack: AsyncAck, body: dict[str, Any]) -> None:
        """A settings modal submitted: errors shown in the modal, or saved and closed."""
        view = body.get("view") or {}
        user = id_of(body.get("user"))
        place = modal_channel(str(view.get("private_metadata") or ""))
        body_team = id_of(body.get("team")) or str(body.get("team_id") or "")
        if place is None or (body_team and place[0] != body_team):
            await ack(
                response_action="errors",
                errors={"broadcast": "This form no longer fits a channel; open it again."},
            )
            return
        team, channel = place
        denial = await self.access.check(team, channel, user, "settings")
        if denial:
            await ack(response_action="errors", errors={"broadcast": _plain(denial)})
            return
        texts, problems = form_texts(((view.get("state") or {}).get("values")) or {})
        changes: dict[str, Any] = {}
        for raw_key, text in texts.items():
            try:
                key, value = parse_setting(raw_key, text, channel_id=channel)
            except InvalidSetting as exc:
                block = block_of(raw_key, text)
                problems.setdefault(block, _plain(str(exc)))
                continue
            changes[key] = value
        if problems:
            await ack(response_action="errors", errors=problems)
            return
        await ack()
        before, after = await asyncio.to_thread(
            self.settings.update, team, channel, changes, user, self.clock()
        )
        await self._announce(team, channel, user, before, after)

    async def _announce(
        self, team: str, channel: str, user: str, before: ChannelSettings, after: ChannelSettings
    ) -> None:
        """Tell the channel and the log who changed what.

        The channel's notice is a channel post (``bot/slack/channel_posts.py``): it
        waits while Slack has the channel wait, and takes its fate from
        ``bot/slack/errors.py``, as every other message to the channel does.
        """
        changes = after.changes_from(before)
        for key, old, new in changes:
            log.info(
                "channel setting %s changed from %s to %s",
                key,
                old,
                new,
                extra={"team": team, "channel": channel, "user": user},
            )
        if not changes or self.notices is None:
            return
        try:
            await self.notices.queue_notice(
                team, channel, f"settings:{uuid.uuid4().hex}", change_notice(user, before, after)
            )
        except Exception as exc:  # the change is saved; only the notice is lost
            log.warning(
                "could not queue the channel's settings notice (%s)",
                type(exc).__name__,
                extra={"team": team, "channel": channel},
            )


def slack_error(exc: Exception) -> str:
    """Slack's error code for a failed Web API call, else the exception's type."""
    if isinstance(exc, SlackApiError) and exc.response is not None:
        return str(exc.response.get("error") or type(exc).__name__)
    return type(exc).__name__


def _plain(text: str) -> str:
    """A bot sentence for a plain-text place: no backquotes, no emoji codes, short."""
    words = text.replace("`", "").split()
    if words and words[0].startswith(":") and words[0].endswith(":"):
        words = words[1:]
    return " ".join(words)[:_MODAL_ERROR_LIMIT]
