"""What the store hands out and takes in: plain records, and how they map to columns.

One place maps ``Memory`` (what the rules keep about an import) to the
``imports`` columns and back, and an ``ImportStatus`` to its JSON snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.domain.archiving import ArchiveKind
from bot.domain.events import Event
from bot.domain.rules import Decision, Memory
from bot.domain.settings import DEFAULTS, ChannelSettings
from bot.domain.status import ImportStatus, Status

# A healthy poll whose next time is within this of what its claim wrote is not saved.
NEXT_POLL_TOLERANCE_SECONDS = 1.0

# Subscription states.
ACTIVE = "active"
ENDED = "ended"
# Notification states.
PENDING = "pending"
SENT = "sent"
DROPPED = "dropped"
# Not posted, by the channel's choice (milestones off; a batch's quiet events).
SKIPPED = "skipped"


@dataclass(frozen=True)
class DueImport:
    """An import this replica has leased for one poll."""

    id: int
    client_id: str
    access_token: int
    memory: Memory
    #: What the claim already wrote as the next poll (the active interval from now).
    expected_next_poll_at: datetime | None = None


@dataclass(frozen=True)
class PollResult:
    """What one poll decided, ready to be saved."""

    import_id: int
    decision: Decision
    polled_at: datetime
    next_poll_at: datetime
    error: str | None = None
    previous: Memory | None = None
    expected_next_poll_at: datetime | None = None

    def needs_saving(self) -> bool:
        """False for a healthy poll that changed nothing and is due when the claim said.

        The claim already wrote the lease, the poll time and the next poll, so
        such a poll costs one row in all (the claim); its lease simply runs out.
        """
        previous, memory = self.previous, self.decision.memory
        if previous is None or self.expected_next_poll_at is None or self.error is not None:
            return True
        if self.decision.events or self.decision.changed or self.decision.finished:
            return True
        if memory.failures or previous.failures:
            return True
        if (memory.rate_base_at, memory.rate_base_done) != (
            previous.rate_base_at,
            previous.rate_base_done,
        ):
            return True
        drift = abs((self.next_poll_at - self.expected_next_poll_at).total_seconds())
        return drift > NEXT_POLL_TOLERANCE_SECONDS


@dataclass(frozen=True)
class Watch:
    """One active subscription as the ``list`` command shows it."""

    subscription_id: int
    access_token: int
    name: str | None
    status: Status | None
    subscribed_by: str
    subscribed_at: datetime


@dataclass(frozen=True)
class PendingNotification:
    id: int
    event: Event
    snapshot: ImportStatus | None
    attempts: int
    created_at: datetime
    next_attempt_at: datetime


@dataclass(frozen=True)
class ArchiveNote:
    """What a tracking card says about its import's exceptions (the latest archive posted)."""

    kind: ArchiveKind
    records: int | None
    expected: int | None
    stopped: str | None
    cut: bool
    error: str | None
    #: the EXCEPTIONS_FILE mode the channel got
    mode: str | None
    #: a file was posted (not only a message)
    has_file: bool


@dataclass(frozen=True)
class DeliveryState:
    """Everything delivery needs to bring one subscription's channel up to date."""

    subscription_id: int
    team_id: str
    channel_id: str
    subscribed_by: str
    subscribed_at: datetime
    active: bool
    ended_reason: str | None
    tracking_ts: str | None
    card_wanted: int
    card_done: int
    access_token: int
    status: ImportStatus | None
    rate_base_at: datetime | None
    rate_base_done: int | None
    notifications: list[PendingNotification]
    #: Failed tries at the card since it last succeeded, and when it may be tried again.
    card_attempts: int = 0
    card_retry_at: datetime | None = None
    card_error: str | None = None
    #: Slack's "not before" for this channel: no card and no reply goes before it.
    channel_wait_until: datetime | None = None
    #: the import's exceptions archive as posted in this thread (the card's line)
    exceptions: ArchiveNote | None = None
    #: the channel's settings (what is broadcast, who is mentioned, alerts, compact)
    settings: ChannelSettings = DEFAULTS


@dataclass(frozen=True)
class Subscribed:
    subscription_id: int
    created: bool


def snapshot_of(status: ImportStatus | None) -> dict[str, Any] | None:
    """An ImportStatus as the JSON stored in ``imports.snapshot`` and ``notifications.snapshot``."""
    return status.to_json() if status is not None else None


def status_of(snapshot: dict[str, Any] | None) -> ImportStatus | None:
    """The ImportStatus a stored snapshot holds."""
    return ImportStatus.from_json(snapshot) if snapshot else None


def memory_columns(memory: Memory) -> dict[str, Any]:
    """The ``imports`` columns that hold ``memory`` (its status has columns of its own)."""
    return {
        "transitions": memory.transitions,
        "failures": memory.failures,
        "trouble_since": memory.trouble_since,
        "trouble_notified": memory.trouble_notified,
        "rate_base_at": memory.rate_base_at,
        "rate_base_done": memory.rate_base_done,
    }


def memory_from_row(row: Any) -> Memory:
    """The Memory a row of ``imports`` holds (any object with the memory columns)."""
    return Memory(
        status=status_of(row.snapshot),
        transitions=row.transitions,
        failures=row.failures,
        trouble_since=row.trouble_since,
        trouble_notified=row.trouble_notified,
        rate_base_at=row.rate_base_at,
        rate_base_done=row.rate_base_done,
    )
