"""The Bolt app: listeners grouped by kind, each group registering itself."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.service import ImportService
from bot.slack.links import Permalinks
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.actions import ActionHandler
from bot.slack.listeners.attention import AttentionHandler, NoticeQueue
from bot.slack.listeners.commands import CommandHandler
from bot.slack.listeners.exceptions import ExceptionsButton, ExceptionsRequests
from bot.slack.listeners.home import HomeTab
from bot.slack.listeners.lifecycle import WorkspaceEvents
from bot.slack.quick_ack import (
    QuickCommands,
    ignored_retry,
    log_listener_error,
    refused_response_url,
)
from bot.store.interface import HistoryStore, SettingsStore, SubscriptionStore

log = logging.getLogger(__name__)


def build_app(
    *,
    client: AsyncWebClient,
    signing_secret: str | None,
    service: ImportService,
    access: AccessControl,
    subscriptions: SubscriptionStore,
    channel_settings: SettingsStore,
    history: HistoryStore,
    exceptions: ExceptionsRequests | None = None,
    notices: NoticeQueue | None = None,
) -> ImportStatusApp:
    """The Bolt AsyncApp with every listener registered.

    ``process_before_response=False``: the HTTP answer goes out as soon as a
    listener calls ``ack()``; the listener then goes on with the slow part.
    """
    # Bolt also reads SLACK_BOT_TOKEN itself and then warns that our client's token
    # wins; it is the same token, so the warning would only puzzle operators.
    logging.getLogger("slack_bolt.AsyncApp").addFilter(_not_token_skipped)
    # The HTTP route checks signatures before Bolt (bot/slack/incoming.py); should Bolt
    # still refuse one, its message quotes the whole body: keep one short line instead.
    logging.getLogger("slack_bolt.RequestVerification").addFilter(_short_verification_notice)
    app = ImportStatusApp(
        client=client,
        signing_secret=signing_secret,
        process_before_response=False,
        # Socket Mode has no signatures to check; HTTP mode always does.
        request_verification_enabled=signing_secret is not None,
        raise_error_for_unhandled_request=False,
    )
    app.middleware(_response_urls_on_slack(client.base_url))
    app.middleware(ignore_retried_interactions)
    permalinks = Permalinks(client)
    attention = AttentionHandler(channel_settings, history, access, permalinks, notices=notices)
    commands = CommandHandler(service, access, attention, exceptions)
    commands.register(app)
    ActionHandler(commands).register(app)
    ExceptionsButton(exceptions, access).register(app)
    attention.register(app)
    HomeTab(history, service, access, permalinks).register(app)
    WorkspaceEvents(subscriptions).register(app)
    app.error(log_listener_error)
    app.quick_commands = QuickCommands(commands, client)
    return app


class ImportStatusApp(AsyncApp):
    """Bolt's AsyncApp, carrying the fast path of its slash command for the HTTP route."""

    quick_commands: QuickCommands | None = None


async def ignore_retried_interactions(
    request: AsyncBoltRequest, body: dict[str, Any], next: Callable[[], Awaitable[Any]]
) -> BoltResponse | None:
    """A retried slash command or button click must not run twice: an empty 200."""
    retry_num = request.headers.get("x-slack-retry-num")
    retry_reason = request.headers.get("x-slack-retry-reason")
    if ignored_retry(
        retry_num[0] if retry_num else None, retry_reason[0] if retry_reason else None, body
    ):
        return BoltResponse(status=200, body="")
    return await next()


def _response_urls_on_slack(
    slack_api_url: str,
) -> Callable[..., Awaitable[BoltResponse | None]]:
    """Middleware: a request whose response_url is not Slack's is refused, not answered."""

    async def response_urls_on_slack(
        body: dict[str, Any], next: Callable[[], Awaitable[Any]]
    ) -> BoltResponse | None:
        if refused_response_url(body, slack_api_url):
            return BoltResponse(status=400, body="")
        return await next()

    return response_urls_on_slack


def _short_verification_notice(record: logging.LogRecord) -> bool:
    if isinstance(record.msg, str) and record.msg.startswith("Invalid request signature"):
        record.msg, record.args = "Bolt refused a request with an invalid signature", None
    return True


def _not_token_skipped(record: logging.LogRecord) -> bool:
    return "`token` will be unused" not in record.getMessage()
