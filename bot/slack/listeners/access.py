"""Who may use the bot, and how often they may look imports up.

The allow-lists (ALLOWED_CHANNEL_IDS, ALLOWED_USER_IDS) gate every verb and
every button, ``list`` and ``unwatch`` included: outside them the bot answers
only with the refusal, so an outsider can neither read a channel's watch list
nor stop its watches.

Access tokens are small integers, so guessing is cheap: lookups (a lookup, a
watch, a Refresh click) are limited per user in a sliding window, and failed
ones count double whatever the entry point. The window is kept in memory, per
replica (a user spread over N replicas gets at most N times the limit, which
still stops guessing).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable

from bot.config import Settings

log = logging.getLogger(__name__)

# The verbs that ask the API about a token: these count against the lookup limit.
LOOKUP_VERBS = frozenset({"lookup", "watch", "exceptions"})


class AccessControl:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed_channels = settings.allowed_channel_ids
        self.allowed_users = settings.allowed_user_ids
        self.limit = settings.lookup_limit
        self.window = settings.lookup_window_seconds
        self.clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    async def check(
        self, team_id: str, channel_id: str | None, user_id: str, verb: str
    ) -> str | None:
        """None when allowed; otherwise the sentence to show the user (and it is logged).

        Every verb passes the allow-lists; those in ``LOOKUP_VERBS`` also take one
        slot of the user's lookup limit. ``channel_id`` None (App Home has no
        channel) checks the person only.
        """
        denial = self._denial(team_id, channel_id, user_id, verb in LOOKUP_VERBS)
        if denial is not None:
            log.warning(
                "denied %s: %s",
                verb,
                denial,
                extra={"team": team_id, "channel": channel_id or "-", "user": user_id},
            )
        return denial

    def _denial(
        self, team_id: str, channel_id: str | None, user_id: str, limited: bool
    ) -> str | None:
        if (
            channel_id is not None
            and self.allowed_channels
            and channel_id not in self.allowed_channels
        ):
            return (
                ":no_entry: This bot is not enabled in this channel. "
                "Ask an administrator to add it to ALLOWED_CHANNEL_IDS."
            )
        if self.allowed_users and user_id not in self.allowed_users:
            return (
                ":no_entry: You are not on the list of people who may look up imports. "
                "Ask an administrator to add you to ALLOWED_USER_IDS."
            )
        if not limited:
            return None
        hits = self._window(team_id, user_id)
        if len(hits) >= self.limit:
            wait = max(1, int(hits[0] + self.window - self.clock()))
            return (
                f":hourglass: You have made too many lookups recently. "
                f"Try again in {wait // 60} min {wait % 60} s."
            )
        hits.append(self.clock())
        return None

    async def record_failure(self, team_id: str, user_id: str) -> None:
        """A failed lookup costs one more slot: guessing tokens runs out twice as fast."""
        self._window(team_id, user_id).append(self.clock())

    def _window(self, team_id: str, user_id: str) -> deque[float]:
        hits = self._hits[(team_id, user_id)]
        cutoff = self.clock() - self.window
        while hits and hits[0] <= cutoff:
            hits.popleft()
        return hits
