"""One Slack Web API call, bounded in time, whose failure comes with its fate.

What every sender outside the card delivery loop shares with it (batches, channel
posts, the daily digest): the same table of fates (``bot/slack/errors.py``), the
same metrics, the same clamped Retry-After, the same backoff and attempt limits.
``SlackCalls.call`` raises ``SlackCallFailed`` for any failure, so a caller
decides by ``failed.error.fate`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.metrics import METRICS
from bot.slack.errors import NETWORK, Fate, SlackError, classify, is_known, retry_after_seconds

log = logging.getLogger(__name__)

# The same limits as the card delivery (bot/slack/delivery.py).
MAX_ATTEMPTS = 8
MAX_RATE_LIMITED_ATTEMPTS = 100
FIRST_BACKOFF_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 600.0
SLACK_CALL_TIMEOUT_SECONDS = 10.0

# Where Slack accepts them: no previews, and no re-parsing of text the bot escaped.
POST_FLAGS: dict[str, Any] = {"unfurl_links": False, "unfurl_media": False, "parse": "none"}
UPDATE_FLAGS: dict[str, Any] = {"parse": "none"}


@dataclass
class SlackCallFailed(Exception):
    """A Slack call failed; ``error`` holds its fate."""

    error: SlackError
    method: str
    detail: str  # Slack's code, or the exception's name for network trouble
    retry_after: float | None = None  # seconds, clamped; rate limits only

    def __str__(self) -> str:
        return self.detail


class SlackCalls:
    """Calls the Web API through one client, each bounded by ``timeout``."""

    def __init__(
        self, client: AsyncWebClient, *, timeout: float = SLACK_CALL_TIMEOUT_SECONDS
    ) -> None:
        self.client = client
        self.timeout = timeout

    async def call(self, method: str, **kwargs: Any) -> Any:
        """Call ``method`` (an AsyncWebClient method name such as ``chat_postMessage``)."""
        try:
            return await asyncio.wait_for(
                getattr(self.client, method)(**kwargs), timeout=self.timeout
            )
        except SlackApiError as exc:
            code, status, raw_retry_after = describe(exc)
            error = classify(code, status)
            detail = code or f"HTTP {status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # aiohttp's ServerDisconnectedError, ClientPayloadError... are not OSErrors.
            error, detail, raw_retry_after = NETWORK, type(exc).__name__, None
        METRICS.slack_errors.labels(error=error.code, fate=error.fate.value).inc()
        if error.fate is Fate.TRANSIENT and error is not NETWORK and not is_known(error.code):
            log.warning("Slack answered an unknown error (%s); treating it as transient", detail)
        wait = retry_after_seconds(raw_retry_after) if error.fate is Fate.RATE_LIMITED else None
        raise SlackCallFailed(error, method, detail, wait)


def attempt_limit(error: SlackError) -> int:
    """How many failed tries of one message before it is given up."""
    return MAX_RATE_LIMITED_ATTEMPTS if error.fate is Fate.RATE_LIMITED else MAX_ATTEMPTS


def backoff(attempts: int) -> float:
    """2 s, 4 s, 8 s ... after the 1st, 2nd, 3rd failure; at most MAX_BACKOFF_SECONDS."""
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** max(0, attempts - 1))


def retry_in(failed: SlackCallFailed, attempts: int) -> float:
    """Seconds before the next try: Slack's Retry-After for a rate limit, else the backoff."""
    if failed.error.fate is Fate.RATE_LIMITED:
        return failed.retry_after or 1.0
    return backoff(attempts)


def describe(exc: SlackApiError) -> tuple[str | None, int, object]:
    """Slack's error code, the HTTP status and Retry-After, however the error was raised.

    slack-sdk puts a SlackResponse in ``exc.response``, or the raw aiohttp response
    when the body was not JSON (a 502 page from a proxy, say).
    """
    response = exc.response
    status = int(getattr(response, "status_code", None) or getattr(response, "status", 0) or 0)
    code: str | None = None
    with contextlib.suppress(Exception):
        value = response.get("error")
        code = str(value) if value else None
    headers = getattr(response, "headers", None) or {}
    retry_after = None
    with contextlib.suppress(Exception):
        retry_after = headers.get("Retry-After") or headers.get("retry-after")
    return code, status, retry_after
