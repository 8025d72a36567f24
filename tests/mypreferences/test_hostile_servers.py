"""The client against hostile or broken MyPreferences servers, over real local sockets.

A gzip bomb, a server that compresses when asked not to, encodings nobody
asked for, a refused connection, a server error: each ends in a typed error
with the right words for the user, and the bomb never inflates in memory.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bot.config import Settings
from bot.mypreferences import errors
from bot.mypreferences.client import MAX_BODY_BYTES, MyPreferencesClient, RetryPolicy
from bot.sandbox.devserver import ServerThread

STATUS = b'{"Status": "Processing", "Name": "Hostile server test", "Processed": 5}'
ONE_TRY = RetryPolicy(attempts=1, budget_seconds=10)
GIB = 1024**3
MIB = 1024**2


def gzip_bomb(inflated: int = GIB) -> bytes:
    """A valid gzip stream of ``inflated`` zero bytes, about a thousandth of that in size.

    One megabyte of zeros is compressed once and its deflate block, ended with a
    full flush (no reference to earlier data), is repeated.
    """
    block_size = MIB
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = deflate.compress(bytes(block_size)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH)
    crc = 0
    zeros = bytes(block_size)
    for _ in range(inflated // block_size):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = crc.to_bytes(4, "little") + (inflated % 2**32).to_bytes(4, "little")
    return header + block * (inflated // block_size) + tail + trailer


def _raw_deflate(data: bytes) -> bytes:
    deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflate.compress(data) + deflate.flush()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb()


class Recorder:
    """What the server saw, and what it should answer next."""

    def __init__(self) -> None:
        self.accept_encodings: list[str | None] = []
        self.body = STATUS
        self.headers: dict[str, str] = {}
        self.status = 200


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Recorder]]:
    recorder = Recorder()

    async def status(request: Request) -> Response:
        recorder.accept_encodings.append(request.headers.get("accept-encoding"))
        return Response(
            recorder.body,
            status_code=recorder.status,
            media_type="application/json",
            headers=recorder.headers,
        )

    app = Starlette(routes=[Route("/Async/{client}/Import/{token}/Status", status)])
    with ServerThread(app) as thread:
        yield thread, recorder


def settings_for(url: str) -> Settings:
    return Settings(
        api_url=url,
        client_id="ACME",
        authorization="PNAUTHINFO3-SHA256 test",  # type: ignore[arg-type]
        http_timeout_seconds=5.0,
    )


@pytest.fixture
def answer(server: tuple[ServerThread, Recorder]) -> Iterator[Recorder]:
    recorder = server[1]
    recorder.body, recorder.headers, recorder.status = STATUS, {}, 200
    recorder.accept_encodings.clear()
    yield recorder


@pytest.fixture
async def client(server: tuple[ServerThread, Recorder]) -> Any:
    async with MyPreferencesClient(settings_for(server[0].url)) as api:
        yield api


async def test_the_client_asks_for_no_compression(client: Any, answer: Recorder) -> None:
    status = await client.get_status(4242, retry=ONE_TRY)

    assert status.name == "Hostile server test"
    assert answer.accept_encodings == ["identity"]


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(("gzip", gzip.compress), id="gzip"),
        pytest.param(("deflate", zlib.compress), id="deflate-zlib"),
        pytest.param(
            ("deflate", _raw_deflate),
            id="deflate-raw",
        ),
    ],
)
async def test_a_server_that_compresses_anyway_is_still_understood(
    client: Any, answer: Recorder, encode: Any
) -> None:
    name, compress = encode
    answer.body, answer.headers = compress(STATUS), {"Content-Encoding": name}

    status = await client.get_status(4242, retry=ONE_TRY)

    assert status.name == "Hostile server test" and status.processed == 5


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress", "x-evil"])
async def test_an_encoding_nobody_asked_for_is_an_unreadable_answer(
    client: Any, answer: Recorder, encoding: str
) -> None:
    answer.body, answer.headers = STATUS, {"Content-Encoding": encoding}

    with pytest.raises(errors.MalformedResponse) as raised:
        await client.get_status(4242, retry=ONE_TRY)

    assert "could not read" in raised.value.user_message


async def test_corrupt_gzip_is_an_unreadable_answer(client: Any, answer: Recorder) -> None:
    answer.body, answer.headers = b"\x1f\x8b\x08\x00garbage" * 10, {"Content-Encoding": "gzip"}

    with pytest.raises(errors.MalformedResponse):
        await client.get_status(4242, retry=ONE_TRY)


async def test_a_gzip_bomb_is_refused_without_being_inflated(
    client: Any, answer: Recorder, bomb: bytes
) -> None:
    assert len(bomb) < 1.1 * MIB  # 1 MiB on the wire ...
    answer.body, answer.headers = bomb, {"Content-Encoding": "gzip"}
    parallel = 8

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        outcomes = await asyncio.gather(
            *(client.get_status(4242 + i, retry=ONE_TRY) for i in range(parallel)),
            return_exceptions=True,
        )
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    # ... 1 GiB once inflated: each lookup refuses it past 1 MiB, and all eight
    # together never held more than a few megabytes.
    assert all(isinstance(o, errors.MalformedResponse) for o in outcomes), outcomes
    assert all("larger than 1 MiB" in str(o) for o in outcomes)
    assert peak < 20 * MIB, f"peak {peak / MIB:.0f} MiB while refusing {parallel} bombs"


def test_the_decoder_never_produces_more_than_the_limit_plus_one_byte(bomb: bytes) -> None:
    from bot.mypreferences.decoding import CappedDecoder

    decoder = CappedDecoder("gzip", MAX_BODY_BYTES)
    for start in range(0, len(bomb), 64 * 1024):
        if not decoder.feed(bomb[start : start + 64 * 1024]):
            break
    else:
        pytest.fail("the bomb was accepted")
    assert decoder.size == MAX_BODY_BYTES + 1
    assert decoder.finish() is None


def test_the_decoder_refuses_unknown_encodings() -> None:
    from bot.mypreferences.decoding import CappedDecoder, UnsupportedEncoding

    with pytest.raises(UnsupportedEncoding):
        CappedDecoder("br", 100)


# --------------------------------------------------------------------------- wording


async def test_a_refused_connection_says_the_api_could_not_be_reached() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    # Nothing listens on ``port`` now: the connection is refused.
    async with MyPreferencesClient(settings_for(f"http://127.0.0.1:{port}/")) as api:
        with pytest.raises(errors.Unreachable) as raised:
            await api.get_status(4242, retry=ONE_TRY)

    assert "could not reach MyPreferences" in raised.value.user_message
    assert "server error" not in raised.value.user_message


async def test_a_connect_timeout_says_the_api_could_not_be_reached() -> None:
    def connect_times_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    transport = httpx.MockTransport(connect_times_out)
    api = MyPreferencesClient(settings_for("http://mypreferences.invalid/"), transport=transport)
    with pytest.raises(errors.Unreachable) as raised:
        await api.get_status(4242, retry=ONE_TRY)

    assert "could not reach MyPreferences" in raised.value.user_message


@pytest.mark.parametrize("code", [500, 502, 503])
async def test_a_server_error_says_server_error(client: Any, answer: Recorder, code: int) -> None:
    answer.status, answer.body = code, b"oops"

    with pytest.raises(errors.Unavailable) as raised:
        await client.get_status(4242, retry=ONE_TRY)

    assert not isinstance(raised.value, errors.Unreachable)
    assert "temporarily unavailable (server error)" in raised.value.user_message
