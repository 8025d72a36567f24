"""``/import-status exceptions TOKEN`` and the Exceptions button: why records failed.

The answer is private (ephemeral): the summary, under the personal-data rule of the
channel's ``exceptions`` setting or EXCEPTIONS_FILE. The file goes to the person's
direct message with the bot (``conversations.open``, then ``uploads.upload_file``), never
into the channel. The import is looked up first, so an unknown or expired token and
an import without failures get clear words and cost no paging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from bot.archive.fetch import ArchiveOptions, fetch_exceptions
from bot.config import Settings
from bot.domain.archiving import has_failures
from bot.domain.exceptions import ExceptionsFile
from bot.domain.format import format_count
from bot.mypreferences.client import RetryPolicy
from bot.mypreferences.pace import Pace
from bot.mypreferences.paging import ExceptionsSource
from bot.service import ImportService
from bot.slack import render
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.actions import _Click
from bot.slack.listeners.commands import guarded, pending_exceptions_text
from bot.slack.render_exceptions import Heading, summary_message, summary_text
from bot.slack.uploads import file_title, send_to_direct_message

log = logging.getLogger(__name__)

# On-demand fetches at once per replica: each pages through a whole import.
MAX_AT_ONCE = 2
FILE_IN_DM = "in your direct messages with me"


def no_failures_text(
    access_token: int,
    exceptions: int | None,
    not_honored: int | None,
    validation_failed: int | None,
) -> str:
    """The answer for an import whose every failure count is 0."""
    return (
        f":white_check_mark: Import {access_token} has no failed records: "
        f"{format_count(exceptions)} exceptions, {format_count(not_honored)} not honoured, "
        f"{format_count(validation_failed)} failed validation. There is nothing to fetch."
    )


class ExceptionsRequests:
    """Answers one person's request for an import's exceptions."""

    def __init__(
        self,
        settings: Settings,
        service: ImportService,
        source: ExceptionsSource,
        pace: Pace,
        slack: AsyncWebClient,
        channel_mode: Callable[[str, str], str | None] = lambda team, channel: None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.source = source
        self.pace = pace
        self.slack = slack
        #: the channel's own ``exceptions`` setting, or None (EXCEPTIONS_FILE)
        self.channel_mode = channel_mode
        # Each page gets what a lookup gets: the person is waiting.
        self.options = ArchiveOptions.from_settings(
            settings, RetryPolicy(budget_seconds=settings.lookup_budget_seconds)
        )
        self._limit = asyncio.Semaphore(MAX_AT_ONCE)

    async def mode_for(self, team_id: str, channel_id: str) -> ExceptionsFile:
        """The channel's setting when it has one, else EXCEPTIONS_FILE."""
        own = await asyncio.to_thread(self.channel_mode, team_id, channel_id)
        if own:
            try:
                return ExceptionsFile(own)
            except ValueError:
                pass
        return self.settings.exceptions_file

    async def answer(
        self, team_id: str, channel_id: str, user_id: str, access_token: int
    ) -> render.Message:
        """The private answer; the file, if any, goes to the person's direct message.

        Raises ``ApiError`` (the caller shows its sentence) when MyPreferences refuses.
        """
        status = await self.service.lookup(access_token)
        if not has_failures(status) and None not in (
            status.exceptions,
            status.not_honored,
            status.validation_failed,
        ):
            return render.notice(
                no_failures_text(
                    access_token, status.exceptions, status.not_honored, status.validation_failed
                )
            )
        mode = await self.mode_for(team_id, channel_id)
        async with self._limit:
            result = await fetch_exceptions(
                self.source,
                access_token,
                [mode],
                self.options,
                self.pace,
                expires=status.expires,
                keep_partial_on_error=True,
            )
        try:
            fields = self.settings.exceptions_reason_fields
            text = summary_text(result, mode, status, Heading("Exceptions", FILE_IN_DM), fields)
            archive = result.files.get(mode)
            if archive is not None:
                comment = summary_text(
                    result, mode, status, Heading("Exceptions", "attached"), fields
                )
                problem = await self._send_file(user_id, access_token, archive, comment)
                if problem:
                    text += f"\n:warning: I could not send you the file: {problem}."
            log.info(
                "exceptions answered on demand: %d records",
                result.records,
                extra={"token": access_token, "user": user_id, "channel": channel_id},
            )
            return summary_message(text)
        finally:
            result.discard()

    async def _send_file(
        self, user_id: str, access_token: int, archive: Any, comment: str
    ) -> str | None:
        """Send the file to the person's DM; the problem in words, or None when sent."""
        try:
            await send_to_direct_message(
                self.slack, user_id, archive, file_title(access_token), comment
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error", "")) if exc.response is not None else ""
            log.warning("sending exceptions to a DM failed (%s)", error, extra={"user": user_id})
            if error == "missing_scope":
                return "the app lacks the `files:write` or `im:write` scope (reinstall it)"
            return f"Slack said `{render.escape(error or 'error', limit=60)}`"
        except (SlackRequestError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("sending exceptions to a DM failed (%s)", type(exc).__name__)
            return "Slack could not be reached; try again in a moment"
        return None


class ExceptionsButton:
    """The Exceptions button on status messages and tracking cards."""

    def __init__(self, requests: ExceptionsRequests | None, access: AccessControl) -> None:
        self.requests = requests
        self.access = access

    def register(self, app: AsyncApp) -> None:
        app.action(render.ACTION_EXCEPTIONS)(self.click)

    async def click(self, ack: AsyncAck, respond: AsyncRespond, body: dict[str, Any]) -> None:
        await ack()
        click = _Click.from_body(body)
        token = click.token
        requests = self.requests
        if token is None:
            return
        if requests is None:
            await respond(
                response_type="ephemeral",
                replace_original=False,
                **render.notice("Exceptions are not available here.").as_kwargs(),
            )
            return
        denial = await self.access.check(click.team, click.channel, click.user, "exceptions")
        if denial:
            await respond(
                response_type="ephemeral",
                replace_original=False,
                **render.notice(denial).as_kwargs(),
            )
            return
        await respond(
            response_type="ephemeral",
            replace_original=False,
            **render.notice(pending_exceptions_text(token)).as_kwargs(),
        )
        message = await guarded(
            token, lambda: requests.answer(click.team, click.channel, click.user, token)
        )
        await respond(response_type="ephemeral", replace_original=False, **message.as_kwargs())
