"""The ImportStatus model: one Retrieve-status answer, parsed defensively.

Missing fields become ``None`` ("unknown"), extra fields are ignored, a status
spelt ``Complete`` or in any case is accepted, and an unparseable ``Expires``
is kept as text rather than raising.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Any

MAX_COUNT = 10**12  # far beyond the ~10 million records an import can hold
MAX_NAME_LENGTH = 200


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

_STATUS_ALIASES = {s.value.lower(): s for s in Status if s is not Status.UNKNOWN}
_STATUS_ALIASES["complete"] = Status.COMPLETED


def parse_status_name(raw: object) -> Status:
    """Map the API's status string to a Status; anything unrecognised is UNKNOWN."""
    if not isinstance(raw, str):
        return Status.UNKNOWN
    return _STATUS_ALIASES.get(raw.strip().lower(), Status.UNKNOWN)


_ISO_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)


def parse_expires(raw: object, default_tz: tzinfo = UTC) -> datetime | None:
    """Parse an ISO 8601 date-time (offset and fraction optional) to an aware UTC datetime.

    Returns None for anything else; callers keep the raw text to show.
    """
    if not isinstance(raw, str):
        return None
    match = _ISO_RE.match(raw.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        naive = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro
        )
    except ValueError:
        return None
    # OverflowError: converting a date at the edge of the calendar (year 1 or
    # 9999) to UTC can leave datetime's range; such a value is garbage, not a crash.
    try:
        if offset is None:
            return naive.replace(tzinfo=default_tz).astimezone(UTC)
        aware = datetime.fromisoformat(naive.isoformat() + _normalise_offset(offset))
        return aware.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def _normalise_offset(offset: str) -> str:
    if offset.upper() == "Z":
        return "+00:00"
    digits = offset[1:].replace(":", "")
    return f"{offset[0]}{digits[:2]}:{digits[2:]}"


def parse_count(value: object) -> int | None:
    """A record count, or None when missing or not a sane non-negative integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif (
        isinstance(value, str)
        and value.strip().isdecimal()
        and value.strip().isascii()
        # int() refuses strings over 4300 digits with ValueError; no sane count is that long.
        and len(value.strip()) <= 20
    ):
        number = int(value.strip())
    else:
        return None
    return number if 0 <= number <= MAX_COUNT else None


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
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def parse_import_status(body: object, access_token: int, default_tz: tzinfo = UTC) -> ImportStatus:
    """Build an ImportStatus from a decoded JSON body. Raises ValueError if not an object."""
    if not isinstance(body, dict):
        raise ValueError("the status body is not a JSON object")
    raw_status = body.get("Status")
    raw_name = body.get("Name")
    name = raw_name[:MAX_NAME_LENGTH] if isinstance(raw_name, str) and raw_name else None
    raw_expires = body.get("Expires")
    expires_text = str(raw_expires)[:100] if raw_expires not in (None, "") else None
    action = body.get("ImportAction")
    return ImportStatus(
        access_token=access_token,
        status=parse_status_name(raw_status),
        status_text=raw_status[:50] if isinstance(raw_status, str) else None,
        name=name,
        total_records_received=parse_count(body.get("TotalRecordsReceived")),
        validation_successful=parse_count(body.get("ValidationSuccessful")),
        validation_failed=parse_count(body.get("ValidationFailed")),
        processed=parse_count(body.get("Processed")),
        pending=parse_count(body.get("Pending")),
        exceptions=parse_count(body.get("Exceptions")),
        not_honored=parse_count(body.get("NotHonored")),
        expires=parse_expires(raw_expires, default_tz),
        expires_text=expires_text,
        import_action=action[:20] if isinstance(action, str) else None,
    )
