"""Daily digests: one row per channel and local day, leased while it is being sent.

The unique (team, channel, day) key is what makes a digest happen once per
day across replicas and restarts: a replica claims a day by inserting its row
(or by taking over a row whose lease ran out before it was sent), and only
the holder of the lease posts.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from bot.store.tables import DigestRow

SENDING = "sending"
SENT = "sent"
EMPTY = "empty"  # nothing happened that day: nothing was posted
GAVE_UP = "gave_up"  # Slack refused it for good or too often

DayKey = tuple[str, str, str]  # (team_id, channel_id, local day YYYY-MM-DD)


class Digests:
    """The ``digests`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    def settled(self, keys: list[DayKey]) -> set[DayKey]:
        """Which of these days need nothing more (sent, empty or given up)."""
        if not keys:
            return set()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(DigestRow.team_id, DigestRow.channel_id, DigestRow.day).where(
                    tuple_(DigestRow.team_id, DigestRow.channel_id, DigestRow.day).in_(keys),
                    DigestRow.state != SENDING,
                )
            ).all()
        return {(r.team_id, r.channel_id, r.day) for r in rows}

    def claim(self, key: DayKey, owner: str, now: datetime, lease_seconds: float) -> int | None:
        """Lease this day's digest for this replica to send; returns the attempts made so far.

        None when the day is not this replica's to send (settled, or leased by another).
        """
        team_id, channel_id, day = key
        lease = {"lease_owner": owner, "lease_until": now + timedelta(seconds=lease_seconds)}
        with self.engine.begin() as conn:
            inserted = conn.execute(
                self._dialect.insert(DigestRow)
                .values(
                    team_id=team_id,
                    channel_id=channel_id,
                    day=day,
                    state=SENDING,
                    attempts=0,
                    created_at=now,
                    **lease,
                )
                .on_conflict_do_nothing(index_elements=["team_id", "channel_id", "day"])
                .returning(DigestRow.attempts)
            ).first()
            if inserted is not None:
                return 0
            # Someone claimed it before: take over only if they never finished and let go.
            taken = conn.execute(
                update(DigestRow)
                .where(
                    DigestRow.team_id == team_id,
                    DigestRow.channel_id == channel_id,
                    DigestRow.day == day,
                    DigestRow.state == SENDING,
                    or_(DigestRow.lease_until.is_(None), DigestRow.lease_until < now),
                )
                .values(**lease)
                .returning(DigestRow.attempts)
            ).first()
            return int(taken.attempts) if taken is not None else None

    def extend(self, key: DayKey, owner: str, now: datetime, seconds: float) -> bool:
        """Hold this replica's lease for ``seconds`` more (before posting); False if lost.

        The lease must outlast the post, or another replica could take the day over
        while the first is still posting, and the channel would get two digests.
        """
        team_id, channel_id, day = key
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(DigestRow)
                    .where(
                        DigestRow.team_id == team_id,
                        DigestRow.channel_id == channel_id,
                        DigestRow.day == day,
                        DigestRow.state == SENDING,
                        DigestRow.lease_owner == owner,
                    )
                    .values(lease_until=now + timedelta(seconds=seconds))
                ).rowcount
            )

    def postpone(self, key: DayKey, owner: str, until: datetime) -> None:
        """Slack has the channel wait: nobody tries before ``until``; no attempt counted."""
        self._set(key, owner, lease_owner=None, lease_until=until)

    def finish(
        self, key: DayKey, owner: str, state: str, now: datetime, ts: str | None = None
    ) -> None:
        """Record the day as sent (with the message ts) or empty."""
        self._set(key, owner, state=state, sent_at=now, slack_ts=ts, lease_until=None)

    def failed(
        self, key: DayKey, owner: str, error: str, retry_at: datetime, give_up: bool
    ) -> None:
        """Slack refused the post: try again from ``retry_at``, or give the day up."""
        values: dict[str, object] = {
            "attempts": DigestRow.attempts + 1,
            "last_error": error[:200],
            "lease_owner": None,
            "lease_until": retry_at,  # nobody takes it over before then
        }
        if give_up:
            values["state"] = GAVE_UP
        self._set(key, owner, **values)

    def release_leases(self, owner: str) -> None:
        """Give back the days this replica was sending (graceful shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(DigestRow)
                .where(DigestRow.lease_owner == owner, DigestRow.state == SENDING)
                .values(lease_owner=None, lease_until=None)
            )

    def _set(self, key: DayKey, owner: str, **values: object) -> None:
        team_id, channel_id, day = key
        with self.engine.begin() as conn:
            conn.execute(
                update(DigestRow)
                .where(
                    DigestRow.team_id == team_id,
                    DigestRow.channel_id == channel_id,
                    DigestRow.day == day,
                    DigestRow.lease_owner == owner,
                )
                .values(**values)
            )
