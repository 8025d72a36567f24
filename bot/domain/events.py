"""The events a watched import can produce, each sent at most once per subscription."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from bot.domain.status import Status


class EventKind(StrEnum):
    TRANSITION = "transition"  # the status changed
    MILESTONE = "milestone"  # progress crossed 25 %, 50 % or 75 %
    EXPIRY_WARNING = "expiry_warning"  # the token expires within EXPIRY_WARNING_MINUTES
    EXPIRED = "expired"  # the token expired before the import finished
    API_TROUBLE = "api_trouble"  # polling has failed for API_TROUBLE_MINUTES
    RECOVERED = "recovered"  # polling works again after API trouble


@dataclass(frozen=True)
class Event:
    """One notification-worthy thing that happened to an import.

    ``key`` identifies the event within a subscription: the database refuses a
    second notification with the same (subscription, key), which is what makes
    each one sendable once.
    """

    kind: EventKind
    key: str
    old_status: Status | None = None
    new_status: Status | None = None
    milestone: int | None = None
    expires: datetime | None = None
    detail: str | None = None

    @property
    def broadcast(self) -> bool:
        """Terminal results, the expiry warning and expiry also go to the channel."""
        if self.kind is EventKind.TRANSITION:
            return self.new_status is not None and self.new_status.is_terminal
        return self.kind in (EventKind.EXPIRY_WARNING, EventKind.EXPIRED)

    @property
    def ends_subscription(self) -> bool:
        if self.kind is EventKind.TRANSITION:
            return self.new_status is not None and self.new_status.is_terminal
        return self.kind is EventKind.EXPIRED

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "key": self.key,
            "old_status": self.old_status.value if self.old_status else None,
            "new_status": self.new_status.value if self.new_status else None,
            "milestone": self.milestone,
            "expires": self.expires.isoformat() if self.expires else None,
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(
            kind=EventKind(data["kind"]),
            key=data["key"],
            old_status=Status(data["old_status"]) if data.get("old_status") else None,
            new_status=Status(data["new_status"]) if data.get("new_status") else None,
            milestone=data.get("milestone"),
            expires=datetime.fromisoformat(data["expires"]) if data.get("expires") else None,
            detail=data.get("detail"),
        )
