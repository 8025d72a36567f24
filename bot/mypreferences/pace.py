"""A polite pace for one MyPreferences account: at most N requests started per second.

Imports count against a daily request quota per account, and paging through a large
import's exceptions is thousands of requests, so everything that pages (the archive,
an on-demand request) shares one ``Pace`` per account in a process. Each caller
reserves the next free slot before it sleeps, so callers are served first come,
first served without a lock, and a cancelled caller simply leaves its slot unused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Pace:
    """Spaces request starts at least ``1 / per_second`` seconds apart."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not per_second > 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")  # when the next request may start

    async def wait(self) -> None:
        """Return when the caller may start its request (at once when the pace allows)."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await self._sleep(slot - now)
