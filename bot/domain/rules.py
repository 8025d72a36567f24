"""The product's rules, as pure functions: what a poll's outcome means for the channel.

``decide`` takes what the bot remembered about an import, the outcome of one
poll (a status, an API error, or "the token has expired") and the time, and
returns the events to send and what to remember next. No I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from bot.domain.eta import rate_base
from bot.domain.events import Event, EventKind
from bot.domain.expiry import in_warning_window, is_expired
from bot.domain.status import ImportStatus, Status

MILESTONES = (25, 50, 75)  # 100 % is announced by Completed


@dataclass(frozen=True)
class Rules:
    expiry_warning: timedelta
    trouble_after: timedelta


@dataclass(frozen=True)
class Memory:
    """What the bot keeps about an import between polls (mirrors columns of ``imports``)."""

    status: ImportStatus | None
    transitions: int = 0
    failures: int = 0
    trouble_since: datetime | None = None
    trouble_notified: bool = False
    rate_base_at: datetime | None = None
    rate_base_done: int | None = None


class Expired:
    """The outcome when the token's Expires has passed: the API is not asked any more."""


EXPIRED = Expired()


@dataclass(frozen=True)
class Failure:
    """A poll that got no status: the API refused, failed or could not be reached."""

    #: What a person should read about it (the API error's user message).
    message: str
    #: The API said 401: the token is unknown or expired.
    token_rejected: bool = False


Outcome = ImportStatus | Failure | Expired


@dataclass(frozen=True)
class Decision:
    events: list[Event]
    memory: Memory
    #: True when the channel's card should be edited (what it shows has changed).
    changed: bool
    #: True when nothing more can happen to this import: stop watching it.
    finished: bool


# An answer whose Status the bot does not recognise says nothing about the import.
UNRECOGNISED_STATUS = Failure(
    "MyPreferences answered with a status the bot does not recognise. "
    "The bot keeps checking; the last known status stands."
)


def decide(memory: Memory, outcome: Outcome, now: datetime, rules: Rules) -> Decision:
    """The events one poll outcome produces, and the memory to keep.

    An answer with an unrecognised status (Unknown) after a known one is treated
    like a failed poll: no transition, the card keeps the last known status,
    polling backs off, and only if it lasts ``trouble_after`` is the channel told
    (once, as API trouble). So a status that flaps to Unknown and back writes no
    thread reply, and a real change is still announced once it is readable.
    """
    if isinstance(outcome, Expired):
        return _expired(memory, now)
    if (
        isinstance(outcome, ImportStatus)
        and outcome.status is Status.UNKNOWN
        and memory.status is not None
        and memory.status.status is not Status.UNKNOWN
    ):
        outcome = UNRECOGNISED_STATUS
    if isinstance(outcome, Failure):
        expires = memory.status.expires if memory.status else None
        if outcome.token_rejected and is_expired(expires, now):
            return _expired(memory, now)
        return _failure(memory, now, rules, outcome)
    return _success(memory, outcome, now, rules)


def _expired(memory: Memory, now: datetime) -> Decision:
    status = memory.status
    if status is not None and status.status.is_terminal:
        return Decision([], memory, changed=False, finished=True)
    event = Event(
        EventKind.EXPIRED,
        "expired",
        old_status=status.status if status else None,
        expires=status.expires if status else None,
    )
    return Decision([event], memory, changed=True, finished=True)


def _failure(memory: Memory, now: datetime, rules: Rules, failure: Failure) -> Decision:
    since = memory.trouble_since or now
    events: list[Event] = []
    notified = memory.trouble_notified
    if not notified and now - since >= rules.trouble_after:
        events.append(
            Event(EventKind.API_TROUBLE, f"trouble:{since.isoformat()}", detail=failure.message)
        )
        notified = True
    if memory.status is not None and _in_warning_window(memory.status, now, rules):
        # The API is down, but the token's clock keeps running: warn all the same.
        events.append(_expiry_warning(memory.status))
    new_memory = replace(
        memory, failures=memory.failures + 1, trouble_since=since, trouble_notified=notified
    )
    return Decision(events, new_memory, changed=False, finished=False)


def _success(memory: Memory, new: ImportStatus, now: datetime, rules: Rules) -> Decision:
    old = memory.status
    events: list[Event] = []
    if memory.trouble_notified and memory.trouble_since is not None:
        events.append(Event(EventKind.RECOVERED, f"recovered:{memory.trouble_since.isoformat()}"))
    transitions = memory.transitions
    if old is not None and old.status is not new.status:
        transitions += 1
        events.append(
            Event(
                EventKind.TRANSITION,
                f"transition:{transitions}:{new.status.value}",
                old_status=old.status,
                new_status=new.status,
            )
        )
    milestone = crossed_milestone(old, new)
    if milestone is not None:
        events.append(Event(EventKind.MILESTONE, f"milestone:{milestone}", milestone=milestone))
    if _in_warning_window(new, now, rules):
        # State-based, not edge-based: a channel that starts watching inside the
        # window is warned too. The database's uniqueness rule keeps it to once.
        events.append(_expiry_warning(new))
    rate_at, rate_done = rate_base(memory.rate_base_at, memory.rate_base_done, new, now)
    new_memory = Memory(
        status=new,
        transitions=transitions,
        failures=0,
        trouble_since=None,
        trouble_notified=False,
        rate_base_at=rate_at,
        rate_base_done=rate_done,
    )
    finished = new.status.is_terminal
    if not finished and is_expired(new.expires, now):
        # The API still answered, but the token is past its time: say so once and stop.
        expired = _expired(new_memory, now)
        return Decision(events + expired.events, new_memory, changed=True, finished=True)
    return Decision(events, new_memory, changed=new != old, finished=finished)


def crossed_milestone(old: ImportStatus | None, new: ImportStatus) -> int | None:
    """The highest 25 % milestone reached by this poll and not before, while records move."""
    progress = new.progress
    if not new.status.is_active or progress is None:
        return None
    if progress >= 1.0:
        # At 100 % a "75 %" reply beside "1,000 of 1,000 records" would be wrong; Completed says it.
        return None
    reached = [m for m in MILESTONES if progress * 100 >= m]
    if not reached:
        return None
    before = old.progress if old is not None and old.progress is not None else 0.0
    if old is not None and old.status.is_terminal:
        before = 0.0
    highest = reached[-1]
    return highest if before * 100 < highest else None


def _expiry_warning(status: ImportStatus) -> Event:
    return Event(
        EventKind.EXPIRY_WARNING, "expiry_warning", new_status=status.status, expires=status.expires
    )


def _in_warning_window(status: ImportStatus, now: datetime, rules: Rules) -> bool:
    if status.status.is_terminal:
        return False
    return in_warning_window(status.expires, now, rules.expiry_warning)
