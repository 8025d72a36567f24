"""The ``/import-status`` slash command over HTTP, answered without Bolt's dispatch chain.

Why (bench/README.md, "The command path"): with 20 people typing at once the
event loop was the bottleneck, and for each command Bolt built a request, a
context and a per-request Web API client, ran its built-in middlewares and
ours and the listener matchers, then waited for the listener's ``ack()`` by
polling every 10 ms (``slack_bolt/listener/asyncio_runner.py``): up to 10 ms
added to every acknowledgement, and a wake-up of the loop 100 times a second
for each command in flight.

Here the HTTP route (``server.py``) has already checked the signature and read
the body once (``incoming.read_body``); ``QuickCommands.answer`` then applies
what Bolt's chain applied to a slash command, in the same order and with the
same answers: Bolt's single-workspace authorization (``auth.test``, once), the
response_url check, a retried delivery ignored; then it runs the same
``CommandHandler.handle`` with Bolt's own ``AsyncAck`` and ``AsyncRespond``,
and answers the HTTP request the moment ``ack()`` is called.

Bolt still answers, exactly as before, everything this does not take:
interactivity and events, another command, a body that is not a plain set of
form fields, Slack's certificate check, the verbs of the attention handler
(``history``, ``settings``, ``set``: they call Slack through Bolt's
per-request client, e.g. to open a modal), and every command until ``auth.test``
has succeeded once (until then Bolt's own authorization answers). Socket Mode
always goes through Bolt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from bot.slack import incoming
from bot.slack.listeners.commands import ATTENTION_VERBS, COMMAND, CommandHandler, parse_command

log = logging.getLogger(__name__)

# Bolt gives a listener this long to call ack() (``Listener.ack_timeout``).
ACK_TIMEOUT_SECONDS = 3.0


# --- what every slash command and button goes through, on either path -------------------


def ignored_retry(retry_num: str | None, retry_reason: str | None, body: dict[str, Any]) -> bool:
    """True (and logged) when a retried slash command or button click must not run again.

    We acknowledge within milliseconds, so when Slack retries one of these the
    first delivery has almost surely arrived and is being handled. (Events are
    handled idempotently, so their retries run normally.)
    """
    is_interaction = "command" in body or body.get("type") == "block_actions"
    if retry_num is None or not is_interaction:
        return False
    log.info(
        "ignored a retried delivery (%s)",
        "?" if retry_reason is None else retry_reason,
        extra={"team": team_of(body)},
    )
    return True


def refused_response_url(body: dict[str, Any], slack_api_url: str) -> bool:
    """True (and logged) when a response_url of ``body`` is not Slack's: nothing is answered.

    ``respond()`` posts to that URL; a forged one could point it anywhere
    (http://127.0.0.1:…). Slack's are on https://hooks.slack.com/; the
    SLACK_API_URL host (the emulator, in tests and the demo) is accepted too.
    """
    problem = incoming.response_url_problem(body, slack_api_url)
    if problem is None:
        return False
    log.warning("refused a request with %s", problem, extra={"team": team_of(body)})
    return True


async def log_listener_error(error: Exception, body: dict[str, Any]) -> None:
    """A listener's exception: one line when Slack could not be reached, else a traceback."""
    if isinstance(error, aiohttp.ClientError | TimeoutError | OSError):
        # Slack (or its response_url) could not be reached: the network's trouble, not a
        # bug in the bot. One line, no traceback; the person can simply try again.
        log.warning("could not answer Slack: %s: %s", type(error).__name__, str(error)[:200])
        return
    log.error("listener error: %s", type(error).__name__, exc_info=error)


def team_of(body: dict[str, Any]) -> object:
    team = body.get("team_id") or body.get("team")
    return team.get("id") if isinstance(team, dict) else team


# --- the fast path -------------------------------------------------------------------------


class _Ack(AsyncAck):
    """Bolt's ``ack()`` (the same response bodies), which also says when it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> BoltResponse:
        response = await super().__call__(*args, **kwargs)
        self.called.set()
        return response


class QuickCommands:
    """Answers ``/import-status`` over HTTP with the command handler, without Bolt's chain."""

    def __init__(
        self,
        handler: CommandHandler,
        client: AsyncWebClient,
        on_error: Callable[[Exception, dict[str, Any]], Awaitable[None]] = log_listener_error,
    ) -> None:
        self.handler = handler
        self.client = client
        self.on_error = on_error
        self._authorized = False
        self._authorizing = asyncio.Lock()
        # The handlers still running after their acknowledgement (a task needs a reference).
        self._running: set[asyncio.Task[bool]] = set()

    async def answer(
        self, body: dict[str, Any], retry_num: str | None, retry_reason: str | None
    ) -> BoltResponse | None:
        """The HTTP answer to this signed, well-formed request; None: Bolt answers it."""
        if not self._takes(body) or not await self._authorize():
            return None
        if refused_response_url(body, self.client.base_url):
            return BoltResponse(status=400, body="")
        if ignored_retry(retry_num, retry_reason, body):
            return BoltResponse(status=200, body="")
        ack = _Ack()
        respond = AsyncRespond(
            response_url=body.get("response_url"), proxy=self.client.proxy, ssl=self.client.ssl
        )
        task = asyncio.create_task(self._run(ack, respond, body))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        acked = asyncio.ensure_future(ack.called.wait())
        await asyncio.wait(
            {acked, task}, timeout=ACK_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
        )
        acked.cancel()
        if ack.response is not None:
            return ack.response
        if task.done() and task.result():
            return BoltResponse(status=500, body="")  # what Bolt answers a listener that raised
        log.warning("the /import-status listener did not acknowledge")
        return BoltResponse(status=200, body="")

    async def _run(self, ack: _Ack, respond: AsyncRespond, body: dict[str, Any]) -> bool:
        """Run the command handler; True when it raised (its error is logged as Bolt would)."""
        try:
            await self.handler.handle(ack, respond, body, self.client)
        except Exception as error:
            await self.on_error(error, body)
            return True
        return False

    def _takes(self, body: dict[str, Any]) -> bool:
        """A plain slash command for us (form fields, all text), not one Bolt must answer."""
        return (
            body.get("command") == COMMAND
            and "ssl_check" not in body
            and all(isinstance(value, str) for value in body.values())
            and parse_command(body.get("text")).verb not in ATTENTION_VERBS
        )

    async def _authorize(self) -> bool:
        """Whether ``auth.test`` has succeeded once (what Bolt's authorization asks first)."""
        if self._authorized:
            return True
        async with self._authorizing:
            if not self._authorized:
                try:
                    await self.client.auth_test()
                except Exception as exc:  # Bolt tries again, and answers as it always has
                    log.info("auth.test failed (%s); Bolt answers this command", type(exc).__name__)
                    return False
                self._authorized = True
        return True
