"""Where each event goes, given the channel's settings: the thread, the channel, an alert channel.

Pure: delivery asks ``route`` about every notification it is about to send (and
``batch_end_route`` about a batch that has ended) and does what the answer says.
The channel's settings (``bot.domain.settings``) choose:

- ``milestones``: whether the 25/50/75 % replies are posted at all;
- ``broadcast``: which replies are also shown in the channel (``reply_broadcast``):
  ``all`` every status change, the expiry warning and expiry; ``finish`` finished
  imports, the warning and expiry (the bot's original behaviour); ``failures`` only
  what went wrong (see ``is_failure``) and the warning; ``none`` nothing;
- ``mention``: who a broadcast mentions (never a reply that stays in the thread);
- ``alerts``: another channel that also gets one message for each failure and
  expiry warning;
- ``compact``: one-line cards and replies.

In a batch the thread holds many imports, so it gets only each import's end and
what went wrong; of those, only what went wrong is broadcast, and the batch's own
end (one summary reply) is broadcast as ``broadcast`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.archiving import has_failures
from bot.domain.events import Event, EventKind
from bot.domain.settings import Broadcast, ChannelSettings
from bot.domain.status import ImportStatus, Status


@dataclass(frozen=True)
class Route:
    """What to do with one reply."""

    #: Post it in the card's thread at all (False: it is skipped, and recorded as such).
    reply: bool
    #: Also show it in the channel (``reply_broadcast``).
    broadcast: bool = False
    #: Trusted mrkdwn that notifies someone (a user or a user group); broadcasts only.
    mention: str | None = None
    #: A channel id that also gets one message about it (the ``alerts`` setting).
    alert_channel: str | None = None
    #: Whom that alert mentions (the channel's ``mention``), whether or not it is broadcast.
    alert_mention: str | None = None
    #: One line instead of several.
    compact: bool = False
    #: The reply shares its thread with other imports (a batch): it names its import.
    in_batch: bool = False


def is_failure(event: Event, status: ImportStatus | None) -> bool:
    """Something went wrong: Failed, Completed with failed records, or expired unfinished."""
    if event.kind is EventKind.EXPIRED:
        return True
    if event.kind is not EventKind.TRANSITION:
        return False
    if event.new_status is Status.FAILED:
        return True
    return event.new_status is Status.COMPLETED and status is not None and has_failures(status)


def needs_attention(event: Event, status: ImportStatus | None) -> bool:
    """A failure, or the warning that the token expires before the import is done."""
    return event.kind is EventKind.EXPIRY_WARNING or is_failure(event, status)


def is_end(event: Event) -> bool:
    """The import is over: Completed, Failed, or its token expired."""
    return event.ends_subscription


def broadcasts(event: Event, status: ImportStatus | None, choice: Broadcast) -> bool:
    """Whether ``choice`` shows this event in the channel as well as in the thread."""
    if choice is Broadcast.NONE:
        return False
    if choice is Broadcast.FAILURES:
        return needs_attention(event, status)
    if choice is Broadcast.ALL and event.kind is EventKind.TRANSITION:
        return True
    return event.broadcast  # finish: terminal results, the expiry warning, expiry


def route(
    event: Event,
    status: ImportStatus | None,
    settings: ChannelSettings,
    subscriber_id: str,
    *,
    in_batch: bool = False,
) -> Route:
    """Where one event of a watched import goes in a channel with ``settings``.

    ``status`` is the import as it was when the event happened (its counts decide
    whether a Completed import had failures). ``in_batch``: the import is one of a
    batch, whose thread takes only ends and what went wrong.
    """
    attention = needs_attention(event, status)
    alert = settings.alerts if attention else None
    reply = True
    if event.kind is EventKind.MILESTONE and not settings.milestones:
        reply = False
    if in_batch and not (is_end(event) or attention):
        reply = False
    broadcast = reply and broadcasts(event, status, settings.broadcast)
    if in_batch:
        broadcast = broadcast and attention  # a clean end is a line on the card and the thread
    return Route(
        reply=reply,
        broadcast=broadcast,
        mention=settings.mention.markup(subscriber_id) if broadcast else None,
        alert_channel=alert,
        alert_mention=settings.mention.markup(subscriber_id) if alert else None,
        compact=settings.compact,
        in_batch=in_batch,
    )


def batch_end_route(went_wrong: bool, settings: ChannelSettings, subscriber_id: str) -> Route:
    """Where the one reply that sums up an ended batch goes.

    It is broadcast as ``broadcast`` says of a finished import: ``all`` and ``finish``
    always, ``failures`` when ``went_wrong`` (an import failed, expired, or ended
    with failed records), ``none`` never.
    """
    choice = settings.broadcast
    if choice is Broadcast.NONE:
        broadcast = False
    elif choice is Broadcast.FAILURES:
        broadcast = went_wrong
    else:
        broadcast = True
    return Route(
        reply=True,
        broadcast=broadcast,
        mention=settings.mention.markup(subscriber_id) if broadcast else None,
        compact=settings.compact,
        in_batch=True,
    )
