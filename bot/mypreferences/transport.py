"""httpx's transport interface over aiohttp's connection pool.

The client speaks httpx (``httpx.Request`` in, ``httpx.Response`` out, httpx's
exceptions), but httpcore's pool costs CPU in proportion to the connections it
holds: one pool of 50 cost 4-9 ms per request, hence the pools of 10 this
replaces; aiohttp's connector costs the same at 200 connections as at 50
(bench/README.md, "The HTTP transport"). Requests go straight to
``handle_async_request``: ``httpx.AsyncClient``'s own layer (URL merging,
cookies, event hooks) cost more CPU than the transport under it.

What this transport promises the client:

- no redirect is followed (the Authorization header never goes to another host);
- the body is handed over raw, never inflated: ``auth.read_limited`` inflates it
  under its cap, so a gzip bomb cannot grow in memory;
- httpx's per-request timeouts (``request.extensions["timeout"]``) apply: connect,
  and each read of the answer;
- every aiohttp failure is raised as the httpx exception the client maps to its
  typed errors (refused: ``ConnectError``, silence: ``ReadTimeout``, ...);
- proxies come from the environment (HTTPS_PROXY, NO_PROXY, ...) as httpx's
  client had them, looked up once per host rather than on every request;
- no cookies are kept.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

# How long an idle connection is kept: httpx's default keep-alive expiry.
KEEPALIVE_SECONDS = 5.0

# A proxy and its credentials, or (None, None) for a direct connection.
_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp connection pool of ``max_connections``, behind httpx's types.

    The aiohttp session is made on the first request (it belongs to the running
    event loop); ``aclose()`` closes it.
    """

    def __init__(self, *, max_connections: int, verify: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        # httpx's context (certifi's CA bundle), so TLS trusts what it trusted before.
        self._ssl = verify or httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[
            tuple[str, str, int | None], tuple[URL | None, aiohttp.BasicAuth | None]
        ] = {}
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    @property
    def is_closed(self) -> bool:
        return self._session is not None and self._session.closed

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None:
            session = self._session = self._new_session()
        url = URL(str(request.url), encoded=True)  # httpx has already quoted it
        proxy, proxy_auth = self._proxy_for(url)
        try:
            data: bytes | None = request.content or None
        except httpx.RequestNotRead:
            raise httpx.UnsupportedProtocol("streamed request bodies are not supported") from None
        # The header names as the caller wrote them (httpx keeps the raw bytes).
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        error = None
        try:
            response = await session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(request),
                proxy=proxy,
                proxy_auth=proxy_auth,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = _as_httpx_error(exc, request)
        if error is not None:
            raise error
        extensions = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("ascii", "replace")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, ssl=self._ssl, keepalive_timeout=KEEPALIVE_SECONDS
        )
        return aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            # read_limited inflates under its cap; aiohttp must hand over the raw bytes.
            auto_decompress=False,
            # Proxies are looked up by _proxy_for: aiohttp's trust_env would read the
            # environment and ~/.netrc again on every request.
            trust_env=False,
        )

    def _proxy_for(self, url: URL) -> _Proxy:
        key = (url.scheme, url.raw_host or "", url.port)
        found = self._proxies.get(key)
        if found is None:
            try:
                found = get_env_proxy_for_url(url)
            except LookupError:
                found = (None, None)
            self._proxies[key] = found
        return found

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        spec = request.extensions.get("timeout") or {}
        key = (spec.get("connect"), spec.get("read"), spec.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            connect, read, pool = key
            timeout = aiohttp.ClientTimeout(
                total=None,
                # aiohttp's ``connect`` covers the wait for a free connection and the
                # connecting: httpx's pool and connect timeouts one after the other.
                connect=None if pool is None or connect is None else pool + connect,
                sock_connect=connect,
                sock_read=read,
            )
            self._timeouts[key] = timeout
        return timeout


class _Body(httpx.AsyncByteStream):
    """The raw answer body as aiohttp reads it; closing it frees the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._response.content.iter_any().__aiter__()
        while True:
            error = None
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = _as_httpx_error(exc, self._request)
            if error is not None:
                raise error
            yield chunk

    async def aclose(self) -> None:
        # A body read to its end returns the connection to the pool; one abandoned
        # half-way (over the cap, say) closes it, so no stale bytes meet the next answer.
        self._response.release()


def _as_httpx_error(exc: Exception, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception for one of aiohttp's failures, as the client maps httpx's.

    The caller raises it outside its ``except`` block, so it carries no cause or
    context: aiohttp's exceptions hold the request's headers (the Authorization
    value) in their repr, which a logged traceback would print. The message keeps
    aiohttp's own words, which name the URL but no header.
    """
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(exc, TimeoutError):
        # aiohttp's own timers (ServerTimeoutError is a TimeoutError): an outer
        # asyncio.timeout cancels the task instead and raises outside the transport.
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        # Closed before or during the answer, or an answer that is not valid HTTP.
        return httpx.RemoteProtocolError(message, request=request)
    if isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message, request=request)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return httpx.ReadError(message, request=request)
    return httpx.TransportError(message, request=request)
