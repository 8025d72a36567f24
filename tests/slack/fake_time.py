"""Fake time that jumps: the next moment anything can come due, for the delivery tests.

A test's loop delivers every ``step`` fake seconds, as the real loop looks for work.
Most of those passes find nothing: everything waits for a moment the database or a
sender holds (a backoff, a Retry-After, a booked card turn, a lease running out).
``advance`` skips those idle passes: after a pass that made no Slack call it moves
the clock straight to the step at or after that moment, so the passes that remain
are the ones that could act, at the very moments the stepping loop would have run
them, and every assertion sees what it saw before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, func, select

from bot.slack.delivery import Delivery
from bot.store.tables import Base, UTCDateTime


class SteppedClock(Protocol):
    now: datetime

    def advance(self, seconds: float) -> None: ...


def next_due(engine: Engine, now: datetime, senders: Iterable[Delivery] = ()) -> datetime | None:
    """The earliest moment from ``now`` on that the database or a sender's memory holds.

    ``now`` itself counts: a condition such as "the lease has run out" (``lease_until
    < now``) turns true just after its moment, at the next step.

    Every future time in every table, not only the columns a sender reads today
    (``next_attempt_at``, ``card_retry_at``, ``channel_waits.not_before``,
    ``lease_until``, ...): a moment too many costs one idle pass, a moment
    missed would let a test skip the pass that acts. From each ``Delivery``, the
    moments it keeps in memory: when a paced channel's turn comes, a booked card
    edit's turn (what its loop's idle wait is cut short for).
    """
    columns = [
        column
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, UTCDateTime)
    ]
    with engine.connect() as conn:
        row = conn.execute(
            select(*(select(func.min(c)).where(c >= now).scalar_subquery() for c in columns))
        ).one()
    moments = [at for at in row if at is not None]
    for sender in senders:
        held = (*sender._paced_until.values(), *sender._card_turns.values())
        moments.extend(at for at in held if at >= now)
    return min(moments, default=None)


def advance(
    clock: SteppedClock,
    step: float,
    end: datetime,
    *,
    idle: bool,
    engine: Engine,
    senders: Iterable[Delivery] = (),
) -> None:
    """Move the clock on after one pass of a loop that runs every ``step`` until ``end``.

    A pass that made Slack calls (``idle`` False) is followed by the next step, as
    before. After an idle pass the clock goes to the first step at or after the next
    due moment, or after ``end`` if nothing comes due before it: the same moment on
    the same grid of steps the loop would have reached, with the idle passes left out.
    """
    if not idle:
        clock.advance(step)
        return
    due = next_due(engine, clock.now, senders)
    target = end if due is None else min(due, end)
    steps = max(1, math.ceil((target - clock.now) / timedelta(seconds=step)))
    clock.advance(steps * step)
