"""A Slack emulator: a real local HTTP server that plays Slack for tests, benchmarks and ``demo``.

It answers the Web API methods the bot uses (``POST /api/{method}``, form or JSON, with
Bearer-token auth), records every call and every message, receives ``response_url`` posts,
and lets a test inject failures (rate limits, missing channels, revoked tokens, latency).
The same module builds signed requests *to* the bot the way Slack does (slash commands,
button clicks, events) and has a small ``SlackUser`` that sends them over HTTP.

All state sits behind one ``threading.Lock``: uvicorn serves on a background thread while
tests read and steer from the main thread. The lock is never held across an ``await``.

Typical use::

    emulator = SlackEmulator()
    with emulator.serve():
        client = WebClient(token=emulator.bot_token, base_url=emulator.api_url())
        client.chat_postMessage(channel="C0001", text="hi")
        assert message_text(emulator.messages("C0001")[0]) == "hi"
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.sandbox import slack_rules
from bot.sandbox.block_kit import MAX_TEXT_UTF16, block_problems, fallback_warnings, utf16_len
from bot.sandbox.devserver import ServerThread
from bot.sandbox.slack_socket_mode import SocketModeServer
from bot.sandbox.slack_views import (
    Submission,
    ViewError,
    ViewRegistry,
    home_opened_event,
    submit_view,
    view_action_body,
)

JSON = dict[str, Any]
T = TypeVar("T")

DEFAULT_BOT_TOKEN = "xoxb-emulator-token"
DEFAULT_TEAM_ID = "T0001"
DEFAULT_BOT_USER_ID = "UBOT"
DEFAULT_API_APP_ID = "A0001"
# A response_url takes 5 posts within 30 minutes of the command or click
# (https://docs.slack.dev/interactivity/handling-user-interaction#message_responses).
RESPONSE_URL_MAX_POSTS = 5
RESPONSE_URL_LIFETIME_SECONDS = 30 * 60
# Slack waits 3 s for the acknowledgement of a command or click, then shows the user
# an error (https://docs.slack.dev/interactivity/implementing-slash-commands#responding).
ACK_DEADLINE_SECONDS = 3.0
DISPATCH_FAILED = "dispatch_failed"
# First message ts; each message adds 100 µs, so ts strings stay unique and increasing.
_FIRST_TS_MICROS = 1_790_000_000_000_100
_TS_STEP_MICROS = 100


# --------------------------------------------------------------------------- records


@dataclass
class Message:
    """A message as the emulator stores it (a snapshot when handed out)."""

    ts: str
    channel: str
    text: str
    blocks: list[JSON]
    thread_ts: str | None = None  # None for a top-level message
    reply_broadcast: bool = False
    edits: int = 0
    history: list[tuple[str, list[JSON]]] = field(default_factory=list)  # earlier versions
    user: str = DEFAULT_BOT_USER_ID
    deleted: bool = False

    def to_json(self) -> JSON:
        """The message as a plain JSON-able dict (used by the control endpoints)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Ephemeral:
    """A message only one user saw: from chat.postEphemeral or an ephemeral response_url post."""

    ts: str
    channel: str
    user: str
    text: str
    blocks: list[JSON]
    thread_ts: str | None = None
    source: str = "chat.postEphemeral"  # or "response_url"


@dataclass(frozen=True)
class ApiRequest:
    """One Web API call the emulator received and how it answered."""

    at: float  # time.monotonic() on arrival
    method: str
    params: JSON  # form and JSON arguments merged, blocks parsed, token removed
    ok: bool
    error: str | None
    status_code: int = 200
    warnings: tuple[str, ...] = ()  # e.g. missing_text_or_fallback_or_attachments


@dataclass
class Channel:
    """A conversation: a public or private channel, or a direct message (``im``)."""

    id: str
    kind: str  # "public" | "private" | "im"
    name: str
    members: set[str] = field(default_factory=set)  # user ids, the bot's included
    archived: bool = False

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "name": self.name,
            "is_channel": self.kind == "public",
            "is_group": self.kind == "private",
            "is_private": self.kind != "public",
            "is_im": self.kind == "im",
            "is_archived": self.archived,
            "created": 1_700_000_000,
        }


CHANNEL_KINDS = ("public", "private", "im")


@dataclass(frozen=True)
class CommandResult:
    """What the bot answered to a signed request (slash command, click or event).

    ``error`` is what Slack would show the user instead of the answer: ``dispatch_failed``
    when the acknowledgement came after 3 s, ``invalid_blocks`` when its blocks would be
    refused (``problems`` says why); None when all went well.
    """

    status_code: int
    ack_seconds: float
    ack_body: Any  # parsed JSON, text, or None for an empty body
    response_url: str | None
    error: str | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Identity:
    token: str
    team_id: str
    user_id: str
    bot_id: str


@dataclass
class _InjectedError:
    method: str  # "*" matches every method
    error: str
    channel: str | None
    remaining: int | None  # None: until cleared
    retry_after: int | None
    status_code: int | None


@dataclass
class _ResponseUrl:
    id: str
    channel: str | None
    message_ts: str | None
    user: str | None
    issued_at: float = 0.0  # the emulator's clock
    posts: list[JSON] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)  # time.monotonic(), one per post


@dataclass
class _Outcome:
    body: JSON
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class _ApiError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


# --------------------------------------------------------------------------- helpers


def message_text(message: Message | Ephemeral | Mapping[str, Any]) -> str:
    """Everything a user would read in a message: the fallback text plus all block texts.

    Walks the blocks recursively and collects every string under a ``"text"`` key, which
    covers section text and fields, headers, context elements, button labels and rich
    text. Accepts a ``Message``, an ``Ephemeral`` or a dict (a control-endpoint or
    response_url payload). Parts are joined by newlines.
    """
    if isinstance(message, Mapping):
        text, blocks = message.get("text"), message.get("blocks")
    else:
        text, blocks = message.text, message.blocks
    parts: list[str] = [text] if isinstance(text, str) and text else []
    _collect_texts(blocks or [], parts)
    return "\n".join(parts)


def _collect_texts(node: Any, parts: list[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "text" and isinstance(value, str):
                parts.append(value)
            else:
                _collect_texts(value, parts)
    elif isinstance(node, list):
        for item in node:
            _collect_texts(item, parts)


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 5.0,
    interval: float = 0.05,
    description: str | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises ``AssertionError`` naming the condition (``description`` or the predicate's
    name) and its last value when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = description or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}; last value: {value!r}"
            )
        time.sleep(interval)


def sign_request(signing_secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """Slack's signature headers for ``body``: X-Slack-Request-Timestamp and X-Slack-Signature.

    The signature is ``v0=`` + hex HMAC-SHA256 of ``v0:{timestamp}:{body}`` keyed with the
    signing secret; ``timestamp`` defaults to now (Bolt rejects ones more than 5 min off).
    """
    ts = int(time.time()) if timestamp is None else timestamp
    base = b"v0:" + str(ts).encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


def _new_trigger_id() -> str:
    return f"{secrets.randbelow(10**10)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"


def slash_command_body(
    text: str,
    *,
    command: str = "/import-status",
    team_id: str = DEFAULT_TEAM_ID,
    channel_id: str = "C0001",
    user_id: str = "U0001",
    response_url: str,
    trigger_id: str | None = None,
    team_domain: str = "emulator",
    channel_name: str = "general",
    user_name: str = "tester",
    api_app_id: str = DEFAULT_API_APP_ID,
    enterprise_id: str | None = None,
) -> bytes:
    """A slash-command request body, form-encoded with every field Slack sends."""
    fields = {
        "token": "verification-token-unused",  # deprecated; Bolt checks the signature instead
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
        fields["enterprise_id"] = enterprise_id
    return urlencode(fields).encode()


def block_action_body(
    action_id: str,
    value: str,
    *,
    team_id: str = DEFAULT_TEAM_ID,
    channel_id: str = "C0001",
    user_id: str = "U0001",
    message_ts: str,
    response_url: str,
    block_id: str = "actions",
    message: JSON | None = None,
    is_ephemeral: bool = False,
    api_app_id: str = DEFAULT_API_APP_ID,
) -> bytes:
    """A button-click (``block_actions``) request body: form field ``payload`` holding JSON.

    ``message`` is the clicked message as Slack would include it; a minimal one is made up
    from ``message_ts`` when not given.
    """
    now = f"{time.time():.6f}"
    payload = {
        "type": "block_actions",
        "team": {"id": team_id, "domain": "emulator"},
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
        "channel": {"id": channel_id, "name": "general"},
        "message": message or {"type": "message", "ts": message_ts, "text": "", "blocks": []},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "value": value,
                "type": "button",
                "text": {"type": "plain_text", "text": action_id},
                "action_ts": now,
            }
        ],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def event_body(
    event: JSON,
    *,
    team_id: str = DEFAULT_TEAM_ID,
    event_id: str | None = None,
    api_app_id: str = DEFAULT_API_APP_ID,
    bot_user_id: str = DEFAULT_BOT_USER_ID,
) -> bytes:
    """An Events API ``event_callback`` envelope around ``event``, as JSON bytes."""
    envelope = {
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
    }
    return json.dumps(envelope).encode()


def _flag(value: Any) -> bool:
    """Slack booleans arrive as JSON booleans or as form strings."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _bearer(header: str | None) -> str | None:
    if header and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def _parse_params(content_type: str, body: bytes, query: Mapping[str, str]) -> JSON:
    """Merge query string and body arguments; JSON and form bodies are both accepted."""
    params: JSON = dict(query)
    if not body:
        return params
    if "json" in content_type:
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            raise ValueError("the JSON body is not an object")
        params.update(parsed)
    else:
        params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    return params


def _parse_blocks(raw: Any) -> list[JSON] | None:
    """Blocks come as a list (JSON body) or a JSON string (form field); None if absent."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise _ApiError("invalid_blocks_format") from None
    if not isinstance(raw, list):
        raise _ApiError("invalid_blocks_format")
    problems = block_problems(raw)
    if problems:
        raise _ApiError("invalid_blocks", errors=problems, response_metadata={"messages": problems})
    return raw


def _required(params: JSON, *names: str) -> None:
    missing = [n for n in names if params.get(n) in (None, "")]
    if missing:
        messages = [f"[ERROR] missing required field: {n}" for n in missing]
        raise _ApiError("invalid_arguments", response_metadata={"messages": messages})


def _ack_problems(seconds: float, body: Any) -> tuple[str | None, list[str]]:
    """What Slack makes of an acknowledgement: too late, or blocks it would refuse.

    A slash command or click acknowledged after 3 s fails for the user, whatever the
    answer; an answer with invalid blocks is not shown either.
    """
    if seconds > ACK_DEADLINE_SECONDS:
        return DISPATCH_FAILED, [f"acknowledged after {seconds:.2f} s"]
    if isinstance(body, dict) and body.get("blocks") is not None:
        problems = block_problems(body["blocks"])
        if problems:
            return "invalid_blocks", problems
    return None, []


def _warnings(warnings: list[str]) -> JSON:
    """How Slack reports warnings on a call that succeeded."""
    if not warnings:
        return {}
    return {"warning": ",".join(warnings), "response_metadata": {"warnings": warnings}}


def _response_id(url_or_id: str) -> str:
    return url_or_id.rstrip("/").rsplit("/", 1)[-1]


def _snapshot(message: Message) -> Message:
    # Hand out copies: the server thread may edit the stored one at any moment.
    return dataclasses.replace(message, history=list(message.history))


# --------------------------------------------------------------------------- the emulator


class SlackEmulator:
    """Slack's Web API and response_url endpoints, in memory, as a Starlette app (``app``).

    Serve it with ``serve()`` (a started-on-enter ``ServerThread``) or any ASGI server;
    when served another way, call ``set_url()`` so ``new_response_url()`` can build URLs.

    As strict as Slack: the bot posts only where it was invited (``invite_bot``),
    each method needs its scopes (``scopes``: manifest.yml's by default; None checks
    none), the rate
    limits apply by themselves (``slack_rules.RATE_LIMITS``; ``set_rate_limit``
    changes one), and every message's Block Kit is checked. ``clock`` (seconds,
    monotonic) drives rate limits and response_url expiry; tests may pass their own.
    """

    def __init__(
        self,
        bot_token: str = DEFAULT_BOT_TOKEN,
        team_id: str = DEFAULT_TEAM_ID,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
        *,
        scopes: Iterable[str] | Literal["manifest"] | None = "manifest",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bot_token = bot_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.clock = clock
        #: The installed bot scopes; None checks none. By default manifest.yml's.
        self.scopes: frozenset[str] | None = (
            slack_rules.manifest_scopes()
            if scopes == "manifest"
            else (frozenset(scopes) if scopes is not None else None)
        )
        self._installed_scopes = self.scopes
        self._limits: dict[str, slack_rules.Limit] = dict(slack_rules.RATE_LIMITS)
        self._buckets = slack_rules.Buckets(clock)
        self._lock = threading.Lock()
        self.views = ViewRegistry(self._lock)  # modals and Home tabs (slack_views.py)
        self._url: str | None = None
        self._socket_mode: SocketModeServer | None = None
        self._identities: dict[str, _Identity] = {}
        self._revoked: set[str] = set()
        self._response_ids = itertools.count(1)
        self.add_token(bot_token, team_id=team_id, bot_user_id=bot_user_id)
        self._reset_state()
        self._methods: dict[str, Callable[[_Identity, JSON], JSON]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.info": self._conversations_info,
            "conversations.open": self._conversations_open,
        }
        for name, handler in self.views.methods().items():
            self._methods[name] = _view_method(handler)
        self.app = Starlette(
            routes=[
                Route("/api/{method}", self._http_api, methods=["GET", "POST"]),
                Route("/response/{rid}", self._http_response_url, methods=["POST"]),
                Route("/_emulator/messages", self._http_messages, methods=["GET"]),
                Route("/_emulator/ephemerals", self._http_ephemerals, methods=["GET"]),
                Route("/_emulator/requests", self._http_requests, methods=["GET"]),
                Route("/_emulator/errors", self._http_errors, methods=["POST", "DELETE"]),
                Route("/_emulator/channels/{channel}", self._http_channel, methods=["PUT"]),
                Route(
                    "/_emulator/channels/{channel}",
                    self._http_create_channel,
                    methods=["POST"],
                ),
                Route("/_emulator/channels/{channel}/invite", self._http_invite, methods=["POST"]),
                Route("/_emulator/responses/{rid}", self._http_responses, methods=["GET"]),
                Route("/_emulator/response_urls", self._http_new_response_url, methods=["POST"]),
                Route("/_emulator/latency", self._http_latency, methods=["PUT"]),
                Route("/_emulator/revoke", self._http_revoke, methods=["POST"]),
                Route("/_emulator/reset", self._http_reset, methods=["POST"]),
            ]
        )
        # Files (the upload v2 flow) and direct messages: their own section, slack_files.py.
        from bot.sandbox.slack_files import SlackFiles

        self.files = SlackFiles(self)

    def _reset_state(self) -> None:
        self._next_ts = _FIRST_TS_MICROS
        self._requests: list[ApiRequest] = []
        self._all: list[Message] = []
        self._by_ts: dict[tuple[str, str], Message] = {}
        self._channel_view: dict[str, list[Message]] = {}  # top level + broadcast replies
        self._threads: dict[tuple[str, str], list[Message]] = {}
        self._ephemerals: list[Ephemeral] = []
        self._channel_errors: dict[str, str] = {}
        self._errors: list[_InjectedError] = []
        self._latency: dict[str, float] = {}
        self._held: dict[str, int] = {}  # calls that arrived and wait out their latency
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._revoked.clear()
        self._channels: dict[str, Channel] = {}
        self._dispatch_failures: list[CommandResult] = []
        self._buckets.clear()
        self._limits = dict(slack_rules.RATE_LIMITS)
        self.scopes = self._installed_scopes
        self.views.reset()

    # ----------------------------------------------------------------- serving & URLs

    def serve(self) -> ServerThread:
        """A ``ServerThread`` for this emulator on a free port; use it as a context manager."""
        server = ServerThread(self.app)
        self.set_url(server.url)  # the port is bound already, so the URL is known now
        return server

    def set_url(self, server_url: str) -> None:
        """Tell the emulator where it is served (needed by ``new_response_url``)."""
        with self._lock:
            self._url = server_url if server_url.endswith("/") else server_url + "/"

    @property
    def url(self) -> str:
        """The base URL the emulator is served at, with a trailing slash."""
        if self._url is None:
            raise RuntimeError("the emulator does not know its URL: use serve() or set_url()")
        return self._url

    def api_url(self, server_url: str | None = None) -> str:
        """The Web API base URL for ``WebClient(base_url=...)`` / SLACK_API_URL."""
        base = self.url if server_url is None else server_url
        return (base if base.endswith("/") else base + "/") + "api/"

    # ----------------------------------------------------------------- steering

    def add_token(
        self,
        token: str,
        *,
        team_id: str | None = None,
        bot_user_id: str | None = None,
        bot_id: str | None = None,
    ) -> None:
        """Accept another bot token (another workspace install, for example)."""
        with self._lock:
            self._identities[token] = _Identity(
                token=token,
                team_id=team_id or self.team_id,
                user_id=bot_user_id or self.bot_user_id,
                bot_id=bot_id or f"B{len(self._identities) + 1:04d}",
            )
            self._revoked.discard(token)

    def attach_socket_mode(self, server: SocketModeServer) -> None:
        """Answer ``apps.connections.open`` with ``server``'s ws:// URL (Socket Mode).

        The app-level tokens are ``server``'s; the bot tokens here are refused there
        with ``not_allowed_token_type``, as Slack refuses them.
        """
        with self._lock:
            self._socket_mode = server
            tokens = list(self._identities)
        for token in tokens:
            server.add_bot_token(token)

    def revoke_token(self, token: str) -> None:
        """Every later call with ``token`` fails with ``token_revoked``."""
        with self._lock:
            self._revoked.add(token)

    def set_channel_state(self, channel_id: str, error: str | None) -> None:
        """Make posts, updates and ephemerals to a channel fail with ``error``; None clears.

        Typical errors: ``channel_not_found``, ``not_in_channel``, ``is_archived``.
        """
        with self._lock:
            if error is None:
                self._channel_errors.pop(channel_id, None)
            else:
                self._channel_errors[channel_id] = error

    def create_channel(
        self,
        channel_id: str,
        kind: str = "public",
        *,
        name: str | None = None,
        members: tuple[str, ...] | list[str] = (),
        invite_bot: bool = False,
    ) -> Channel:
        """Make a conversation: ``public``, ``private`` or ``im`` (a direct message).

        The bot is in it only with ``invite_bot`` (or a later ``invite_bot()``), as in
        Slack, where a bot posts only where it was invited. An existing channel keeps
        its kind; members are added.
        """
        if kind not in CHANNEL_KINDS:
            raise ValueError(f"kind must be one of {CHANNEL_KINDS}, not {kind!r}")
        with self._lock:
            channel = self._channels.get(channel_id)
            if channel is None:
                channel = Channel(channel_id, kind, name or channel_id.lower())
                self._channels[channel_id] = channel
            channel.members.update(members)
            if invite_bot:
                channel.members.add(self.bot_user_id)
            return dataclasses.replace(channel, members=set(channel.members))

    def ensure_channel(self, channel_id: str, *, member: str | None = None) -> None:
        """Know ``channel_id`` (a user typed a command there): a new one gets its kind
        from its id's first letter, as Slack's ids do (D: a DM, G: private, else public),
        and the bot is not in it."""
        kind = {"D": "im", "G": "private"}.get(channel_id[:1], "public")
        self.create_channel(channel_id, kind, members=(member,) if member else ())

    def invite_bot(self, channel_id: str, bot_user_id: str | None = None) -> None:
        """``/invite @import-status``: the bot joins (a public channel if unknown yet)."""
        self.ensure_channel(channel_id)
        with self._lock:
            self._channels[channel_id].members.add(bot_user_id or self.bot_user_id)

    def remove_bot(self, channel_id: str, bot_user_id: str | None = None) -> None:
        """Someone removed the bot from the channel: its posts get ``not_in_channel`` (public)
        or ``channel_not_found`` (private, DM)."""
        with self._lock:
            channel = self._channels.get(channel_id)
            if channel is not None:
                channel.members.discard(bot_user_id or self.bot_user_id)

    def archive_channel(self, channel_id: str) -> None:
        """Archive the channel: posts get ``is_archived``, edits ``is_inactive``."""
        with self._lock:
            self._channels[channel_id].archived = True

    def channel(self, channel_id: str) -> Channel | None:
        """A copy of the conversation as the emulator knows it, or None."""
        with self._lock:
            found = self._channels.get(channel_id)
            return dataclasses.replace(found, members=set(found.members)) if found else None

    def set_scopes(self, scopes: set[str] | frozenset[str] | None) -> None:
        """Install the app with other bot scopes (None: no scope checked)."""
        with self._lock:
            self.scopes = frozenset(scopes) if scopes is not None else None

    def set_rate_limit(
        self, method: str, per_minute: float | None, burst: float | None = None
    ) -> None:
        """Change one method's rate limit (None: unlimited), e.g. for a load test that is
        not about rate limits. ``burst`` defaults to a minute's worth, or the current."""
        with self._lock:
            if per_minute is None:
                self._limits.pop(method, None)
                return
            current = self._limits.get(method, slack_rules.TIER_3)
            self._limits[method] = slack_rules.Limit(
                per_minute, burst if burst is not None else per_minute, current.per
            )

    def _record_dispatch_failure(self, result: CommandResult) -> None:
        with self._lock:
            self._dispatch_failures.append(result)

    @property
    def dispatch_failures(self) -> list[CommandResult]:
        """Commands and clicks Slack gave up on (late acknowledgement), in order."""
        with self._lock:
            return list(self._dispatch_failures)

    def inject_error(
        self,
        method: str,
        error: str,
        *,
        channel: str | None = None,
        times: int | None = 1,
        retry_after: int | None = None,
        status_code: int | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail with ``error`` (None: until cleared).

        ``method="*"`` matches every method; ``channel`` limits it to calls for that channel.
        ``ratelimited`` answers HTTP 429 with ``Retry-After`` (``retry_after``, default 1);
        other errors answer HTTP 200 unless ``status_code`` says otherwise (e.g. 503).
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1, or None for until cleared")
        with self._lock:
            self._errors.append(
                _InjectedError(method, error, channel, times, retry_after, status_code)
            )

    def clear_errors(self) -> None:
        """Drop all injected errors (channel states stay)."""
        with self._lock:
            self._errors.clear()

    def set_latency(self, seconds: float, method: str = "*") -> None:
        """Delay answers to ``method`` (``"*"``: all methods) by ``seconds``; 0 removes it."""
        with self._lock:
            if seconds > 0:
                self._latency[method] = seconds
            else:
                self._latency.pop(method, None)

    def held(self, method: str) -> int:
        """Calls of ``method`` that have arrived and are waiting out ``set_latency``."""
        with self._lock:
            return self._held.get(method, 0)

    def reset(self) -> None:
        """Forget messages, channels, requests, responses and injected failures; revoked
        tokens work again; rate limits and scopes are as installed again."""
        with self._lock:
            self._reset_state()
        self.files.reset()

    # ----------------------------------------------------------------- reading back

    @property
    def requests(self) -> list[ApiRequest]:
        """Every Web API call received so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def calls(self, method: str) -> list[ApiRequest]:
        """The calls of one Web API method, in arrival order."""
        with self._lock:
            return [r for r in self._requests if r.method == method]

    def messages(self, channel: str) -> list[Message]:
        """A channel's top-level messages in order, plus thread replies broadcast to it."""
        with self._lock:
            return [_snapshot(m) for m in self._channel_view.get(channel, []) if not m.deleted]

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The replies in the thread under ``ts``, in order (the parent is not included)."""
        with self._lock:
            return [_snapshot(m) for m in self._threads.get((channel, ts), []) if not m.deleted]

    def message(self, channel: str, ts: str) -> Message | None:
        """One message by channel and ts (deleted ones too, flagged), or None."""
        with self._lock:
            found = self._by_ts.get((channel, ts))
            return _snapshot(found) if found else None

    def all_messages(self) -> list[Message]:
        """Every message in every channel, replies included, in posting order."""
        with self._lock:
            return [_snapshot(m) for m in self._all]

    def ephemerals(self, channel: str | None = None) -> list[Ephemeral]:
        """Ephemeral messages (postEphemeral and ephemeral response_url posts), in order."""
        with self._lock:
            return [e for e in self._ephemerals if channel is None or e.channel == channel]

    def wait_for_message(self, channel: str, contains: str = "", timeout: float = 5.0) -> Message:
        """Wait until a message in ``channel`` whose ``message_text`` contains ``contains``."""

        def find() -> Message | None:
            return next((m for m in self.messages(channel) if contains in message_text(m)), None)

        return wait_for(find, timeout, description=f"a message in {channel} with {contains!r}")

    # ----------------------------------------------------------------- response_url

    def new_response_url(
        self,
        *,
        channel: str | None = None,
        message_ts: str | None = None,
        user: str | None = None,
    ) -> str:
        """A fresh response_url on this server (``.../response/{id}``).

        ``channel``/``user`` say where ephemeral and ``in_channel`` responses appear;
        ``message_ts`` is the message ``replace_original``/``delete_original`` act on.
        """
        base = self.url
        with self._lock:
            rid = f"R{next(self._response_ids):05d}{secrets.token_hex(4)}"
            self._response_urls[rid] = _ResponseUrl(
                rid, channel, message_ts, user, issued_at=self.clock()
            )
        return f"{base}response/{rid}"

    def responses(self, url_or_id: str) -> list[JSON]:
        """The bodies posted to a response_url, in order. KeyError for an unknown URL."""
        with self._lock:
            return list(self._response_urls[_response_id(url_or_id)].posts)

    def response_times(self, url_or_id: str) -> list[float]:
        """When each accepted post to a response_url arrived (``time.monotonic()``), in order."""
        with self._lock:
            return list(self._response_urls[_response_id(url_or_id)].received_at)

    # ----------------------------------------------------------------- Web API core

    def _new_ts(self) -> str:
        value = self._next_ts
        self._next_ts += _TS_STEP_MICROS
        return f"{value // 1_000_000}.{value % 1_000_000:06d}"

    def _call(
        self, method: str, token: str | None, params: JSON | None, arrived: float
    ) -> _Outcome:
        """Answer one Web API call and record it; runs with the lock held, never awaits."""
        outcome = self._answer(method, token, params)
        self._record(method, params, outcome, arrived)
        return outcome

    def _record(self, method: str, params: JSON | None, outcome: _Outcome, arrived: float) -> None:
        error = outcome.body.get("error")
        warnings = (outcome.body.get("response_metadata") or {}).get("warnings") or ()
        self._requests.append(
            ApiRequest(
                at=arrived,
                method=method,
                params=params or {},
                ok=bool(outcome.body.get("ok")),
                error=error if isinstance(error, str) else None,
                status_code=outcome.status_code,
                warnings=tuple(warnings) if outcome.body.get("ok") else (),
            )
        )

    def _answer(self, method: str, token: str | None, params: JSON | None) -> _Outcome:
        handler = self._methods.get(method)
        if handler is None and method != "apps.connections.open":
            return _Outcome({"ok": False, "error": "unknown_method"})
        if token is None:
            return _Outcome({"ok": False, "error": "not_authed"})
        if token in self._revoked:
            return _Outcome({"ok": False, "error": "token_revoked"})
        identity = self._identities.get(token)
        if identity is None:
            return _Outcome({"ok": False, "error": "invalid_auth"})
        if handler is None:  # apps.connections.open needs an app-level token, not a bot token
            return _Outcome({"ok": False, "error": "not_allowed_token_type"})
        if params is None:
            return _Outcome({"ok": False, "error": "invalid_json"})
        channel = params.get("channel")
        injected = self._take_injected(method, channel)
        if injected is not None:
            return injected
        refused = self._missing_scope(method, params) or self._rate_limited(
            method, identity, channel
        )
        if refused is not None:
            return refused
        try:
            return _Outcome({"ok": True, **handler(identity, params)})
        except _ApiError as e:
            return _Outcome({"ok": False, "error": e.error, **e.extra})

    def _missing_scope(self, method: str, params: JSON) -> _Outcome | None:
        """``missing_scope`` unless the installed scopes allow ``method``; lock held.

        Slack names the scope needed and those provided, in the body and in the
        X-Accepted-OAuth-Scopes / X-OAuth-Scopes headers
        (https://docs.slack.dev/authentication/tokens#scopes).
        """
        kind = "im" if method == "conversations.open" else None
        known = self._channels.get(str(params.get("channel", "")))
        if known is not None:
            kind = known.kind
        needed = slack_rules.missing_scope(method, self.scopes, kind)
        if needed is None:
            return None
        provided = ",".join(sorted(self.scopes or ()))
        return _Outcome(
            {"ok": False, "error": "missing_scope", "needed": needed, "provided": provided},
            200,
            {"X-OAuth-Scopes": provided, "X-Accepted-OAuth-Scopes": needed},
        )

    def _rate_limited(self, method: str, identity: _Identity, channel: Any) -> _Outcome | None:
        """HTTP 429 with Retry-After once the method's limit is spent; lock held."""
        limit = self._limits.get(method)
        if limit is None:
            return None
        wait = self._buckets.take(method, limit, identity.team_id, str(channel or ""))
        if not wait:
            return None
        return _Outcome({"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(wait)})

    def _take_injected(self, method: str, channel: Any) -> _Outcome | None:
        for rule in self._errors:
            if rule.method not in ("*", method):
                continue
            if rule.channel is not None and rule.channel != channel:
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._errors.remove(rule)  # safe: we return right away
            body = {"ok": False, "error": rule.error}
            if rule.error == "ratelimited":
                retry_after = 1 if rule.retry_after is None else rule.retry_after
                return _Outcome(body, rule.status_code or 429, {"Retry-After": str(retry_after)})
            return _Outcome(body, rule.status_code or 200)
        return None

    def _postable(self, identity: _Identity, channel_id: str, method: str) -> Channel:
        """The channel, if the bot may post (or edit) there; else Slack's error. Lock held.

        The bot must have been invited: otherwise ``not_in_channel`` for a public
        channel (unless the app has chat:write.public, for chat.postMessage) and
        ``channel_not_found`` for a private channel or a DM, which it cannot even
        see (https://docs.slack.dev/reference/methods/chat.postMessage#errors).
        Archived: ``is_archived``, or ``is_inactive`` for chat.update and chat.delete.
        """
        error = self._channel_errors.get(channel_id)
        if error:
            raise _ApiError(error)
        channel = self._channels.get(channel_id)
        if channel is None:
            raise _ApiError("channel_not_found")
        if channel.kind != "public" and identity.user_id not in channel.members:
            raise _ApiError("channel_not_found")
        if channel.archived:
            raise _ApiError(
                "is_inactive" if method in ("chat.update", "chat.delete") else "is_archived"
            )
        if identity.user_id in channel.members:
            return channel
        if method == "chat.postMessage" and slack_rules.POST_ANYWHERE in (self.scopes or ()):
            return channel
        raise _ApiError("not_in_channel")

    def _store(
        self,
        identity_user: str,
        channel: str,
        text: str,
        blocks: list[JSON],
        thread_ts: str | None,
        reply_broadcast: bool,
    ) -> Message:
        if thread_ts is not None:
            parent = self._by_ts.get((channel, thread_ts))
            if parent is not None and parent.thread_ts is not None:
                thread_ts = parent.thread_ts  # replying to a reply lands in the same thread
        message = Message(
            ts=self._new_ts(),
            channel=channel,
            text=text,
            blocks=blocks,
            thread_ts=thread_ts,
            reply_broadcast=reply_broadcast and thread_ts is not None,
            user=identity_user,
        )
        self._all.append(message)
        self._by_ts[(channel, message.ts)] = message
        if thread_ts is None or message.reply_broadcast:
            self._channel_view.setdefault(channel, []).append(message)
        if thread_ts is not None:
            self._threads.setdefault((channel, thread_ts), []).append(message)
        return message

    def _edit(self, message: Message, text: str | None, blocks: list[JSON] | None) -> None:
        message.history.append((message.text, message.blocks))
        if text is not None:
            message.text = text
        if blocks is not None:  # like Slack: leaving blocks out keeps the old ones
            message.blocks = blocks
        message.edits += 1

    def _wire(self, message: Message, identity: _Identity | None = None) -> JSON:
        wire: JSON = {
            "type": "message",
            "user": message.user,
            "text": message.text,
            "blocks": message.blocks,
            "ts": message.ts,
            "team": identity.team_id if identity else self.team_id,
        }
        if identity is not None:
            wire["bot_id"] = identity.bot_id
        if message.thread_ts is not None:
            wire["thread_ts"] = message.thread_ts
        if message.edits:
            wire["edited"] = {"user": message.user, "ts": f"{time.time():.6f}"}
        return wire

    @staticmethod
    def _text_and_blocks(params: JSON) -> tuple[str | None, list[JSON] | None]:
        text = params.get("text")
        if text is not None and not isinstance(text, str):
            text = str(text)
        if text is not None and utf16_len(text) > MAX_TEXT_UTF16:
            raise _ApiError("msg_too_long")
        blocks = _parse_blocks(params.get("blocks"))
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        return text, blocks

    # ----------------------------------------------------------------- Web API methods

    def _auth_test(self, identity: _Identity, params: JSON) -> JSON:
        return {
            "url": "https://emulator.slack.com/",
            "team": "Emulator",
            "user": "import-status-bot",
            "team_id": identity.team_id,
            "user_id": identity.user_id,
            "bot_id": identity.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel")
        channel = str(params["channel"])
        self._postable(identity, channel, "chat.postMessage")
        text, blocks = self._text_and_blocks(params)
        thread_ts = params.get("thread_ts") or None
        message = self._store(
            identity.user_id,
            channel,
            text or "",
            blocks or [],
            str(thread_ts) if thread_ts is not None else None,
            _flag(params.get("reply_broadcast")),
        )
        return {
            "channel": channel,
            "ts": message.ts,
            "message": self._wire(message, identity),
            **_warnings(fallback_warnings(text, blocks)),
        }

    def _chat_update(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "ts")
        channel, ts = str(params["channel"]), str(params["ts"])
        self._postable(identity, channel, "chat.update")
        message = self._by_ts.get((channel, ts))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        if message.user != identity.user_id:
            raise _ApiError("cant_update_message")
        text, blocks = self._text_and_blocks(params)
        self._edit(message, text, blocks)
        return {
            "channel": channel,
            "ts": ts,
            "text": message.text,
            "message": self._wire(message, identity),
            **_warnings(fallback_warnings(message.text, message.blocks)),
        }

    def _chat_delete(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "ts")
        channel, ts = str(params["channel"]), str(params["ts"])
        self._postable(identity, channel, "chat.delete")
        message = self._by_ts.get((channel, ts))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        message.deleted = True
        return {"channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "user")
        channel = str(params["channel"])
        known = self._postable(identity, channel, "chat.postEphemeral")
        if str(params["user"]) not in known.members:
            raise _ApiError("user_not_in_channel")
        text, blocks = self._text_and_blocks(params)
        thread_ts = params.get("thread_ts") or None
        ephemeral = Ephemeral(
            ts=self._new_ts(),
            channel=channel,
            user=str(params["user"]),
            text=text or "",
            blocks=blocks or [],
            thread_ts=str(thread_ts) if thread_ts is not None else None,
        )
        self._ephemerals.append(ephemeral)
        return {"message_ts": ephemeral.ts}

    def _chat_get_permalink(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "message_ts")
        channel, ts = str(params["channel"]), str(params["message_ts"])
        if (channel, ts) not in self._by_ts:
            raise _ApiError("message_not_found")
        link = f"https://emulator.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        return {"channel": channel, "permalink": link}

    def _conversations_info(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel")
        channel_id = str(params["channel"])
        state = self._channel_errors.get(channel_id)
        if state not in (None, "not_in_channel", "is_archived"):
            raise _ApiError(state or "channel_not_found")
        channel = self._channels.get(channel_id)
        member = channel is not None and identity.user_id in channel.members
        if channel is None or (channel.kind != "public" and not member):
            raise _ApiError("channel_not_found")
        archived = channel.archived or state == "is_archived"
        return {"channel": {**channel.to_json(), "is_member": member, "is_archived": archived}}

    def _conversations_open(self, identity: _Identity, params: JSON) -> JSON:
        """A direct message with one user; the bot is in it, being one end of it.

        Also when the conversation is known already (the person typed a command in it
        before the bot opened it): a DM always has its two ends as members, so what the
        bot posts or uploads there passes the membership check, as in Slack.
        """
        _required(params, "users")
        users = [u.strip() for u in str(params["users"]).split(",") if u.strip()]
        if len(users) != 1:
            raise _ApiError("not_enough_users" if not users else "too_many_users")
        user = users[0]
        channel_id = f"D{user.lstrip('UW')}"
        channel = self._channels.get(channel_id)
        if channel is None:
            channel = Channel(channel_id, "im", channel_id.lower())
            self._channels[channel_id] = channel
        channel.members.update({user, identity.user_id})
        return {"channel": {"id": channel_id, "is_im": True, "user": user}}

    # ----------------------------------------------------------------- response_url core

    def _respond(self, rid: str, payload: JSON, arrived: float) -> Response:
        """Record one response_url post and apply what Slack would show; lock held."""
        target = self._response_urls.get(rid)
        if target is None:
            return PlainTextResponse("no_service", status_code=404)
        if self.clock() - target.issued_at > RESPONSE_URL_LIFETIME_SECONDS:
            return PlainTextResponse("expired_url", status_code=404)
        if len(target.posts) >= RESPONSE_URL_MAX_POSTS:
            return PlainTextResponse("used_url", status_code=404)
        delete = _flag(payload.get("delete_original"))
        replace = _flag(payload.get("replace_original"))
        try:
            blocks = _parse_blocks(payload.get("blocks"))
        except _ApiError as e:
            return PlainTextResponse(e.error, status_code=400)
        text = payload.get("text")
        text = str(text) if text is not None else None
        if not delete and not text and not blocks:
            return PlainTextResponse("no_text", status_code=400)
        target.posts.append(payload)
        target.received_at.append(arrived)
        original = (
            self._by_ts.get((target.channel, target.message_ts))
            if target.channel and target.message_ts
            else None
        )
        ephemeral = next(
            (
                i
                for i, e in enumerate(self._ephemerals)
                if original is None and target.message_ts and e.ts == target.message_ts
            ),
            None,
        )
        if delete:
            if original is not None:
                original.deleted = True
            elif ephemeral is not None:
                del self._ephemerals[ephemeral]
        elif replace and original is not None:
            self._edit(original, text or "", blocks or [])
        elif replace and ephemeral is not None:
            # The clicked message was ephemeral: it is replaced in place, for that user.
            self._ephemerals[ephemeral] = dataclasses.replace(
                self._ephemerals[ephemeral], text=text or "", blocks=blocks or []
            )
        elif payload.get("response_type") == "in_channel" and target.channel:
            self._store(self.bot_user_id, target.channel, text or "", blocks or [], None, False)
        elif target.channel and target.user:
            self._ephemerals.append(
                Ephemeral(
                    ts=self._new_ts(),
                    channel=target.channel,
                    user=target.user,
                    text=text or "",
                    blocks=blocks or [],
                    source="response_url",
                )
            )
        return PlainTextResponse("ok")

    # ----------------------------------------------------------------- HTTP endpoints

    async def _http_api(self, request: Request) -> Response:
        method = request.path_params["method"]
        body = await request.body()
        params: JSON | None
        try:
            params = _parse_params(
                request.headers.get("content-type", ""), body, request.query_params
            )
        except (ValueError, UnicodeDecodeError):
            params = None
        arrived = time.monotonic()
        token = _bearer(request.headers.get("authorization"))
        socket_mode = self._socket_mode
        if method == "apps.connections.open" and socket_mode is not None:
            # Socket Mode's own server answers, with a ws:// URL to itself. Outside the
            # lock: that server has a lock of its own.
            answer = socket_mode.apps_connections_open(token)
            with self._lock:
                self._record(method, {}, _Outcome(answer.body, answer.status_code), arrived)
            return JSONResponse(answer.body, answer.status_code, answer.headers)
        if params is not None:
            body_token = params.pop("token", None)  # Slack also takes the token as an argument
            if token is None and isinstance(body_token, str) and body_token:
                token = body_token
            if isinstance(params.get("blocks"), str):
                # Record blocks parsed, whichever way they came; bad JSON fails later.
                with contextlib.suppress(ValueError):
                    params["blocks"] = json.loads(params["blocks"])
        with self._lock:
            delay = self._latency.get(method, self._latency.get("*", 0.0))
            if delay:
                self._held[method] = self._held.get(method, 0) + 1
        if delay:
            try:
                await asyncio.sleep(delay)  # outside the lock: other calls go on meanwhile
            finally:
                with self._lock:
                    self._held[method] = max(0, self._held.get(method, 0) - 1)
        with self._lock:
            outcome = self._call(method, token, params, arrived)
        return JSONResponse(outcome.body, outcome.status_code, outcome.headers)

    async def _http_response_url(self, request: Request) -> Response:
        arrived = time.monotonic()
        body = await request.body()
        try:
            if "json" in request.headers.get("content-type", "json"):
                payload = json.loads(body)
            else:  # Slack also takes a form field "payload" holding JSON
                payload = json.loads(dict(parse_qsl(body.decode()))["payload"])
        except (ValueError, KeyError, UnicodeDecodeError):
            return PlainTextResponse("invalid_payload", status_code=400)
        if not isinstance(payload, dict):
            return PlainTextResponse("invalid_payload", status_code=400)
        with self._lock:
            return self._respond(request.path_params["rid"], payload, arrived)

    async def _http_messages(self, request: Request) -> Response:
        channel = request.query_params.get("channel")
        thread_ts = request.query_params.get("thread_ts")
        if channel and thread_ts:
            found = self.thread(channel, thread_ts)
        elif channel:
            found = self.messages(channel)
        else:
            found = self.all_messages()
        return JSONResponse([m.to_json() for m in found])

    async def _http_ephemerals(self, request: Request) -> Response:
        found = self.ephemerals(request.query_params.get("channel"))
        return JSONResponse([dataclasses.asdict(e) for e in found])

    async def _http_requests(self, request: Request) -> Response:
        method = request.query_params.get("method")
        found = self.calls(method) if method else self.requests
        return JSONResponse([dataclasses.asdict(r) for r in found])

    async def _http_errors(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_errors()
            return JSONResponse({"ok": True})
        try:
            spec = await request.json()
            self.inject_error(**spec)
        except (ValueError, TypeError) as e:
            return JSONResponse({"ok": False, "error": str(e)}, 400)
        return JSONResponse({"ok": True})

    async def _http_channel(self, request: Request) -> Response:
        try:
            spec = await request.json()
            error = spec.get("error")
        except (ValueError, AttributeError):
            return JSONResponse({"ok": False, "error": 'expected {"error": ...}'}, 400)
        self.set_channel_state(request.path_params["channel"], error)
        return JSONResponse({"ok": True})

    async def _http_create_channel(self, request: Request) -> Response:
        """``{"kind": "public"|"private"|"im", "members": [...], "invite_bot": bool}``."""
        body = await request.body()
        try:
            spec = json.loads(body) if body else {}
            channel = self.create_channel(
                request.path_params["channel"],
                str(spec.get("kind", "public")),
                members=list(spec.get("members", [])),
                invite_bot=bool(spec.get("invite_bot", False)),
            )
        except (ValueError, TypeError, AttributeError) as e:
            return JSONResponse({"ok": False, "error": str(e)}, 400)
        return JSONResponse({"ok": True, "channel": channel.to_json()})

    async def _http_invite(self, request: Request) -> Response:
        self.invite_bot(request.path_params["channel"])
        return JSONResponse({"ok": True})

    async def _http_responses(self, request: Request) -> Response:
        try:
            return JSONResponse(self.responses(request.path_params["rid"]))
        except KeyError:
            return JSONResponse({"ok": False, "error": "unknown response_url"}, 404)

    async def _http_new_response_url(self, request: Request) -> Response:
        body = await request.body()
        try:
            spec = json.loads(body) if body else {}
            url = self.new_response_url(**spec)
        except (ValueError, TypeError) as e:
            return JSONResponse({"ok": False, "error": str(e)}, 400)
        return JSONResponse({"ok": True, "url": url, "id": _response_id(url)})

    async def _http_latency(self, request: Request) -> Response:
        try:
            spec = await request.json()
            self.set_latency(float(spec["seconds"]), spec.get("method", "*"))
        except (ValueError, TypeError, KeyError) as e:
            return JSONResponse({"ok": False, "error": str(e)}, 400)
        return JSONResponse({"ok": True})

    async def _http_revoke(self, request: Request) -> Response:
        try:
            self.revoke_token(str((await request.json())["token"]))
        except (ValueError, TypeError, KeyError) as e:
            return JSONResponse({"ok": False, "error": str(e)}, 400)
        return JSONResponse({"ok": True})

    async def _http_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"ok": True})


# --------------------------------------------------------------------------- a Slack user


class SlackUser:
    """Someone in Slack: sends signed slash commands, clicks and events to the bot over HTTP.

    ``bot_url`` is the bot's request URL, e.g. ``http://127.0.0.1:8123/slack/events``.
    Responses the bot sends to the response_url land in ``emulator``.
    """

    def __init__(
        self,
        bot_url: str,
        signing_secret: str,
        emulator: SlackEmulator,
        team_id: str = DEFAULT_TEAM_ID,
        channel_id: str = "C0001",
        user_id: str = "U0001",
    ) -> None:
        self.bot_url = bot_url
        self.signing_secret = signing_secret
        self.emulator = emulator
        self.team_id = team_id
        self.channel_id = channel_id
        self.user_id = user_id
        # Idle connections are dropped well before the bot's server drops them (uvicorn:
        # after 5 s): reusing one just as the server closes it fails with a reset.
        self._http = httpx.Client(timeout=30, limits=httpx.Limits(keepalive_expiry=1.0))

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SlackUser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(
        self,
        body: bytes,
        content_type: str,
        response_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        timestamp: int | None = None,
    ) -> CommandResult:
        """POST a signed body to the bot and time the acknowledgement."""
        all_headers = {
            "Content-Type": content_type,
            **sign_request(self.signing_secret, body, timestamp),
        }
        all_headers.update(headers or {})
        started = time.perf_counter()
        answer = self._http.post(self.bot_url, content=body, headers=all_headers)
        elapsed = time.perf_counter() - started
        ack_body: Any = None
        if answer.content:
            try:
                ack_body = answer.json()
            except ValueError:
                ack_body = answer.text
        error, problems = _ack_problems(elapsed, ack_body)
        result = CommandResult(
            answer.status_code, elapsed, ack_body, response_url, error, tuple(problems)
        )
        if error == DISPATCH_FAILED:
            self.emulator._record_dispatch_failure(result)
        return result

    def command(
        self,
        text: str,
        *,
        headers: Mapping[str, str] | None = None,
        timestamp: int | None = None,
        **overrides: Any,
    ) -> CommandResult:
        """Send a slash command (``/import-status`` unless ``command=`` says otherwise).

        ``overrides`` go to ``slash_command_body`` (``channel_id``, ``user_id``, ...);
        ``headers`` are added after signing (e.g. ``X-Slack-Retry-Num``).
        """
        fields: JSON = {
            "team_id": self.team_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            **overrides,
        }
        # The person types in a channel Slack knows, and is in it; the bot may not be.
        self.emulator.ensure_channel(fields["channel_id"], member=fields["user_id"])
        if "response_url" not in fields:
            fields["response_url"] = self.emulator.new_response_url(
                channel=fields["channel_id"], user=fields["user_id"]
            )
        if "trigger_id" not in fields:
            fields["trigger_id"] = self.emulator.views.issue_trigger_id(fields["user_id"])
        body = slash_command_body(text, **fields)
        return self.send(
            body,
            "application/x-www-form-urlencoded",
            fields["response_url"],
            headers,
            timestamp,
        )

    def click(
        self,
        action_id: str,
        value: str,
        message_ts: str,
        *,
        headers: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> CommandResult:
        """Click a button on the message at ``message_ts`` (the stored message goes along)."""
        fields: JSON = {
            "team_id": self.team_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            **overrides,
        }
        channel = fields["channel_id"]
        self.emulator.ensure_channel(channel, member=fields["user_id"])
        if "message" not in fields:
            stored = self.emulator.message(channel, message_ts)
            if stored is not None:
                fields["message"] = {
                    "type": "message",
                    "ts": stored.ts,
                    "text": stored.text,
                    "blocks": stored.blocks,
                    "user": stored.user,
                    **({"thread_ts": stored.thread_ts} if stored.thread_ts else {}),
                }
        if "response_url" not in fields:
            fields["response_url"] = self.emulator.new_response_url(
                channel=channel, message_ts=message_ts, user=fields["user_id"]
            )
        body = block_action_body(action_id, value, message_ts=message_ts, **fields)
        return self.send(body, "application/x-www-form-urlencoded", fields["response_url"], headers)

    def event(self, event: JSON, **overrides: Any) -> CommandResult:
        """Deliver an Events API event (``overrides`` go to ``event_body``)."""
        overrides.setdefault("team_id", self.team_id)
        return self.send(event_body(event, **overrides), "application/json")

    def wait_response(self, result: CommandResult, timeout: float = 5) -> JSON:
        """The first body the bot posted to the result's response_url, waiting if needed."""
        if result.response_url is None:
            raise ValueError("this request had no response_url")
        url = result.response_url

        def first() -> JSON | None:
            posts = self.emulator.responses(url)
            return posts[0] if posts else None

        return wait_for(first, timeout, description=f"a post to {url}")

    # ----------------------------------------------------------------- views (slack_views.py)

    def submit_view(
        self, view_id: str, chosen: JSON | None = None, *, forged: bool = False
    ) -> Submission:
        """Fill in an open modal (block id → choice) and press Submit; see slack_views."""
        return submit_view(self, view_id, chosen, forged=forged)

    def open_home(self) -> CommandResult:
        """Open the app's Home tab: Slack sends ``app_home_opened``."""
        current = self.emulator.views.home(self.user_id, self.team_id)
        return self.event(home_opened_event(self.user_id, current))

    def click_in_view(self, view_id: str, action_id: str, value: str) -> CommandResult:
        """Click a button in a view (a Home tab or a modal)."""
        stored = self.emulator.views.view(view_id)
        if stored is None:
            raise ValueError(f"no view {view_id}")
        body = view_action_body(self, stored, action_id, value)
        return self.send(body, "application/x-www-form-urlencoded")


def _view_method(
    handler: Callable[[str, JSON], JSON],
) -> Callable[[_Identity, JSON], JSON]:
    """A views.* handler of slack_views as one of the emulator's Web API methods."""

    def method(identity: _Identity, params: JSON) -> JSON:
        try:
            return handler(identity.team_id, params)
        except ViewError as e:
            raise _ApiError(e.error, **e.extra) from None

    return method


# --------------------------------------------------------------------------- in Socket Mode


class SocketModeUser:
    """Someone in Slack whose commands, clicks and events reach the bot over Socket Mode.

    The same calls as ``SlackUser``, but each request goes as an envelope on the bot's
    WebSocket (``server``) and its acknowledgement comes back on it: within 3 s, or the
    user sees ``dispatch_failed``. Answers sent to the response_url land in ``emulator``.
    """

    def __init__(
        self,
        server: SocketModeServer,
        emulator: SlackEmulator,
        team_id: str = DEFAULT_TEAM_ID,
        channel_id: str = "C0001",
        user_id: str = "U0001",
    ) -> None:
        self.server = server
        self.emulator = emulator
        self.team_id = team_id
        self.channel_id = channel_id
        self.user_id = user_id

    def __enter__(self) -> SocketModeUser:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _settle(self, envelope_id: str, response_url: str | None) -> CommandResult:
        envelope = self.server.wait_outcome(envelope_id, timeout=ACK_DEADLINE_SECONDS + 2)
        ack = envelope.ack
        if envelope.outcome != "acked" or ack is None:
            result = CommandResult(0, ACK_DEADLINE_SECONDS, None, response_url, DISPATCH_FAILED)
            self.emulator._record_dispatch_failure(result)
            return result
        error, problems = _ack_problems(ack.seconds, ack.payload)
        return CommandResult(200, ack.seconds, ack.payload, response_url, error, tuple(problems))

    def command(self, text: str, **overrides: Any) -> CommandResult:
        """Send ``/import-status text`` (``overrides``: channel_id, user_id, team_id...)."""
        fields: JSON = {
            "team_id": self.team_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            **overrides,
        }
        self.emulator.ensure_channel(fields["channel_id"], member=fields["user_id"])
        response_url = fields.pop("response_url", None) or self.emulator.new_response_url(
            channel=fields["channel_id"], user=fields["user_id"]
        )
        envelope_id = self.server.push_command(text, response_url=response_url, **fields)
        return self._settle(envelope_id, response_url)

    def click(self, action_id: str, value: str, message_ts: str, **overrides: Any) -> CommandResult:
        """Click a button on the message at ``message_ts`` (the stored message goes along)."""
        fields: JSON = {
            "team_id": self.team_id,
            "channel_id": self.channel_id,
            "user_id": self.user_id,
            **overrides,
        }
        channel = fields["channel_id"]
        self.emulator.ensure_channel(channel, member=fields["user_id"])
        stored = self.emulator.message(channel, message_ts)
        if stored is not None and "message" not in fields:
            fields["message"] = {
                "type": "message",
                "ts": stored.ts,
                "text": stored.text,
                "blocks": stored.blocks,
                "user": stored.user,
            }
        response_url = self.emulator.new_response_url(
            channel=channel, message_ts=message_ts, user=fields["user_id"]
        )
        envelope_id = self.server.push_block_action(
            action_id, value, message_ts=message_ts, response_url=response_url, **fields
        )
        return self._settle(envelope_id, response_url)

    def event(self, event: JSON, **overrides: Any) -> CommandResult:
        """Deliver an Events API event (``overrides`` go to ``event_callback_payload``)."""
        overrides.setdefault("team_id", self.team_id)
        return self._settle(self.server.push_event(event, **overrides), None)

    def wait_response(self, result: CommandResult, timeout: float = 5) -> JSON:
        """The first body the bot posted to the result's response_url, waiting if needed."""
        if result.response_url is None:
            raise ValueError("this request had no response_url")
        url = result.response_url

        def first() -> JSON | None:
            posts = self.emulator.responses(url)
            return posts[0] if posts else None

        return wait_for(first, timeout, description=f"a post to {url}")
