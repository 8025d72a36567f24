"""Turning the API's JSON into the bot's types, defensively.

Missing fields become ``None`` ("unknown"), extra fields are ignored, a status
spelt ``Complete`` or in any case is accepted, an unparseable ``Expires`` is
kept as text rather than raising, and a count that is not a sane number is
unknown. Nothing here raises on odd values; only a body that is not a JSON
object is refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any

from bot.domain.status import ImportStatus, Status

MAX_COUNT = 10**12  # far beyond the ~10 million records an import can hold
MAX_NAME_LENGTH = 200
# A Retry-After beyond a day is treated as a day, so later date arithmetic stays sane.
MAX_RETRY_AFTER_SECONDS = 86400.0

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


@dataclass(frozen=True)
class ExceptionsPage:
    """One page of Retrieve exceptions. ``None`` means the field was missing or not sane."""

    count: int | None
    has_more: bool | None
    limit: int | None
    offset: int | None
    total_results: int | None
    # The API does not document the records' key or fields: shown generically.
    records: list[dict[str, Any]] = field(default_factory=list)


def parse_exceptions_page(body: Mapping[str, Any]) -> ExceptionsPage:
    """Build an ExceptionsPage from a decoded JSON object.

    The records are the first list-valued field (its key is undocumented);
    items that are not objects are dropped.
    """
    records = next((value for value in body.values() if isinstance(value, list)), [])
    has_more = body.get("HasMore")
    return ExceptionsPage(
        count=parse_count(body.get("Count")),
        has_more=has_more if isinstance(has_more, bool) else None,
        limit=parse_count(body.get("Limit")),
        offset=parse_count(body.get("Offset")),
        total_results=parse_count(body.get("TotalResults")),
        records=[record for record in records if isinstance(record, dict)],
    )


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), or None.

    ``now`` is the wall-clock time (epoch seconds) an HTTP-date is measured from.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float
    if text.replace(".", "", 1).isdigit() and text.isascii():
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" in an HTTP-date means UTC with unknown origin
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER_SECONDS
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
