"""The async MyPreferences client: Retrieve status and Retrieve exceptions.

The only module that talks HTTP to MyPreferences. It turns every outcome into
either a parsed answer or one typed ``errors.ApiError``, retries transient
trouble within a ``RetryPolicy`` (attempts and a total time budget), refreshes
an OAuth token once on a 401, and reads bodies in a bounded way.

Secrets never leave this module in logs or exception messages: the debug line
per attempt carries the import's access token, the HTTP status and the time
taken, never a header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from bot.config import Settings
from bot.domain.status import ImportStatus
from bot.mypreferences import errors
from bot.mypreferences.auth import (
    ACCEPT_IDENTITY,
    Authenticator,
    make_authenticator,
    read_limited,
)
from bot.mypreferences.parsing import (
    ExceptionsPage,
    parse_exceptions_page,
    parse_import_status,
    parse_retry_after,
)
from bot.mypreferences.tokens import check_access_token
from bot.mypreferences.transport import AiohttpTransport

logger = logging.getLogger(__name__)

USER_AGENT = "import-status-bot"
MAX_BODY_BYTES = 1024 * 1024
# A page of exception records is bigger than a status: 1,000 profiles of up to 8 KiB each.
MAX_EXCEPTIONS_PAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries: attempts, exponential backoff, and a total time budget.

    ``budget_seconds`` covers the requests and the waits between them; a wait
    that would cross it is not taken and the last error is raised instead.
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    budget_seconds: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")
        if not self.budget_seconds > 0:
            raise ValueError("budget_seconds must be positive")


DEFAULT_RETRY = RetryPolicy()
# For the watcher: it spaces its own retries across ticks, so one call is one request.
NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class _Answer:
    code: int
    retry_after: float | None
    body: dict[str, Any] | None  # the decoded object, for 2xx answers only


class MyPreferencesClient:
    """Reads import status and exceptions from the MyPreferences API.

    Sends ``httpx.Request``s through an httpx transport: its own
    ``transport.AiohttpTransport`` unless one is passed in (a test's
    ``httpx.MockTransport``); use ``async with`` or call ``aclose()``. ``sleep``,
    ``random``, ``clock`` and ``wall_clock`` are injectable so tests run instantly
    and deterministically.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 100,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        random: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        authenticator: Authenticator | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._settings = settings
        self._owns_transport = transport is None
        if transport is None:
            # The watcher polls up to POLL_CONCURRENCY imports at once: one pool sized
            # for that (aiohttp's pool costs the same per request at any size).
            transport = AiohttpTransport(max_connections=max_connections)
        self._transport = transport
        # Requests are sent to the transport directly (see transport.py); the OAuth
        # token request, rare and a form POST, goes through an AsyncClient on the same pool.
        self._auth = authenticator or make_authenticator(
            settings, httpx.AsyncClient(transport=transport, timeout=settings.http_timeout_seconds)
        )
        self._headers_authorization: str | None = None
        self._request_headers = httpx.Headers()
        # Every request's timeouts, as httpx.AsyncClient(timeout=...) would set them.
        self._timeout = httpx.Timeout(settings.http_timeout_seconds).as_dict()
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._wall_clock = wall_clock
        base = settings.api_url
        base = base if base.endswith("/") else base + "/"
        # The URLs with the client id filled in, once: only the access token varies.
        self._url_templates = {
            template: base + _with_client_id(template, settings.client_id).lstrip("/")
            for template in (settings.status_path, settings.exceptions_path)
        }

    async def aclose(self) -> None:
        """Close the transport if this object created it."""
        if self._owns_transport:
            await self._transport.aclose()

    async def __aenter__(self) -> MyPreferencesClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def get_status(
        self, access_token: int, *, retry: RetryPolicy = DEFAULT_RETRY
    ) -> ImportStatus:
        """Retrieve status for one import. Raises a typed ``errors.ApiError``.

        Raises ValueError (before any request) when ``access_token`` is not a
        positive int.
        """
        check_access_token(access_token)
        url = self._url(self._settings.status_path, access_token)
        body = await self._get_object("status", url, access_token, None, retry)
        return parse_import_status(body, access_token, self._settings.expires_timezone)

    async def get_exceptions(
        self,
        access_token: int,
        *,
        limit: int = 1000,
        offset: int = 1,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_bytes: int = MAX_EXCEPTIONS_PAGE_BYTES,
    ) -> ExceptionsPage:
        """Retrieve one page of exception records for an import.

        Raises ValueError for a bad access token, limit (< 1) or offset (< 0),
        and a typed ``errors.ApiError`` for anything the API does. A body above
        ``max_bytes`` is refused (``MalformedResponse``) without being kept.
        """
        check_access_token(access_token)
        for name, value, minimum in (("limit", limit, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be a whole number of at least {minimum}")
        url = self._url(self._settings.exceptions_path, access_token)
        params = {"limit": str(limit), "offset": str(offset)}
        body = await self._get_object("exceptions", url, access_token, params, retry, max_bytes)
        return parse_exceptions_page(body)

    def _url(self, template: str, access_token: int) -> str:
        return self._url_templates[template].replace("{accessToken}", str(access_token))

    async def _get_object(
        self,
        what: str,
        url: str,
        access_token: int,
        params: Mapping[str, str] | None,
        retry: RetryPolicy,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> dict[str, Any]:
        """GET ``url`` under the retry policy; return the decoded JSON object."""
        # Time is accounted as measured request time plus the waits asked for, so
        # the budget holds with the real clock and with an instant test ``sleep``.
        spent = 0.0
        failures = 0
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            started = self._clock()
            header: str | None = None
            answer: _Answer | None = None
            error: errors.ApiError | None = None
            try:
                # Bound each attempt by what is left of the budget, so a slow
                # server cannot stretch one call past it.
                async with asyncio.timeout(max(retry.budget_seconds - spent, 0.0)):
                    header = await self._auth.header()
                    answer = await self._send(url, params, header, max_bytes)
            except TimeoutError:
                error = errors.Timeout("no answer within the time budget")
            except errors.ApiError as exc:
                error = exc
            elapsed = self._clock() - started
            spent += elapsed
            logger.debug(
                "MyPreferences %s token=%d attempt=%d status=%s elapsed_ms=%d",
                what,
                access_token,
                attempt,
                answer.code if answer is not None else type(error).__name__,
                round(elapsed * 1000),
            )
            if answer is not None:
                if answer.body is not None:
                    return answer.body
                if (
                    answer.code == 401
                    and self._auth.can_refresh
                    and not refreshed
                    and spent < retry.budget_seconds
                ):
                    # Our bearer token may have been revoked or expired early:
                    # one fresh token, one immediate retry. A second 401 means
                    # the access token itself is unknown or expired.
                    refreshed = True
                    self._auth.invalidate(header)
                    continue
                error = errors.error_for_status(answer.code, answer.retry_after)
            assert error is not None
            failures += 1
            if not error.transient or failures >= retry.attempts:
                raise error
            wait = self._backoff(retry, failures, error.retry_after)
            if spent + wait >= retry.budget_seconds:
                raise error
            await self._sleep(wait)
            spent += wait

    def _backoff(self, retry: RetryPolicy, failures: int, retry_after: float | None) -> float:
        """Equal jitter: half the exponential ceiling fixed, half random; Retry-After is a floor."""
        # The exponent is capped so a large ``attempts`` cannot overflow a float.
        ceiling = min(retry.max_delay, retry.base_delay * 2.0 ** min(failures - 1, 60))
        wait = ceiling / 2 + self._random() * ceiling / 2
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

    def _headers(self, authorization: str) -> httpx.Headers:
        """The request headers, built again only when the Authorization value changes."""
        if authorization != self._headers_authorization:
            self._request_headers = httpx.Headers(
                {
                    "Authorization": authorization,
                    "Accept": "application/json",
                    # Whatever the server does, read_limited caps what it decodes.
                    **ACCEPT_IDENTITY,
                    # So the API's operators can tell the bot's calls apart.
                    "User-Agent": USER_AGENT,
                }
            )
            self._headers_authorization = authorization
        return self._request_headers

    async def _send(
        self,
        url: str,
        params: Mapping[str, str] | None,
        header: str,
        max_bytes: int = MAX_BODY_BYTES,
    ) -> _Answer:
        """One GET. Non-2xx answers are returned; transport and body trouble raise."""
        # No redirect is ever followed (transport.py): the Authorization header
        # must never be replayed to another host.
        request = httpx.Request(
            "GET",
            url,
            params=params,
            headers=self._headers(header),
            extensions={"timeout": self._timeout},
        )
        try:
            response = await self._transport.handle_async_request(request)
            try:
                code = response.status_code
                if not 200 <= code < 300:
                    retry_after = parse_retry_after(
                        response.headers.get("Retry-After"), self._wall_clock()
                    )
                    return _Answer(code, retry_after, None)
                if _declared_too_large(response, max_bytes):
                    raise errors.MalformedResponse(f"the answer is larger than {_size(max_bytes)}")
                raw = await read_limited(response, max_bytes)
            finally:
                await response.aclose()
        except httpx.ConnectTimeout as exc:
            # Chaining keeps the cause for operators; httpx error messages carry
            # no headers, so no secret reaches a traceback line.
            raise errors.Unreachable(f"connection timed out ({type(exc).__name__})") from exc
        except httpx.TimeoutException as exc:
            raise errors.Timeout(f"request timed out ({type(exc).__name__})") from exc
        except httpx.DecodingError as exc:
            raise errors.MalformedResponse("the answer could not be decoded") from exc
        except httpx.HTTPError as exc:
            # Refused, reset, closed mid-answer: the server never answered with an error.
            raise errors.Unreachable(f"network error ({type(exc).__name__})") from exc
        if raw is None:
            raise errors.MalformedResponse(f"the answer is larger than {_size(max_bytes)}")
        return _Answer(code, None, _decode_object(raw))


def _with_client_id(template: str, client_id: str) -> str:
    # str.replace, not str.format: a configured template with other braces must
    # not turn into a KeyError at request time.
    return template.replace("{clientId}", quote(client_id, safe=""))


def _size(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit:,} bytes"


def _declared_too_large(response: httpx.Response, limit: int = MAX_BODY_BYTES) -> bool:
    """True when an unencoded answer announces more than the limit (skip reading it)."""
    if response.headers.get("Content-Encoding", "identity").lower() != "identity":
        return False  # the declared length is the compressed size; read_limited decides
    declared = response.headers.get("Content-Length", "")
    if not (declared.isascii() and declared.isdigit()):
        return False
    # Checking the length first keeps int() away from absurdly long digit strings.
    return len(declared) > 12 or int(declared) > limit


def _decode_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except RecursionError:
        raise errors.MalformedResponse("the answer is nested too deeply") from None
    except ValueError:
        raise errors.MalformedResponse("the answer is not JSON") from None
    if not isinstance(body, dict):
        raise errors.MalformedResponse("the answer is not a JSON object")
    return body
