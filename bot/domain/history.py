"""What became of a channel's watches: finished ones (history, digest, App Home) and running ones.

A watch ends for one of a few reasons, stored as a short sentence with the
subscription (``ended_reason``); ``outcome_of`` reads it back as an ``Outcome``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from bot.domain.status import ImportStatus, Status

#: The ended_reason of a watch whose token expired before the import finished.
EXPIRED_REASON = "token expired"


class Outcome(StrEnum):
    COMPLETED = "Completed"
    FAILED = "Failed"
    EXPIRED = "Expired"
    STOPPED = "Stopped"  # unwatched, or the channel or the app went away


def outcome_of(ended_reason: str | None) -> Outcome:
    """The outcome a stored ended_reason stands for."""
    if ended_reason == Status.COMPLETED.value:
        return Outcome.COMPLETED
    if ended_reason == Status.FAILED.value:
        return Outcome.FAILED
    if ended_reason == EXPIRED_REASON:
        return Outcome.EXPIRED
    return Outcome.STOPPED


def failed_records(status: ImportStatus | None) -> int:
    """Records that did not make it: exceptions, not honoured and failed validation."""
    if status is None:
        return 0
    return (status.exceptions or 0) + (status.not_honored or 0) + (status.validation_failed or 0)


@dataclass(frozen=True)
class FinishedWatch:
    """One ended subscription: what the import was, how it ended, and where its thread is."""

    team_id: str
    channel_id: str
    access_token: int
    name: str | None
    status: ImportStatus | None  # the import's last known status
    subscribed_by: str
    subscribed_at: datetime
    ended_at: datetime
    ended_reason: str | None
    tracking_ts: str | None

    @property
    def outcome(self) -> Outcome:
        return outcome_of(self.ended_reason)

    @property
    def seconds(self) -> float:
        """How long it was watched, from watch to end."""
        return max(0.0, (self.ended_at - self.subscribed_at).total_seconds())


@dataclass(frozen=True)
class ActiveWatch:
    """One running subscription, with the import's latest status."""

    team_id: str
    channel_id: str
    access_token: int
    name: str | None
    status: ImportStatus | None
    subscribed_by: str
    subscribed_at: datetime
    tracking_ts: str | None
