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
from bot.slack.listeners.access import AccessControl
from bot.slack.listeners.actions import ActionHandler
from bot.slack.listeners.commands import CommandHandler
from bot.slack.listeners.exceptions import ExceptionsButton, ExceptionsRequests
from bot.slack.listeners.lifecycle import WorkspaceEvents
from bot.store.interface import SubscriptionStore

log = logging.getLogger(__name__)


def build_app(
    *,
    client: AsyncWebClient,
    signing_secret: str | None,
    service: ImportService,
    access: AccessControl,
    subscriptions: SubscriptionStore,
    exceptions: ExceptionsRequests | None = None,
) -> AsyncApp:
    """The Bolt AsyncApp with every listener registered.

    ``process_before_response=False``: the HTTP answer goes out as soon as a
    listener calls ``ack()``; the listener then goes on with the slow part.
    """
    # Bolt also reads SLACK_BOT_TOKEN itself and then warns that our client's token
    # wins; it is the same token, so the warning would only puzzle operators.
    logging.getLogger("slack_bolt.AsyncApp").addFilter(_not_token_skipped)
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret,
        process_before_response=False,
        # Socket Mode has no signatures to check; HTTP mode always does.
        request_verification_enabled=signing_secret is not None,
        raise_error_for_unhandled_request=False,
    )
    app.middleware(ignore_retried_interactions)
    commands = CommandHandler(service, access, exceptions)
    commands.register(app)
    ActionHandler(commands).register(app)
    ExceptionsButton(exceptions, access).register(app)
    WorkspaceEvents(subscriptions).register(app)
    app.error(_log_listener_error)
    return app


async def ignore_retried_interactions(
    request: AsyncBoltRequest, body: dict[str, Any], next: Callable[[], Awaitable[Any]]
) -> BoltResponse | None:
    """A retried slash command or button click must not run twice.

    We acknowledge within milliseconds, so when Slack retries one of these the
    first delivery has almost surely arrived and is being handled: answer the
    retry with an empty 200 and do nothing. (Events are handled idempotently,
    so their retries run normally.)
    """
    retry = request.headers.get("x-slack-retry-num")
    is_interaction = "command" in body or body.get("type") == "block_actions"
    if retry and is_interaction:
        log.info(
            "ignored a retried delivery (%s)",
            (request.headers.get("x-slack-retry-reason") or ["?"])[0],
            extra={"team": body.get("team_id") or (body.get("team") or {}).get("id")},
        )
        return BoltResponse(status=200, body="")
    return await next()


def _not_token_skipped(record: logging.LogRecord) -> bool:
    return "`token` will be unused" not in record.getMessage()


async def _log_listener_error(error: Exception, body: dict[str, Any]) -> None:
    log.error("listener error: %s", type(error).__name__, exc_info=error)
