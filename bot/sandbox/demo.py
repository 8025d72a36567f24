"""``import-status-bot demo``: the whole system on this machine, no accounts needed.

A Harness starts the MyPreferences simulator and the Slack emulator as real
local HTTP servers and the real bot as an ``import-status-bot serve`` process
with a temporary SQLite database. A person then types real, signed slash
commands; import 1001 is moved through every state upstream and import 1002
is left to expire. Import 1001 ends with failures, so its exceptions are kept:
a CSV in its card's thread, and privately on request. The channel has chosen an
alert channel (``set alerts``): each failure and expiry warning also goes there.
The terminal shows what the person and the channel see, as it appears. At the
end the story is checked: every transition, milestone, warning and expiry
message must have been posted exactly once, and the exceptions file and each
alert too.

Everything started here is stopped again, and the temporary directory
removed, on success, on failure and on Ctrl-C.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from bot.domain.status import STATUS_LOOKS, Status
from bot.exit_codes import ExitCode
from bot.sandbox.harness import Harness
from bot.sandbox.slack_emulator import CommandResult, Message, SlackUser
from bot.slack.render import STATUS_MARKERS

CHANNEL_ID = "C0001"
CHANNEL_NAME = "general"
#: Where the channel's failures and expiry warnings also go (the ``alerts`` setting).
ALERT_CHANNEL_ID = "C0002"
ALERT_CHANNEL_NAME = "import-alerts"
#: How Slack channel ids are shown in the terminal.
CHANNEL_NAMES = {CHANNEL_ID: CHANNEL_NAME, ALERT_CHANNEL_ID: ALERT_CHANNEL_NAME}
#: The alerts the story causes: 1001 ends with failed records, 1002 is warned, then expires.
EXPECTED_ALERTS = 3
USER_ID = "U0001"
#: How Slack user ids are shown in the terminal.
USER_NAMES = {USER_ID: "demo-user", "UBOT": "import-status-bot"}

MOVING_TOKEN = 1001
MOVING_NAME = "Spring newsletter opt-ins"
EXPIRING_TOKEN = 1002
EXPIRING_NAME = "Trade show leads"

#: The whole demo must end well inside a minute, whatever happens.
STORY_BUDGET_SECONDS = 55.0
SCREEN_POLL_SECONDS = 0.2
LOG_TAIL_LINES = 40

_RECEIVED, _VALIDATED, _INVALID = 50_000, 49_200, 800


@dataclass(frozen=True)
class Pace:
    """How fast the story moves."""

    poll_interval: float  # the bot's POLL_INTERVAL_SECONDS (idle imports too)
    step_seconds: float  # at least this long between two upstream changes
    step_timeout: float  # how long to wait for the bot to show one change
    expiry_seconds: int  # import 1002's token expires this long after it is watched
    warning_minutes: float  # EXPIRY_WARNING_MINUTES
    pause_seconds: float  # a breath between the acts

    @property
    def warning_seconds(self) -> float:
        return self.warning_minutes * 60


NORMAL = Pace(
    poll_interval=1.0,
    step_seconds=2.0,
    step_timeout=10.0,
    expiry_seconds=8,
    warning_minutes=0.1,
    pause_seconds=1.0,
)
# The tests' pace (``demo --fast``): short steps, but waits and the expiry warning's
# window wide enough for a busy machine, where a poll can come a few seconds late.
FAST = Pace(
    poll_interval=0.5,
    step_seconds=0.8,
    step_timeout=15.0,
    expiry_seconds=8,
    warning_minutes=0.1,
    pause_seconds=0.0,
)


# --------------------------------------------------------------------------- terminal style


@dataclass(frozen=True)
class Style:
    """ANSI styling, or none at all when the output is not a terminal."""

    colour: bool

    @classmethod
    def for_stream(cls, stream: TextIO) -> Style:
        """Colour only on a real terminal, and never when NO_COLOR is set or TERM=dumb."""
        isatty = getattr(stream, "isatty", None)
        tty = bool(isatty and isatty())
        wanted = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        return cls(colour=tty and wanted)

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and text else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def cyan(self, text: str) -> str:
        return self._wrap("36", text)

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)


# ---------------------------------------------------------------- Slack text, for a terminal

_ZWJ = "\u200d"
#: Slack emoji codes the bot uses, as terminal symbols; unknown codes become words.
EMOJI = {look.emoji.strip(":"): look.symbol for look in STATUS_LOOKS.values()} | {
    "hourglass": "⌛",
    "warning": "⚠",
    "no_bell": "✖",
    "large_green_circle": "●",
    "clipboard": "▤",
    "page_facing_up": "▤",
    "scissors": "✂",
}
_SLACK_TOKEN = re.compile(r"<([^<>\n]*)>")
_EMOJI_CODE = re.compile(r":([a-z][a-z0-9_+\-]*):")
# Bold only where Slack would make it bold: the bot's escape() puts a zero-width
# joiner around asterisks that came from outside, and those stay literal.
_BOLD = re.compile(rf"(?<!{_ZWJ})\*(?!{_ZWJ})([^*\n]+?)(?<!{_ZWJ})\*(?!{_ZWJ})")
_CODE = re.compile(rf"(?<!{_ZWJ})`(?!{_ZWJ})")


def _unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _slack_token(match: re.Match[str]) -> str:
    """One ``<…>`` token: a mention, a date, a channel, a broadcast or a link."""
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        user = target[1:]
        return "@" + (label or USER_NAMES.get(user, user))
    if target.startswith("#"):
        return "#" + (label or CHANNEL_NAMES.get(target[1:], target[1:]))
    if target.startswith("!date^"):
        return label or target
    if target.startswith(("!subteam^", "!")):
        return "@" + (label or target[1:].split("^")[0])
    return label or target


def _emoji(match: re.Match[str]) -> str:
    code = match.group(1)
    return EMOJI.get(code, f"({code.replace('_', ' ')})")


def slack_to_terminal(text: str, style: Style, *, mrkdwn: bool = True) -> str:
    """Slack message text as a person would read it, for a terminal.

    Mentions become ``@name``, dates their fallback text, links their label,
    emoji codes symbols; ``*bold*`` becomes bold (when colour is on) and the
    ``&lt; &gt; &amp;`` entities are unescaped. ``mrkdwn=False`` is for
    plain_text objects: only entities and emoji codes are converted.
    """
    if mrkdwn:
        text = _SLACK_TOKEN.sub(_slack_token, text)
        text = _BOLD.sub(lambda m: style.bold(m.group(1)), text)
        text = _CODE.sub("", text)
    text = _EMOJI_CODE.sub(_emoji, text)
    return _unescape(text).replace(_ZWJ, "")


def _text_of(obj: Any, style: Style) -> str:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        return ""
    return slack_to_terminal(obj["text"], style, mrkdwn=obj.get("type") == "mrkdwn")


def _field_line(fields: list[Any], style: Style) -> list[str]:
    """Section fields ("*Label*\\nvalue") as "Label: value", two to a line."""
    cells: list[str] = []
    for item in fields:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            continue
        label, _, value = item["text"].partition("\n")
        plain_label = slack_to_terminal(label.strip("*"), Style(colour=False))
        cells.append(f"{plain_label + ':':<19}{slack_to_terminal(value, style):>8}")
    return ["   ".join(cells[i : i + 2]) for i in range(0, len(cells), 2)]


def blocks_to_lines(blocks: list[Any], fallback: str, style: Style) -> list[str]:
    """A Block Kit message as terminal lines (the fallback text when there are no blocks)."""
    if not blocks:
        return slack_to_terminal(fallback, style).splitlines() or [""]
    lines: list[str] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "header":
            lines.append(style.bold(_text_of(block.get("text"), style)))
        elif kind == "section":
            if "text" in block:
                lines.extend(_text_of(block["text"], style).splitlines())
            if isinstance(block.get("fields"), list):
                lines.extend(_field_line(block["fields"], style))
        elif kind == "context":
            parts = [_text_of(e, style) for e in block.get("elements") or []]
            lines.append(style.dim(" · ".join(p for p in parts if p)))
        elif kind == "actions":
            labels = [_text_of(e.get("text"), style) for e in block.get("elements") or []]
            lines.append(style.cyan("  ".join(f"[ {label} ]" for label in labels if label)))
        elif kind == "divider":
            lines.append(style.dim("─" * 24))
    return lines


def card_summary(message: Message, style: Style) -> str:
    """The tracking card's moving parts on one line: status, progress, ETA, whether it ended."""
    parts: list[str] = []
    for block in message.blocks:
        if isinstance(block, dict) and block.get("type") == "section" and "text" in block:
            parts.extend(_text_of(block["text"], style).splitlines())
    return " · ".join(p.strip() for p in parts if p.strip()) or slack_to_terminal(
        message.text, style
    )


# --------------------------------------------------------------------------- what was posted

# Classification relies on the wording of bot.slack.render.event_message.
_MILESTONE = re.compile(r"Progress: (\d+)%")
_CARD_TOKEN = re.compile(r"import (\d+)", re.IGNORECASE)

EventKey = tuple[str, int, str]  # (kind, access token, detail)


def classify_reply(raw_text: str, access_token: int) -> list[EventKey]:
    """The notification(s) a thread reply carries, from its Slack text."""
    found: list[EventKey] = []
    for status in Status:
        if f"→ {STATUS_MARKERS[status]}" in raw_text:
            found.append(("transition", access_token, status.value))
    for percent in _MILESTONE.findall(raw_text):
        found.append(("milestone", access_token, percent))
    if "The access token expires" in raw_text:
        found.append(("expiry warning", access_token, ""))
    if "The access token expired" in raw_text:
        found.append(("expired", access_token, ""))
    return found


def describe(key: EventKey) -> str:
    """A line of the story check for one expected notification."""
    kind, token, detail = key
    if kind == "transition":
        return f"import {token}: status changed to {detail}"
    if kind == "milestone":
        return f"import {token}: {detail}% milestone"
    return f"import {token}: {kind} message"


def card_token(message: Message) -> int | None:
    """The access token a top-level message (a tracking card) is about."""
    found = _CARD_TOKEN.search(message.text)
    return int(found.group(1)) if found else None


def count_notifications(messages: list[Message]) -> Counter[EventKey]:
    """How often each notification was posted, over every thread reply in ``messages``."""
    tokens = {m.ts: card_token(m) for m in messages if m.thread_ts is None}
    counts: Counter[EventKey] = Counter()
    for message in messages:
        if message.thread_ts is None or message.deleted:
            continue
        token = tokens.get(message.thread_ts)
        if token is not None:
            counts.update(classify_reply(message.text, token))
    return counts


# --------------------------------------------------------------------------- the screen


class Screen:
    """Prints what the person and the channel see, and remembers what it has shown."""

    def __init__(self, out: TextIO, style: Style, started: float) -> None:
        self.out = out
        self.style = style
        self.started = started
        self._shown: dict[str, int] = {}  # message ts -> edits already shown
        self.cards: dict[int, Message] = {}  # access token -> latest tracking card
        self.seen: Counter[EventKey] = Counter()
        self.alerts = 0  # messages shown from the alert channel

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def stamp(self) -> str:
        return self.style.dim(f"[{time.monotonic() - self.started:5.1f}s]")

    def act(self, number: int, title: str) -> None:
        heading = f"── {number}. {title} "
        self.line()
        self.line(self.style.bold(heading + "─" * max(4, 64 - len(heading))))

    def narrate(self, text: str) -> None:
        self.line(f"{self.stamp()} {self.style.dim(text)}")

    def box(self, lines: list[str], indent: str = "   ") -> None:
        self.line(indent + "┌" + "─" * 60)
        for text in lines:
            self.line(f"{indent}│ {text}")
        self.line(indent + "└" + "─" * 60)

    def typed(self, command: str) -> None:
        who = self.style.bold(f"@{USER_NAMES[USER_ID]}")
        self.line(f"{self.stamp()} {who} in #{CHANNEL_NAME} types: {self.style.cyan(command)}")

    def ephemeral(self, payload: Mapping[str, Any]) -> None:
        self.line(f"{self.stamp()} {self.style.dim('only visible to you:')}")
        blocks = payload.get("blocks")
        lines = blocks_to_lines(
            blocks if isinstance(blocks, list) else [], str(payload.get("text") or ""), self.style
        )
        self.box(lines)

    def full_card(self, access_token: int) -> None:
        card = self.cards.get(access_token)
        if card is None:
            return
        self.line(f"{self.stamp()} the card for import {access_token} in #{CHANNEL_NAME} now:")
        self.box(blocks_to_lines(card.blocks, card.text, self.style))

    def refresh(self, messages: list[Message]) -> None:
        """Print every message and edit not shown yet, in posting order."""
        for message in messages:
            shown = self._shown.get(message.ts)
            if message.channel == ALERT_CHANNEL_ID and shown is None and not message.deleted:
                self._show_alert(message)
                self._shown[message.ts] = message.edits
                continue
            if message.deleted or message.channel != CHANNEL_ID:
                continue
            if message.thread_ts is None:
                token = card_token(message)
                if token is not None:
                    self.cards[token] = message
                if shown is None:
                    self._show_new_post(message, token)
                elif message.edits > shown:
                    summary = card_summary(message, self.style)
                    what = f"import {token}" if token is not None else "a message"
                    self.line(f"{self.stamp()} ✎ card for {what} updated: {summary}")
            elif shown is None:
                self._show_reply(message)
            self._shown[message.ts] = message.edits

    def _show_alert(self, message: Message) -> None:
        self.alerts += 1
        self.line(f"{self.stamp()} the bot posts an alert in #{ALERT_CHANNEL_NAME}:")
        lines = blocks_to_lines(message.blocks, message.text, self.style)
        self.box([self.style.yellow(text) for text in lines])

    def _show_new_post(self, message: Message, token: int | None) -> None:
        what = f"tracking card for import {token}" if token is not None else "a message"
        self.line(f"{self.stamp()} the bot posts a {what} in #{CHANNEL_NAME}:")
        self.box(blocks_to_lines(message.blocks, message.text, self.style))

    def _show_reply(self, message: Message) -> None:
        card = next(
            (m for m in self.cards.values() if m.ts == message.thread_ts),
            None,
        )
        token = card_token(card) if card is not None else None
        if token is not None:
            self.seen.update(classify_reply(message.text, token))
        where = f"thread of import {token}" if token is not None else "a thread"
        also = f", also sent to #{CHANNEL_NAME}" if message.reply_broadcast else ""
        lines = blocks_to_lines(message.blocks, message.text, self.style)
        colour: Callable[[str], str] = str
        if "⚠" in lines[0] or "⌛" in lines[0]:
            colour = self.style.yellow
        elif "✔" in lines[0]:
            colour = self.style.green
        self.line(f"{self.stamp()} ↳ reply in the {where}{also}:")
        for text in lines:
            self.line(f"     {colour(text)}")


# --------------------------------------------------------------------------- the story


@dataclass(frozen=True)
class Change:
    """One upstream change to import 1001, and the notification it should cause."""

    caption: str
    fields: dict[str, object]
    expect: EventKey


def _counts(processed: int, exceptions: int = 0, not_honored: int = 0) -> dict[str, object]:
    done = processed + exceptions + not_honored
    return {
        "Processed": processed,
        "Exceptions": exceptions,
        "NotHonored": not_honored,
        "Pending": max(0, _VALIDATED - done),
    }


def moving_import_changes() -> list[Change]:
    """Import 1001 from Initiated to Completed, crossing each 25 % milestone on its own."""
    token = MOVING_TOKEN
    return [
        Change(
            f"{_RECEIVED:,} records arrive: Staging",
            {"Status": "Staging", "TotalRecordsReceived": _RECEIVED},
            ("transition", token, "Staging"),
        ),
        Change(
            f"validation done ({_VALIDATED:,} OK, {_INVALID:,} failed): Queued",
            {
                "Status": "Queued",
                "ValidationSuccessful": _VALIDATED,
                "ValidationFailed": _INVALID,
                "Pending": _VALIDATED,
            },
            ("transition", token, "Queued"),
        ),
        Change(
            "processing starts",
            {"Status": "Processing", **_counts(4_000)},
            ("transition", token, "Processing"),
        ),
        Change("13,020 records done", _counts(13_000, 20), ("milestone", token, "25")),
        Change("25,650 records done", _counts(25_600, 40, 10), ("milestone", token, "50")),
        Change("37,580 records done", _counts(37_500, 55, 25), ("milestone", token, "75")),
        Change(
            "all records done: Completed",
            {"Status": "Completed", **_counts(49_100, 60, 40)},
            ("transition", token, "Completed"),
        ),
    ]


def expected_notifications() -> list[EventKey]:
    """Every notification the story must produce, each exactly once."""
    return [c.expect for c in moving_import_changes()] + [
        ("expiry warning", EXPIRING_TOKEN, ""),
        ("expired", EXPIRING_TOKEN, ""),
    ]


class StoryFailed(Exception):
    """The story cannot go on: something the bot should have shown did not appear."""


@dataclass
class Story:
    """Drives the simulator and the Slack user, and shows what happens."""

    harness: Harness
    user: SlackUser
    screen: Screen
    pace: Pace
    deadline: float
    checks: list[tuple[str, bool]] = field(default_factory=list)

    # -- time and the screen

    def watch_screen(self, seconds: float) -> None:
        """Keep the screen current for ``seconds`` (never past the deadline)."""
        self.wait_until(lambda: False, seconds, fail=None)

    def wait_until(self, condition: Callable[[], bool], timeout: float, fail: str | None) -> bool:
        """Refresh the screen until ``condition`` holds; raise StoryFailed(fail) on timeout."""
        end = min(time.monotonic() + timeout, self.deadline)
        while True:
            self.screen.refresh(self.harness.emulator.all_messages())
            if condition():
                return True
            if time.monotonic() >= end:
                if fail is not None:
                    raise StoryFailed(fail)
                return False
            time.sleep(SCREEN_POLL_SECONDS)

    def posted(self, key: EventKey) -> Callable[[], bool]:
        """A condition: the screen has shown this notification."""
        return lambda: self.screen.seen[key] > 0

    def command(self, text: str) -> Mapping[str, Any]:
        """Type a slash command and show the answer only the person sees."""
        self.screen.typed(f"/import-status {text}")
        result: CommandResult = self.user.command(text)
        if result.status_code != 200:
            raise StoryFailed(f"/import-status {text}: the bot answered HTTP {result.status_code}")
        answer = result.ack_body if isinstance(result.ack_body, dict) else {}
        if not answer.get("blocks"):
            # A slow answer: the acknowledgement said "Looking up…", the answer follows.
            if answer.get("text"):
                self.screen.ephemeral(answer)
            answer = self.user.wait_response(result, timeout=self.pace.step_timeout)
        self.screen.ephemeral(answer)
        return answer

    def check(self, description: str, ok: bool) -> None:
        self.checks.append((description, ok))

    # -- the acts

    def look_up(self) -> None:
        self.screen.act(1, "Look an import up")
        self.harness.sim.add_import(MOVING_TOKEN, name=MOVING_NAME, status="Initiated")
        answer = self.command(str(MOVING_TOKEN))
        text = str(answer.get("text", ""))
        self.check(
            f"the lookup of import {MOVING_TOKEN} showed its name and status",
            MOVING_NAME in text and "Initiated" in text,
        )
        self.watch_screen(self.pace.pause_seconds)

    def watch_moving_import(self) -> None:
        self.screen.act(2, "Watch it in the channel")
        self.harness.emulator.create_channel(
            ALERT_CHANNEL_ID, name=ALERT_CHANNEL_NAME, invite_bot=True
        )
        self.screen.narrate(
            f"first, failures and expiry warnings should also reach #{ALERT_CHANNEL_NAME} "
            "(the bot is a member there)"
        )
        answer = self.command(f"set alerts <#{ALERT_CHANNEL_ID}|{ALERT_CHANNEL_NAME}>")
        self.check(
            f"the alerts setting was saved (#{ALERT_CHANNEL_NAME})",
            "Saved" in str(answer.get("blocks", "")),
        )
        answer = self.command(f"watch {MOVING_TOKEN}")
        self.check(
            f"watching import {MOVING_TOKEN} was confirmed",
            f"Watching import {MOVING_TOKEN}" in str(answer.get("text", "")),
        )
        self.wait_until(
            lambda: MOVING_TOKEN in self.screen.cards,
            self.pace.step_timeout,
            f"no tracking card for import {MOVING_TOKEN} appeared in the channel",
        )
        self.check(f"a tracking card for import {MOVING_TOKEN} was posted", True)
        self.watch_screen(self.pace.pause_seconds)

    def run_moving_import(self) -> None:
        self.screen.act(3, f"Import {MOVING_TOKEN} runs to the end")
        for change in moving_import_changes():
            started = time.monotonic()
            self.screen.narrate(f"MyPreferences: import {MOVING_TOKEN}: {change.caption}")
            self.harness.sim.update(MOVING_TOKEN, **change.fields)
            self.wait_until(
                self.posted(change.expect),
                self.pace.step_timeout,
                f"the bot did not post: {describe(change.expect)}",
            )
            self.watch_screen(self.pace.step_seconds - (time.monotonic() - started))
        # The final edit says the watch ended; show it if it comes, the check is elsewhere.
        self.wait_until(
            lambda: "No longer watching" in self.screen.cards[MOVING_TOKEN].text,
            self.pace.step_timeout / 2,
            fail=None,
        )
        self.screen.full_card(MOVING_TOKEN)
        self.watch_screen(self.pace.pause_seconds)

    def keep_exceptions(self) -> None:
        self.screen.act(4, "The failed records are kept before the token expires")
        card = self.screen.cards[MOVING_TOKEN]
        files = self.harness.emulator.files
        self.screen.narrate(
            f"import {MOVING_TOKEN} ended with failures: the bot pages through Retrieve "
            "exceptions and posts a CSV (personal data masked) into the card's thread"
        )
        self.wait_until(
            lambda: bool(files.shared(CHANNEL_ID, card.ts)),
            self.pace.step_timeout,
            f"no exceptions file appeared in the thread of import {MOVING_TOKEN}",
        )
        shared = files.shared(CHANNEL_ID, card.ts)
        self.show_file(shared[0])
        self.wait_until(
            lambda: (
                "Exceptions:" in self.screen.cards[MOVING_TOKEN].text
                or "Exceptions:" in str(self.screen.cards[MOVING_TOKEN].blocks)
            ),
            self.pace.step_timeout / 2,
            fail=None,
        )
        self.check(
            f"one exceptions file was posted into the thread of import {MOVING_TOKEN}",
            len(files.shared(CHANNEL_ID, card.ts)) == 1,
        )
        answer = self.command(f"exceptions {MOVING_TOKEN}")
        dm = files.shared("D" + USER_ID[1:])
        if dm:
            self.screen.line(
                f"{self.screen.stamp()} {self.screen.style.dim('in your direct messages:')}"
            )
            self.show_file(dm[-1], comment=False)
        self.check(
            "asked privately, the summary came back and the file went to the direct message",
            "Top reasons" in str(answer.get("text", "")) and len(dm) == 1,
        )
        self.watch_screen(self.pace.pause_seconds)

    def show_file(self, shared: Any, comment: bool = True) -> None:
        """A posted file: its name, size and first rows (as the CSV holds them)."""
        rows = shared.rows()
        records = sum(1 for row in rows[1:] if row and not row[0].startswith("#"))
        self.screen.line(
            f"{self.screen.stamp()} ▤ file {shared.filename} ({len(shared.data):,} bytes, "
            f"{records:,} records):"
        )
        widths = [min(22, max(len(row[i]) for row in rows[:4])) for i in range(len(rows[0]))]
        for row in rows[:4]:
            cells = [cell[:22].ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.screen.line("     " + self.screen.style.dim(" ".join(cells)[:110]))
        self.screen.line("     " + self.screen.style.dim("…"))

    def expire_second_import(self) -> None:
        self.screen.act(5, f"Import {EXPIRING_TOKEN}'s access token runs out")
        # Whole seconds: the API serves Expires without fractions.
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(
            seconds=self.pace.expiry_seconds + 1
        )
        self.harness.sim.add_import(
            EXPIRING_TOKEN,
            name=EXPIRING_NAME,
            status="Staging",
            expires=expires,
            TotalRecordsReceived=3_400,
        )
        self.screen.narrate(
            f"MyPreferences: import {EXPIRING_TOKEN} is Staging; its token expires in "
            f"{self.pace.expiry_seconds} s (the bot warns {self.pace.warning_seconds:g} s ahead)"
        )
        answer = self.command(f"watch {EXPIRING_TOKEN}")
        self.check(
            f"watching import {EXPIRING_TOKEN} was confirmed",
            f"Watching import {EXPIRING_TOKEN}" in str(answer.get("text", "")),
        )
        timeout = self.pace.expiry_seconds + self.pace.step_timeout
        for kind in ("expiry warning", "expired"):
            key: EventKey = (kind, EXPIRING_TOKEN, "")
            self.wait_until(
                self.posted(key),
                timeout,
                f"the bot did not post: {describe(key)}",
            )
        self.wait_until(
            lambda: "No longer watching" in self.screen.cards[EXPIRING_TOKEN].text,
            self.pace.step_timeout / 2,
            fail=None,
        )
        self.screen.full_card(EXPIRING_TOKEN)
        self.watch_screen(self.pace.pause_seconds)

    def list_watches(self) -> None:
        # The last alert (expiry) may still be on its way; show it when it comes.
        self.wait_until(
            lambda: self.screen.alerts >= EXPECTED_ALERTS, self.pace.step_timeout / 2, fail=None
        )
        self.screen.act(6, "What is this channel still watching?")
        answer = self.command("list")
        self.check(
            "the list shows nothing is watched any more",
            "not watching any import" in str(answer.get("text", "")),
        )

    def verify(self) -> list[str]:
        """Every problem with the story as told; empty when it is complete."""
        counts = count_notifications(self.harness.emulator.all_messages())
        results = list(self.checks)
        calls = self.harness.emulator.requests
        limited = sum(1 for call in calls if call.status_code == 429)
        results.append(
            (
                f"Slack's rate limits were kept ({len(calls)} Web API calls, {limited} refused)",
                limited == 0,
            )
        )
        alerts = [m for m in self.harness.emulator.all_messages() if m.channel == ALERT_CHANNEL_ID]
        results.append(
            (
                f"#{ALERT_CHANNEL_NAME} got one alert per failure and expiry warning "
                f"({len(alerts)} of {EXPECTED_ALERTS})",
                len(alerts) == EXPECTED_ALERTS,
            )
        )
        for key in expected_notifications():
            n = counts[key]
            suffix = "" if n == 1 else (" (never posted)" if n == 0 else f" (posted {n} times)")
            results.append((describe(key) + " posted once" + suffix, n == 1))
        self.screen.act(7, "Story check")
        for description, ok in results:
            mark = self.screen.style.green("✔") if ok else self.screen.style.red("✘")
            self.screen.line(f"   {mark} {description}")
        return [description for description, ok in results if not ok]


# --------------------------------------------------------------------------- running it


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so clean-up runs either way (main thread only)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_tail(harness: Harness | None, lines: int = LOG_TAIL_LINES) -> str:
    if harness is None or not harness.bots:
        return ""
    return "\n".join(harness.bots[0].log_text().splitlines()[-lines:])


def _tell(screen: Screen, harness: Harness, user: SlackUser, pace: Pace, deadline: float) -> int:
    story = Story(harness, user, screen, pace, deadline)
    failure: str | None = None
    try:
        story.look_up()
        story.watch_moving_import()
        story.run_moving_import()
        story.keep_exceptions()
        story.expire_second_import()
        story.list_watches()
    except StoryFailed as exc:
        failure = str(exc)
    problems = story.verify()
    elapsed = time.monotonic() - screen.started
    if problems or failure is not None:
        screen.line()
        screen.line(screen.style.red(f"The story is incomplete after {elapsed:.1f} s."))
        if failure is not None:
            screen.line(f"It stopped waiting because {failure}.")
        if problems:
            screen.line("Missing:")
        for problem in problems:
            screen.line(f"  - {problem}")
        return ExitCode.INCOMPLETE
    screen.line()
    screen.line(screen.style.green(f"The story is complete ({elapsed:.1f} s)."))
    return ExitCode.OK


def run_demo(fast: bool = False, out: TextIO | None = None) -> int:
    """Run the demo; 0 when the story is complete, 1 when it is not, 130 on Ctrl-C."""
    stream = out or sys.stdout
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")  # a terminal without ▓ or ✔ still gets the story
    pace = FAST if fast else NORMAL
    started = time.monotonic()
    screen = Screen(stream, Style.for_stream(stream), started)
    screen.line(screen.style.bold("import-status-bot demo"))
    screen.line(
        "The real bot, between a MyPreferences simulator and a Slack emulator on this "
        "machine.\nWhat you see below is what the person and the channel see in Slack."
    )
    harness: Harness | None = None
    code: int = ExitCode.INCOMPLETE
    with (
        _sigterm_as_interrupt(),
        tempfile.TemporaryDirectory(
            prefix="import-status-bot-demo-", ignore_cleanup_errors=True
        ) as workdir,
    ):
        try:
            harness = Harness(
                Path(workdir),
                poll_interval=pace.poll_interval,
                quiet_logs=True,
                env={
                    "IDLE_POLL_INTERVAL_SECONDS": str(pace.poll_interval),
                    "EXPIRY_WARNING_MINUTES": str(pace.warning_minutes),
                },
            )
            bot = harness.start_bot()
            screen.narrate(
                f"simulator {harness.sim_server.url}, Slack emulator "
                f"{harness.slack_server.url}, bot {bot.url} (pid {bot.pid})"
            )
            with harness.user(bot, channel_id=CHANNEL_ID, user_id=USER_ID) as user:
                code = _tell(screen, harness, user, pace, started + STORY_BUDGET_SECONDS)
        except KeyboardInterrupt:
            screen.line()
            screen.line("Interrupted: stopping the bot and cleaning up.")
            code = ExitCode.INTERRUPTED
        except Exception as exc:
            screen.line()
            screen.line(screen.style.red(f"The demo failed: {type(exc).__name__}: {exc}"))
            traceback.print_exc(file=sys.stderr)
            code = ExitCode.INCOMPLETE
        finally:
            if code == ExitCode.INCOMPLETE:
                tail = _log_tail(harness)
                if tail:
                    screen.line(f"The bot's log (last {LOG_TAIL_LINES} lines):")
                    screen.line(tail)
            if harness is not None:
                harness.close()
    return code
