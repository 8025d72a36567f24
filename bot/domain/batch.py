"""A batch: several imports watched as one, with one card and one thread.

Pure. The card shows the sums of its imports' counts, their combined progress
(records done over records validated, all imports together), an estimate of
when the last one finishes, and one line per import. The batch has ended when
every import in it has.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bot.domain.archiving import has_failures
from bot.domain.history import Outcome, outcome_of
from bot.domain.status import ImportStatus, Status

#: A batch holds at most this many imports (``watch 1001 1002 ...``).
MAX_BATCH = 20

#: The counts a batch card sums, as (label, ImportStatus attribute), in card order.
COUNTS: tuple[tuple[str, str], ...] = (
    ("Received", "total_records_received"),
    ("Validated OK", "validation_successful"),
    ("Validation failed", "validation_failed"),
    ("Processed", "processed"),
    ("Pending", "pending"),
    ("Exceptions", "exceptions"),
    ("Not honoured", "not_honored"),
)


@dataclass(frozen=True)
class BatchMember:
    """One import of a batch: its latest status, and how its watch ended (None: watched)."""

    access_token: int
    status: ImportStatus | None
    ended_reason: str | None = None
    #: The estimated seconds until it finishes, when its rate is known.
    eta_seconds: float | None = None

    @property
    def watched(self) -> bool:
        return self.ended_reason is None

    @property
    def outcome(self) -> Outcome | None:
        """How its watch ended; None while it is still watched."""
        return None if self.watched else outcome_of(self.ended_reason)

    @property
    def went_wrong(self) -> bool:
        """It failed, expired, or ended with failed records."""
        if self.outcome in (Outcome.FAILED, Outcome.EXPIRED):
            return True
        return (
            self.outcome is Outcome.COMPLETED
            and self.status is not None
            and (has_failures(self.status))
        )


@dataclass(frozen=True)
class BatchSummary:
    """What a batch amounts to now."""

    members: tuple[BatchMember, ...]

    def total(self, attribute: str) -> int | None:
        """The sum of one count over the imports; None when no import knows it."""
        values = [getattr(m.status, attribute) for m in self.members if m.status is not None]
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    @property
    def done(self) -> int:
        """Records finished one way or another, all imports together."""
        return sum(m.status.done or 0 for m in self.members if m.status is not None)

    @property
    def validated(self) -> int:
        """Records validated (the progress's denominator), all imports together."""
        return sum(m.status.validation_successful or 0 for m in self.members if m.status)

    @property
    def progress(self) -> float | None:
        """The combined progress: records done over records validated; None if none known."""
        if self.validated <= 0:
            return None
        return min(1.0, self.done / self.validated)

    @property
    def watched(self) -> int:
        """How many imports are still watched."""
        return sum(1 for m in self.members if m.watched)

    @property
    def ended(self) -> bool:
        """Every import's watch has ended."""
        return self.watched == 0

    @property
    def outcomes(self) -> Counter[Outcome]:
        return Counter(m.outcome for m in self.members if m.outcome is not None)

    @property
    def went_wrong(self) -> bool:
        return any(m.went_wrong for m in self.members)

    @property
    def all_stopped(self) -> bool:
        """Every watch was stopped (unwatched), none ended by itself."""
        return bool(self.members) and all(m.outcome is Outcome.STOPPED for m in self.members)

    @property
    def eta_seconds(self) -> float | None:
        """When the last watched import should finish: the longest estimate, known only
        when every watched import has one (one still queued could take any time)."""
        watched = [m for m in self.members if m.watched]
        if not watched or any(m.eta_seconds is None for m in watched):
            return None
        return max(m.eta_seconds for m in watched if m.eta_seconds is not None)

    @property
    def statuses(self) -> Counter[Status]:
        """How many watched imports are in each status."""
        return Counter(
            m.status.status if m.status is not None else Status.UNKNOWN
            for m in self.members
            if m.watched
        )


#: The ended_reason of a batch whose imports have all ended (not stopped by anyone).
ALL_ENDED = "all imports ended"
