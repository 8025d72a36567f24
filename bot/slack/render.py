"""Every message the bot shows in Slack, as Block Kit with a plain-text fallback.

Pure functions only: no I/O and no clock reads (callers pass ``now``, an aware
UTC datetime). Everything that came from outside the bot (an import's Name,
the API's raw status or expiry text, error details) goes through ``escape`` or
``escape_plain`` before it reaches Slack, so it can never ping a channel, fake
a link or pick up bold/italic formatting. Every text object is cut to the
limit Slack sets for its place in the message.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.domain.archiving import has_failures
from bot.domain.events import Event, EventKind
from bot.domain.expiry import is_expired
from bot.domain.format import (
    as_utc,
    floor_percent,
    format_count,
    format_duration,
    progress_bar,
    relative_time,
)
from bot.domain.routing import Route
from bot.domain.status import STATUS_LOOKS, ImportStatus, Status

# --- Slack's limits (Block Kit reference) ------------------------------------

SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
MAX_FIELDS = 10
CONTEXT_TEXT_LIMIT = 3000
MAX_CONTEXT_ELEMENTS = 10
HEADER_TEXT_LIMIT = 150
BUTTON_TEXT_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
FALLBACK_TEXT_LIMIT = 3000
MAX_BLOCKS = 50

# --- Action ids (the button handlers and the manifest test use these) --------

ACTION_WATCH = "import_watch"
ACTION_REFRESH = "import_refresh"
ACTION_UNWATCH = "import_unwatch"
ACTION_EXCEPTIONS = "import_exceptions"

USAGE_LINE = (
    "Usage: /import-status [watch|unwatch|exceptions] TOKEN | list | history [N] | settings "
    "| set KEY VALUE | help"
)

#: How each status is shown in Slack: its emoji and its name (see STATUS_LOOKS).
STATUS_MARKERS: dict[Status, str] = {
    status: f"{look.emoji} {status.value}" for status, look in STATUS_LOOKS.items()
}

UNNAMED_IMPORT = "Unnamed import"
WATCH_LIST_MAX_ROWS = 40
# A Name is at most 100 characters per the API; cap what one list line may use
# so that a few odd names cannot crowd the others out of a section.
_LIST_NAME_LIMIT = 80

_ELLIPSIS = "…"
_ZWJ = "\u200d"
_MRKDWN_CHARS = re.compile(r"([*_~`])")
_BROADCAST_WORDS = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
# Bidirectional overrides and isolates can make text read differently from
# what it is; line and paragraph separators would break our one-line layouts.
_STRIPPED_FORMAT_CHARS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"
)
_WHITESPACE_CONTROLS = frozenset("\t\n\r\x0b\x0c\u2028\u2029\x85")
_SLACK_USER_ID = re.compile(r"[UWB][A-Z0-9]{2,30}")


@dataclass(frozen=True)
class Message:
    """A Slack message: Block Kit blocks and the plain-text fallback shown in notifications."""

    text: str
    blocks: list[dict[str, Any]]

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for chat.postMessage, chat.update, respond or say."""
        return {"text": self.text, "blocks": self.blocks}


@dataclass(frozen=True)
class WatchRow:
    """One of a channel's subscriptions, as the list command shows it."""

    access_token: int
    name: str | None
    status: Status | None
    subscribed_by: str
    subscribed_at: datetime


# --- Escaping and fitting -----------------------------------------------------


def _clean(text: str) -> str:
    """Drop control characters; whitespace controls become a single space."""
    out: list[str] = []
    for ch in text:
        if ch in _WHITESPACE_CONTROLS:
            out.append(" ")
        elif ch in _STRIPPED_FORMAT_CHARS or unicodedata.category(ch) == "Cc":
            continue
        else:
            out.append(ch)
    return "".join(out)


def _slack_len(text: str) -> int:
    """Length as Slack may count it (UTF-16 code units), never less than len()."""
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` with an ellipsis, never inside an entity or a <…> token."""
    if _slack_len(text) <= limit:
        return text
    budget = limit - len(_ELLIPSIS)
    used = 0
    end = 0
    for index, ch in enumerate(text):
        width = 2 if ord(ch) > 0xFFFF else 1
        if used + width > budget:
            break
        used += width
        end = index + 1
    cut = text[:end]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    lt = cut.rfind("<")
    if lt != -1 and ">" not in cut[lt:]:
        cut = cut[:lt]
    return cut.rstrip() + _ELLIPSIS


def _escape_entities(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_plain(text: str, *, limit: int = SECTION_TEXT_LIMIT) -> str:
    """Make outside text safe for a plain_text object or a <…|fallback> label.

    Escapes ``&``, ``<`` and ``>`` (Slack's rule), strips control characters and
    cuts to ``limit``. Formatting characters are left alone: plain_text has none.
    """
    return _fit(_escape_entities(_clean(text)), limit)


def escape(text: str, *, limit: int = SECTION_TEXT_LIMIT) -> str:
    """Make outside text safe inside mrkdwn: it shows literally and pings no one.

    Escapes ``&``, ``<`` and ``>`` so ``<!channel>``, ``<@U123>`` or a link can
    never be formed; puts a zero-width joiner around ``*``, ``_``, ``~`` and the
    backquote so they cannot open or close formatting; breaks ``@channel``,
    ``@here`` and ``@everyone``; strips control characters; cuts to ``limit``.
    """
    safe = _escape_entities(_clean(text))
    safe = _MRKDWN_CHARS.sub(lambda m: f"{_ZWJ}{m.group(1)}{_ZWJ}", safe)
    safe = _BROADCAST_WORDS.sub(lambda m: f"@{_ZWJ}{m.group(1)}", safe)
    return _fit(safe, limit)


_MENTION_IN_TEXT = re.compile(r"<@([A-Z0-9]+)>")


def _with_mentions(text: str) -> str:
    """``text`` escaped for mrkdwn, except its ``<@ID>`` mentions of real Slack user ids."""
    parts: list[str] = []
    last = 0
    for found in _MENTION_IN_TEXT.finditer(text):
        parts.append(escape(text[last : found.start()]))
        parts.append(_mention(found.group(1)))
        last = found.end()
    parts.append(escape(text[last:]))
    return "".join(parts)


def _mention(user_id: str) -> str:
    """A user mention for a Slack id we got from Slack; anything else is shown as text."""
    if _SLACK_USER_ID.fullmatch(user_id):
        return f"<@{user_id}>"
    return escape(user_id, limit=40)


# --- Numbers and times --------------------------------------------------------


def slack_date(when: datetime, fallback: str | None = None) -> str:
    """Slack date formatting, shown in each reader's time zone.

    ``fallback`` (shown by clients that cannot format dates) defaults to
    "2026-11-27 14:05 UTC" style.
    """
    utc = as_utc(when)
    label = fallback if fallback is not None else utc.strftime("%Y-%m-%d %H:%M UTC")
    epoch = math.floor(utc.timestamp())
    return f"<!date^{epoch}^{{date_short_pretty}} at {{time}}|{escape_plain(label, limit=100)}>"


# --- Block Kit building blocks -----------------------------------------------


def _mrkdwn(text: str, limit: int = SECTION_TEXT_LIMIT) -> dict[str, Any]:
    # verbatim: Slack must not auto-link bare names, channels or @mentions.
    return {"type": "mrkdwn", "text": _fit(text, limit), "verbatim": True}


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": _fit(text, limit), "emoji": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _context(*texts: str) -> dict[str, Any]:
    elements = [_mrkdwn(t, CONTEXT_TEXT_LIMIT) for t in texts[:MAX_CONTEXT_ELEMENTS]]
    return {"type": "context", "elements": elements}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": _plain(text, HEADER_TEXT_LIMIT)}


def _button(
    label: str, action_id: str, access_token: int, style: str | None = None
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "text": _plain(label, BUTTON_TEXT_LIMIT),
        "action_id": action_id,
        "value": str(access_token),
    }
    if style:
        button["style"] = style
    return button


def _actions(access_token: int, buttons: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "actions", "block_id": f"import_actions_{access_token}", "elements": buttons}


def _message(text: str, blocks: list[dict[str, Any]]) -> Message:
    fallback = _fit(text, FALLBACK_TEXT_LIMIT) if text.strip() else "Import status"
    return Message(text=fallback, blocks=blocks[:MAX_BLOCKS])


# --- Pieces of the status card ---------------------------------------------------


def _status_label(status: ImportStatus) -> str:
    """The marker, plus what the API actually said when we could not read it."""
    label = STATUS_MARKERS[status.status]
    if status.status is Status.UNKNOWN and status.status_text:
        label += f" (MyPreferences said “{escape(status.status_text, limit=100)}”)"
    return label


def _status_word(status: ImportStatus) -> str:
    """The status without emoji, for fallback text."""
    if status.status is Status.UNKNOWN and status.status_text:
        return f"Unknown (“{escape(status.status_text, limit=100)}”)"
    return status.status.value


def _header_text(name: str | None, access_token: int) -> str:
    suffix = f" · import {access_token}"
    shown = name if name else UNNAMED_IMPORT
    return escape_plain(shown, limit=HEADER_TEXT_LIMIT - len(suffix)) + suffix


def _name_mrkdwn(name: str | None, limit: int = 200) -> str:
    return escape(name, limit=limit) if name else UNNAMED_IMPORT


def _count_fields(status: ImportStatus) -> dict[str, Any]:
    counts = (
        ("Received", status.total_records_received),
        ("Validated OK", status.validation_successful),
        ("Validation failed", status.validation_failed),
        ("Processed", status.processed),
        ("Pending", status.pending),
        ("Exceptions", status.exceptions),
        ("Not honoured", status.not_honored),
    )
    fields = [
        _mrkdwn(f"*{label}*\n{format_count(value)}", FIELD_TEXT_LIMIT) for label, value in counts
    ]
    return {"type": "section", "fields": fields[:MAX_FIELDS]}


def _progress_lines(status: ImportStatus, eta_seconds: float | None) -> list[str]:
    lines: list[str] = []
    progress = status.progress
    if status.status.is_active and progress is not None:
        lines.append(
            f"{progress_bar(progress)}  {format_count(status.done)} of "
            f"{format_count(status.validation_successful)} records"
        )
    if (
        eta_seconds is not None
        and math.isfinite(eta_seconds)
        and eta_seconds >= 0
        and not status.status.is_terminal
    ):
        lines.append(f"About {format_duration(eta_seconds)} left")
    return lines


def _expiry_line(status: ImportStatus, now: datetime, *, relative: bool) -> str:
    """When the access token expires; ``relative`` adds "in 3 h 10 min" / "5 min ago"."""
    if status.expires is not None:
        verb = "expired" if is_expired(as_utc(status.expires), as_utc(now)) else "expires"
        if relative:
            return (
                f":hourglass: Token {verb} {relative_time(status.expires, now)} "
                f"({slack_date(status.expires)})"
            )
        return f":hourglass: Token {verb} {slack_date(status.expires)}"
    if status.expires_text:
        return f":hourglass: Expires: {escape(status.expires_text, limit=100)} (could not be read)"
    return ":hourglass: Expiry unknown"


def _status_blocks(
    status: ImportStatus, now: datetime, eta_seconds: float | None, *, relative_expiry: bool
) -> list[dict[str, Any]]:
    """Header, status, counts, progress and expiry: what both status views share."""
    blocks = [
        _header(_header_text(status.name, status.access_token)),
        _section(f"*Status:* {_status_label(status)}"),
        _count_fields(status),
    ]
    progress = _progress_lines(status, eta_seconds)
    if progress:
        blocks.append(_section("\n".join(progress)))
    blocks.append(_context(_expiry_line(status, now, relative=relative_expiry)))
    return blocks


def _status_fallback(status: ImportStatus) -> str:
    name = _name_mrkdwn(status.name)
    return (
        f"{name} (import {status.access_token}): {_status_word(status)}, "
        f"{format_count(status.done)} of {format_count(status.validation_successful)} "
        "records done"
    )


# --- Messages ---------------------------------------------------------------------


def status_message(
    status: ImportStatus,
    now: datetime,
    *,
    eta_seconds: float | None = None,
    watching: bool | None = None,
) -> Message:
    """The answer to a lookup, shown only to the person who asked.

    ``watching`` says whether this channel already watches the import (None
    when unknown): it decides between the Watch and Stop watching buttons.
    """
    blocks = _status_blocks(status, now, eta_seconds, relative_expiry=True)
    token = status.access_token
    buttons: list[dict[str, Any]] = []
    if watching is not True and not status.status.is_terminal:
        buttons.append(_button("Watch in this channel", ACTION_WATCH, token, "primary"))
    buttons.append(_button("Refresh", ACTION_REFRESH, token))
    if has_failures(status):
        buttons.append(_button("Exceptions", ACTION_EXCEPTIONS, token))
    if watching is True:
        buttons.append(_button("Stop watching", ACTION_UNWATCH, token))
    blocks.append(_actions(token, buttons))
    return _message(_status_fallback(status), blocks)


def tracking_card(
    status: ImportStatus | None,
    access_token: int,
    now: datetime,
    *,
    subscriber_id: str,
    subscribed_at: datetime,
    eta_seconds: float | None = None,
    ended_reason: str | None = None,
    exceptions_line: str | None = None,
) -> Message:
    """The channel's one tracking message for an import, edited in place as it moves.

    Nothing here depends on when it was rendered (no "last checked", and the
    token's expiry is shown as an absolute Slack date, not "in 3 h"), so an
    unchanged import renders an unchanged card and a poll need not edit it.

    ``ended_reason`` is text written by the bot, such as "unwatched by <@U123>":
    well-formed user mentions in it are kept, everything else is escaped (the
    id inside came from a request). When set, the card says watching stopped
    and keeps only Refresh (and Exceptions when records failed).
    ``exceptions_line`` is trusted mrkdwn written by the bot
    (``render_exceptions.card_line``): what became of the import's exceptions archive.
    """
    if status is None:
        blocks = [
            _header(f"Import {access_token}"),
            _section(":hourglass_flowing_sand: Waiting for the first status…"),
        ]
        fallback = f"Import {access_token}: waiting for the first status"
    else:
        # No relative expiry: "in 3 h 10 min" would change on every poll.
        blocks = _status_blocks(status, now, eta_seconds, relative_expiry=False)
        fallback = _status_fallback(status)
    if exceptions_line:
        blocks.append(_section(exceptions_line))
    if ended_reason:
        reason = _with_mentions(ended_reason)
        blocks.append(_section(f":no_bell: No longer watching: {reason}"))
        fallback += f". No longer watching: {reason}"
    blocks.append(
        _context(f"Watched by {_mention(subscriber_id)} since {slack_date(subscribed_at)}")
    )
    buttons = [_button("Refresh", ACTION_REFRESH, access_token)]
    if status is not None and has_failures(status):
        buttons.append(_button("Exceptions", ACTION_EXCEPTIONS, access_token))
    if not ended_reason:
        buttons.append(_button("Stop watching", ACTION_UNWATCH, access_token))
    blocks.append(_actions(access_token, buttons))
    return _message(fallback, blocks)


def _marker(status: Status | None) -> str:
    return STATUS_MARKERS[status] if status is not None else "(none yet)"


def _terminal_summary(status: ImportStatus | None, new_status: Status, about: str) -> str:
    """What a finished import amounts to, counts included."""
    if status is None:
        counts = "Counts unknown."
    else:
        counts = (
            f"{format_count(status.processed)} processed, "
            f"{format_count(status.exceptions)} exceptions, "
            f"{format_count(status.not_honored)} not honoured, "
            f"{format_count(status.validation_failed)} failed validation."
        )
    if new_status is Status.FAILED:
        return f"{about} failed: none of the staged records were added. {counts}"
    return f"{about} finished: {counts}"


def event_message(
    event: Event,
    status: ImportStatus | None,
    subscriber_id: str,
    now: datetime,
    *,
    trouble_since: datetime | None = None,
    route: Route | None = None,
) -> Message:
    """The thread reply for one event on a watched import.

    ``route`` (``bot.domain.routing``) carries the channel's choices: whether the
    reply is broadcast, whom it mentions, one line or several, and whether the
    thread is a batch's. Without it, the bot's original behaviour: the subscriber
    is mentioned exactly when the event is broadcast to the channel (terminal
    results, the expiry warning, expiry: see ``Event.broadcast``). Broadcast
    messages also name the import, since they are read outside the thread.
    ``trouble_since``, when known, says since when the API has been unreachable
    (API_TROUBLE).
    """
    about = "The import"
    if status is not None:
        about = f"Import {_name_mrkdwn(status.name, 100)} ({status.access_token})"
    current = status.status if status is not None else event.new_status
    lines: list[str] = []

    if event.kind is EventKind.TRANSITION:
        move = f"Status: {_marker(event.old_status)} → {_marker(event.new_status)}"
        if event.old_status is None:
            move = f"Status: {_marker(event.new_status)}"
        lines.append(move)
        if event.new_status is not None and event.new_status.is_terminal:
            lines.append(_terminal_summary(status, event.new_status, about))
    elif event.kind is EventKind.MILESTONE:
        percent = event.milestone
        if percent is None:
            progress = status.progress if status is not None else None
            percent = floor_percent(progress) if progress is not None else 0
        line = f"Progress: {percent}%"
        if status is not None and status.done is not None and status.validation_successful:
            line += (
                f" ({format_count(status.done)} of "
                f"{format_count(status.validation_successful)} records)"
            )
        lines.append(line)
    elif event.kind is EventKind.EXPIRY_WARNING:
        expires = event.expires or (status.expires if status is not None else None)
        when = f"{relative_time(expires, now)} ({slack_date(expires)})" if expires else "soon"
        still = _marker(current) if current is not None else "unfinished"
        lines.append(f":warning: The access token expires {when} and the import is still {still}.")
        if status is not None:
            lines.append(about)
    elif event.kind is EventKind.EXPIRED:
        last = current if current is not None else event.old_status
        lines.append(
            ":hourglass: The access token expired before the import finished "
            f"(last status: {_marker(last) if last is not None else 'unknown'}). "
            "No longer watching."
        )
        if status is not None:
            lines.append(about)
    elif event.kind is EventKind.API_TROUBLE:
        since = f" since {slack_date(trouble_since)}" if trouble_since is not None else ""
        detail = f": {escape(event.detail, limit=500)}" if event.detail else ""
        lines.append(
            f":warning: Can't reach MyPreferences for this import{since}{detail}. Still trying."
        )
    elif event.kind is EventKind.RECOVERED:
        lines.append(":large_green_circle: MyPreferences answers again; watching resumes.")

    if route is None:
        if event.broadcast:
            lines[0] = f"{_mention(subscriber_id)} {lines[0]}"
        text = "\n".join(lines)
        return _message(text, [_section(text)])
    named = any(about in line for line in lines)
    if status is not None and not named and (route.in_batch or route.broadcast):
        # Read outside the thread, or in a thread of many imports: say which import.
        lines.append(about)
    if route.broadcast and route.mention:
        lines[0] = f"{route.mention} {lines[0]}"  # bot-made mrkdwn (bot.domain.settings)
    text = (" · " if route.compact else "\n").join(lines)
    return _message(text, [_section(text)])


def lookup_error_message(access_token: int | None, error_text: str) -> Message:
    """Why a lookup failed, in words the user can act on (an ApiError.user_message)."""
    where = f"Import {access_token}: " if access_token is not None else ""
    text = f":warning: {where}{escape(error_text, limit=2000)}"
    return _message(text, [_section(text)])


def usage_message(problem: str | None = None) -> Message:
    """How to use the command, after the problem with what was typed (if any)."""
    lines: list[str] = []
    if problem:
        lines.append(f":warning: {escape(problem, limit=500)}")
    lines += [
        USAGE_LINE,
        "• `/import-status 12345`: show an import's status (only to you)",
        "• `/import-status watch 12345`: watch it in this channel (alias `subscribe`)",
        "• `/import-status watch 1001 1002 1003`: watch up to 20 as one batch, with one card",
        "• `/import-status unwatch 12345`: stop watching it here (alias `unsubscribe`)",
        "• `/import-status exceptions 12345`: why its records failed (only to you; "
        "the file comes to your direct messages)",
        "• `/import-status list`: the imports this channel watches",
        "• `/import-status history 20`: the last 20 finished watches here (default 10)",
        "• `/import-status settings`: this channel's settings; "
        "`/import-status set broadcast failures` changes one",
        "• `/import-status help`: this help",
    ]
    text = "\n".join(lines)
    fallback = f"{lines[0]}\n{USAGE_LINE}" if problem else USAGE_LINE
    return _message(fallback, [_section(text)])


def _watch_line(row: WatchRow) -> str:
    status = STATUS_MARKERS[row.status] if row.status is not None else "not checked yet"
    return (
        f"• {status}: {_name_mrkdwn(row.name, _LIST_NAME_LIMIT)} ({row.access_token}), "
        f"watched by {_mention(row.subscribed_by)} since {slack_date(row.subscribed_at)}"
    )


def watch_list_message(rows: list[WatchRow], now: datetime) -> Message:
    """The channel's watched imports, one line each, in as few sections as fit.

    At most WATCH_LIST_MAX_ROWS rows are listed, then "and N more", which keeps
    the message well under Slack's 50-block limit. ``now`` is part of the
    rendering contract (every renderer takes it) though no line is relative.
    """
    del now  # dates are absolute and rendered by Slack in each reader's zone
    if not rows:
        text = "This channel is not watching any import. Try `/import-status watch 12345`."
        return _message(text, [_section(text)])
    shown, hidden = rows[:WATCH_LIST_MAX_ROWS], len(rows) - WATCH_LIST_MAX_ROWS
    title = f"*Imports watched in this channel ({len(rows)})*"
    blocks = [_section(title)]
    chunk = ""
    for line in (_watch_line(row) for row in shown):
        candidate = f"{chunk}\n{line}" if chunk else line
        if chunk and _slack_len(candidate) > SECTION_TEXT_LIMIT:
            blocks.append(_section(chunk))
            candidate = line
        chunk = candidate
    if chunk:
        blocks.append(_section(chunk))
    if hidden > 0:
        blocks.append(_context(f"and {hidden} more"))
    summary = ", ".join(
        f"{row.access_token} ({row.status.value if row.status else 'not checked yet'})"
        for row in shown
    )
    more = f" and {hidden} more" if hidden > 0 else ""
    noun = "import" if len(rows) == 1 else "imports"
    fallback = f"This channel watches {len(rows)} {noun}: {summary}{more}"
    return _message(fallback, blocks)


def notice(text: str) -> Message:
    """A one-section confirmation; ``text`` is already-safe mrkdwn written by the bot."""
    return _message(text, [_section(text)])
