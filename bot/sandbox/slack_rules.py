"""Slack's rules the emulator enforces: scopes per method, rate limits, the installed scopes.

Scopes: each Web API method lists the scopes a token needs ("Required scopes" on
its reference page, e.g. https://docs.slack.dev/reference/methods/chat.postMessage);
without one Slack answers ``missing_scope`` with ``needed`` and ``provided``. The
scopes a bot token holds are those its app asked for when installed: the
``oauth_config.scopes.bot`` list of ``manifest.yml``, read as it is today, so a
scope added there is granted here too.

Rate limits (https://docs.slack.dev/apis/web-api/rate-limits): "per API method
per app per workspace", by tier (Tier 3: 50+ a minute, Tier 4: 100+, "sporadic
bursts are welcome"); chat.postMessage is special, "one message per second per
channel", "short bursts >1 allowed". Beyond a limit Slack answers HTTP 429 with a
``Retry-After`` header in whole seconds and ``{"ok": false, "error": "ratelimited"}``.
Each limit here is a token bucket: ``burst`` calls at once, refilled at ``per_minute``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# ---------------------------------------------------------------- scopes

#: The bot-token scopes each emulated method needs: any one of them will do. Methods
#: not listed need none (auth.test, chat.getPermalink, views.*).
METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "chat.delete": ("chat:write",),
    "chat.postEphemeral": ("chat:write",),
    # conversations.info and .open need the scope for the kind of conversation.
    "conversations.info": ("channels:read", "groups:read", "im:read", "mpim:read"),
    "conversations.open": ("im:write", "mpim:write", "channels:manage", "groups:write"),
    "users.info": ("users:read",),
    "files.getUploadURLExternal": ("files:write",),
    "files.completeUploadExternal": ("files:write",),
}
#: The scope that lets chat.postMessage post in a public channel the bot is not in
#: (https://docs.slack.dev/reference/scopes/chat.write.public).
POST_ANYWHERE = "chat:write.public"
#: The scope each kind of conversation needs for conversations.info / .open.
READ_SCOPE = {"public": "channels:read", "private": "groups:read", "im": "im:read"}
OPEN_SCOPE = {"im": "im:write", "private": "groups:write", "public": "channels:manage"}

MANIFEST = Path(__file__).resolve().parents[2] / "manifest.yml"


def manifest_scopes(path: Path = MANIFEST) -> frozenset[str] | None:
    """The bot scopes ``manifest.yml`` asks for; None when there is no manifest.

    (A wheel installed without the repository has none: the emulator then checks
    no scopes.) PyYAML reads it when installed; otherwise a small reader of the
    ``oauth_config: scopes: bot:`` list, which is all this needs.
    """
    if not path.is_file():
        return None
    text = path.read_text()
    try:
        import yaml
    except ImportError:
        return frozenset(_bot_scopes_by_hand(text))
    loaded = yaml.safe_load(text) or {}
    scopes = ((loaded.get("oauth_config") or {}).get("scopes") or {}).get("bot") or []
    return frozenset(str(s) for s in scopes)


def _bot_scopes_by_hand(text: str) -> list[str]:
    """``oauth_config.scopes.bot`` of a block-style YAML manifest, comments ignored."""
    path: list[tuple[int, str]] = []
    scopes: list[str] = []
    for line in text.splitlines():
        content = line.split("#", 1)[0].rstrip()
        if not content.strip():
            continue
        indent = len(content) - len(content.lstrip())
        item = re.fullmatch(r"\s*-\s*(\S+)", content)
        if item:
            if [k for _, k in path] == ["oauth_config", "scopes", "bot"]:
                scopes.append(item.group(1).strip("'\""))
            continue
        key = re.fullmatch(r"\s*([\w-]+):.*", content)
        if key:
            while path and path[-1][0] >= indent:
                path.pop()
            path.append((indent, key.group(1)))
    return scopes


def missing_scope(
    method: str, granted: frozenset[str] | None, kind: str | None = None
) -> str | None:
    """The scope ``method`` needs and the token lacks (for a conversation of ``kind``)."""
    if granted is None:
        return None
    if method == "conversations.info" and kind in READ_SCOPE:
        needed: tuple[str, ...] = (READ_SCOPE[kind],)
    elif method == "conversations.open" and kind in OPEN_SCOPE:
        needed = (OPEN_SCOPE[kind],)
    else:
        needed = METHOD_SCOPES.get(method, ())
    if not needed or granted.intersection(needed):
        return None
    return needed[0]


# ---------------------------------------------------------------- rate limits


@dataclass(frozen=True)
class Limit:
    """``per_minute`` calls a minute with bursts of ``burst``, counted per workspace
    (``per="workspace"``) or per channel of a workspace (``per="channel"``)."""

    per_minute: float
    burst: float
    per: str = "workspace"


TIER_2 = Limit(20, 20)
TIER_3 = Limit(50, 50)
TIER_4 = Limit(100, 100)
#: "One message per second per channel", short bursts allowed.
POST_MESSAGE = Limit(60, 5, per="channel")

RATE_LIMITS: dict[str, Limit] = {
    "chat.postMessage": POST_MESSAGE,
    "chat.update": TIER_3,
    "chat.delete": TIER_3,
    "chat.postEphemeral": TIER_4,
    "chat.getPermalink": TIER_4,
    "conversations.info": TIER_3,
    "conversations.open": TIER_3,
    "users.info": TIER_4,
    "files.getUploadURLExternal": TIER_4,
    "files.completeUploadExternal": TIER_4,
}


class Buckets:
    """Token buckets, one per (method, workspace[, channel]); ``take`` answers a wait or 0."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._state: dict[tuple[str, ...], tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, method: str, limit: Limit, team: str, channel: str | None) -> int:
        """Spend one call; 0 when allowed, else the whole seconds Slack says to wait."""
        key = (method, team, channel or "") if limit.per == "channel" else (method, team)
        now = self.clock()
        tokens, at = self._state.get(key, (limit.burst, now))
        rate = limit.per_minute / 60.0
        tokens = min(limit.burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._state[key] = (tokens - 1.0, now)
            return 0
        self._state[key] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))

    def clear(self) -> None:
        self._state.clear()
