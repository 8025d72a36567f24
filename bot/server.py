"""The HTTP surface: POST /slack/events, GET /healthz, GET /metrics (ASGI, served by uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator

from slack_bolt.adapter.starlette.async_handler import (
    AsyncSlackRequestHandler,
    to_starlette_response,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.metrics import METRICS
from bot.runtime import Runtime
from bot.slack import incoming

log = logging.getLogger(__name__)

# Slack payloads are a few KB; 256 KiB still fits 10,000 emoji of command text
# (12 bytes each once form-encoded) and refuses anything far larger unread.
MAX_BODY_BYTES = 256 * 1024
# X-Slack-Request-Timestamp: Unix seconds, ASCII digits (a bounded number of them).
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def create_app(runtime: Runtime, *, slack_routes: bool = True) -> ASGIApp:
    """The ASGI app; ``slack_routes=False`` for Socket Mode (health and metrics only)."""
    handler = AsyncSlackRequestHandler(runtime.app)
    quick = runtime.app.quick_commands

    async def slack_events(request: Request) -> Response:
        timestamp = request.headers.get("x-slack-request-timestamp")
        if timestamp is not None and not _TIMESTAMP.fullmatch(timestamp):
            # slack-sdk's verifier calls int() on it and raises, which Bolt turns into a
            # 500 and a logged traceback: refuse it as the bad signature it is instead.
            log.info("refused a Slack request with a malformed timestamp header")
            return PlainTextResponse("invalid request signature", status_code=401)
        body = await request.body()  # LimitBody has read it already; Bolt reads this copy
        # The signature first, before anything parses the body: Bolt would parse it,
        # then log it whole at INFO when the signature is wrong.
        problem = incoming.signature_problem(
            str(runtime.settings.slack_signing_secret or ""),
            body,
            timestamp,
            request.headers.get("x-slack-signature"),
            time.time(),
        )
        if problem is not None and incoming.is_ssl_check(body):
            return PlainTextResponse("")  # nothing happens in a certificate check
        if problem is not None:
            log.info("refused a request with %s (%d bytes)", problem, len(body))
            return PlainTextResponse("invalid request signature", status_code=401)
        fields, problem = incoming.read_body(body, request.headers.get("content-type"))
        if problem is not None:
            log.warning("refused a signed Slack request: %s", problem)
            return PlainTextResponse("malformed request body", status_code=400)
        if quick is not None:
            # /import-status without Bolt's dispatch chain (bot/slack/quick_ack.py); None
            # when the request is one Bolt answers.
            answer = await quick.answer(
                fields,
                request.headers.get("x-slack-retry-num"),
                request.headers.get("x-slack-retry-reason"),
            )
            if answer is not None:
                return to_starlette_response(answer)
        try:
            return await handler.handle(request)
        except (ValueError, AttributeError, TypeError, LookupError, RecursionError):
            # Bolt decodes the body (UTF-8, then the ``payload`` JSON) and reads its
            # ``authorizations`` before it checks the signature; a body that is neither
            # decodable nor a JSON object of that shape is bad input, not a server error.
            # Listener errors never get here: Bolt handles those itself.
            log.warning("refused a Slack request whose body could not be decoded")
            return PlainTextResponse("malformed request body", status_code=400)

    async def healthz(_: Request) -> Response:
        ok, body = await runtime.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        await asyncio.to_thread(runtime.refresh_gauges)
        return PlainTextResponse(
            METRICS.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if slack_routes:
        routes.append(Route("/slack/events", slack_events, methods=["POST"]))
    return LimitBody(Starlette(routes=routes, lifespan=lifespan), MAX_BODY_BYTES)


class LimitBody:
    """Refuse request bodies over ``limit`` bytes with 413, before anyone reads them whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await PlainTextResponse("request body too large", status_code=413)(scope, receive, send)
            return
        # Read the whole body here, before the app sees any of it: an exception raised
        # from inside the app would reach Starlette's error middleware, which answers
        # 500 itself (a chunked body without Content-Length took that path).
        chunks: list[Message] = []
        received = 0
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            received += len(message.get("body", b""))
            if received > self.limit:
                await PlainTextResponse("request body too large", status_code=413)(
                    scope, receive, send
                )
                return
            chunks.append(message)
            more_body = bool(message.get("more_body", False))

        async def replay() -> Message:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)
