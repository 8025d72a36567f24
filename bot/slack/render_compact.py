"""The one-line tracking card, for channels with ``compact on``.

Pure, like ``render``: one section (status, name, progress, time left, expiry,
who watches) with one button beside it, so a busy channel spends one line per
import. Everything from outside is escaped and the line is cut to Slack's
section limit, so it is valid Block Kit whatever the import is called. The
replies' one-line form is ``render.event_message`` with a compact route.
"""

from __future__ import annotations

import math
from datetime import datetime

from bot.domain.format import format_count, format_duration, progress_bar
from bot.domain.status import ImportStatus
from bot.slack.render import (
    ACTION_REFRESH,
    ACTION_UNWATCH,
    STATUS_MARKERS,
    Message,
    _button,
    _mention,
    _message,
    _mrkdwn,
    _name_mrkdwn,
    _status_fallback,
    _with_mentions,
    escape,
    slack_date,
)

_NAME_LIMIT = 80


def compact_card(
    status: ImportStatus | None,
    access_token: int,
    now: datetime,
    *,
    subscriber_id: str,
    eta_seconds: float | None = None,
    ended_reason: str | None = None,
    exceptions_line: str | None = None,
) -> Message:
    """The tracking card in one line; the arguments are ``render.tracking_card``'s."""
    del now  # like the full card, nothing here depends on when it is drawn
    parts = [_headline(status, access_token)]
    if status is not None:
        progress = status.progress
        if status.status.is_active and progress is not None:
            parts.append(
                f"{progress_bar(progress, width=10)} ({format_count(status.done)} of "
                f"{format_count(status.validation_successful)})"
            )
        if (
            eta_seconds is not None
            and math.isfinite(eta_seconds)
            and eta_seconds >= 0
            and not status.status.is_terminal
        ):
            parts.append(f"about {format_duration(eta_seconds)} left")
        if status.status.is_terminal:
            parts.append(
                f"{format_count(status.processed)} processed, "
                f"{format_count(status.exceptions)} exceptions"
            )
        elif status.expires is not None:
            parts.append(f"token expires {slack_date(status.expires)}")
    if exceptions_line:
        parts.append(" ".join(exceptions_line.split()))  # bot-written: kept on one line
    if ended_reason:
        parts.append(f":no_bell: no longer watching: {_with_mentions(ended_reason)}")
    parts.append(f"watched by {_mention(subscriber_id)}")
    line = " · ".join(parts)
    section = {"type": "section", "text": _mrkdwn(line)}
    if ended_reason:
        section["accessory"] = _button("Refresh", ACTION_REFRESH, access_token)
    else:
        section["accessory"] = _button("Stop watching", ACTION_UNWATCH, access_token)
    if status is None:
        fallback = f"Import {access_token}: waiting for the first status"
    else:
        fallback = _status_fallback(status)
    if ended_reason:
        fallback += f". No longer watching: {_with_mentions(ended_reason)}"
    return _message(fallback, [section])


def _headline(status: ImportStatus | None, access_token: int) -> str:
    if status is None:
        return f":hourglass_flowing_sand: Import {access_token}: waiting for the first status"
    marker = STATUS_MARKERS[status.status]
    if status.status_text and marker.endswith("Unknown"):
        marker += f" (“{escape(status.status_text, limit=60)}”)"
    return f"{marker} *{_name_mrkdwn(status.name, _NAME_LIMIT)}* ({access_token})"
