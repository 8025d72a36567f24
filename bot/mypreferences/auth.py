"""How the bot proves who it is to MyPreferences: the ``Authorization`` header value.

Two modes, exactly one configured (see ``bot.config``):

- a ready-made header value, sent verbatim (the undocumented PNAUTHINFO3 scheme
  cannot be signed by the bot, so an operator supplies the value);
- OAuth 2.0 client credentials: a bearer token fetched from the configured token
  endpoint, cached until shortly before it expires and refreshed once on a 401.

Nothing here logs or puts into an exception message a client secret, a token
or an Authorization value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterable, Callable
from typing import Any, Protocol

import httpx

from bot.config import ConfigError, OAuthSettings, Secret, Settings
from bot.mypreferences import errors
from bot.mypreferences.decoding import CappedDecoder, UnsupportedEncoding

logger = logging.getLogger(__name__)

DEFAULT_EXPIRES_IN = 3600.0
# What compression may add to a body that does not compress (headers, block framing).
MAX_COMPRESSION_OVERHEAD = 64 * 1024
# Asked of every server: compression buys nothing for a few KB and costs a decoder.
ACCEPT_IDENTITY = {"Accept-Encoding": "identity"}
# A token answer is a few hundred bytes; anything much larger is not one.
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
# Refresh this long before expiry at most, so a request sent with a cached
# token (and its retries) does not race the token's end.
REFRESH_MARGIN_SECONDS = 60.0


class Authenticator(Protocol):
    """Supplies the Authorization header value for MyPreferences requests."""

    #: Whether ``invalidate`` can lead to a different header value (a 401 is worth one retry).
    can_refresh: bool

    async def header(self) -> str:
        """The Authorization header value to send now."""
        ...

    def invalidate(self, rejected: str | None = None) -> None:
        """Forget the cached credential so the next ``header()`` fetches a new one.

        ``rejected`` is the header value the API refused. When given and a
        different value is already cached, another caller has refreshed in the
        meantime and nothing is dropped; this keeps concurrent 401s to one
        token request.
        """
        ...


class StaticAuthorization:
    """A configured Authorization value, sent verbatim; it cannot be refreshed."""

    can_refresh = False

    def __init__(self, value: str) -> None:
        if not value:
            raise ValueError("the Authorization value is empty")
        self._value = Secret(value)

    async def header(self) -> str:
        """The configured value, unchanged."""
        return str(self._value)

    def invalidate(self, rejected: str | None = None) -> None:
        """Nothing to drop: the configured value is all there is."""

    def __repr__(self) -> str:
        return "StaticAuthorization(***)"


class OAuthClientCredentials:
    """OAuth 2.0 client-credentials grant with a cached bearer token.

    One ``asyncio.Lock`` makes concurrent callers share one token request.
    ``clock`` is injectable so tests can move time forward.
    """

    can_refresh = True

    def __init__(
        self,
        settings: OAuthSettings,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._header: Secret | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"OAuthClientCredentials(token_url={self._settings.token_url!r})"

    async def header(self) -> str:
        """``<token_type> <access_token>``, fetching a token when none is fresh."""
        cached = self._fresh_header()
        if cached is not None:
            return cached
        async with self._lock:
            # Another caller may have fetched a token while this one waited.
            cached = self._fresh_header()
            if cached is not None:
                return cached
            requested_at = self._clock()
            header, expires_in = await self._request_token()
            self._header = Secret(header)
            # Count the lifetime from before the request: the server started it then.
            self._refresh_at = requested_at + refresh_after(expires_in)
            logger.debug("fetched an OAuth token, valid for %.0f s", expires_in)
            return header

    def invalidate(self, rejected: str | None = None) -> None:
        """Drop the cached token unless it is already a newer one than ``rejected``."""
        if rejected is not None and self._header is not None and self._header != rejected:
            return
        self._header = None
        self._refresh_at = 0.0

    def _fresh_header(self) -> str | None:
        if self._header is not None and self._clock() < self._refresh_at:
            return str(self._header)
        return None

    async def _request_token(self) -> tuple[str, float]:
        """POST the client-credentials grant; return the header value and lifetime."""
        form = {"grant_type": "client_credentials", "scope": self._settings.scope}
        auth: httpx.BasicAuth | None = None
        if self._settings.client_auth == "basic":
            auth = httpx.BasicAuth(str(self._settings.client_id), str(self._settings.client_secret))
        else:
            form["client_id"] = str(self._settings.client_id)
            form["client_secret"] = str(self._settings.client_secret)
        try:
            async with self._http.stream(
                "POST",
                self._settings.token_url,
                data=form,
                auth=auth,
                headers={"Accept": "application/json", **ACCEPT_IDENTITY},
            ) as response:
                code = response.status_code
                if code == 429 or code >= 500:
                    # The token endpoint is in trouble, not refusing the bot: transient.
                    raise errors.Unavailable(f"OAuth token endpoint answered HTTP {code}")
                if not 200 <= code < 300:
                    raise errors.AuthFailed(f"OAuth token endpoint answered HTTP {code}")
                raw = await read_limited(response, MAX_TOKEN_RESPONSE_BYTES)
        except httpx.HTTPError as exc:
            # ``from None``: the chained httpx error carries the request, and with it
            # the client credentials; keep it out of any traceback that gets logged.
            raise errors.Unreachable(f"OAuth token request failed ({type(exc).__name__})") from None
        if raw is None:
            raise errors.AuthFailed("OAuth token answer is too large")
        return parse_token_response(raw)


def parse_token_response(raw: bytes) -> tuple[str, float]:
    """Read ``access_token``, ``token_type`` and ``expires_in`` from a token answer.

    Returns the Authorization header value and the lifetime in seconds. Raises
    ``errors.AuthFailed`` (never quoting the token) when the answer is unusable.
    """
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise errors.AuthFailed("OAuth token answer is not JSON") from None
    if not isinstance(body, dict):
        raise errors.AuthFailed("OAuth token answer is not a JSON object")
    token = body.get("access_token")
    if not isinstance(token, str) or not _is_header_safe(token):
        raise errors.AuthFailed("OAuth token answer has no usable access_token")
    token_type = body.get("token_type", "Bearer")
    if not isinstance(token_type, str) or not _is_header_safe(token_type):
        raise errors.AuthFailed("OAuth token answer has an unusable token_type")
    # RFC 6750: the scheme is case-insensitive; some servers send "bearer".
    if token_type.lower() == "bearer":
        token_type = "Bearer"
    expires_in = _expires_in(body.get("expires_in"))
    return f"{token_type} {token}", expires_in


def refresh_after(expires_in: float) -> float:
    """Seconds after issue to fetch a new token.

    The earlier of ``expires_in - 60`` and 90 % of ``expires_in``, but never
    before half the lifetime: for a short-lived token (a minute or two) the
    60-second margin would otherwise mean a token request before every call.
    """
    return max(min(expires_in - REFRESH_MARGIN_SECONDS, 0.9 * expires_in), 0.5 * expires_in)


def make_authenticator(settings: Settings, http: httpx.AsyncClient) -> Authenticator:
    """The authenticator for the configured mode (exactly one must be configured)."""
    if settings.oauth and settings.authorization:
        raise ConfigError(
            "MYPREFERENCES_AUTHORIZATION: set either it or the MYPREFERENCES_OAUTH_* "
            "variables, not both (exactly one auth mode)"
        )
    if settings.oauth:
        return OAuthClientCredentials(settings.oauth, http)
    if settings.authorization:
        return StaticAuthorization(settings.authorization)
    raise ConfigError(
        "MYPREFERENCES_AUTHORIZATION: required (or set MYPREFERENCES_OAUTH_TOKEN_URL, "
        "_CLIENT_ID, _CLIENT_SECRET and _SCOPE for OAuth 2.0)"
    )


def _expires_in(value: object) -> float:
    if value is None:
        return DEFAULT_EXPIRES_IN
    # Some servers (Azure AD v1, for one) send the number as a string.
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or number <= 0:
        raise errors.AuthFailed("OAuth token answer has an invalid expires_in")
    return number


def _is_header_safe(value: str) -> bool:
    """Non-empty visible ASCII: anything else could not go into a header line."""
    return bool(value) and all(33 <= ord(ch) <= 126 for ch in value)


def _raw_chunks(response: httpx.Response) -> AsyncIterable[bytes]:
    """The body's bytes as the transport hands them over, undecoded.

    The transport's stream itself when it is one (the caller closes the response):
    ``aiter_raw`` re-chunks and counts every piece on its way, 25 µs of a poll's
    0.45 ms of CPU (bench/README.md).
    """
    stream = response.stream
    return stream if isinstance(stream, httpx.AsyncByteStream) else response.aiter_raw()


async def read_limited(response: httpx.Response, limit: int) -> bytes | None:
    """The decoded body, or None once it grows past ``limit`` bytes (reading stops there).

    Shared with ``client.py``: a hostile or broken server cannot make the bot hold
    more than ``limit`` bytes, even behind gzip. The raw bytes are decoded here
    (``decoding.CappedDecoder``), not by httpx, which would inflate each chunk
    whole before it could be counted. Raises ``errors.MalformedResponse`` for an
    encoding the bot cannot read.
    """
    if response.is_stream_consumed:
        # Read (and decoded) before it got here, as a test transport does: just measure it.
        return response.content if len(response.content) <= limit else None
    try:
        decoder = CappedDecoder(response.headers.get("Content-Encoding"), limit)
        # The compressed size is capped too: a stream of empty blocks decodes to nothing.
        raw_limit = limit + MAX_COMPRESSION_OVERHEAD
        raw = 0
        async for chunk in _raw_chunks(response):
            raw += len(chunk)
            if raw > raw_limit or not decoder.feed(chunk):
                return None
        return decoder.finish()
    except UnsupportedEncoding as exc:
        raise errors.MalformedResponse(str(exc)) from None
