"""Slack's rate limits kept on our side: calls spaced to a rate, after a burst.

Slack answers a call beyond a limit with HTTP 429 and Retry-After; the bot honours
that (``bot/slack/errors.py``), but a busy channel that only learns its limit from
429s wastes calls and makes every sender wait a whole Retry-After. A ``Pacer``
spaces the calls of one replica so that they fit the documented limits in the
first place (https://docs.slack.dev/apis/web-api/rate-limits): "one message per
second per channel" with "short bursts" for chat.postMessage, Tier 3 (50 a minute
per workspace) for chat.update. Several replicas share Slack's limits; each paces
itself, and a 429 between them is honoured as always.

It is the generic cell rate algorithm: per key, the theoretical time of the next
call (``_next``) moves on by ``interval`` for every call; a call may go when that
time is at most ``(burst - 1) * interval`` ahead of now. Times are seconds
(any epoch, as long as one pacer always gets the same).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

# Beyond this many keys, those idle long enough to have a full burst again are forgotten.
_PRUNE_ABOVE = 10_000


K = TypeVar("K", bound=Hashable)


class Pacer(Generic[K]):
    """Spaces calls per key: ``burst`` at once, then one every ``interval`` seconds."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = max(1, burst)
        self._tolerance = (self.burst - 1) * interval
        self._next: dict[K, float] = {}

    def delay(self, key: K, now: float) -> float:
        """Seconds until a call for ``key`` may go (0: now); nothing is booked."""
        allowed = max(self._next.get(key, now), now) - self._tolerance
        return max(0.0, allowed - now)

    def take(self, key: K, now: float) -> float:
        """Book a call now if one may go (returns 0), else return the seconds to wait."""
        wait = self.delay(key, now)
        if wait <= 0:
            self._book(key, now)
        return wait

    def reserve(self, key: K, now: float) -> float:
        """Book the next free turn for ``key``, however far ahead; seconds until it.

        Whoever reserved must call at that time without asking again: the turn is
        theirs, and each later reservation comes one ``interval`` after it.
        """
        wait = self.delay(key, now)
        self._book(key, now + wait)
        return wait

    def spent(self, now: float) -> set[K]:
        """The keys that have used some of their burst and not yet earned it back."""
        return {key for key, at in self._next.items() if at > now}

    def _book(self, key: K, at: float) -> None:
        self._next[key] = max(self._next.get(key, at), at) + self.interval
        if len(self._next) > _PRUNE_ABOVE:
            self._prune(at)

    def _prune(self, now: float) -> None:
        for key in [k for k, at in self._next.items() if at <= now]:
            del self._next[key]
