"""Slack's Socket Mode, over a real WebSocket, for tests and ``demo``.

``SocketModeServer`` is an aiohttp.web server on 127.0.0.1 (a free port) running in its own
thread with its own event loop; uvicorn here has no WebSocket library, aiohttp has. It plays
the Slack side of Socket Mode as Slack documents and sends it:

- ``apps.connections.open`` (``POST /api/apps.connections.open`` with an app-level token in
  the ``Authorization: Bearer`` header, or the ``apps_connections_open()`` method) answers
  ``{"ok": true, "url": "ws://127.0.0.1:PORT/link/?ticket=...&app_id=..."}``; bot tokens get
  ``not_allowed_token_type``, unknown ones ``invalid_auth``, revoked ones ``token_revoked``,
  app tokens without ``connections:write`` ``missing_scope``. Tier 3 rate limit (50 a minute).
- A WebSocket on that URL gets ``hello`` (``num_connections``, ``debug_info``,
  ``connection_info.app_id``). A ticket works once; an unknown or used one is refused
  (HTTP 401 on the handshake). An 11th connection for the app gets ``disconnect`` with
  reason ``too_many_websockets`` and is closed (Slack allows 10 per app).
- ``push()`` (and ``push_command``/``push_block_action``/``push_event``) sends an envelope
  ``{"envelope_id", "type", "payload", "accepts_response_payload"}`` (plus
  ``retry_attempt``/``retry_reason`` for ``events_api``, the only type that carries them) to
  one open connection, round-robin across them.
- Acks ``{"envelope_id", "payload"?}`` are recorded with their arrival time. An ack must
  arrive within 3 s of delivery: a slash command or interaction not acknowledged in time
  (or sent while no connection is open) is Slack's ``dispatch_failed``, which the user
  sees; an ``events_api`` envelope is delivered again, as a new envelope with
  ``retry_attempt`` + 1 and ``retry_reason`` ``timeout``, nearly at once, then after 1 and
  5 minutes (``retry_delays``), as the Events API does; slash commands and interactions are
  never retried.
- ``disconnect(reason)`` sends ``{"type": "disconnect", "reason", "debug_info"}`` and closes
  the socket (``warning`` gives the client 10 s first, as Slack does before a refresh), so
  the client fetches a fresh URL. A connection also lives only ``approximate_connection_time``
  (18060 s; 360 s with ``debug_reconnects=true`` in the URL) and is then refreshed that way.

Every connection opened or refused, every envelope, every ack and every message that could
not be understood is recorded; tests read them and wait on them from any thread.

Typical use::

    with SocketModeServer() as slack:
        web = AsyncWebClient(base_url=slack.api_url)   # apps.connections.open lives here
        client = SocketModeClient(app_token=slack.app_token, web_client=web)
        await client.connect()
        envelope_id = slack.push_command("lookup 42", response_url=...)
        ack = await asyncio.to_thread(slack.wait_ack, envelope_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

JSON = dict[str, Any]
EnvelopeType = Literal["slash_commands", "interactive", "events_api"]
Outcome = Literal["pending", "acked", "dispatch_failed", "timeout", "not_delivered"]

logger = logging.getLogger(__name__)

DEFAULT_APP_TOKEN = "xapp-1-A0001-1000000000001-emulator"
DEFAULT_API_APP_ID = "A0001"
DEFAULT_TEAM_ID = "T0001"
DEFAULT_BOT_USER_ID = "UBOT"

ENVELOPE_TYPES: tuple[EnvelopeType, ...] = ("slash_commands", "interactive", "events_api")
DISCONNECT_REASONS = ("warning", "refresh_requested", "link_disabled")
# Slack's acknowledgement deadline for every envelope type.
ACK_DEADLINE_SECONDS = 3.0
# The Events API retries a failed delivery 3 times: nearly immediately, after 1 minute,
# after 5 minutes. Slash commands and interactions are never retried.
EVENTS_RETRY_DELAYS: tuple[float, ...] = (0.0, 60.0, 300.0)
# Slack allows at most 10 concurrent Socket Mode connections per app.
MAX_CONNECTIONS_PER_APP = 10
# What ``hello`` announces as the connection's life (seconds), and with debug_reconnects.
CONNECTION_TIME_SECONDS = 18060
DEBUG_CONNECTION_TIME_SECONDS = 360
# ``warning`` comes about 10 s before the connection is refreshed.
WARNING_LEAD_SECONDS = 10.0
# apps.connections.open is Tier 3: 50+ calls a minute per app.
OPEN_CALLS_PER_MINUTE = 50
_SCOPE = "connections:write"
_BUILD_NUMBER = 10


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ApiAnswer:
    """What a Web API call answered: JSON body, HTTP status and headers (Retry-After...)."""

    body: JSON
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Ack:
    """An acknowledgement the client sent: ``{"envelope_id", "payload"?}``."""

    envelope_id: str
    payload: JSON | None  # None when the ack carried no payload
    received_at: float  # time.monotonic() on arrival
    seconds: float  # since the envelope was sent
    connection_id: int
    late: bool  # more than 3 s: Slack had already given up on it


@dataclass(frozen=True)
class Envelope:
    """One delivery attempt of a request (a snapshot when handed out)."""

    envelope_id: str
    type: EnvelopeType
    payload: JSON
    accepts_response_payload: bool
    retry_attempt: int
    retry_reason: str
    first_envelope_id: str  # the attempt-0 envelope of the same request
    connection_id: int | None  # None: no open connection to send it on
    sent_at: float | None  # time.monotonic() when sent; None if never sent
    outcome: Outcome
    ack: Ack | None

    def wire(self) -> JSON:
        """The envelope exactly as it is sent over the WebSocket."""
        return _wire(self)


@dataclass(frozen=True)
class Connection:
    """One WebSocket connection, open or closed (a snapshot when handed out)."""

    connection_id: int
    opened_at: float  # time.monotonic()
    closed_at: float | None
    closed_by: Literal["client", "server"] | None
    disconnect_reason: str | None  # the reason in the last disconnect message sent, if any
    debug_reconnects: bool
    envelopes_sent: int

    @property
    def open(self) -> bool:
        """Whether the socket is still open."""
        return self.closed_at is None


@dataclass(frozen=True)
class Refusal:
    """A WebSocket handshake the server refused, and why."""

    at: float
    reason: Literal["unknown_ticket", "used_ticket", "missing_ticket"]


@dataclass(frozen=True)
class Problem:
    """A message from a client the server could not use (bad JSON, unknown or repeated ack)."""

    at: float
    connection_id: int
    problem: str
    message: str  # the raw text, cut to 500 characters


@dataclass
class _EnvelopeState:
    envelope_id: str
    type: EnvelopeType
    payload: JSON
    accepts_response_payload: bool
    retry_attempt: int
    retry_reason: str
    first_envelope_id: str
    connection_id: int | None = None
    sent_at: float | None = None
    outcome: Outcome = "pending"
    ack: Ack | None = None
    deadline: asyncio.TimerHandle | None = None

    def snapshot(self) -> Envelope:
        return Envelope(
            envelope_id=self.envelope_id,
            type=self.type,
            payload=self.payload,
            accepts_response_payload=self.accepts_response_payload,
            retry_attempt=self.retry_attempt,
            retry_reason=self.retry_reason,
            first_envelope_id=self.first_envelope_id,
            connection_id=self.connection_id,
            sent_at=self.sent_at,
            outcome=self.outcome,
            ack=self.ack,
        )


@dataclass
class _ConnectionState:
    connection_id: int
    ws: web.WebSocketResponse
    opened_at: float
    debug_reconnects: bool
    host: str
    ready: bool = False  # hello sent: envelopes may go here
    retiring: bool = False  # a disconnect was sent: new envelopes go elsewhere if possible
    closing_by_server: bool = False
    closed_at: float | None = None
    closed_by: Literal["client", "server"] | None = None
    disconnect_reason: str | None = None
    envelopes_sent: int = 0
    timers: list[asyncio.TimerHandle] = field(default_factory=list)

    def snapshot(self) -> Connection:
        return Connection(
            connection_id=self.connection_id,
            opened_at=self.opened_at,
            closed_at=self.closed_at,
            closed_by=self.closed_by,
            disconnect_reason=self.disconnect_reason,
            debug_reconnects=self.debug_reconnects,
            envelopes_sent=self.envelopes_sent,
        )


def _wire(envelope: Envelope | _EnvelopeState) -> JSON:
    message: JSON = {
        "envelope_id": envelope.envelope_id,
        "payload": envelope.payload,
        "type": envelope.type,
        "accepts_response_payload": envelope.accepts_response_payload,
    }
    if envelope.type == "events_api":  # only Events API envelopes carry the retry fields
        message["retry_attempt"] = envelope.retry_attempt
        message["retry_reason"] = envelope.retry_reason
    return message


# --------------------------------------------------------------------------- payloads


def _new_trigger_id() -> str:
    return f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"


def slash_command_payload(
    text: str,
    *,
    response_url: str,
    command: str = "/import-status",
    team_id: str = DEFAULT_TEAM_ID,
    channel_id: str = "C0001",
    user_id: str = "U0001",
    trigger_id: str | None = None,
    team_domain: str = "emulator",
    channel_name: str = "general",
    user_name: str = "tester",
    api_app_id: str = DEFAULT_API_APP_ID,
    enterprise_id: str | None = None,
) -> JSON:
    """A ``slash_commands`` payload: the fields Slack sends in HTTP mode, as JSON strings.

    In Socket Mode Slack sends the same fields as the HTTP form, values still strings
    (``"is_enterprise_install": "false"``).
    """
    payload: JSON = {
        "token": "verification-token-unused",  # deprecated; never checked in Socket Mode
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or _new_trigger_id(),
    }
    if enterprise_id is not None:
        payload["enterprise_id"] = enterprise_id
    return payload


def block_actions_payload(
    action_id: str,
    value: str,
    *,
    message_ts: str,
    response_url: str,
    channel_id: str = "C0001",
    user_id: str = "U0001",
    team_id: str = DEFAULT_TEAM_ID,
    block_id: str = "actions",
    message: JSON | None = None,
    is_ephemeral: bool = False,
    api_app_id: str = DEFAULT_API_APP_ID,
) -> JSON:
    """An ``interactive`` payload for a button click (``block_actions``), as Slack sends it.

    ``message`` is the clicked message as Slack includes it; a minimal one is made up from
    ``message_ts`` when not given.
    """
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": "tester", "name": "tester", "team_id": team_id},
        "api_app_id": api_app_id,
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        },
        "trigger_id": _new_trigger_id(),
        "team": {"id": team_id, "domain": "emulator"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": "general"},
        "message": message or {"type": "message", "ts": message_ts, "text": "", "blocks": []},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "text": {"type": "plain_text", "text": action_id, "emoji": True},
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def event_callback_payload(
    event: JSON,
    *,
    team_id: str = DEFAULT_TEAM_ID,
    event_id: str | None = None,
    api_app_id: str = DEFAULT_API_APP_ID,
    bot_user_id: str = DEFAULT_BOT_USER_ID,
) -> JSON:
    """An ``events_api`` payload: the ``event_callback`` wrapper around ``event``."""
    if not isinstance(event.get("type"), str):
        raise ValueError("an event needs a string 'type'")
    return {
        "token": "verification-token-unused",
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_urlsafe(24)}",
    }


# --------------------------------------------------------------------------- the server


class SocketModeServer:
    """Slack's side of Socket Mode for one app, on a free local port (see the module doc).

    Every public method is synchronous and thread-safe: the server runs on its own thread
    and event loop, and tests steer it from theirs. From ``async`` test code, call the
    blocking waits through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        *,
        app_id: str = DEFAULT_API_APP_ID,
        app_token: str = DEFAULT_APP_TOKEN,
        bot_tokens: Iterable[str] = (),
        retry_delays: Iterable[float] = EVENTS_RETRY_DELAYS,
        connection_lifetime: float | None = None,
        on_ack: Callable[[Envelope, Ack], None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        """Set up, without serving yet (``start()`` or ``with``).

        ``retry_delays``: the wait before each Events API retry (Slack: 0, 60, 300 s); its
        length is the number of retries. ``connection_lifetime`` replaces how long a
        connection lives before Slack refreshes it (default: what ``hello`` announces).
        ``on_ack`` is called on the server thread for each ack of a known envelope; it must
        not block.
        """
        self.app_id = app_id
        self.app_token = app_token
        self.retry_delays = tuple(float(d) for d in retry_delays)
        if any(d < 0 or not math.isfinite(d) for d in self.retry_delays):
            raise ValueError("retry delays must be finite and >= 0")
        self.connection_lifetime = connection_lifetime
        self._on_ack = on_ack
        self._host = host
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._app_tokens: dict[str, tuple[str, ...]] = {app_token: (_SCOPE,)}
        self._bot_tokens: set[str] = set(bot_tokens)
        self._revoked: set[str] = set()
        self._tickets: dict[str, bool] = {}  # ticket -> already used
        self._open_calls: deque[float] = deque()
        self._connection_ids = itertools.count(1)
        self._connections: dict[int, _ConnectionState] = {}
        self._round_robin = 0
        self._envelopes: dict[str, _EnvelopeState] = {}
        self._acks: list[Ack] = []
        self._refusals: list[Refusal] = []
        self._problems: list[Problem] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._tasks: set[asyncio.Future[None]] = set()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> SocketModeServer:
        """Bind a free port on 127.0.0.1 and serve on a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("the Socket Mode server is already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, 0))
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._http_api)
        app.router.add_get("/link", self._http_link)
        app.router.add_get("/link/", self._http_link)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        started = threading.Event()
        failures: list[BaseException] = []

        def serve() -> None:
            # Set up on the server's own thread: start() may be called from a running loop.
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(runner.setup())
                loop.run_until_complete(web.SockSite(runner, sock).start())
            except BaseException as e:
                failures.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name=f"socket-mode-{self._port}", daemon=True)
        self._loop, self._runner = loop, runner
        self._thread.start()
        started.wait(timeout=10)
        if failures or not started.is_set():
            self._thread.join(timeout=1)
            loop.close()
            sock.close()
            self._loop = self._thread = self._runner = None
            raise RuntimeError("the Socket Mode server did not start") from (
                failures[0] if failures else None
            )
        return self

    def stop(self) -> None:
        """Close every connection (as the server), stop serving and join the thread."""
        loop, thread, runner = self._loop, self._thread, self._runner
        if loop is None or thread is None or runner is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(runner), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> SocketModeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _shutdown(self, runner: web.AppRunner) -> None:
        with self._lock:
            states = [c for c in self._connections.values() if c.closed_at is None]
            for state in states:
                state.closing_by_server = True
            for envelope in self._envelopes.values():
                if envelope.deadline is not None:
                    envelope.deadline.cancel()
        for state in states:
            with contextlib.suppress(Exception):
                await state.ws.close(code=1001, message=b"server shutdown")
        await runner.cleanup()

    # ----------------------------------------------------------------- URLs & tokens

    @property
    def url(self) -> str:
        """The HTTP base URL, with a trailing slash."""
        if self._port is None:
            raise RuntimeError("the Socket Mode server is not started")
        return f"http://{self._host}:{self._port}/"

    @property
    def api_url(self) -> str:
        """The Web API base URL for ``AsyncWebClient(base_url=...)`` (apps.connections.open)."""
        return self.url + "api/"

    def add_app_token(self, token: str, scopes: Iterable[str] = (_SCOPE,)) -> None:
        """Accept another app-level token for this app, with these scopes."""
        with self._lock:
            self._app_tokens[token] = tuple(scopes)
            self._revoked.discard(token)

    def add_bot_token(self, token: str) -> None:
        """Know ``token`` as a valid bot token: apps.connections.open refuses its type."""
        with self._lock:
            self._bot_tokens.add(token)

    def revoke_app_token(self, token: str) -> None:
        """Revoke an app-level token: apps.connections.open answers ``token_revoked``.

        Connections already open stay open, as they do in Slack until refreshed.
        """
        with self._lock:
            self._revoked.add(token)

    # ----------------------------------------------------------------- apps.connections.open

    def apps_connections_open(self, token: str | None) -> ApiAnswer:
        """Answer ``apps.connections.open`` for the token from the Authorization header."""
        with self._lock:
            return self._open(token)

    def _open(self, token: str | None) -> ApiAnswer:
        if not token:
            return ApiAnswer({"ok": False, "error": "not_authed"})
        if token in self._revoked:
            return ApiAnswer({"ok": False, "error": "token_revoked"})
        if token in self._bot_tokens:
            return ApiAnswer({"ok": False, "error": "not_allowed_token_type"})
        scopes = self._app_tokens.get(token)
        if scopes is None:
            return ApiAnswer({"ok": False, "error": "invalid_auth"})
        if _SCOPE not in scopes:
            return ApiAnswer(
                {
                    "ok": False,
                    "error": "missing_scope",
                    "needed": _SCOPE,
                    "provided": ",".join(scopes),
                }
            )
        now = time.monotonic()
        while self._open_calls and now - self._open_calls[0] >= 60.0:
            self._open_calls.popleft()
        if len(self._open_calls) >= OPEN_CALLS_PER_MINUTE:
            retry_after = max(1, math.ceil(60.0 - (now - self._open_calls[0])))
            return ApiAnswer(
                {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(retry_after)}
            )
        self._open_calls.append(now)
        ticket = secrets.token_hex(16)
        self._tickets[ticket] = False
        url = f"ws://{self._host}:{self._port}/link/?ticket={ticket}&app_id={self.app_id}"
        return ApiAnswer({"ok": True, "url": url})

    async def _http_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if method != "apps.connections.open":
            return web.json_response({"ok": False, "error": "unknown_method"})
        if request.method != "POST":
            return web.json_response({"ok": False, "error": "insecure_request"})
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        if token is None and await _body_has_token(request):
            # Slack: the app-level token must come in the header; as a POST parameter it
            # is not taken.
            return web.json_response({"ok": False, "error": "missing_args"})
        answer = self.apps_connections_open(token)
        return web.json_response(answer.body, status=answer.status_code, headers=answer.headers)

    # ----------------------------------------------------------------- the WebSocket

    async def _http_link(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket")
        now = time.monotonic()
        with self._lock:
            refusal: Literal["unknown_ticket", "used_ticket", "missing_ticket"] | None = None
            if not ticket:
                refusal = "missing_ticket"
            elif ticket not in self._tickets:
                refusal = "unknown_ticket"
            elif self._tickets[ticket]:
                refusal = "used_ticket"
            else:
                self._tickets[ticket] = True
            if refusal is not None:
                self._refusals.append(Refusal(now, refusal))
                self._changed.notify_all()
        if refusal is not None:
            logger.debug("Socket Mode handshake refused: %s", refusal)
            return web.Response(status=401, text="invalid ticket")

        # autoping answers the client's pings; a close waits at most 2 s for the client's reply.
        ws = web.WebSocketResponse(autoping=True, timeout=2.0)
        await ws.prepare(request)
        debug = request.query.get("debug_reconnects") == "true"
        with self._lock:
            cid = next(self._connection_ids)
            state = _ConnectionState(cid, ws, now, debug, host=f"applink-{cid}")
            self._connections[cid] = state
            open_count = sum(1 for c in self._connections.values() if c.closed_at is None)
            too_many = open_count > MAX_CONNECTIONS_PER_APP
            self._changed.notify_all()
        logger.debug("Socket Mode connection %d opened", cid)
        try:
            if too_many:
                await self._send_disconnect(state, "too_many_websockets", close_after=0.0)
            else:
                await self._hello(state, open_count)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_client_text(state, message.data)
                elif message.type == WSMsgType.BINARY:
                    self._problem(state, "binary message", repr(message.data))
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            with self._lock:
                state.closed_at = time.monotonic()
                state.closed_by = "server" if state.closing_by_server else "client"
                for timer in state.timers:
                    timer.cancel()
                self._changed.notify_all()
            logger.debug("Socket Mode connection %d closed by the %s", cid, state.closed_by)
        return ws

    async def _hello(self, state: _ConnectionState, open_count: int) -> None:
        lifetime = (
            DEBUG_CONNECTION_TIME_SECONDS if state.debug_reconnects else CONNECTION_TIME_SECONDS
        )
        await state.ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": open_count,
                    "debug_info": {
                        "host": state.host,
                        "build_number": _BUILD_NUMBER,
                        "approximate_connection_time": lifetime,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
        )
        refresh_in = self.connection_lifetime if self.connection_lifetime is not None else lifetime
        loop = asyncio.get_running_loop()
        with self._lock:
            state.ready = True
            # Slack refreshes every connection after about that long: warning, then
            # refresh_requested and the close.
            # A lifetime shorter than the lead (tests) warns halfway, not at once.
            warn_at = max(refresh_in / 2, refresh_in - WARNING_LEAD_SECONDS)
            state.timers.append(
                loop.call_later(warn_at, self._spawn_disconnect, state, "warning", None)
            )
            state.timers.append(
                loop.call_later(refresh_in, self._spawn_disconnect, state, "refresh_requested", 0.0)
            )
            self._changed.notify_all()

    def _spawn_disconnect(
        self, state: _ConnectionState, reason: str, close_after: float | None
    ) -> None:
        # The coroutine is made when the timer fires, so a cancelled timer leaves none behind.
        self._keep(asyncio.ensure_future(self._send_disconnect(state, reason, close_after)))

    def _spawn_delivery(self, envelope: _EnvelopeState) -> None:
        self._keep(asyncio.ensure_future(self._deliver(envelope)))

    def _keep(self, task: asyncio.Future[None]) -> None:
        # The loop holds tasks weakly: keep a reference until each is done.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_disconnect(
        self, state: _ConnectionState, reason: str, close_after: float | None
    ) -> None:
        """Send ``disconnect`` on one connection; close it after ``close_after`` seconds."""
        with self._lock:
            if state.closed_at is not None:
                return
            state.retiring = True
            state.disconnect_reason = reason
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": state.host}}
        with contextlib.suppress(ConnectionError, RuntimeError):
            await state.ws.send_str(json.dumps(message))
        if close_after is None:
            return
        if close_after > 0:
            await asyncio.sleep(close_after)
        with self._lock:
            if state.closed_at is not None:
                return
            state.closing_by_server = True
        await state.ws.close()

    # ----------------------------------------------------------------- acks from the client

    def _problem(self, state: _ConnectionState, problem: str, text: str) -> None:
        with self._lock:
            self._problems.append(
                Problem(time.monotonic(), state.connection_id, problem, text[:500])
            )
            self._changed.notify_all()

    def _on_client_text(self, state: _ConnectionState, text: str) -> None:
        arrived = time.monotonic()
        try:
            message = json.loads(text)
        except ValueError:
            self._problem(state, "not JSON", text)
            return
        envelope_id = message.get("envelope_id") if isinstance(message, dict) else None
        if not isinstance(envelope_id, str):
            self._problem(state, "no envelope_id", text)
            return
        payload = message.get("payload")
        if payload is not None and not isinstance(payload, dict):
            self._problem(state, "payload is not an object", text)
            return
        with self._lock:
            envelope = self._envelopes.get(envelope_id)
            if envelope is None or envelope.sent_at is None:
                self._problems.append(
                    Problem(arrived, state.connection_id, "unknown envelope_id", text[:500])
                )
                self._changed.notify_all()
                return
            if envelope.ack is not None:
                self._problems.append(
                    Problem(arrived, state.connection_id, "repeated ack", text[:500])
                )
                self._changed.notify_all()
                return
            seconds = arrived - envelope.sent_at
            late = seconds > ACK_DEADLINE_SECONDS
            ack = Ack(envelope_id, payload, arrived, seconds, state.connection_id, late)
            envelope.ack = ack
            if not late and envelope.outcome == "pending":
                envelope.outcome = "acked"
                if envelope.deadline is not None:
                    envelope.deadline.cancel()
            self._acks.append(ack)
            snapshot = envelope.snapshot()
            self._changed.notify_all()
        if self._on_ack is not None:
            try:
                self._on_ack(snapshot, ack)
            except Exception:
                logger.exception("on_ack failed for envelope %s", envelope_id)

    # ----------------------------------------------------------------- pushing envelopes

    def push(
        self,
        type: EnvelopeType,
        payload: JSON,
        *,
        accepts_response_payload: bool | None = None,
        timeout: float = 5.0,
    ) -> str:
        """Send an envelope to one open connection; returns its ``envelope_id``.

        ``accepts_response_payload`` defaults to Slack's: true for slash commands, false
        for ``block_actions`` and events. With no open connection the envelope is not sent:
        a command or interaction fails at once (``dispatch_failed``), an event waits for
        its retries.
        """
        if type not in ENVELOPE_TYPES:
            raise ValueError(f"envelope type must be one of {ENVELOPE_TYPES}, not {type!r}")
        if not isinstance(payload, dict):
            raise TypeError("an envelope payload is a JSON object (dict)")
        json.dumps(payload)  # fail here, not on the server thread, if it is not JSON
        if accepts_response_payload is None:
            accepts_response_payload = type == "slash_commands"
        envelope_id = str(uuid.uuid4())
        state = _EnvelopeState(
            envelope_id=envelope_id,
            type=type,
            payload=payload,
            accepts_response_payload=accepts_response_payload,
            retry_attempt=0,
            retry_reason="",
            first_envelope_id=envelope_id,
        )
        asyncio.run_coroutine_threadsafe(self._deliver(state), self._running_loop()).result(timeout)
        return envelope_id

    def push_command(self, text: str, *, response_url: str, **fields: Any) -> str:
        """Push a ``slash_commands`` envelope (``slash_command_payload`` fields)."""
        return self.push(
            "slash_commands", slash_command_payload(text, response_url=response_url, **fields)
        )

    def push_block_action(
        self, action_id: str, value: str, *, message_ts: str, response_url: str, **fields: Any
    ) -> str:
        """Push an ``interactive`` envelope for a button click (``block_actions_payload``)."""
        payload = block_actions_payload(
            action_id, value, message_ts=message_ts, response_url=response_url, **fields
        )
        return self.push("interactive", payload)

    def push_event(self, event: JSON, **fields: Any) -> str:
        """Push an ``events_api`` envelope around ``event`` (``event_callback_payload``)."""
        return self.push("events_api", event_callback_payload(event, **fields))

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the Socket Mode server is not started")
        return self._loop

    def _pick_connection(self) -> _ConnectionState | None:
        """Round-robin over ready connections; retiring ones only when nothing else is open."""
        ready = [c for c in self._connections.values() if c.ready and c.closed_at is None]
        fresh = [c for c in ready if not c.retiring] or ready
        if not fresh:
            return None
        self._round_robin += 1
        return fresh[self._round_robin % len(fresh)]

    async def _deliver(self, envelope: _EnvelopeState) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._envelopes[envelope.envelope_id] = envelope
            target = self._pick_connection()
            if target is None:
                self._fail(envelope, loop, reason="connection_failed")
                self._changed.notify_all()
                return
            envelope.connection_id = target.connection_id
            target.envelopes_sent += 1
            # The clock starts before the bytes go out, so an ack can never beat sent_at.
            envelope.sent_at = time.monotonic()
            envelope.deadline = loop.call_later(
                ACK_DEADLINE_SECONDS, self._on_deadline, envelope.envelope_id
            )
            self._changed.notify_all()
        try:
            await target.ws.send_str(json.dumps(_wire(envelope)))
        except (ConnectionError, RuntimeError):
            with self._lock:
                envelope.deadline.cancel()
                envelope.sent_at = None
                if envelope.outcome == "pending":
                    self._fail(envelope, loop, reason="connection_failed")
                self._changed.notify_all()

    def _on_deadline(self, envelope_id: str) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            envelope = self._envelopes[envelope_id]
            if envelope.outcome == "pending":
                self._fail(envelope, loop, reason="timeout")
                self._changed.notify_all()

    def _fail(self, envelope: _EnvelopeState, loop: asyncio.AbstractEventLoop, reason: str) -> None:
        """Give up on one attempt (lock held): commands fail, events are retried."""
        if envelope.type != "events_api":
            envelope.outcome = "dispatch_failed"
            return
        envelope.outcome = "timeout" if reason == "timeout" else "not_delivered"
        if envelope.retry_attempt >= len(self.retry_delays):
            return
        retry = _EnvelopeState(
            envelope_id=str(uuid.uuid4()),
            type=envelope.type,
            payload=envelope.payload,
            accepts_response_payload=envelope.accepts_response_payload,
            retry_attempt=envelope.retry_attempt + 1,
            retry_reason=reason,
            first_envelope_id=envelope.first_envelope_id,
        )
        loop.call_later(self.retry_delays[envelope.retry_attempt], self._spawn_delivery, retry)

    # ----------------------------------------------------------------- steering

    def disconnect(
        self,
        reason: str = "refresh_requested",
        *,
        connection_id: int | None = None,
        close_after: float | None = None,
        timeout: float = 5.0,
    ) -> list[int]:
        """Send ``disconnect`` with ``reason`` and close; returns the connection ids it hit.

        All open connections, or only ``connection_id``. The socket closes after
        ``close_after`` seconds: by default at once, except for ``warning``, which Slack
        sends about 10 s before the refresh.
        """
        if reason not in DISCONNECT_REASONS:
            raise ValueError(f"reason must be one of {DISCONNECT_REASONS}, not {reason!r}")
        if close_after is None:
            close_after = WARNING_LEAD_SECONDS if reason == "warning" else 0.0
        with self._lock:
            targets = [
                c
                for c in self._connections.values()
                if c.closed_at is None and connection_id in (None, c.connection_id)
            ]
        if connection_id is not None and not targets:
            raise KeyError(f"no open connection {connection_id}")

        async def send_all() -> None:
            # Send every disconnect first; the closes then run on their own.
            for state in targets:
                self._spawn_disconnect(state, reason, close_after)
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(send_all(), self._running_loop()).result(timeout)
        return [c.connection_id for c in targets]

    # ----------------------------------------------------------------- reading

    def connections(self) -> list[Connection]:
        """Every connection ever opened, in order, open or closed."""
        with self._lock:
            return [c.snapshot() for c in self._connections.values()]

    def open_connections(self) -> int:
        """How many connections are open now."""
        with self._lock:
            return sum(1 for c in self._connections.values() if c.closed_at is None)

    def is_connected(self) -> bool:
        """Whether a client holds an open connection that has had its ``hello``."""
        with self._lock:
            return any(c.ready and c.closed_at is None for c in self._connections.values())

    def refusals(self) -> list[Refusal]:
        """WebSocket handshakes refused (unknown, used or missing ticket), in order."""
        with self._lock:
            return list(self._refusals)

    def problems(self) -> list[Problem]:
        """Client messages that were not usable acks, in order."""
        with self._lock:
            return list(self._problems)

    def envelope(self, envelope_id: str) -> Envelope:
        """One delivery attempt by id. KeyError when unknown."""
        with self._lock:
            return self._envelopes[envelope_id].snapshot()

    def envelopes(self, type: EnvelopeType | None = None) -> list[Envelope]:
        """Every delivery attempt (retries included), in order, optionally of one type."""
        with self._lock:
            return [e.snapshot() for e in self._envelopes.values() if type in (None, e.type)]

    def attempts(self, envelope_id: str) -> list[Envelope]:
        """Every attempt to deliver the request ``envelope_id`` belongs to, in order."""
        with self._lock:
            first = self._envelopes[envelope_id].first_envelope_id
            return [e.snapshot() for e in self._envelopes.values() if e.first_envelope_id == first]

    def acks(self) -> list[Ack]:
        """Every ack of a known envelope, in arrival order (late ones included)."""
        with self._lock:
            return list(self._acks)

    # ----------------------------------------------------------------- waiting

    def _wait(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = check()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
                self._changed.wait(remaining)

    def wait_ack(self, envelope_id: str, timeout: float = 5.0) -> Ack:
        """Block until ``envelope_id`` is acknowledged (late or not) and return the ack."""

        def ack() -> Ack | None:
            envelope = self._envelopes.get(envelope_id)
            if envelope is None:
                raise KeyError(envelope_id)
            return envelope.ack

        result: Ack = self._wait(f"an ack of {envelope_id}", ack, timeout)
        return result

    def wait_outcome(self, envelope_id: str, timeout: float = 5.0) -> Envelope:
        """Block until the attempt ``envelope_id`` is settled (no longer ``pending``)."""

        def settled() -> Envelope | None:
            envelope = self._envelopes[envelope_id]
            return envelope.snapshot() if envelope.outcome != "pending" else None

        result: Envelope = self._wait(f"the outcome of {envelope_id}", settled, timeout)
        return result

    def wait_attempt(self, envelope_id: str, retry_attempt: int, timeout: float = 5.0) -> Envelope:
        """Block until attempt number ``retry_attempt`` of that request has been sent."""

        def sent() -> Envelope | None:
            first = self._envelopes[envelope_id].first_envelope_id
            for e in self._envelopes.values():
                settled = e.sent_at is not None or e.outcome != "pending"
                if e.first_envelope_id == first and e.retry_attempt == retry_attempt and settled:
                    return e.snapshot()
            return None

        result: Envelope = self._wait(f"attempt {retry_attempt} of {envelope_id}", sent, timeout)
        return result

    def wait_connected(self, count: int = 1, timeout: float = 5.0) -> list[Connection]:
        """Block until at least ``count`` connections are open with their ``hello``."""

        def ready() -> list[Connection] | None:
            found = [
                c.snapshot() for c in self._connections.values() if c.ready and c.closed_at is None
            ]
            return found if len(found) >= count else None

        result: list[Connection] = self._wait(f"{count} open connection(s)", ready, timeout)
        return result

    def wait_opened(self, total: int, timeout: float = 5.0) -> list[Connection]:
        """Block until ``total`` connections have been opened since the start (any state)."""

        def opened() -> list[Connection] | None:
            ready = [c.snapshot() for c in self._connections.values() if c.ready]
            return ready if len(ready) >= total else None

        result: list[Connection] = self._wait(f"{total} connection(s) opened", opened, timeout)
        return result


async def _body_has_token(request: web.Request) -> bool:
    """Whether the request body carries a ``token`` argument (form or JSON)."""
    with contextlib.suppress(Exception):
        if request.content_type == "application/json":
            body = await request.json()
            return isinstance(body, dict) and bool(body.get("token"))
        form = await request.post()
        return bool(form.get("token"))
    return False


__all__ = [
    "ACK_DEADLINE_SECONDS",
    "DEFAULT_APP_TOKEN",
    "EVENTS_RETRY_DELAYS",
    "Ack",
    "ApiAnswer",
    "Connection",
    "Envelope",
    "Problem",
    "Refusal",
    "SocketModeServer",
    "block_actions_payload",
    "event_callback_payload",
    "slash_command_payload",
]
