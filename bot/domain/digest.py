"""The daily digest: when a channel's digest is due, and what it sums up.

A channel with ``digest 09:00 Europe/Paris`` is due once per local day, from
09:00 Paris time until local midnight: a bot that was down at 09:00 still
posts it when it comes back that day, and not on a later day. A digest time
chosen after that day's time has passed starts the next day, so changing
the setting never posts a surprise digest at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.domain.history import ActiveWatch, FinishedWatch, Outcome, failed_records
from bot.domain.settings import Digest

#: What a digest sums up: the day before it.
DIGEST_WINDOW = timedelta(hours=24)


def digest_instant(digest: Digest, day: date) -> datetime:
    """When the digest of local ``day`` is due, as an aware datetime in the channel's zone.

    A time that a daylight-saving jump skips is taken as the same wall time after the
    jump, as zoneinfo does (fold=0).
    """
    return datetime.combine(day, digest.at, tzinfo=ZoneInfo(digest.zone))


def due_day(now: datetime, digest: Digest, since: datetime | None) -> date | None:
    """The local day whose digest is due at ``now``, or None.

    ``since`` is when the digest time was chosen: a day whose digest time came
    before it is not due.
    """
    local = now.astimezone(ZoneInfo(digest.zone))
    day = local.date()
    instant = digest_instant(digest, day)
    if local < instant:
        return None
    if since is not None and instant < since:
        return None
    return day


@dataclass(frozen=True)
class DigestSummary:
    """One channel's last 24 hours."""

    day: date
    since: datetime
    until: datetime
    finished: list[FinishedWatch]  # completed, failed or expired in the window, oldest first
    running: list[ActiveWatch]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for w in self.finished if w.outcome is outcome)

    @property
    def processed(self) -> int:
        return sum((w.status.processed or 0) if w.status else 0 for w in self.finished)

    @property
    def failures(self) -> int:
        return sum(failed_records(w.status) for w in self.finished)

    @property
    def empty(self) -> bool:
        """Nothing happened and nothing runs: no digest is posted."""
        return not self.finished and not self.running


def summarise(
    day: date,
    until: datetime,
    finished: list[FinishedWatch],
    running: list[ActiveWatch],
) -> DigestSummary:
    """The digest of the 24 hours before ``until``: only imports that finished count."""
    since = until - DIGEST_WINDOW
    ended = sorted(
        (w for w in finished if since <= w.ended_at <= until and w.outcome is not Outcome.STOPPED),
        key=lambda w: w.ended_at,
    )
    return DigestSummary(day=day, since=since, until=until, finished=ended, running=running)
