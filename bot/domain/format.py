"""How numbers, durations, times and progress are written, wherever they are shown.

Pure functions, shared by the Slack messages and the terminal.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def format_count(n: int | None) -> str:
    """A record count with thousands separators; ``None`` is "unknown"."""
    return "unknown" if n is None else f"{n:,}"


def format_duration(seconds: float) -> str:
    """A compact duration with at most two units: "45 s", "3 min", "3 h 10 min", "2 d 4 h".

    Rounds down; negative values count as 0 and non-finite ones are "unknown".
    """
    if not math.isfinite(seconds):
        return "unknown"
    total = max(0, int(seconds))
    if total < 60:
        return f"{total} s"
    minutes = total // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def as_utc(when: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def relative_time(when: datetime, now: datetime) -> str:
    """How far ``when`` is from ``now``: "in 3 h 10 min", "3 h 10 min ago" or "now"."""
    delta = (as_utc(when) - as_utc(now)).total_seconds()
    if abs(delta) < 1:
        return "now"
    if delta > 0:
        return f"in {format_duration(delta)}"
    return f"{format_duration(-delta)} ago"


def floor_percent(fraction: float) -> int:
    """Whole percent, rounded down; only a finished import (1.0) shows 100."""
    if not math.isfinite(fraction) or fraction <= 0:
        return 0
    if fraction >= 1:
        return 100
    # The epsilon keeps 0.29 (28.999… in binary) at 29; the cap keeps 99.99…% at 99.
    return min(99, math.floor(fraction * 100 + 1e-9))


def progress_bar(fraction: float, width: int = 20) -> str:
    """A text progress bar with a floored percentage: "▓▓▓▓▓▓░░░░░░░░░░░░░░ 30%"."""
    percent = floor_percent(fraction)
    filled = width if percent == 100 else min(width - 1, math.floor(percent * width / 100))
    filled = max(0, filled)
    return "▓" * filled + "░" * (width - filled) + f" {percent}%"
