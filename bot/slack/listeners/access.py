"""Who may look up and watch imports, and how often.

Access tokens are small integers, so guessing is cheap: lookups are limited
per user in a sliding window, and failed lookups count double. The window is
kept in memory, per replica (a user spread over N replicas gets at most N
times the limit, which still stops guessing).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable

from bot.config import Settings

log = logging.getLogger(__name__)


class AccessControl:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed_channels = settings.allowed_channel_ids
        self.allowed_users = settings.allowed_user_ids
        self.limit = settings.lookup_limit
        self.window = settings.lookup_window_seconds
        self.clock = clock
        self._hits: dict[tuple[str, str], deque[float]] = defaultdict(deque)

    async def check(self, team_id: str, channel_id: str, user_id: str, verb: str) -> str | None:
        """None when allowed; otherwise the sentence to show the user (and it is logged)."""
        denial = self._denial(team_id, channel_id, user_id)
        if denial is not None:
            log.warning(
                "denied %s: %s",
                verb,
                denial,
                extra={"team": team_id, "channel": channel_id, "user": user_id},
            )
        return denial

    async def check_lists(
        self, team_id: str, channel_id: str | None, user_id: str, verb: str
    ) -> str | None:
        """The allow-lists alone, for verbs that cannot guess tokens (settings, history, Home).

        ``channel_id`` None (App Home has no channel) checks the person only.
        """
        denial = self._listed(channel_id, user_id)
        if denial is not None:
            log.warning(
                "denied %s: %s",
                verb,
                denial,
                extra={"team": team_id, "channel": channel_id or "-", "user": user_id},
            )
        return denial

    def _listed(self, channel_id: str | None, user_id: str) -> str | None:
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
        return None

    def _denial(self, team_id: str, channel_id: str, user_id: str) -> str | None:
        listed = self._listed(channel_id, user_id)
        if listed is not None:
            return listed
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
