"""An access token's end: when the expiry warning is due, and when it has expired.

One decision, one place: the rules, the schedule, the poller, the service and
the messages all ask these functions.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def warning_at(expires: datetime, warning: timedelta) -> datetime:
    """When the expiry warning becomes due: ``warning`` before the token expires."""
    return expires - warning


def in_warning_window(expires: datetime | None, now: datetime, warning: timedelta) -> bool:
    """True from the warning time until (not including) the moment of expiry."""
    if expires is None:
        return False
    return warning_at(expires, warning) <= now < expires


def is_expired(expires: datetime | None, now: datetime) -> bool:
    """True once the token's Expires has passed: the API answers 401 from then on."""
    return expires is not None and now >= expires
