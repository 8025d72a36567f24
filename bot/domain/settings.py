"""A channel's settings: the one place that knows each key, its values and their wording.

``/import-status set KEY VALUE``, the settings modal and the database all go
through ``parse_setting`` and ``ChannelSettings.value_text``, so a value that
one of them accepts means the same everywhere. Pure: no I/O beyond reading
the IANA time zone names that ``zoneinfo`` ships.

The defaults are the bot's behaviour before channels had settings: broadcast
finished imports, milestones on, mention the subscriber, no alert channel,
full cards, no digest, exceptions as ``EXCEPTIONS_FILE`` says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import time
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from bot.domain.exceptions import ExceptionsFile

KEYS = ("broadcast", "milestones", "mention", "alerts", "compact", "digest", "exceptions")
#: What ``set KEY VALUE`` accepts for each key, as the usage line and errors show it.
ALLOWED: dict[str, str] = {
    "broadcast": "`all`, `finish`, `failures` or `none`",
    "milestones": "`on` or `off`",
    "mention": "`subscriber`, a person (`@name`), a user group (`@group`) or `none`",
    "alerts": "a channel (`#channel`) or `off`",
    "compact": "`on` or `off`",
    "digest": "a time and an IANA time zone such as `09:00 Europe/Paris`, or `off`",
    "exceptions": "`redacted`, `full`, `none` or `default`",
}
#: What each key does, in a few words (the settings message and the modal).
MEANING: dict[str, str] = {
    "broadcast": "which events are also posted to the channel",
    "milestones": "replies at 25, 50 and 75 % progress",
    "mention": "who is mentioned on broadcasts",
    "alerts": "another channel that also gets failures and expiry warnings",
    "compact": "one-line cards and replies",
    "digest": "a daily summary at this local time",
    "exceptions": "what an exceptions archive puts into Slack",
}

_MAX_VALUE_LENGTH = 120
_USER_ID = r"[UW][A-Z0-9]{2,30}"
_GROUP_ID = r"S[A-Z0-9]{2,30}"
_CHANNEL_ID = r"[CG][A-Z0-9]{2,30}"
# Labels Slack adds after "|" in escaped mentions; kept for display, never trusted.
_LABEL = r"[^<>|]{0,80}"
_USER_MENTION = re.compile(rf"<@({_USER_ID})(?:\|({_LABEL}))?>")
_GROUP_MENTION = re.compile(rf"<!subteam\^({_GROUP_ID})(?:\|({_LABEL}))?>")
_CHANNEL_MENTION = re.compile(rf"<#({_CHANNEL_ID})(?:\|({_LABEL}))?>")
_TIME = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")
_ZONE_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(?:/[A-Za-z0-9_+\-]+){0,2}")


class InvalidSetting(ValueError):
    """A key or value the bot does not accept; the message says what would be accepted.

    The message is mrkdwn written by the bot; the offending text is not repeated in
    it (it came from outside), so it can be shown as is.
    """


class Broadcast(StrEnum):
    ALL = "all"  # every transition
    FINISH = "finish"  # Completed, Failed, the expiry warning and expiry (the default)
    FAILURES = "failures"  # Failed, expiry, and Completed with failures above 0
    NONE = "none"  # thread only


class MentionKind(StrEnum):
    SUBSCRIBER = "subscriber"
    USER = "user"
    GROUP = "group"
    NONE = "none"


@dataclass(frozen=True)
class Mention:
    """Who a broadcast mentions. ``label`` is Slack's display name, for showing only."""

    kind: MentionKind = MentionKind.SUBSCRIBER
    id: str | None = None
    label: str | None = None

    def text(self) -> str:
        """The canonical value (what is stored and what ``parse_setting`` reads back)."""
        if self.kind is MentionKind.USER:
            return f"<@{self.id}|{self.label}>" if self.label else f"<@{self.id}>"
        if self.kind is MentionKind.GROUP:
            return f"<!subteam^{self.id}|{self.label}>" if self.label else f"<!subteam^{self.id}>"
        return self.kind.value

    def markup(self, subscriber_id: str) -> str | None:
        """The mrkdwn that mentions (and notifies) the target; None for nobody."""
        if self.kind is MentionKind.SUBSCRIBER:
            return f"<@{subscriber_id}>" if re.fullmatch(_USER_ID, subscriber_id) else None
        if self.kind is MentionKind.USER:
            return f"<@{self.id}>"
        if self.kind is MentionKind.GROUP:
            return f"<!subteam^{self.id}>"
        return None


SUBSCRIBER = Mention()


@dataclass(frozen=True)
class Digest:
    """A daily digest at ``at`` local time in the IANA zone ``zone``."""

    at: time
    zone: str

    def text(self) -> str:
        return f"{self.at:%H:%M} {self.zone}"


@dataclass(frozen=True)
class ChannelSettings:
    """Everything a channel has chosen; the defaults are the bot's original behaviour."""

    broadcast: Broadcast = Broadcast.FINISH
    milestones: bool = True
    mention: Mention = SUBSCRIBER
    alerts: str | None = None  # a channel id
    compact: bool = False
    digest: Digest | None = None
    exceptions: ExceptionsFile | None = None  # None: EXCEPTIONS_FILE decides

    def value_text(self, key: str) -> str:
        """The value of ``key`` as ``set`` would accept it (``parse_setting`` reads it back)."""
        value = getattr(self, _known(key))
        if key in ("milestones", "compact"):
            return "on" if value else "off"
        if key == "alerts":
            return f"<#{value}>" if value else "off"
        if key == "digest":
            return value.text() if value else "off"
        if key == "exceptions":
            return value.value if value else "default"
        if key == "mention":
            return str(value.text())
        return str(value.value)

    def with_value(self, key: str, value: Any) -> ChannelSettings:
        """A copy with one parsed value (from ``parse_setting``) changed."""
        return replace(self, **{_known(key): value})

    def changes_from(self, before: ChannelSettings) -> list[tuple[str, str, str]]:
        """(key, old value, new value) for each key that differs, in KEYS order."""
        return [
            (key, before.value_text(key), self.value_text(key))
            for key in KEYS
            if getattr(before, key) != getattr(self, key)
        ]


DEFAULTS = ChannelSettings()


def _known(key: str) -> str:
    if key not in KEYS:
        raise InvalidSetting(f"There is no setting called that. Settings: {_key_list()}.")
    return key


def _key_list() -> str:
    return ", ".join(f"`{k}`" for k in KEYS)


def normalise_key(raw: str) -> str:
    """The setting's name from what someone typed (case-insensitive)."""
    key = raw.strip().lower()
    if key not in KEYS:
        raise InvalidSetting(f"There is no setting called that. Settings: {_key_list()}.")
    return key


def parse_setting(
    raw_key: str, raw_value: str, *, channel_id: str | None = None
) -> tuple[str, Any]:
    """(key, value) from text, as ``set KEY VALUE`` and the modal give it.

    ``channel_id`` is the channel being configured: its alert channel must be
    another one. Raises ``InvalidSetting`` with a sentence for the user.
    """
    key = normalise_key(raw_key)
    value = " ".join(raw_value.split())
    if not value:
        raise InvalidSetting(f"`{key}` needs a value: {ALLOWED[key]}.")
    if len(value) > _MAX_VALUE_LENGTH:
        raise InvalidSetting(f"That value is too long for `{key}`. Use {ALLOWED[key]}.")
    parsers = {
        "broadcast": _parse_broadcast,
        "milestones": _parse_switch,
        "compact": _parse_switch,
        "mention": _parse_mention,
        "digest": _parse_digest,
        "exceptions": _parse_exceptions,
    }
    if key == "alerts":
        return key, _parse_alerts(value, channel_id)
    try:
        return key, parsers[key](value)
    except InvalidSetting as exc:
        raise InvalidSetting(f"`{key}`: {exc} Use {ALLOWED[key]}.") from None


def _parse_broadcast(value: str) -> Broadcast:
    try:
        return Broadcast(value.lower())
    except ValueError:
        raise InvalidSetting("that is not a broadcast choice.") from None


def _parse_switch(value: str) -> bool:
    word = value.lower()
    if word not in ("on", "off"):
        raise InvalidSetting("that is neither on nor off.")
    return word == "on"


def _parse_exceptions(value: str) -> ExceptionsFile | None:
    word = value.lower()
    if word == "default":
        return None
    try:
        return ExceptionsFile(word)
    except ValueError:
        raise InvalidSetting("that is not an archive mode.") from None


def _parse_mention(value: str) -> Mention:
    word = value.lower()
    if word in ("subscriber", "none"):
        return Mention(MentionKind(word))
    if found := _USER_MENTION.fullmatch(value):
        return Mention(MentionKind.USER, found.group(1), _label(found.group(2)))
    if found := _GROUP_MENTION.fullmatch(value):
        return Mention(MentionKind.GROUP, found.group(1), _label(found.group(2)))
    if re.fullmatch(_USER_ID, value):
        return Mention(MentionKind.USER, value)
    if re.fullmatch(_GROUP_ID, value):
        return Mention(MentionKind.GROUP, value)
    if value.startswith("@"):
        raise InvalidSetting(
            "that name reached the bot as plain text, not as a mention; "
            "pick the person or group from Slack's suggestions as you type."
        )
    raise InvalidSetting("that is not someone the bot can mention.")


def _label(raw: str | None) -> str | None:
    label = (raw or "").strip()
    return label or None


def _parse_alerts(value: str, channel_id: str | None) -> str | None:
    if value.lower() == "off":
        return None
    found = _CHANNEL_MENTION.fullmatch(value)
    target = found.group(1) if found else value if re.fullmatch(_CHANNEL_ID, value) else None
    if target is None:
        hint = (
            " That name reached the bot as plain text; pick the channel from Slack's "
            "suggestions as you type."
            if value.startswith("#")
            else ""
        )
        raise InvalidSetting(f"`alerts`: that is not a channel.{hint} Use {ALLOWED['alerts']}.")
    if channel_id is not None and target == channel_id:
        raise InvalidSetting(
            "`alerts`: the alert channel must be another channel; this one already gets "
            "every failure."
        )
    return target


def _parse_digest(value: str) -> Digest | None:
    if value.lower() == "off":
        return None
    parts = value.split(" ")
    clock = _TIME.fullmatch(parts[0])
    if clock is None:
        raise InvalidSetting("the time must be HH:MM on a 24-hour clock.")
    if len(parts) != 2:
        raise InvalidSetting("give the time and a time zone, separated by a space.")
    zone = canonical_zone(parts[1])
    if zone is None:
        raise InvalidSetting("that is not an IANA time zone name.")
    return Digest(time(int(clock.group(1)), int(clock.group(2))), zone)


def canonical_zone(name: str) -> str | None:
    """The IANA zone name as spelled in the database (case-insensitive match), or None."""
    if not _ZONE_SHAPE.fullmatch(name):
        return None
    return _zones().get(name.lower())


@lru_cache(maxsize=1)
def _zones() -> dict[str, str]:
    # "localtime" and the like are files of the zone directory, not zone names.
    names = available_timezones() - {"localtime", "posixrules", "Factory"}
    return {name.lower(): name for name in names}
