"""The HTTP transport for the MyPreferences client: every candidate side by side in one run.

A raw asyncio server (``bench/status_server.py``) runs in its own process and
answers a realistic Retrieve status body after D seconds, so its CPU is not
counted. Each measurement runs in a fresh child process (spawned, so peak RSS
and CPU belong to that candidate alone): it opens C connections with a short
warm-up, then N GET requests go out C at a time, and the child reports its
wall time, its process CPU time (``time.process_time``) and its peak RSS.
Candidates and concurrencies are interleaved and repeated (best of R), so
the spread across rounds shows the noise.

Every request behaves like ``MyPreferencesClient._send``: GET with the
Authorization header, Retry-After parsed, no redirect followed, the body
streamed under a hard cap of 1 MiB (of DECOMPRESSED bytes), a per-request
timeout, and the JSON object decoded. Before the load, a preflight checks
each candidate's correctness against the same server: timeouts fire, the cap
holds (with and without a Content-Length), a gzip bomb (~1 MiB inflating to
1 GiB) is refused at the cap plus at most one chunk, Retry-After is readable,
redirects are not followed, and the pool still works after aborted bodies.

    .venv/bin/python -m bench.transport             # N=10000, D=0.05, C=50 and 200, best of 3
    .venv/bin/python -m bench.transport --quick     # N=2000, one round: a quick look
    .venv/bin/python -m bench.transport --candidates a,c,d -c 50 -n 3000 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import math
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import httpx

from bench.common import print_machine, process_cpu_seconds, table, write_json
from bench.status_server import AUTHORIZATION, STATUS_PREFIX, status_body
from bot.mypreferences import errors
from bot.mypreferences.client import MAX_BODY_BYTES, _decode_object, parse_retry_after

# What "the cap plus one chunk" allows a refused body to have read or inflated:
# aiohttp's default read size. BoundedBody stops at the cap plus one byte.
ONE_CHUNK = 256 * 1024
# Candidate (a), the client as it was when this benchmark was written (kept here so
# (a) stays measurable once the client changes).
CONNECTIONS_PER_POOL = 10
PREFLIGHT_TIMEOUT = 0.5
LOAD_TIMEOUT = 10.0  # HTTP_TIMEOUT_SECONDS' default

# The client's headers. Candidates that inflate the body themselves ask for gzip only,
# so no encoding they cannot bound (br, zstd) can come back.
HEADERS = {"Authorization": AUTHORIZATION, "Accept": "application/json"}
HEADERS_GZIP = {**HEADERS, "Accept-Encoding": "gzip"}


@dataclass(frozen=True)
class Answer:
    code: int
    retry_after: float | None
    body: dict[str, Any] | None  # the decoded object, for 2xx answers only


@dataclass
class ReadStats:
    """Decoded body bytes the last request produced (read or buffered), for the preflight."""

    decoded: int = 0
    largest_piece: int = 0

    def reset(self) -> None:
        self.decoded = self.largest_piece = 0

    def saw(self, piece: int) -> None:
        self.decoded += piece
        self.largest_piece = max(self.largest_piece, piece)


class Transport(Protocol):
    stats: ReadStats

    async def get(self, url: str) -> Answer: ...

    async def aclose(self) -> None: ...


def too_large_declared(headers: Mapping[str, str]) -> bool:
    """An unencoded answer announcing more than the cap (as ``client._declared_too_large``)."""
    if headers.get("Content-Encoding", "identity").lower() != "identity":
        return False
    declared = headers.get("Content-Length", "")
    if not (declared.isascii() and declared.isdigit()):
        return False
    return len(declared) > 12 or int(declared) > MAX_BODY_BYTES


class BoundedBody:
    """A response body decoded as it arrives, never holding more than ``limit`` decoded bytes.

    zlib is asked for at most (limit - held + 1) bytes per call, so a gzip bomb
    is refused after inflating ``limit + 1`` bytes, however it was compressed.
    Only what the client asked for (gzip) or identity is accepted.
    """

    def __init__(self, content_encoding: str | None, limit: int, stats: ReadStats) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        if encoding in ("", "identity"):
            self._inflater = None
        elif encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(wbits=31)
        else:
            raise errors.MalformedResponse("the answer has an unexpected Content-Encoding")
        self._limit = limit
        self._size = 0
        self._parts: list[bytes] = []
        self._stats = stats

    def feed(self, data: bytes) -> bool:
        """Take raw bytes from the wire; False once the decoded body passes the limit."""
        inflater = self._inflater
        if inflater is None:
            return self._keep(data)
        while data:
            try:
                piece = inflater.decompress(data, self._limit - self._size + 1)
            except zlib.error:
                raise errors.MalformedResponse("the answer could not be decoded") from None
            if not self._keep(piece):
                return False
            data = inflater.unconsumed_tail
        return True

    def _keep(self, piece: bytes) -> bool:
        self._size += len(piece)
        self._stats.saw(len(piece))
        if self._size > self._limit:
            return False
        self._parts.append(piece)
        return True

    def body(self) -> bytes:
        """The whole decoded body (a gzip stream must be complete)."""
        if self._inflater is not None and not self._inflater.eof:
            raise errors.MalformedResponse("the answer could not be decoded")
        return b"".join(self._parts)


# --------------------------------------------------------------------------- httpx


async def _httpx_send(http: httpx.AsyncClient, url: str, stats: ReadStats, bounded: bool) -> Answer:
    """``MyPreferencesClient._send`` over one httpx client.

    ``bounded``: read the raw bytes and inflate them with ``BoundedBody``;
    otherwise httpx inflates (``aiter_bytes``) as the client does today.
    """
    try:
        async with http.stream(
            "GET", url, headers=HEADERS_GZIP if bounded else HEADERS
        ) as response:
            return await _httpx_answer(response, stats, bounded)
    except httpx.TimeoutException as exc:
        raise errors.Timeout(f"request timed out ({type(exc).__name__})") from exc
    except httpx.DecodingError as exc:
        raise errors.MalformedResponse("the answer could not be decoded") from exc
    except httpx.HTTPError as exc:
        raise errors.Unavailable(f"network error ({type(exc).__name__})") from exc


async def _httpx_answer(response: httpx.Response, stats: ReadStats, bounded: bool) -> Answer:
    """Status, Retry-After and the capped body of an httpx response (httpx errors escape)."""
    code = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
    if not 200 <= code < 300:
        return Answer(code, retry_after, None)
    if too_large_declared(response.headers):
        raise errors.MalformedResponse("the answer is larger than 1 MiB")
    if bounded:
        body = BoundedBody(response.headers.get("Content-Encoding"), MAX_BODY_BYTES, stats)
        async for chunk in response.aiter_raw():
            if not body.feed(chunk):
                raise errors.MalformedResponse("the answer is larger than 1 MiB")
        return Answer(code, retry_after, _decode_object(body.body()))
    # bot.mypreferences.auth.read_limited, counting what httpx inflated.
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        stats.saw(len(chunk))
        if size > MAX_BODY_BYTES:
            raise errors.MalformedResponse("the answer is larger than 1 MiB")
        chunks.append(chunk)
    return Answer(code, retry_after, _decode_object(b"".join(chunks)))


class SplitHttpxPools:
    """(a) Today: max(100, C + 20) connections split into httpx pools of 10, least busy first."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        max_connections = max(100, concurrency + 20)  # as bot.runtime sizes it
        pools = math.ceil(max_connections / CONNECTIONS_PER_POOL)
        size = math.ceil(max_connections / pools)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        self._pools = [httpx.AsyncClient(timeout=timeout, limits=limits) for _ in range(pools)]
        self._in_flight = [0] * pools
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        pool = min(range(len(self._pools)), key=self._in_flight.__getitem__)
        self._in_flight[pool] += 1
        try:
            return await _httpx_send(self._pools[pool], url, self.stats, bounded=False)
        finally:
            self._in_flight[pool] -= 1

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class OneHttpxPool:
    """(b) One plain httpx.AsyncClient with a pool of C connections; body read as today."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        return await _httpx_send(self._http, url, self.stats, bounded=False)

    async def aclose(self) -> None:
        await self._http.aclose()


class HttpxOverAiohttp:
    """(c) httpx's API over aiohttp's connection pool (httpx-aiohttp), C connections.

    The transport asks aiohttp not to inflate (``auto_decompress=False``), so
    httpx would inflate each raw piece unbounded: the body is read raw and
    inflated by ``BoundedBody`` instead.
    """

    def __init__(self, concurrency: int, timeout: float) -> None:
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.AsyncClient(timeout=timeout, transport=AiohttpTransport(limits=limits))
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        return await _httpx_send(self._http, url, self.stats, bounded=True)

    async def aclose(self) -> None:
        await self._http.aclose()


class HttpxTransportOnly:
    """(e) httpx's Request/Response and transport API, without ``httpx.AsyncClient``.

    The client layer (URL and header merging, cookie extraction on every answer,
    auth and redirect flows, event hooks) is most of what httpx costs per
    request. Here a request goes straight to ``AiohttpTransport``; tests could
    still inject ``httpx.MockTransport``.
    """

    def __init__(self, concurrency: int, timeout: float) -> None:
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._transport = AiohttpTransport(limits=limits)
        self._timeout = httpx.Timeout(timeout).as_dict()
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        request = httpx.Request(
            "GET", url, headers=HEADERS_GZIP, extensions={"timeout": self._timeout}
        )
        try:
            response = await self._transport.handle_async_request(request)
            response.request = request
            try:
                return await _httpx_answer(response, self.stats, bounded=True)
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            raise errors.Timeout(f"request timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise errors.Unavailable(f"network error ({type(exc).__name__})") from exc

    async def aclose(self) -> None:
        await self._transport.aclose()


class BotTransport(HttpxTransportOnly):
    """(bot) The product: ``bot.mypreferences.transport.AiohttpTransport``, one pool of C.

    httpx's Request/Response sent straight to the bot's own transport over aiohttp
    (as ``MyPreferencesClient._send`` does), the body inflated by ``BoundedBody``.
    """

    def __init__(self, concurrency: int, timeout: float) -> None:
        from bot.mypreferences.transport import AiohttpTransport

        self._transport = AiohttpTransport(max_connections=concurrency)  # type: ignore[assignment]
        self._timeout = httpx.Timeout(timeout).as_dict()
        self.stats = ReadStats()


# --------------------------------------------------------------------------- aiohttp


class AiohttpSession:
    """(d) A plain aiohttp.ClientSession, C connections.

    aiohttp does not inflate (``auto_decompress=False``): ``BoundedBody`` does,
    as for every other candidate. ``inflate=True`` lets aiohttp inflate in its
    own bounded pieces instead (``d-auto``): a bomb then costs the cap plus what
    aiohttp buffers ahead of the reader (~2 x read_bufsize plus a piece).
    """

    def __init__(self, concurrency: int, timeout: float, inflate: bool = False) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=timeout),
            auto_decompress=inflate,
            # What aiohttp reads (and, when it inflates, inflates) ahead of the reader;
            # 256 KiB by default.
            read_bufsize=64 * 1024,
            trust_env=False,
        )
        self._inflate = inflate
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        try:
            async with self._session.get(
                url, headers=HEADERS_GZIP, allow_redirects=False
            ) as response:
                code = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                if not 200 <= code < 300:
                    return Answer(code, retry_after, None)
                if too_large_declared(response.headers):
                    raise errors.MalformedResponse("the answer is larger than 1 MiB")
                raw = await (
                    self._read_inflated(response) if self._inflate else self._read(response)
                )
        except TimeoutError as exc:
            raise errors.Timeout(f"request timed out ({type(exc).__name__})") from exc
        except aiohttp.ClientPayloadError as exc:
            raise errors.MalformedResponse("the answer could not be decoded") from exc
        except aiohttp.ClientError as exc:
            raise errors.Unavailable(f"network error ({type(exc).__name__})") from exc
        if raw is None:
            raise errors.MalformedResponse("the answer is larger than 1 MiB")
        return Answer(code, retry_after, _decode_object(raw))

    async def _read(self, response: aiohttp.ClientResponse) -> bytes | None:
        body = BoundedBody(response.headers.get("Content-Encoding"), MAX_BODY_BYTES, self.stats)
        async for chunk in response.content.iter_any():
            if not body.feed(chunk):
                response.close()  # the rest is never read: drop the connection
                return None
        return body.body()

    async def _read_inflated(self, response: aiohttp.ClientResponse) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        content = response.content
        async for chunk in content.iter_any():
            size += len(chunk)
            self.stats.saw(len(chunk))
            if size > MAX_BODY_BYTES:
                # What aiohttp inflated into its buffer but was never read counts too.
                self.stats.decoded = max(self.stats.decoded, content.total_bytes)
                response.close()
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        await self._session.close()


# --------------------------------------------------------------------------- pyreqwest


def _reqwest_client(concurrency: int, timeout: float) -> Any:
    """A pyreqwest (Rust reqwest) client: total timeout, no redirects, raw bodies."""
    from pyreqwest.client import ClientBuilder

    return (
        ClientBuilder()
        .max_connections(concurrency)
        .timeout(timedelta(seconds=timeout))
        .follow_redirects(False)
        .error_for_status(False)
        # Raw bytes: BoundedBody inflates (reqwest would inflate unbounded pieces).
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .build()
    )


class Reqwest:
    """(e) pyreqwest's own async client (reqwest and tokio in Rust, on their own thread)."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        self._client = _reqwest_client(concurrency, timeout)
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        from pyreqwest import exceptions

        try:
            async with self._client.get(url).headers(HEADERS_GZIP).build_streamed() as response:
                code = response.status
                retry_after = parse_retry_after(response.get_header("Retry-After"), time.time())
                if not 200 <= code < 300:
                    return Answer(code, retry_after, None)
                if too_large_declared(response.headers):
                    raise errors.MalformedResponse("the answer is larger than 1 MiB")
                body = BoundedBody(
                    response.get_header("Content-Encoding"), MAX_BODY_BYTES, self.stats
                )
                raw: bytes | None = None
                reader = response.body_reader
                while (chunk := await reader.read_chunk()) is not None:
                    if not body.feed(bytes(chunk)):
                        break
                else:
                    raw = body.body()
        except exceptions.RequestTimeoutError as exc:
            raise errors.Timeout(f"request timed out ({type(exc).__name__})") from exc
        except exceptions.DecodeError as exc:
            raise errors.MalformedResponse("the answer could not be decoded") from exc
        except exceptions.PyreqwestError as exc:
            raise errors.Unavailable(f"network error ({type(exc).__name__})") from exc
        if raw is None:
            raise errors.MalformedResponse("the answer is larger than 1 MiB")
        return Answer(code, retry_after, _decode_object(raw))

    async def aclose(self) -> None:
        await self._client.close()


class HttpxOverReqwest:
    """(e) httpx's API over pyreqwest's transport (``pyreqwest.compatibility.httpx``)."""

    def __init__(self, concurrency: int, timeout: float) -> None:
        from pyreqwest.compatibility.httpx import HttpxTransport

        transport = HttpxTransport(_reqwest_client(concurrency, timeout))
        # The transport turns httpx's four timeouts into one total of their SUM (4 x T
        # for timeout=T); None leaves the pyreqwest client's own total timeout T.
        self._http = httpx.AsyncClient(timeout=None, transport=transport)
        self.stats = ReadStats()

    async def get(self, url: str) -> Answer:
        return await _httpx_send(self._http, url, self.stats, bounded=True)

    async def aclose(self) -> None:
        await self._http.aclose()


@dataclass(frozen=True)
class Candidate:
    label: str
    make: Callable[[int, float], Transport]
    loop: str = "asyncio"
    needs: tuple[str, ...] = ()  # modules of the optional `bench` extra

    def missing(self) -> list[str]:
        return [name for name in self.needs if importlib.util.find_spec(name) is None]


CANDIDATES: dict[str, Candidate] = {
    "a": Candidate("(a) today: httpx, pools of 10", SplitHttpxPools),
    "b": Candidate("(b) httpx, one pool of C", OneHttpxPool),
    "c": Candidate("(c) httpx + httpx-aiohttp", HttpxOverAiohttp),
    "d": Candidate("(d) aiohttp.ClientSession", AiohttpSession),
    "c-transport": Candidate("(e) httpx-aiohttp, transport only", HttpxTransportOnly),
    "bot": Candidate("(bot) the bot's transport (chosen)", BotTransport),
    "a+uv": Candidate("(e) today's (a) on uvloop", SplitHttpxPools, "uvloop", ("uvloop",)),
    "c+uv": Candidate("(e) httpx-aiohttp on uvloop", HttpxOverAiohttp, "uvloop", ("uvloop",)),
    "d+uv": Candidate("(e) aiohttp on uvloop", AiohttpSession, "uvloop", ("uvloop",)),
    "d-auto": Candidate(
        "(e) aiohttp inflating itself", lambda c, t: AiohttpSession(c, t, inflate=True)
    ),
    "rq": Candidate("(e) pyreqwest", Reqwest, needs=("pyreqwest",)),
    "rq-httpx": Candidate(
        "(e) httpx + pyreqwest transport", HttpxOverReqwest, needs=("pyreqwest",)
    ),
}
DEFAULT_CANDIDATES = "a,b,c,c-transport,bot,d,d+uv,rq,rq-httpx"


def _run_in_loop(loop: str, main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)


# --------------------------------------------------------------------------- preflight


async def _expect(transport: Transport, url: str) -> tuple[Answer | errors.ApiError | None, float]:
    """One GET; the answer (or the error raised) and the seconds it took."""
    transport.stats.reset()
    started = time.perf_counter()
    outcome: Answer | errors.ApiError | None
    try:
        outcome = await transport.get(url)
    except errors.ApiError as exc:
        outcome = exc
    return outcome, time.perf_counter() - started


async def preflight(key: str, base: str) -> dict[str, Any]:
    """Each correctness check against the server; a dict of check -> (passed, detail)."""
    transport = CANDIDATES[key].make(20, PREFLIGHT_TIMEOUT)
    checks: dict[str, tuple[bool | None, str]] = {}
    expected = json.loads(status_body(1))

    got, _ = await _expect(transport, f"{base}{STATUS_PREFIX}1/Status")
    checks["status"] = (isinstance(got, Answer) and got.body == expected, _show(got))
    got, _ = await _expect(transport, f"{base}/gzip")
    checks["gzip"] = (isinstance(got, Answer) and got.body == expected, _show(got))

    got, took = await _expect(transport, f"{base}/slow")
    fired = isinstance(got, errors.Timeout) and took < PREFLIGHT_TIMEOUT + 0.5
    checks["timeout"] = (fired, f"{_show(got)} after {took:.2f} s")
    # A body dripping one byte every 0.1 s: a total timeout stops it, a per-read one does not.
    got, took = await _expect(transport, f"{base}/drip")
    total = isinstance(got, errors.Timeout) and took < 2.9  # the drip lasts 3 s
    checks["drip"] = (None, f"{'total' if total else 'per read'}: {_show(got)} after {took:.1f} s")

    for route in ("big", "big-chunked"):
        got, _ = await _expect(transport, f"{base}/{route}")
        held = transport.stats.decoded
        capped = isinstance(got, errors.MalformedResponse) and held <= MAX_BODY_BYTES + ONE_CHUNK
        checks[route] = (capped, f"{_show(got)}; {held / 2**20:.2f} MiB read")

    tracemalloc.start()
    got, took = await _expect(transport, f"{base}/bomb")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    inflated = transport.stats.decoded
    stopped = isinstance(got, errors.MalformedResponse) and inflated <= MAX_BODY_BYTES + ONE_CHUNK
    checks["bomb"] = (
        stopped,
        f"{_show(got)}; inflated {inflated / 2**20:.2f} MiB "
        f"(largest piece {transport.stats.largest_piece / 2**20:.2f} MiB), "
        f"peak traced memory {peak / 2**20:.1f} MiB, {took * 1000:.0f} ms",
    )

    got, _ = await _expect(transport, f"{base}/retry-after")
    checks["retry-after"] = (
        isinstance(got, Answer) and got.code == 429 and got.retry_after == 7.0,
        _show(got),
    )
    got, _ = await _expect(transport, f"{base}/retry-after-date")
    checks["retry-date"] = (
        isinstance(got, Answer)
        and got.code == 503
        and got.retry_after is not None
        and 110 <= got.retry_after <= 121,
        _show(got),
    )
    got, _ = await _expect(transport, f"{base}/redirect")
    checks["redirect"] = (isinstance(got, Answer) and got.code == 302, _show(got))

    # The aborted bodies above must not have left a broken connection in the pool.
    outcomes = await asyncio.gather(
        *(_expect(transport, f"{base}{STATUS_PREFIX}{i}/Status") for i in range(1, 41))
    )
    healthy = sum(1 for got, _ in outcomes if isinstance(got, Answer) and got.code == 200)
    checks["reuse"] = (healthy == 40, f"{healthy}/40 answered 200")
    await transport.aclose()
    return {"checks": checks}


def _show(outcome: Answer | errors.ApiError | None) -> str:
    if isinstance(outcome, Answer):
        after = f", Retry-After {outcome.retry_after:g} s" if outcome.retry_after else ""
        return f"HTTP {outcome.code}{after}"
    if outcome is None:
        return "nothing"
    return f"{type(outcome).__name__}"


# --------------------------------------------------------------------------- load


async def _drive(
    transport: Transport, urls: Sequence[str], concurrency: int, deadline: float
) -> tuple[int, int, str]:
    """GET every URL, ``concurrency`` at a time, until done or past ``deadline``."""
    pending = iter(urls)
    ok = failed = 0
    first_error = ""

    async def worker() -> None:
        nonlocal ok, failed, first_error
        for url in pending:  # one shared iterator: each URL is fetched once
            try:
                answer = await transport.get(url)
            except errors.ApiError as exc:
                failed += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
            else:
                if answer.code == 200 and answer.body and answer.body.get("Status"):
                    ok += 1
                else:
                    failed += 1
                    first_error = first_error or f"HTTP {answer.code}"
            if time.perf_counter() > deadline:
                return

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok, failed, first_error


async def load(key: str, base: str, n: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    """N requests at concurrency C after a warm-up; wall, process CPU and peak RSS."""
    transport = CANDIDATES[key].make(concurrency, LOAD_TIMEOUT)
    urls = [f"{base}{STATUS_PREFIX}{token}/Status" for token in range(1, n + 1)]
    # The warm-up opens the C connections a poll cycle would find already open.
    await _drive(transport, urls[: 2 * concurrency], concurrency, math.inf)
    gc.collect()
    cpu = time.process_time()
    started = time.perf_counter()
    ok, failed, first_error = await _drive(transport, urls, concurrency, started + max_seconds)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    await transport.aclose()
    return {
        "requests": ok + failed,
        "failed": failed,
        "first_error": first_error,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh spawned process: one preflight or one load measurement."""
    candidate = CANDIDATES[job["candidate"]]
    if job["kind"] == "preflight":
        return _run_in_loop(candidate.loop, preflight(job["candidate"], job["base"]))
    return _run_in_loop(
        candidate.loop,
        load(job["candidate"], job["base"], job["n"], job["concurrency"], job["max_seconds"]),
    )


# --------------------------------------------------------------------------- parent


class ServerProcess:
    """``python -m bench.status_server`` in its own process, its CPU measured from /proc."""

    def __init__(self, delay: float, gzip_status: bool, bomb: bool) -> None:
        command = [sys.executable, "-m", "bench.status_server", "--delay", str(delay)]
        if gzip_status:
            command.append("--gzip")
        if not bomb:
            command.append("--no-bomb")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.stop()
            raise RuntimeError("the status server did not start")
        self.base = f"http://127.0.0.1:{line[1]}"

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def _in_child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(child, job).result(timeout=timeout)


PREFLIGHT_COLUMNS = (
    "status", "gzip", "timeout", "big", "big-chunked", "bomb", "retry-after", "retry-date",
    "redirect", "reuse",
)  # fmt: skip


def print_preflight(results: dict[str, dict[str, Any]]) -> None:
    rows = []
    for key, result in results.items():
        checks = result["checks"]
        marks = ["ok" if checks[name][0] else "FAIL" for name in PREFLIGHT_COLUMNS]
        rows.append([CANDIDATES[key].label, *marks, checks["drip"][1].split(":")[0]])
    print(table(("candidate", *PREFLIGHT_COLUMNS, "timeout kind"), rows))
    print()
    for key, result in results.items():
        checks = result["checks"]
        print(f"{CANDIDATES[key].label}:")
        for name in ("timeout", "drip", "big", "big-chunked", "bomb"):
            print(f"    {name:12} {checks[name][1]}")


def summarise(
    runs: list[dict[str, Any]], keys: Sequence[str], concurrencies: Sequence[int], delay: float
) -> list[dict[str, Any]]:
    """Best of the rounds per (candidate, C), with the spread and the CPU ratio against (a)."""
    rows = []
    for concurrency in concurrencies:
        for key in keys:
            mine = [r for r in runs if r["candidate"] == key and r["concurrency"] == concurrency]
            if not mine:
                continue
            per_request = [r["cpu_s"] / r["requests"] * 1000 for r in mine if r["requests"]]
            bound_ratios = [r["requests"] * delay / concurrency / r["wall_s"] for r in mine]
            best = max(mine, key=lambda r: r["requests"] * delay / concurrency / r["wall_s"])
            # Ratios within a round (same minute, same load), then their median.
            ratios = []
            for r in mine:
                base = [
                    b
                    for b in runs
                    if b["candidate"] == keys[0]
                    and b["concurrency"] == concurrency
                    and b["round"] == r["round"]
                ]
                if base and base[0]["requests"] and r["requests"]:
                    ratios.append(
                        (r["cpu_s"] / r["requests"]) / (base[0]["cpu_s"] / base[0]["requests"])
                    )
            rows.append(
                {
                    "candidate": key,
                    "label": CANDIDATES[key].label,
                    "concurrency": concurrency,
                    "requests": best["requests"],
                    "failed": sum(r["failed"] for r in mine),
                    "wall_s": best["wall_s"],
                    "bound_s": best["requests"] * delay / concurrency,
                    "bound_over_measured": max(bound_ratios),
                    "bound_over_measured_all": bound_ratios,
                    "cpu_ms_per_request": min(per_request),
                    "cpu_ms_per_request_all": per_request,
                    "cpu_vs_baseline": statistics.median(ratios) if ratios else float("nan"),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                    "server_core_share": max(r["server_core_share"] for r in mine),
                }
            )
    return rows


def print_summary(rows: list[dict[str, Any]], baseline: str) -> None:
    lines = []
    for row in rows:
        cpu_all = row["cpu_ms_per_request_all"]
        spread = f"{min(cpu_all):.3f}-{max(cpu_all):.3f}" if len(cpu_all) > 1 else ""
        lines.append(
            [
                row["label"],
                row["concurrency"],
                row["requests"],
                f"{row['wall_s']:.2f}",
                f"{row['bound_s']:.2f}",
                f"{row['bound_over_measured']:.2f}",
                f"{row['cpu_ms_per_request']:.3f}",
                spread,
                f"{row['cpu_vs_baseline']:.2f}",
                f"{row['peak_rss_mb']:.0f}",
                f"{row['server_core_share']:.0%}",
                row["failed"],
            ]
        )
    print(
        table(
            (
                "candidate",
                "C",
                "requests",
                "wall s",
                "bound s",
                "bound/measured",
                "CPU ms/req",
                "CPU spread",
                f"CPU vs {baseline}",
                "peak RSS MB",
                "server",
                "failed",
            ),
            lines,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--requests", type=int, help="requests per run N (10,000)")
    parser.add_argument("-d", "--delay", type=float, default=0.05, help="server answer delay D (s)")
    parser.add_argument(
        "-c", "--concurrency", default="50,200", help="comma-separated concurrencies C"
    )
    parser.add_argument("--repeats", type=int, help="rounds R, best of R reported (3)")
    parser.add_argument(
        "--candidates",
        default=DEFAULT_CANDIDATES,
        help=f"comma-separated keys of {', '.join(CANDIDATES)}; the first is the baseline",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop a run after this long, 30 s (a slow candidate then reports fewer requests)",
    )
    parser.add_argument("--gzip", action="store_true", help="the server gzips status answers")
    parser.add_argument("--skip-preflight", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="defaults N=2000, one round, 15 s at most"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    quick = {"requests": 2000, "repeats": 1, "max_seconds": 15.0}
    full = {"requests": 10_000, "repeats": 3, "max_seconds": 30.0}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    keys = [k.strip() for k in args.candidates.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}")
    for key in list(keys):
        missing = CANDIDATES[key].missing()
        if missing:
            # uvloop is not a dev dependency on purpose: installed, uvicorn would run
            # every integration test on it. `pip install -e '.[bench]'` adds both.
            print(f"skipping {key}: {', '.join(missing)} not installed (pip install -e '.[bench]')")
            keys.remove(key)
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.requests < 1 or args.repeats < 1 or min(concurrencies) < 1:
        parser.error("requests, repeats and concurrency must be at least 1")

    info = print_machine()
    print(
        f"N={args.requests}, D={args.delay:g} s, C={concurrencies}, rounds={args.repeats}, "
        f"server gzip={'on' if args.gzip else 'off'}"
    )
    server = ServerProcess(args.delay, args.gzip, bomb=not args.skip_preflight)
    preflights: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    try:
        if not args.skip_preflight:
            for key in keys:
                preflights[key] = _in_child(
                    {"kind": "preflight", "candidate": key, "base": server.base}, 120
                )
            print()
            print_preflight(preflights)
            print()
        for round_ in range(args.repeats):
            for concurrency in concurrencies:
                for key in keys:
                    job = {
                        "kind": "load",
                        "candidate": key,
                        "base": server.base,
                        "n": args.requests,
                        "concurrency": concurrency,
                        "max_seconds": args.max_seconds,
                    }
                    server_cpu = server.cpu_seconds()
                    result = _in_child(job, args.max_seconds + 120)
                    server_cpu = server.cpu_seconds() - server_cpu
                    result.update(job, round=round_)
                    # Includes the warm-up and the child's start: an upper bound.
                    result["server_core_share"] = server_cpu / result["wall_s"]
                    runs.append(result)
                    print(
                        f"round {round_ + 1} C={concurrency:<4} {CANDIDATES[key].label:34} "
                        f"{result['requests']:6} req {result['wall_s']:6.2f} s  "
                        f"{result['cpu_s'] / max(result['requests'], 1) * 1000:6.3f} ms CPU/req"
                        + (
                            f"  {result['failed']} failed ({result['first_error']})"
                            if result["failed"]
                            else ""
                        ),
                        flush=True,
                    )
    finally:
        server.stop()
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = summarise(runs, keys, concurrencies, args.delay)
    print()
    print_summary(rows, keys[0])
    print(f"load average after: {load_after}")
    write_json(
        args.json,
        {
            "machine": info,
            "load_after": load_after,
            "args": vars(args),
            "preflight": preflights,
            "runs": runs,
            "summary": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
