"""The client over its own transport (aiohttp's pool behind httpx's types), over real sockets.

Each test starts a raw asyncio server that misbehaves in one way (silence, a
body cut short, a redirect, a trickle...) and checks what the client's caller
gets: the typed error with the user's wording, the Retry-After it carries,
what the server saw. The gzip bomb, unasked encodings and a refused connection
are in test_hostile_servers.py, which runs on the same transport.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import parse_qs

import httpx
import pytest

from bot.config import OAuthSettings, Secret, Settings
from bot.mypreferences import errors
from bot.mypreferences.client import MAX_BODY_BYTES, MyPreferencesClient, RetryPolicy
from bot.mypreferences.transport import AiohttpTransport

STATUS = b'{"Status": "Processing", "Name": "Transport test", "Processed": 5}'
AUTHORIZATION = "PNAUTHINFO3-SHA256 transport-test-secret-value"
ONE_TRY = RetryPolicy(attempts=1, budget_seconds=10)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A TCP server whose handler writes whatever bytes a test wants; it records requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        # Python 3.11's Server has no close_clients(): end the handlers still running.
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head + body


def answer(code: int, body: bytes = STATUS, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {code} X", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def settings_for(url: str, timeout: float = 5.0, **extra: object) -> Settings:
    values: dict[str, object] = {
        "api_url": url,
        "client_id": "ACME",
        "authorization": Secret(AUTHORIZATION),
        "http_timeout_seconds": timeout,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def keep_alive_server() -> AsyncIterator[RawServer]:
    """Answers every request on a connection with the status, keeping it open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(answer(200))
            await writer.drain()

    server = RawServer(handler)
    async with server:
        yield server


async def test_a_status_over_the_transport_carries_the_headers_and_no_cookies_back(
    keep_alive_server: RawServer,
) -> None:
    async with MyPreferencesClient(settings_for(keep_alive_server.url)) as api:
        first = await api.get_status(4242, retry=ONE_TRY)
        await api.get_status(4243, retry=ONE_TRY)

    assert first.name == "Transport test" and first.processed == 5
    request = keep_alive_server.requests[0].decode()
    assert request.startswith("GET /Async/ACME/Import/4242/Status HTTP/1.1\r\n")
    lowered = request.lower()
    assert f"authorization: {AUTHORIZATION}".lower() in lowered
    assert "accept: application/json" in lowered
    assert "accept-encoding: identity" in lowered
    assert "\r\nuser-agent: import-status-bot\r\n" in lowered
    # Both requests went over one kept-alive connection.
    assert keep_alive_server.connections == 1
    assert len(keep_alive_server.requests) == 2


async def test_a_silent_server_times_out_after_the_configured_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(30)

    server = RawServer(silent)
    async with server, MyPreferencesClient(settings_for(server.url, timeout=0.3)) as api:
        started = time.monotonic()
        with pytest.raises(errors.Timeout) as raised:
            await api.get_status(4242, retry=ONE_TRY)
        elapsed = time.monotonic() - started

    assert "did not answer in time" in raised.value.user_message
    assert 0.25 < elapsed < 3.0


async def test_a_trickling_body_is_stopped_by_the_time_budget() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(1000):  # one byte every 50 ms: each read is quick, the whole is not
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.05)

    server = RawServer(trickle)
    async with server, MyPreferencesClient(settings_for(server.url, timeout=0.3)) as api:
        started = time.monotonic()
        with pytest.raises(errors.Timeout):
            await api.get_status(4242, retry=RetryPolicy(attempts=1, budget_seconds=0.6))
        elapsed = time.monotonic() - started

    assert 0.5 < elapsed < 3.0


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(b"", id="closed-without-answer"),
        pytest.param(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"Sta', id="body-cut-short"),
        pytest.param(b"this is not HTTP\r\n\r\n", id="not-http"),
    ],
)
async def test_a_broken_connection_says_the_api_could_not_be_reached(reply: bytes) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(reply)
        await writer.drain()

    server = RawServer(broken)
    async with server, MyPreferencesClient(settings_for(server.url)) as api:
        with pytest.raises(errors.Unreachable) as raised:
            await api.get_status(4242, retry=ONE_TRY)

    assert "could not reach MyPreferences" in raised.value.user_message
    assert raised.value.transient


async def test_retry_after_is_read_from_a_real_answer_and_waited_for() -> None:
    replies = [answer(503, b"busy", {"Retry-After": "7"}), answer(200)]

    async def busy_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            await server.read_request(reader)
            writer.write(replies.pop(0))
            await writer.drain()

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    server = RawServer(busy_then_ok)
    async with server, MyPreferencesClient(settings_for(server.url), sleep=sleep) as api:
        status = await api.get_status(4242)

    assert status.name == "Transport test"
    assert waits and waits[0] >= 7.0
    assert len(server.requests) == 2


async def test_a_redirect_is_not_followed(keep_alive_server: RawServer) -> None:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        location = keep_alive_server.url + "Async/ACME/Import/4242/Status"
        writer.write(answer(302, b"", {"Location": location}))
        await writer.drain()

    server = RawServer(redirect)
    async with server, MyPreferencesClient(settings_for(server.url)) as api:
        with pytest.raises(errors.ApiError) as raised:
            await api.get_status(4242, retry=ONE_TRY)

    assert "HTTP 302" in str(raised.value)
    # The Authorization header never reached the other host.
    assert keep_alive_server.requests == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_over_the_cap_is_refused_and_the_pool_stays_usable(
    chunked: bool,
) -> None:
    big = b'{"Name": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    calls = 0

    async def big_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        while True:
            await server.read_request(reader)
            calls += 1
            if calls > 1:
                writer.write(answer(200))
            elif chunked:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                for start in range(0, len(big), 65536):
                    piece = big[start : start + 65536]
                    writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(answer(200, big))
            await writer.drain()

    server = RawServer(big_then_ok)
    async with server, MyPreferencesClient(settings_for(server.url)) as api:
        with pytest.raises(errors.MalformedResponse) as raised:
            await api.get_status(4242, retry=ONE_TRY)
        # The abandoned body's connection is not reused: the next answer is read whole.
        statuses = [await api.get_status(4243 + i, retry=ONE_TRY) for i in range(3)]

    assert "larger than 1 MiB" in str(raised.value)
    assert [s.name for s in statuses] == ["Transport test"] * 3


async def test_the_proxy_from_the_environment_is_used(
    keep_alive_server: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The proxy is the test server: an HTTP proxy gets the absolute URL in the request line.
    monkeypatch.setenv("HTTP_PROXY", keep_alive_server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with MyPreferencesClient(settings_for("http://mp.invalid/Profiles/")) as api:
        status = await api.get_status(4242, retry=ONE_TRY)

    assert status.name == "Transport test"
    first_line = keep_alive_server.requests[0].split(b"\r\n", 1)[0]
    assert first_line == b"GET http://mp.invalid/Profiles/Async/ACME/Import/4242/Status HTTP/1.1"


async def test_the_oauth_token_request_goes_over_the_same_transport() -> None:
    async def oauth(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await server.read_request(reader)
            if request.startswith(b"POST /token "):
                body = b'{"access_token": "tok-1", "expires_in": 3600}'
                writer.write(answer(200, body, {"Content-Type": "application/json"}))
            else:
                writer.write(answer(200))
            await writer.drain()

    server = RawServer(oauth)
    async with server:
        oauth_settings = OAuthSettings(
            token_url=server.url + "token",
            client_id=Secret("bot-client"),
            client_secret=Secret("bot-secret"),
            scope="ACME/bot.user",
            client_auth="basic",
        )
        settings = settings_for(server.url, authorization=None, oauth=oauth_settings)
        async with MyPreferencesClient(settings) as api:
            await api.get_status(4242, retry=ONE_TRY)

    token_request, status_request = server.requests
    head, _, form = token_request.partition(b"\r\n\r\n")
    basic = base64.b64encode(b"bot-client:bot-secret").decode()
    assert f"authorization: basic {basic}".lower() in head.decode().lower()
    assert parse_qs(form.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["ACME/bot.user"],
    }
    assert b"\r\nAuthorization: Bearer tok-1\r\n" in status_request  # the name as httpx had it


async def test_failures_over_the_transport_log_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"garbage\r\n\r\n")

    caplog.set_level(logging.DEBUG)
    server = RawServer(broken)
    async with server, MyPreferencesClient(settings_for(server.url)) as api:
        with pytest.raises(errors.Unreachable) as raised:
            await api.get_status(4242, retry=RetryPolicy(attempts=2, base_delay=0))

    logging.getLogger("test").exception("as an operator would see it", exc_info=raised.value)
    seen = caplog.text
    chain: BaseException | None = raised.value
    while chain is not None:
        seen += repr(chain) + str(chain)
        chain = chain.__cause__ or chain.__context__
    assert "token=4242 attempt=2" in caplog.text
    assert "transport-test-secret-value" not in seen


async def test_aiohttp_failures_become_the_httpx_exceptions_the_client_maps() -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)

    server = RawServer(close_at_once)
    transport = AiohttpTransport(max_connections=2)
    async with server:
        request = httpx.Request("GET", server.url, extensions={"timeout": {"read": 1.0}})
        with pytest.raises(httpx.RemoteProtocolError) as raised:
            await transport.handle_async_request(request)
        assert raised.value.request is request
    refused = httpx.Request("GET", server.url)  # the server is closed now
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(refused)
    await transport.aclose()
    assert transport.is_closed
