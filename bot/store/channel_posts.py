"""Channel posts: messages to a channel outside any card's thread, each sent once.

An alert (a failure or an expiry warning, to a channel's alert channel), the
notice that a channel's settings changed, a note into a card's thread (an alert
that could not be posted). Like a notification: a unique ``key`` makes each
sendable once, a short lease decides which replica sends it, it is marked sent
as soon as Slack accepts it, and it is not leased while its channel waits
(``channel_waits``, Slack's Retry-After).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bot.store.records import DROPPED, PENDING, SENT
from bot.store.tables import ChannelPostRow, ChannelWaitRow

ALERT = "alert"
NOTICE = "notice"
NOTE = "note"


@dataclass(frozen=True)
class ChannelPost:
    """One post this replica has leased to send."""

    id: int
    team_id: str
    channel_id: str
    kind: str
    key: str
    thread_ts: str | None
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


class ChannelPosts:
    """The ``channel_posts`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    def queue_post(
        self,
        *,
        team_id: str,
        channel_id: str,
        kind: str,
        key: str,
        payload: dict[str, Any],
        now: datetime,
        thread_ts: str | None = None,
    ) -> bool:
        """Queue one post; False when one with this ``key`` was queued before (nothing done)."""
        with self.engine.begin() as conn:
            inserted = conn.execute(
                self._dialect.insert(ChannelPostRow)
                .values(
                    team_id=team_id,
                    channel_id=channel_id,
                    kind=kind,
                    key=key[:120],
                    thread_ts=thread_ts,
                    payload=payload,
                    created_at=now,
                    state=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                )
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(ChannelPostRow.id)
            ).first()
        return inserted is not None

    def claim_posts(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[ChannelPost]:
        """Lease due posts (oldest first) whose channel is not waiting."""
        waiting = exists().where(
            ChannelWaitRow.team_id == ChannelPostRow.team_id,
            ChannelWaitRow.channel_id == ChannelPostRow.channel_id,
            ChannelWaitRow.not_before > now,
        )
        due = (
            select(ChannelPostRow.id)
            .where(
                ChannelPostRow.state == PENDING,
                ChannelPostRow.next_attempt_at <= now,
                or_(ChannelPostRow.lease_until.is_(None), ChannelPostRow.lease_until < now),
                ~waiting,
            )
            .order_by(ChannelPostRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=ChannelPostRow)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                update(ChannelPostRow)
                .where(ChannelPostRow.id.in_(due.scalar_subquery()))
                .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                .returning(
                    ChannelPostRow.id,
                    ChannelPostRow.team_id,
                    ChannelPostRow.channel_id,
                    ChannelPostRow.kind,
                    ChannelPostRow.key,
                    ChannelPostRow.thread_ts,
                    ChannelPostRow.payload,
                    ChannelPostRow.attempts,
                    ChannelPostRow.created_at,
                )
            ).all()
        posts = [
            ChannelPost(
                id=r.id,
                team_id=r.team_id,
                channel_id=r.channel_id,
                kind=r.kind,
                key=r.key,
                thread_ts=r.thread_ts,
                payload=dict(r.payload or {}),
                attempts=r.attempts,
                created_at=r.created_at,
            )
            for r in rows
        ]
        return sorted(posts, key=lambda p: p.id)

    def extend_post(self, post_id: int, owner: str, now: datetime, seconds: float) -> bool:
        """Hold the lease for ``seconds`` more (before a Slack call); False if it was lost."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(ChannelPostRow)
                    .where(
                        ChannelPostRow.id == post_id,
                        ChannelPostRow.lease_owner == owner,
                        ChannelPostRow.state == PENDING,
                    )
                    .values(lease_until=now + timedelta(seconds=seconds))
                ).rowcount
            )

    def post_sent(self, post_id: int, ts: str | None, now: datetime) -> None:
        self._finish(post_id, state=SENT, slack_ts=ts, sent_at=now)

    def post_failed(self, post_id: int, error: str, retry_at: datetime) -> None:
        """Not sent this time: count it, and try again from ``retry_at``."""
        self._finish(
            post_id,
            attempts=ChannelPostRow.attempts + 1,
            last_error=error[:200],
            next_attempt_at=retry_at,
        )

    def drop_post(self, post_id: int, error: str) -> None:
        """Slack will never take it (or too many tries failed): give it up."""
        self._finish(
            post_id, state=DROPPED, attempts=ChannelPostRow.attempts + 1, last_error=error[:200]
        )

    def release_post(self, post_id: int, owner: str) -> None:
        """Give one post back unsent (its channel must wait): no attempt counted."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ChannelPostRow)
                .where(ChannelPostRow.id == post_id, ChannelPostRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def release_leases(self, owner: str) -> None:
        """Give back every post lease this replica holds (graceful shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ChannelPostRow)
                .where(ChannelPostRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def _finish(self, post_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(ChannelPostRow)
                .where(ChannelPostRow.id == post_id)
                .values(lease_owner=None, lease_until=None, **values)
            )
