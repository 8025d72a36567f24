"""When a watched import's exception records are archived: a pure decision.

MyPreferences answers Retrieve exceptions only while the access token lives, so
the bot keeps the records itself (the archive, ``bot.archive``) at two moments:

- ``final``: the import has ended (Completed or Failed) with failures, that is
  Exceptions, NotHonored or ValidationFailed above 0;
- ``partial``: the expiry warning fires while the import is still running and it
  already has failures: what exists then is kept, in case the token expires
  before the end (the final archive follows if the token still lives).

``archives_for`` reads one poll's decision; the store creates each archive at
most once per import and kind, in the same transaction as the poll.
"""

from __future__ import annotations

from enum import StrEnum

from bot.domain.events import EventKind
from bot.domain.rules import Decision
from bot.domain.status import ImportStatus


class ArchiveKind(StrEnum):
    FINAL = "final"  # the import has ended
    PARTIAL = "partial"  # still running at the expiry warning


def failed_records(status: ImportStatus) -> int:
    """Exceptions + not honoured + failed validation (unknown counts count as 0)."""
    return (status.exceptions or 0) + (status.not_honored or 0) + (status.validation_failed or 0)


def has_failures(status: ImportStatus) -> bool:
    """True when any of Exceptions, NotHonored or ValidationFailed is above 0."""
    return failed_records(status) > 0


def archives_for(decision: Decision) -> list[ArchiveKind]:
    """The archives one poll's decision calls for (each kind at most once in the list)."""
    status = decision.memory.status
    if status is None or not has_failures(status):
        return []
    kinds: list[ArchiveKind] = []
    for event in decision.events:
        if (
            event.kind is EventKind.TRANSITION
            and event.new_status is not None
            and event.new_status.is_terminal
            and ArchiveKind.FINAL not in kinds
        ):
            kinds.append(ArchiveKind.FINAL)
        elif (
            event.kind is EventKind.EXPIRY_WARNING
            and not status.status.is_terminal
            and ArchiveKind.PARTIAL not in kinds
        ):
            kinds.append(ArchiveKind.PARTIAL)
    return kinds
