"""The status of an import as plain text, for the terminal (`status` and `demo`)."""

from __future__ import annotations

from datetime import datetime

from bot.domain.format import format_count, progress_bar, relative_time
from bot.domain.status import STATUS_LOOKS, ImportStatus, Status


def status_label(status: ImportStatus) -> str:
    """The status with its terminal symbol, and what the API said when it was unreadable."""
    label = f"{STATUS_LOOKS[status.status].symbol} {status.status.value}"
    if status.status is Status.UNKNOWN and status.status_text:
        label += f" ({status.status_text!r})"
    return label


def format_status(status: ImportStatus, now: datetime) -> str:
    """A readable multi-line summary; control characters from the API are removed."""
    name = _printable(status.name) if status.name else "Unnamed import"
    lines = [
        f"{name}  (import {status.access_token})",
        f"  Status:            {status_label(status)}",
        f"  Received:          {format_count(status.total_records_received)}",
        f"  Validated OK:      {format_count(status.validation_successful)}",
        f"  Validation failed: {format_count(status.validation_failed)}",
        f"  Processed:         {format_count(status.processed)}",
        f"  Pending:           {format_count(status.pending)}",
        f"  Exceptions:        {format_count(status.exceptions)}",
        f"  Not honoured:      {format_count(status.not_honored)}",
    ]
    if status.status.is_active and status.progress is not None:
        lines.append(f"  Progress:          {progress_bar(status.progress)}")
    if status.expires is not None:
        when = status.expires.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(f"  Token expires:     {relative_time(status.expires, now)} ({when})")
    elif status.expires_text:
        lines.append(f"  Token expires:     {_printable(status.expires_text)} (could not be read)")
    else:
        lines.append("  Token expires:     unknown")
    return "\n".join(lines)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text)
