"""An import's status: the ``Status`` names, how each looks, and ``ImportStatus``.

``ImportStatus`` is what the API said about one import at one moment; ``None``
in a field means unknown. Parsing the API's JSON into it is the client's job
(``bot.mypreferences.parsing``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    INITIATED = "Initiated"
    STAGING = "Staging"
    QUEUED = "Queued"
    PROCESSING = "Processing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    UNKNOWN = "Unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        """Records are moving: poll at the normal interval and show progress."""
        return self in ACTIVE_STATUSES


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED})
ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.PROCESSING})
# Order of the normal life of an import, used to describe odd histories.
STATUS_ORDER = (
    Status.INITIATED,
    Status.STAGING,
    Status.QUEUED,
    Status.PROCESSING,
    Status.COMPLETED,
    Status.FAILED,
)


@dataclass(frozen=True)
class StatusLook:
    """How a status is shown: a Slack emoji code and a terminal symbol."""

    emoji: str
    symbol: str


#: One place for how each status looks, in Slack and in the terminal.
STATUS_LOOKS: dict[Status, StatusLook] = {
    Status.INITIATED: StatusLook(":white_circle:", "○"),
    Status.STAGING: StatusLook(":inbox_tray:", "↓"),
    Status.QUEUED: StatusLook(":hourglass_flowing_sand:", "⧗"),
    Status.PROCESSING: StatusLook(":gear:", "⚙"),
    Status.COMPLETED: StatusLook(":white_check_mark:", "✔"),
    Status.FAILED: StatusLook(":x:", "✘"),
    Status.UNKNOWN: StatusLook(":grey_question:", "?"),
}


@dataclass(frozen=True)
class ImportStatus:
    """What the API said about one import at one moment. ``None`` means unknown."""

    access_token: int
    status: Status
    status_text: str | None = None
    name: str | None = None
    total_records_received: int | None = None
    validation_successful: int | None = None
    validation_failed: int | None = None
    processed: int | None = None
    pending: int | None = None
    exceptions: int | None = None
    not_honored: int | None = None
    expires: datetime | None = None
    expires_text: str | None = None
    import_action: str | None = None

    @property
    def done(self) -> int | None:
        """Records finished one way or another: processed + exceptions + not honoured."""
        parts = (self.processed, self.exceptions, self.not_honored)
        if all(p is None for p in parts):
            return None
        return sum(p or 0 for p in parts)

    @property
    def progress(self) -> float | None:
        """Fraction 0..1 of validated records finished, or None when not computable."""
        done, total = self.done, self.validation_successful
        if done is None or not total:
            return None
        return min(1.0, done / total)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict for storage (no secrets are ever part of a status)."""
        data = asdict(self)
        data["status"] = self.status.value
        data["expires"] = self.expires.isoformat() if self.expires else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportStatus:
        values = dict(data)
        values["status"] = Status(values.get("status", Status.UNKNOWN.value))
        expires = values.get("expires")
        values["expires"] = datetime.fromisoformat(expires) if expires else None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})
