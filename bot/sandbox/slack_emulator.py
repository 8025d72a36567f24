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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot.sandbox.devserver import ServerThread

JSON = dict[str, Any]
T = TypeVar("T")

DEFAULT_BOT_TOKEN = "xoxb-emulator-token"
DEFAULT_TEAM_ID = "T0001"
DEFAULT_BOT_USER_ID = "UBOT"
DEFAULT_API_APP_ID = "A0001"
# Slack's documented limit on posts to one response_url.
RESPONSE_URL_MAX_POSTS = 5
# First message ts; each message adds 100 µs, so ts strings stay unique and increasing.
_FIRST_TS_MICROS = 1_790_000_000_000_100
_TS_STEP_MICROS = 100

# Block Kit limits Slack enforces with ``invalid_blocks``; checking them here catches
# messages that would be rejected in production.
_MAX_BLOCKS = 50
_MAX_TEXT_CHARS = 40_000
_SECTION_TEXT_MAX = 3000
_SECTION_FIELD_MAX = 2000
_SECTION_FIELDS_MAX = 10
_HEADER_TEXT_MAX = 150
_CONTEXT_ELEMENTS_MAX = 10
_ACTIONS_ELEMENTS_MAX = 25
_BUTTON_TEXT_MAX = 75
_ACTION_ID_MAX = 255
_BUTTON_VALUE_MAX = 2000
_BLOCK_ID_MAX = 255


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


@dataclass(frozen=True)
class CommandResult:
    """What the bot answered to a signed request (slash command, click or event)."""

    status_code: int
    ack_seconds: float
    ack_body: Any  # parsed JSON, text, or None for an empty body
    response_url: str | None


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
    problems = _block_problems(raw)
    if problems:
        raise _ApiError("invalid_blocks", errors=problems, response_metadata={"messages": problems})
    return raw


def _text_problem(obj: Any, pointer: str, limit: int, plain_only: bool = False) -> str | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return f"[ERROR] must be a text object [json-pointer:{pointer}]"
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    if obj.get("type") not in allowed:
        return f"[ERROR] must be one of {', '.join(allowed)} [json-pointer:{pointer}/type]"
    if not 1 <= len(obj["text"]) <= limit:
        return f"[ERROR] must be 1 to {limit} characters [json-pointer:{pointer}/text]"
    return None


def _block_problems(blocks: list[Any]) -> list[str]:
    """The Block Kit rules Slack enforces that a status message can break."""
    problems: list[str] = []
    if len(blocks) > _MAX_BLOCKS:
        problems.append(f"[ERROR] no more than {_MAX_BLOCKS} items allowed [json-pointer:]")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"[ERROR] a block needs a type [json-pointer:{where}]")
            continue
        found: list[str | None] = [
            _id_problem(block.get("block_id"), block_ids, _BLOCK_ID_MAX, f"{where}/block_id")
        ]
        kind = block["type"]
        if kind == "section":
            fields = block.get("fields")
            if "text" not in block and not fields:
                found.append(f"[ERROR] a section needs text or fields [json-pointer:{where}]")
            if "text" in block:
                found.append(_text_problem(block["text"], f"{where}/text", _SECTION_TEXT_MAX))
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > _SECTION_FIELDS_MAX:
                    found.append(f"[ERROR] at most 10 fields [json-pointer:{where}/fields]")
                else:
                    found.extend(
                        _text_problem(f, f"{where}/fields/{j}", _SECTION_FIELD_MAX)
                        for j, f in enumerate(fields)
                    )
        elif kind == "header":
            found.append(_text_problem(block.get("text"), f"{where}/text", _HEADER_TEXT_MAX, True))
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= _CONTEXT_ELEMENTS_MAX:
                found.append(f"[ERROR] 1 to 10 elements [json-pointer:{where}/elements]")
        elif kind == "actions":
            found.extend(_actions_problems(block.get("elements"), where))
        problems.extend(p for p in found if p)
    return problems


def _id_problem(value: Any, seen: set[str], longest: int, pointer: str) -> str | None:
    """A block_id or action_id must be a short string, unique within its message/block."""
    if value is None:
        return None
    name = pointer.rsplit("/", 1)[-1]
    if not isinstance(value, str) or len(value) > longest:
        return f"[ERROR] invalid {name} [json-pointer:{pointer}]"
    if value in seen:
        return f"[ERROR] duplicate {name} [json-pointer:{pointer}]"
    seen.add(value)
    return None


def _actions_problems(elements: Any, where: str) -> list[str | None]:
    if not isinstance(elements, list) or not 1 <= len(elements) <= _ACTIONS_ELEMENTS_MAX:
        return [f"[ERROR] 1 to {_ACTIONS_ELEMENTS_MAX} elements [json-pointer:{where}/elements]"]
    found: list[str | None] = []
    action_ids: set[str] = set()
    for j, element in enumerate(elements):
        at = f"{where}/elements/{j}"
        if not isinstance(element, dict) or element.get("type") != "button":
            continue  # only buttons are checked in detail
        found.append(_text_problem(element.get("text"), f"{at}/text", _BUTTON_TEXT_MAX, True))
        found.append(
            _id_problem(element.get("action_id"), action_ids, _ACTION_ID_MAX, f"{at}/action_id")
        )
        value = element.get("value")
        if value is not None and (not isinstance(value, str) or len(value) > _BUTTON_VALUE_MAX):
            found.append(f"[ERROR] value too long [json-pointer:{at}/value]")
        if element.get("style") not in (None, "primary", "danger"):
            found.append(f"[ERROR] style must be primary or danger [json-pointer:{at}/style]")
    return found


def _required(params: JSON, *names: str) -> None:
    missing = [n for n in names if params.get(n) in (None, "")]
    if missing:
        messages = [f"[ERROR] missing required field: {n}" for n in missing]
        raise _ApiError("invalid_arguments", response_metadata={"messages": messages})


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
    """

    def __init__(
        self,
        bot_token: str = DEFAULT_BOT_TOKEN,
        team_id: str = DEFAULT_TEAM_ID,
        bot_user_id: str = DEFAULT_BOT_USER_ID,
    ) -> None:
        self.bot_token = bot_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self._lock = threading.Lock()
        self._url: str | None = None
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
        }
        self.app = Starlette(
            routes=[
                Route("/api/{method}", self._http_api, methods=["GET", "POST"]),
                Route("/response/{rid}", self._http_response_url, methods=["POST"]),
                Route("/_emulator/messages", self._http_messages, methods=["GET"]),
                Route("/_emulator/ephemerals", self._http_ephemerals, methods=["GET"]),
                Route("/_emulator/requests", self._http_requests, methods=["GET"]),
                Route("/_emulator/errors", self._http_errors, methods=["POST", "DELETE"]),
                Route("/_emulator/channels/{channel}", self._http_channel, methods=["PUT"]),
                Route("/_emulator/responses/{rid}", self._http_responses, methods=["GET"]),
                Route("/_emulator/response_urls", self._http_new_response_url, methods=["POST"]),
                Route("/_emulator/latency", self._http_latency, methods=["PUT"]),
                Route("/_emulator/revoke", self._http_revoke, methods=["POST"]),
                Route("/_emulator/reset", self._http_reset, methods=["POST"]),
            ]
        )

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
        """Forget messages, requests, responses and injected failures; revoked tokens work again."""
        with self._lock:
            self._reset_state()

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
            self._response_urls[rid] = _ResponseUrl(rid, channel, message_ts, user)
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
        error = outcome.body.get("error")
        self._requests.append(
            ApiRequest(
                at=arrived,
                method=method,
                params=params or {},
                ok=bool(outcome.body.get("ok")),
                error=error if isinstance(error, str) else None,
                status_code=outcome.status_code,
            )
        )
        return outcome

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
        injected = self._take_injected(method, params.get("channel"))
        if injected is not None:
            return injected
        try:
            return _Outcome({"ok": True, **handler(identity, params)})
        except _ApiError as e:
            return _Outcome({"ok": False, "error": e.error, **e.extra})

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

    def _check_channel(self, channel: str) -> None:
        error = self._channel_errors.get(channel)
        if error:
            raise _ApiError(error)

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
        if text is not None and len(text) > _MAX_TEXT_CHARS:
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
        self._check_channel(channel)
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
        return {"channel": channel, "ts": message.ts, "message": self._wire(message, identity)}

    def _chat_update(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "ts")
        channel, ts = str(params["channel"]), str(params["ts"])
        self._check_channel(channel)
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
        }

    def _chat_delete(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "ts")
        channel, ts = str(params["channel"]), str(params["ts"])
        self._check_channel(channel)
        message = self._by_ts.get((channel, ts))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        message.deleted = True
        return {"channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, identity: _Identity, params: JSON) -> JSON:
        _required(params, "channel", "user")
        channel = str(params["channel"])
        self._check_channel(channel)
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
        channel = str(params["channel"])
        state = self._channel_errors.get(channel)
        if state not in (None, "not_in_channel", "is_archived"):
            raise _ApiError(state or "channel_not_found")
        return {
            "channel": {
                "id": channel,
                "name": channel.lower(),
                "is_channel": True,
                "is_private": False,
                "is_archived": state == "is_archived",
                "is_member": state is None,
                "created": 1_700_000_000,
            }
        }

    # ----------------------------------------------------------------- response_url core

    def _respond(self, rid: str, payload: JSON, arrived: float) -> Response:
        """Record one response_url post and apply what Slack would show; lock held."""
        target = self._response_urls.get(rid)
        if target is None:
            return PlainTextResponse("no_service", status_code=404)
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
        if delete:
            if original is not None:
                original.deleted = True
        elif replace and original is not None:
            self._edit(original, text or "", blocks or [])
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
        return CommandResult(answer.status_code, elapsed, ack_body, response_url)

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
        if "response_url" not in fields:
            fields["response_url"] = self.emulator.new_response_url(
                channel=fields["channel_id"], user=fields["user_id"]
            )
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
