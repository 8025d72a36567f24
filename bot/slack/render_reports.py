"""Looking back and around: the history message, the daily digest and the App Home tab.

Pure, like ``render``. Links to threads come in as ``links`` (see
``link_key``), fetched beforehand by whoever calls; a watch whose link is
unknown is shown without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bot.domain.digest import DigestSummary
from bot.domain.format import format_count, format_duration, progress_bar
from bot.domain.history import ActiveWatch, FinishedWatch, Outcome
from bot.domain.status import Status
from bot.slack.render import (
    MAX_BLOCKS,
    SECTION_TEXT_LIMIT,
    STATUS_MARKERS,
    Message,
    _context,
    _fit,
    _header,
    _mention,
    _message,
    _name_mrkdwn,
    _plain,
    _section,
    _slack_len,
    slack_date,
)

HOME_MAX_BLOCKS = 100
HOME_RECENT = 10
HOME_MINE_MAX = 20  # one block (and one button) each
HOME_ACTIVE_MAX = 40
DIGEST_MAX_LINES = 30  # per part: finished, still running

ACTION_HOME_REFRESH = "home_refresh"
ACTION_HOME_UNWATCH = "home_unwatch"

_OUTCOME_MARKERS = {
    Outcome.COMPLETED: STATUS_MARKERS[Status.COMPLETED],
    Outcome.FAILED: STATUS_MARKERS[Status.FAILED],
    Outcome.EXPIRED: ":hourglass: Expired",
    Outcome.STOPPED: ":no_bell: Stopped",
}


def link_key(channel_id: str, ts: str) -> str:
    """The key of a thread's link in ``links``."""
    return f"{channel_id}/{ts}"


def home_unwatch_value(channel_id: str, access_token: int) -> str:
    """The value of a Home tab's Stop watching button: which channel, which import."""
    return f"{channel_id}:{access_token}"


def parse_home_unwatch_value(value: str) -> tuple[str, str] | None:
    """(channel, token text) from a Stop watching button on the Home tab, or None."""
    channel, sep, token = value.partition(":")
    return (channel, token) if sep and channel and token else None


# --- Pieces -----------------------------------------------------------------------------


def _thread_link(links: dict[str, str], channel_id: str, ts: str | None) -> str:
    url = links.get(link_key(channel_id, ts)) if ts else None
    # Our own links (from Slack); the label is ours too. A "|" or ">" would break the link.
    if url and not any(ch in url for ch in "<>| "):
        return f"<{url}|thread>"
    return ""


def _counts(watch: FinishedWatch) -> str:
    status = watch.status
    if status is None:
        return "counts unknown"
    return (
        f"{format_count(status.processed)} processed, {format_count(status.exceptions)} "
        f"exceptions, {format_count(status.not_honored)} not honoured, "
        f"{format_count(status.validation_failed)} failed validation"
    )


def _outcome(watch: FinishedWatch) -> str:
    marker = _OUTCOME_MARKERS[watch.outcome]
    if watch.outcome is Outcome.STOPPED and watch.ended_reason:
        # Written by the bot (it may mention who unwatched): trusted, only cut.
        marker += f" ({_fit(watch.ended_reason, 120)})"
    return marker


def _finished_line(watch: FinishedWatch, links: dict[str, str], *, channel: bool) -> str:
    parts = [
        f"• {_outcome(watch)}: {_name_mrkdwn(watch.name, 80)} ({watch.access_token})",
        _counts(watch),
        f"took {format_duration(watch.seconds)}",
        f"ended {slack_date(watch.ended_at)}",
    ]
    if channel:
        parts.append(f"in <#{watch.channel_id}>")
    link = _thread_link(links, watch.channel_id, watch.tracking_ts)
    if link:
        parts.append(link)
    return " · ".join(parts)


def _running_line(watch: ActiveWatch, links: dict[str, str], *, channel: bool) -> str:
    status = watch.status
    marker = STATUS_MARKERS[status.status] if status is not None else "not checked yet"
    parts = [f"• {marker}: {_name_mrkdwn(watch.name, 80)} ({watch.access_token})"]
    if status is not None and status.progress is not None:
        parts.append(
            f"{progress_bar(status.progress, width=10)} ({format_count(status.done)} of "
            f"{format_count(status.validation_successful)})"
        )
    if channel:
        parts.append(f"in <#{watch.channel_id}>")
    link = _thread_link(links, watch.channel_id, watch.tracking_ts)
    if link:
        parts.append(link)
    return " · ".join(parts)


def _sections(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Lines packed into as few sections as fit Slack's 3,000-character limit."""
    blocks: list[dict[str, Any]] = []
    chunk = ""
    for line in lines:
        line = _fit(line, SECTION_TEXT_LIMIT)
        candidate = f"{chunk}\n{line}" if chunk else line
        if chunk and _slack_len(candidate) > SECTION_TEXT_LIMIT:
            blocks.append(_section(chunk))
            candidate = line
        chunk = candidate
    if chunk:
        blocks.append(_section(chunk))
    return blocks


def _capped(lines: list[str], limit: int) -> tuple[list[str], int]:
    return lines[:limit], max(0, len(lines) - limit)


# --- History ------------------------------------------------------------------------------


def history_message(
    watches: list[FinishedWatch], links: dict[str, str], *, note: str | None = None
) -> Message:
    """The channel's last finished watches, newest first (ephemeral)."""
    if not watches:
        text = "This channel has no finished watches yet."
        if note:
            text = f"{note}\n{text}"
        return _message(text, [_section(text)])
    noun = "watch" if len(watches) == 1 else "watches"
    title = f"*The last {len(watches)} finished {noun} in this channel*"
    if note:
        title = f"{note}\n{title}"
    lines = [_finished_line(w, links, channel=False) for w in watches]
    blocks = [_section(title), *_sections(lines)]
    summary = ", ".join(f"{w.access_token} ({w.outcome.value})" for w in watches)
    return _message(f"Last {len(watches)} finished {noun}: {summary}", blocks[:MAX_BLOCKS])


# --- The daily digest -------------------------------------------------------------------------


def digest_message(summary: DigestSummary, links: dict[str, str]) -> Message:
    """One channel's day: what finished, how many records, what still runs."""
    totals = (
        f"{summary.count(Outcome.COMPLETED)} completed, {summary.count(Outcome.FAILED)} failed, "
        f"{summary.count(Outcome.EXPIRED)} expired · {format_count(summary.processed)} records "
        f"processed · {format_count(summary.failures)} failed records"
    )
    blocks: list[dict[str, Any]] = [
        _header(f"Daily import digest · {summary.day:%Y-%m-%d}"),
        _section(f"*Last 24 hours:* {totals}"),
    ]
    if summary.finished:
        lines = [_finished_line(w, links, channel=False) for w in reversed(summary.finished)]
        shown, hidden = _capped(lines, DIGEST_MAX_LINES)
        blocks += [_section("*Finished*"), *_sections(shown)]
        if hidden:
            blocks.append(_context(f"and {hidden} more"))
    if summary.running:
        lines = [_running_line(w, links, channel=False) for w in summary.running]
        shown, hidden = _capped(lines, DIGEST_MAX_LINES)
        blocks += [_section(f"*Still running ({len(summary.running)})*"), *_sections(shown)]
        if hidden:
            blocks.append(_context(f"and {hidden} more"))
    blocks.append(_context(f"From {slack_date(summary.since)} to {slack_date(summary.until)}"))
    running = f"; {len(summary.running)} still running" if summary.running else ""
    return _message(f"Daily import digest: {totals}{running}", blocks[:MAX_BLOCKS])


# --- App Home ---------------------------------------------------------------------------------


def _home_button(label: str, action_id: str, value: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": _plain(label, 75),
        "action_id": action_id,
        "value": value,
    }


def home_view(
    user_id: str,
    *,
    mine: list[ActiveWatch],
    active: list[ActiveWatch],
    recent: list[FinishedWatch],
    links: dict[str, str],
    now: datetime,
    denial: str | None = None,
) -> dict[str, Any]:
    """The Home tab for one person: their watches, the workspace's, the last outcomes."""
    blocks: list[dict[str, Any]] = [_header("MyPreferences imports")]
    if denial:
        blocks.append(_section(denial))
        return {"type": "home", "blocks": blocks}
    blocks.append(
        {
            "type": "actions",
            "block_id": "home_actions",
            "elements": [_home_button("Refresh", ACTION_HOME_REFRESH, "refresh")],
        }
    )
    blocks.append(_section(f"*Imports you watch ({len(mine)})*"))
    if not mine:
        blocks.append(_context("None. In a channel, `/import-status watch TOKEN` starts a watch."))
    for watch in mine[:HOME_MINE_MAX]:
        block = _section(_running_line(watch, links, channel=True))
        block["accessory"] = _home_button(
            "Stop watching",
            ACTION_HOME_UNWATCH,
            home_unwatch_value(watch.channel_id, watch.access_token),
        )
        blocks.append(block)
    if len(mine) > HOME_MINE_MAX:
        blocks.append(_context(f"and {len(mine) - HOME_MINE_MAX} more"))
    blocks.append({"type": "divider"})
    blocks.append(_section(f"*Active in this workspace ({len(active)})*"))
    if active:
        shown, hidden = _capped(
            [_running_line(w, links, channel=True) for w in active], HOME_ACTIVE_MAX
        )
        blocks += _sections(shown)
        if hidden:
            blocks.append(_context(f"and {hidden} more"))
    else:
        blocks.append(_context("No import is being watched right now."))
    blocks.append({"type": "divider"})
    blocks.append(_section(f"*Last {HOME_RECENT} outcomes*"))
    if recent:
        blocks += _sections(_finished_line(w, links, channel=True) for w in recent[:HOME_RECENT])
    else:
        blocks.append(_context("No watch has finished yet."))
    blocks.append(_context(f"Updated {slack_date(now)} for {_mention(user_id)}"))
    return {"type": "home", "blocks": blocks[:HOME_MAX_BLOCKS]}
