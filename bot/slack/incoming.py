"""What the bot accepts from Slack: a signed request, a body Bolt can read, Slack's own URLs.

Bolt parses a body before it checks the signature, and routes it assuming
Slack's shapes (``event`` is an object, ``actions`` a list of objects...): a
body too deep for ``json`` or of another shape made it raise, which became a
500 and a traceback. So the HTTP route checks here first, in this order, and
refuses anything else with a 4xx and one log line:

1. the signature (``signature_problem``), before any parsing, so an unsigned
   body is never parsed at all;
2. the body (``body_problem``): UTF-8, parsed the way Bolt parses it, not
   nested deeper than any Slack payload, and of the shape Bolt and our
   listeners read.

``response_url_problem`` keeps the bot from posting anywhere but Slack.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

# Slack refuses requests older than five minutes; so do we (replays).
MAX_CLOCK_SKEW_SECONDS = 300
# Slack payloads nest about ten levels (a message's blocks inside a block action);
# anything far deeper is not one.
MAX_DEPTH = 64
# The host Slack's response URLs live on (besides SLACK_API_URL's own).
SLACK_RESPONSE_HOST = "hooks.slack.com"

# What no URL of Slack's holds (``\s`` is str.isspace's whitespace). One regex search
# instead of a generator over every character: this runs for every command.
_SPACE_OR_BACKSLASH = re.compile(r"[\s\\]")

# Fields Bolt and our listeners read as a Slack id, or an object carrying one.
_ID_OR_OBJECT = frozenset({"team", "user", "channel", "enterprise"})
# Fields read as objects (``event`` is never null: Bolt calls ``.get`` on it).
_OBJECTS = frozenset(
    {
        "event",
        "view",
        "message",
        "previous_message",
        "item",
        "assistant_thread",
        "function_data",
        "container",
        "state",
        "tokens",
        "workflow_step",
    }
)
# Fields read as text wherever they are: compared, hashed into sets, split or shown.
_TEXTS = frozenset(
    {
        "type",
        "subtype",
        "command",
        "team_id",
        "channel_id",
        "user_id",
        "enterprise_id",
        "callback_id",
        "trigger_id",
        "response_url",
        "api_app_id",
        "event_id",
        "action_id",
        "block_id",
        "value",
        "thread_ts",
        "user_team",
        "channel_type",
        "tab",
    }
)
# Read as text only at the top (a slash command's text); elsewhere Slack nests objects
# under the same name (a button's ``text`` is a plain_text object).
_TOP_LEVEL_TEXTS = frozenset({"text"})
# Fields read as lists of objects (``actions`` is never empty: Bolt takes the first).
_OBJECT_LISTS = frozenset({"authorizations", "actions", "response_urls"})


def id_of(value: object) -> str:
    """The id in a field Slack sends as an id or as an object holding one (``team``...)."""
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else ""


def signature_problem(
    signing_secret: str, body: bytes, timestamp: str | None, signature: str | None, now: float
) -> str | None:
    """Why the request is not signed by Slack with ``signing_secret``, or None when it is."""
    if not timestamp or not signature:
        return "no signature"
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return "a malformed timestamp"
    if abs(now - int(timestamp)) > MAX_CLOCK_SKEW_SECONDS:
        return "a stale timestamp"
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
        return "a wrong signature"
    return None


def is_ssl_check(body: bytes) -> bool:
    """Slack's certificate check (``ssl_check=1``): answered 200 before any check, as Bolt does."""
    if len(body) > 1024:
        return False
    fields = dict(parse_qsl(body.decode("ascii", "replace"), keep_blank_values=True))
    return fields.get("ssl_check") == "1"


def body_problem(body: bytes, content_type: str | None) -> str | None:
    """Why Bolt could not read this (signed) body, or None when it can."""
    return read_body(body, content_type)[1]


def read_body(body: bytes, content_type: str | None) -> tuple[dict[str, Any], str | None]:
    """The (signed) body as Bolt reads it, and why Bolt could not read it (None when it can).

    The body is parsed once here; the slash command's fast path (``quick_ack.py``)
    goes on with this parse. When there is a problem the dict is empty.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}, "the body is not UTF-8"
    try:
        parsed = _parse_like_bolt(text, content_type)
    except RecursionError:
        return {}, "the body is nested too deeply"
    except ValueError:
        return {}, "the body is not valid JSON"
    if not isinstance(parsed, dict):
        return {}, "the body is not an object"
    if _depth(parsed) > MAX_DEPTH:
        return {}, "the body is nested too deeply"
    problem = _shape_problem(parsed, "body")
    return ({}, problem) if problem else (parsed, None)


def response_url_problem(body: dict[str, Any], slack_api_url: str) -> str | None:
    """Why a response URL in ``body`` is not Slack's, or None when every one is.

    Slack's are on https://hooks.slack.com/; the SLACK_API_URL host (the
    emulator's, in tests and the demo) is accepted too.
    """
    api = urlsplit(slack_api_url)
    for url in _response_urls(body):
        if not _is_slack_url(url, api.scheme, api.hostname, api.port):
            return "a response_url that is not on Slack's host"
    return None


def _parse_like_bolt(text: str, content_type: str | None) -> object:
    """The body as ``slack_bolt.request.internals.parse_body`` reads it."""
    if not text:
        return {}
    media_type = (content_type or "").split(";")[0]
    if media_type == "application/json" or text.startswith("{"):
        return json.loads(text)
    if "payload" in text:
        payload = dict(parse_qsl(text, keep_blank_values=True)).get("payload")
        return json.loads(payload) if payload is not None else {}
    return dict(parse_qsl(text, keep_blank_values=True))


def _depth(value: object) -> int:
    """How deep lists and objects nest in ``value`` (without recursion)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_DEPTH:
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _shape_problem(node: dict[str, Any], where: str) -> str | None:
    """The first field of ``node`` (and of the objects it holds) not of Slack's shape."""
    for key, value in node.items():
        path = f"{where}.{key}"
        if key in _TEXTS or (where == "body" and key in _TOP_LEVEL_TEXTS):
            if value is not None and not isinstance(value, str):
                return f"{path} is not text"
        elif key in _ID_OR_OBJECT:
            if isinstance(value, dict):
                problem = _shape_problem(value, path)
                if problem:
                    return problem
            elif value is not None and not isinstance(value, str):
                return f"{path} is neither an id nor an object"
        elif key in _OBJECTS:
            if value is None and key != "event":
                continue
            if not isinstance(value, dict):
                return f"{path} is not an object"
            problem = _shape_problem(value, path)
            if problem:
                return problem
        elif key in _OBJECT_LISTS:
            if not isinstance(value, list) or (key == "actions" and not value):
                return f"{path} is not a list of objects"
            for index, item in enumerate(value):
                if not isinstance(item, dict):
                    return f"{path}[{index}] is not an object"
                problem = _shape_problem(item, f"{path}[{index}]")
                if problem:
                    return problem
    if where == "body" and node.get("type") == "block_actions":
        if "actions" not in node:
            return "body.actions is missing"
        if not all(isinstance(a.get("action_id"), str) for a in node["actions"]):
            return "body.actions has an action without an action_id"
    return None


def _response_urls(body: dict[str, Any]) -> Iterator[str]:
    url = body.get("response_url")
    if isinstance(url, str):
        yield url
    for item in body.get("response_urls") or []:
        if isinstance(item, dict) and isinstance(item.get("response_url"), str):
            yield item["response_url"]


def _is_slack_url(url: str, api_scheme: str, api_host: str | None, api_port: int | None) -> bool:
    if not url.isascii() or _SPACE_OR_BACKSLASH.search(url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.username is not None or parts.password is not None:
        return False
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host == SLACK_RESPONSE_HOST and port in (None, 443):
        return True
    return (
        parts.scheme == api_scheme
        and api_host is not None
        and host == api_host.lower()
        and port == api_port
    )
