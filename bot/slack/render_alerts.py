"""The message an alert channel gets: one per failure or expiry warning, linking to the thread.

Pure, like ``render``. The words are the thread reply's (``render.event_message``),
so the alert channel reads what the watching channel reads, with the mention the
watching channel chose, and a line saying where the import is watched with a
link to its card's thread.
"""

from __future__ import annotations

from datetime import datetime

from bot.domain.events import Event
from bot.domain.routing import Route
from bot.domain.status import ImportStatus
from bot.slack.render import Message, _context, _message, _section, event_message


def alert_message(
    event: Event,
    status: ImportStatus | None,
    *,
    source_channel: str,
    link: str | None,
    mention: str | None,
    subscriber_id: str,
    now: datetime,
    compact: bool = False,
) -> Message:
    """The alert about ``event`` of an import watched in ``source_channel``.

    ``link`` is the card's thread URL (from Slack, or None when unknown);
    ``mention`` bot-made mrkdwn (``bot.domain.settings.Mention.markup``) or None.
    """
    route = Route(reply=True, broadcast=True, mention=mention, compact=compact, in_batch=True)
    body = event_message(event, status, subscriber_id, now, route=route)
    where = f"Watched in <#{source_channel}>"
    if link and not any(ch in link for ch in "<>| ") and link.startswith("https://"):
        where += f" · <{link}|open the thread>"
    text = f":rotating_light: {body.text}"
    return _message(f"{text}\n{where}", [_section(text), _context(where)])
