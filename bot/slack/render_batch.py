"""A batch's tracking card and the reply that sums it up when it ends.

Pure, like ``render``. The card shows the sums of its imports' counts, the
combined progress (records done over records validated, all imports together,
so it is exactly the sum of the lines below it), when the last import should
finish, and one line per import; ``compact`` makes it one line. Everything from
outside is escaped; long lists are packed into sections under Slack's limits.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from bot.domain.batch import COUNTS, BatchMember, BatchSummary
from bot.domain.format import format_count, format_duration, progress_bar
from bot.domain.history import Outcome, failed_records
from bot.domain.routing import Route
from bot.domain.status import STATUS_ORDER, Status
from bot.slack.render import (
    FIELD_TEXT_LIMIT,
    MAX_FIELDS,
    STATUS_MARKERS,
    Message,
    _context,
    _header,
    _mention,
    _message,
    _mrkdwn,
    _name_mrkdwn,
    _section,
    _with_mentions,
    slack_date,
)
from bot.slack.render_reports import _OUTCOME_MARKERS, _sections

_NAME_LIMIT = 80
_STATUS_ORDER = (*STATUS_ORDER, Status.UNKNOWN)


def batch_title(summary: BatchSummary) -> str:
    return f"Batch of {len(summary.members)} imports"


def batch_card(
    summary: BatchSummary,
    now: datetime,
    *,
    subscriber_id: str,
    subscribed_at: datetime,
    ended_reason: str | None = None,
    compact: bool = False,
) -> Message:
    """The batch's one card, edited in place as its imports move.

    ``ended_reason`` is bot-written text (it may mention who stopped it) when the
    batch was stopped before its imports ended; a batch whose imports all ended
    says so by itself.
    """
    del now  # like a single card, nothing here depends on when it is drawn
    tokens = " ".join(str(m.access_token) for m in summary.members)
    fallback = f"{batch_title(summary)}: {_tally(summary, marks=False)}; " + (
        f"{format_count(summary.done)} of {format_count(summary.validated)} records done"
    )
    over = _over(summary, ended_reason)
    if over:
        fallback += f". {over}"
    if compact:
        parts = [f":package: *{batch_title(summary)}*"]
        if summary.progress is not None:
            parts.append(f"{progress_bar(summary.progress, width=10)} {_done_of(summary)}")
        parts.append(_tally(summary, marks=True))
        eta = _eta(summary)
        if eta:
            parts.append(eta)
        if over:
            parts.append(over)
        parts.append(f"watched by {_mention(subscriber_id)}")
        return _message(fallback, [_section(" · ".join(parts))])
    blocks: list[dict[str, Any]] = [
        _header(batch_title(summary)),
        _section(f"*Status:* {_tally(summary, marks=True)}"),
        _fields(summary),
    ]
    progress = []
    if summary.progress is not None:
        progress.append(
            f"{progress_bar(summary.progress)}  {_done_of(summary)}, all imports together"
        )
    eta = _eta(summary)
    if eta:
        progress.append(f"{eta[0].upper()}{eta[1:]} (when the last import should finish)")
    if progress:
        blocks.append(_section("\n".join(progress)))
    blocks += _sections(member_line(m) for m in summary.members)
    if over:
        blocks.append(_section(over))
    blocks.append(
        _context(
            f"Watched by {_mention(subscriber_id)} since {slack_date(subscribed_at)}"
            + ("" if over else f" · `/import-status unwatch {tokens}` stops it")
        )
    )
    return _message(fallback, blocks)


def member_line(member: BatchMember) -> str:
    """One import of the batch: how it stands, or how it ended."""
    status = member.status
    name = _name_mrkdwn(status.name if status else None, _NAME_LIMIT)
    head = f"{name} ({member.access_token})"
    outcome = member.outcome
    if outcome is not None:
        marker = _OUTCOME_MARKERS[outcome]
        if outcome in (Outcome.COMPLETED, Outcome.FAILED) and status is not None:
            return (
                f"{marker}: {head} · {format_count(status.processed)} processed, "
                f"{format_count(failed_records(status))} failed records"
            )
        return f"{marker}: {head}"
    if status is None:
        return f":white_circle: {head} · not checked yet"
    line = f"{STATUS_MARKERS[status.status]}: {head}"
    if status.progress is not None:
        line += (
            f" · {progress_bar(status.progress, width=10)} ({format_count(status.done)} of "
            f"{format_count(status.validation_successful)})"
        )
    return line


def batch_summary_message(summary: BatchSummary, route: Route) -> Message:
    """The one reply when every import of the batch has ended (mentioning as ``route`` says)."""
    processed = summary.total("processed")
    failed = sum(failed_records(m.status) for m in summary.members)
    text = (
        f":checkered_flag: All {len(summary.members)} imports of this batch have ended: "
        f"{_tally(summary, marks=False)}. {format_count(processed)} records processed, "
        f"{format_count(failed)} failed records."
    )
    if route.broadcast and route.mention:
        text = f"{route.mention} {text}"  # bot-made mrkdwn (bot.domain.settings)
    return _message(text, [_section(text)])


# --- pieces ---------------------------------------------------------------------------


def _tally(summary: BatchSummary, *, marks: bool) -> str:
    """ "2 processing, 1 completed": the watched imports by status, the others by outcome."""
    parts: list[str] = []
    statuses = summary.statuses
    for status in _STATUS_ORDER:
        if statuses[status]:
            marker = f"{STATUS_MARKERS[status].split(' ')[0]} " if marks else ""
            parts.append(f"{marker}{statuses[status]} {status.value.lower()}")
    outcomes = summary.outcomes
    for outcome in Outcome:
        if outcomes[outcome]:
            marker = f"{_OUTCOME_MARKERS[outcome].split(' ')[0]} " if marks else ""
            parts.append(f"{marker}{outcomes[outcome]} {outcome.value.lower()}")
    return ", ".join(parts) if parts else "nothing known yet"


def _fields(summary: BatchSummary) -> dict[str, Any]:
    fields = [
        _mrkdwn(f"*{label}*\n{format_count(summary.total(attribute))}", FIELD_TEXT_LIMIT)
        for label, attribute in COUNTS
    ]
    return {"type": "section", "fields": fields[:MAX_FIELDS]}


def _done_of(summary: BatchSummary) -> str:
    return f"{format_count(summary.done)} of {format_count(summary.validated)} records"


def _eta(summary: BatchSummary) -> str:
    eta = summary.eta_seconds
    if eta is None or summary.ended or not math.isfinite(eta) or eta < 0:
        return ""
    return f"about {format_duration(eta)} left"


def _over(summary: BatchSummary, ended_reason: str | None) -> str:
    if ended_reason:
        return f":no_bell: No longer watching: {_with_mentions(ended_reason)}"
    if summary.ended:
        return ":checkered_flag: Every import of this batch has ended."
    return ""
