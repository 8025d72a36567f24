"""A minimal HTTP/1.1 server for ``bench/transport.py``, run in its own process.

It answers a realistic Retrieve status body after a fixed delay D, and serves
the misbehaving answers the transport preflight needs. It is a raw asyncio
protocol rather than the Starlette simulator so that it stays far from being
the bottleneck at C=200 (about 4,000 answers a second on one core).

    python -m bench.status_server --delay 0.05      # prints "ready PORT" once listening

Routes (GET only; every route but /status answers at once unless noted):

- ``/Async/ACME/Import/{token}/Status``: the status body after D seconds;
  401 without the expected Authorization header; gzip-encoded when started
  with ``--gzip`` and the request accepts gzip.
- ``/slow``: the status body after 30 s (for timeouts).
- ``/drip``: headers at once, then the body one byte every 0.1 s for 3 s.
- ``/big``: 2 MiB with a Content-Length; ``/big-chunked``: 2 MiB chunked.
- ``/gzip``: the status body gzip-encoded, whatever the request accepts.
- ``/bomb``: ~1 MiB of gzip that inflates to 1 GiB (built at start, ~3 s).
- ``/retry-after``: 429 with ``Retry-After: 7``; ``/retry-after-date``: 503
  with an HTTP-date 120 s ahead.
- ``/redirect``: 302 to another port (a client must not follow it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import sys
import time
import zlib
from collections.abc import Sequence
from email.utils import formatdate

AUTHORIZATION = "PNAUTHINFO3-HMAC-SHA256 Credential=bench/2026-01-01T00:00:00Z Signature=YmVuY2g="
STATUS_PREFIX = "/Async/ACME/Import/"
BIG_BYTES = 2 * 1024 * 1024
BOMB_INFLATED_MIB = 1024
SLOW_SECONDS = 30.0

# The fields and shape of a real Retrieve status answer (as the simulator serves it).
_STATUS = {
    "TotalRecordsReceived": 10000,
    "ValidationSuccessful": 9900,
    "ValidationFailed": 100,
    "Processed": 1000,
    "Pending": 8900,
    "Exceptions": 0,
    "NotHonored": 0,
    "AccessToken": 0,
    "Status": "Processing",
    "Expires": "2036-01-01T00:00:00Z",  # far ahead: bench/poll_engine.py watches it
    "Name": "Simulated import",
    "DataStageDuration": 3,
    "ImportAction": "Add",
    "MatchCriteria": None,
    "MatchValue": None,
    "RefreshAlternateIds": False,
    "RefreshContacts": False,
    "RefreshCustomFields": False,
    "RefreshGroups": False,
    "RefreshTags": False,
    "AllowPriorConsents": False,
}


def status_body(token: int) -> bytes:
    """The status answer for ``token`` (what the preflight compares a decoded body with);
    named as the simulator names its seeded imports, so ``bench.common.seed_watches``
    stores what this server answers."""
    body = {**_STATUS, "AccessToken": token, "Name": f"Simulated import {token}"}
    return json.dumps(body).encode()


def _bomb() -> bytes:
    """gzip of BOMB_INFLATED_MIB MiB of zeros: about 1 MiB on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1024 * 1024)
    parts = [packer.compress(block) for _ in range(BOMB_INFLATED_MIB)]
    parts.append(packer.flush())
    return b"".join(parts)


def _head(code: int, reason: str, headers: Sequence[tuple[str, str]]) -> bytes:
    # Headers an IIS/ASP.NET API typically sends, so clients parse a realistic set.
    lines = [
        f"HTTP/1.1 {code} {reason}",
        "Cache-Control: no-cache",
        "Pragma: no-cache",
        "Expires: -1",
        "Server: Microsoft-IIS/10.0",
        "X-AspNet-Version: 4.0.30319",
        "X-Powered-By: ASP.NET",
        f"Date: {formatdate(usegmt=True)}",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response(code: int, reason: str, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    return (
        _head(
            code,
            reason,
            [
                ("Content-Type", "application/json; charset=utf-8"),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        + body
    )


class Server:
    def __init__(self, delay: float, gzip_status: bool, bomb: bytes) -> None:
        self.delay = delay
        self.gzip_status = gzip_status
        self.bomb = bomb
        self.unauthorized = response(401, "Unauthorized", b'{"Message":"Authorization denied."}')


class Connection(asyncio.Protocol):
    """One client connection: requests are answered in order (clients here do not pipeline)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport (uvloop's too)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            self.handle(head)

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def later(self, seconds: float, data: bytes) -> None:
        self.loop.call_later(seconds, self.send, data)

    def handle(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if lines[0].count(" ") >= 2 else "/"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        server = self.server
        if headers.get("authorization") != AUTHORIZATION:
            self.send(server.unauthorized)
        elif path.startswith(STATUS_PREFIX):
            token = int(path[len(STATUS_PREFIX) :].split("/", 1)[0])
            body = status_body(token)
            extra: list[tuple[str, str]] = []
            if server.gzip_status and "gzip" in headers.get("accept-encoding", ""):
                body = gzip.compress(body, 6)
                extra.append(("Content-Encoding", "gzip"))
            self.later(server.delay, response(200, "OK", body, extra))
        elif path == "/slow":
            self.later(SLOW_SECONDS, response(200, "OK", status_body(1)))
        elif path == "/drip":
            self.drip(30)
        elif path == "/big":
            self.send(response(200, "OK", b" " * BIG_BYTES))
        elif path == "/big-chunked":
            self.send_chunked(b" " * BIG_BYTES, [])
        elif path == "/gzip":
            self.send(
                response(200, "OK", gzip.compress(status_body(1)), [("Content-Encoding", "gzip")])
            )
        elif path == "/bomb":
            self.send(response(200, "OK", server.bomb, [("Content-Encoding", "gzip")]))
        elif path == "/retry-after":
            self.send(
                response(
                    429, "Too Many Requests", b'{"Message":"Slow down."}', [("Retry-After", "7")]
                )
            )
        elif path == "/retry-after-date":
            when = formatdate(time.time() + 120, usegmt=True)
            self.send(
                response(
                    503, "Service Unavailable", b'{"Message":"Later."}', [("Retry-After", when)]
                )
            )
        elif path == "/redirect":
            self.send(response(302, "Found", b"", [("Location", "http://127.0.0.1:9/stolen")]))
        else:
            self.send(response(404, "Not Found", b'{"Message":"No such route."}'))

    def send_chunked(self, body: bytes, headers: list[tuple[str, str]]) -> None:
        self.send(
            _head(
                200,
                "OK",
                [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked"), *headers],
            )
        )
        step = 64 * 1024
        for start in range(0, len(body), step):
            part = body[start : start + step]
            self.send(b"%x\r\n%s\r\n" % (len(part), part))
        self.send(b"0\r\n\r\n")

    def drip(self, count: int) -> None:
        body = b" " * count
        self.send(
            _head(200, "OK", [("Content-Type", "application/json"), ("Content-Length", str(count))])
        )
        for i in range(count):
            self.later(0.1 * (i + 1), body[i : i + 1])


async def serve(args: argparse.Namespace) -> None:
    bomb = _bomb() if args.bomb else b""
    server = Server(args.delay, args.gzip, bomb)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: Connection(server), "127.0.0.1", args.port, backlog=1024
    )
    port = listener.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    async with listener:
        await listener.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.05, help="status answer delay D (s)")
    parser.add_argument("--gzip", action="store_true", help="gzip status answers when accepted")
    parser.add_argument(
        "--no-bomb", dest="bomb", action="store_false", help="skip building /bomb (~3 s)"
    )
    args = parser.parse_args(argv)
    # The server's CPU is not measured, but it shares the machine's 2 cores: uvloop
    # (when installed) keeps its share small.
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=loop_factory) as runner,
    ):
        runner.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
