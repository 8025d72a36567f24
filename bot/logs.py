"""Logging: one line per event, text or JSON, with secrets redacted at the logging layer.

Redaction lives in a handler filter, so it covers every logger (ours, Bolt's,
httpx's, uvicorn's) and every part of a record: message, arguments, extra
fields and tracebacks.

No outside text can forge a line. In the text format every field is written
with its line breaks and other control characters escaped (``\n``, ``\x1b``,
``\u2028``), so a record is one line that starts with its timestamp; the only
continuation lines are a traceback's, and each of them is indented. The JSON
format is one object per line, with the Unicode line separators escaped too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

REDACTED = "[REDACTED]"
# Where the process listens is logged whatever LOG_LEVEL says: supervisors and the
# test harness read that line to find the port (PORT=0 picks a free one).
STARTUP_LOGGER = "bot.startup"
# Extra fields our log calls attach; shown as key=value in text and as keys in JSON.
CONTEXT_FIELDS = ("token", "team", "channel", "user", "event", "subscription", "failures")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
# Characters that break a line or hide text in a terminal: C0 and C1 controls, the
# Unicode line and paragraph separators, and the invisible format characters
# (zero-width, bidirectional overrides, BOM) that can make one line look like two.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# The line breaks a traceback is split on (each piece is then escaped on its own).
_NEWLINES = re.compile(r"\r\n|\r|\n")
# JSON leaves these unescaped (they are valid in strings), yet many readers split lines on them.
_JSON_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def one_line(text: str) -> str:
    """``text`` with every line break and control character escaped, so it stays one line."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _context_value(value: object) -> str:
    """A context field's value for ``key=value``: quoted when it could pass for more fields."""
    text = one_line(str(value))
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


class RedactSecrets(logging.Filter):
    """Replace every configured secret with [REDACTED] before a record is written."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:
            # A log call whose arguments do not fit its format string: logging itself
            # would report it and go on, so a filter must not raise into the caller.
            message = f"{record.msg} {record.args!r}"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = self.redact(message), None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD or isinstance(value, int | float | bool | None):
                continue
            # The formatters show any other extra value with str(): redact that text.
            try:
                text = value if isinstance(value, str) else str(value)
            except Exception:
                text = f"<unprintable {type(value).__name__}>"
            setattr(record, key, self.redact(text))
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` on one line; a traceback below, indented."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = one_line(self.formatMessage(record))
        context = " ".join(
            f"{key}={_context_value(getattr(record, key))}"
            for key in CONTEXT_FIELDS
            if hasattr(record, key)
        )
        if context:
            line = f"{line} {context}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        for block in (record.exc_text, record.stack_info and self.formatStack(record.stack_info)):
            if block:
                # Indented: a line of the log that starts at column 0 is always a record.
                line += "".join(f"\n  {one_line(part)}" for part in _NEWLINES.split(block))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info or record.exc_text:
            data["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json.dumps(data, ensure_ascii=False).translate(_JSON_LINE_BREAKS)


def setup_logging(level: str, fmt: str, secrets: Iterable[str]) -> None:
    """Configure the root logger once: stderr, the chosen format, secrets redacted."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request URL at INFO; that is noise at 200 requests a second.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
    # Alembic names each plugin it registers at import time, at INFO: noise, and the
    # bot imports it only after logging is set up (a bad setting is told sooner).
    logging.getLogger("alembic.runtime.plugins").setLevel(max(logging.WARNING, root.level))
    logging.getLogger(STARTUP_LOGGER).setLevel(min(logging.INFO, root.level))
