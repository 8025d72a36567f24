"""What the channels' watches came to: finished and running ones (history, digest, App Home).

Read-only queries over ``subscriptions`` and ``imports``; a finished watch
shows its import's last known status.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, select

from bot.domain.history import ActiveWatch, FinishedWatch
from bot.store.records import ACTIVE, ENDED, status_of
from bot.store.tables import ImportRow, SubscriptionRow

_COLUMNS = (
    SubscriptionRow.team_id,
    SubscriptionRow.channel_id,
    ImportRow.access_token,
    ImportRow.name,
    ImportRow.snapshot,
    SubscriptionRow.subscribed_by,
    SubscriptionRow.subscribed_at,
    SubscriptionRow.ended_at,
    SubscriptionRow.ended_reason,
    SubscriptionRow.tracking_ts,
)


class History:
    """Finished and running watches, per channel, per person or per workspace."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def finished(
        self,
        team_id: str,
        *,
        channel_id: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[FinishedWatch]:
        """Ended watches, newest first: a channel's, or the workspace's when no channel."""
        query = _joined().where(
            SubscriptionRow.team_id == team_id,
            SubscriptionRow.state == ENDED,
            SubscriptionRow.ended_at.is_not(None),
        )
        if channel_id is not None:
            query = query.where(SubscriptionRow.channel_id == channel_id)
        if since is not None:
            query = query.where(SubscriptionRow.ended_at >= since)
        query = query.order_by(SubscriptionRow.ended_at.desc(), SubscriptionRow.id.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [_finished(r) for r in rows]

    def active(
        self,
        team_id: str,
        *,
        channel_id: str | None = None,
        subscribed_by: str | None = None,
        limit: int = 200,
    ) -> list[ActiveWatch]:
        """Running watches, oldest first: a channel's, a person's, or the workspace's."""
        query = _joined().where(SubscriptionRow.team_id == team_id, SubscriptionRow.state == ACTIVE)
        if channel_id is not None:
            query = query.where(SubscriptionRow.channel_id == channel_id)
        if subscribed_by is not None:
            query = query.where(SubscriptionRow.subscribed_by == subscribed_by)
        query = query.order_by(SubscriptionRow.subscribed_at, SubscriptionRow.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [
            ActiveWatch(
                team_id=r.team_id,
                channel_id=r.channel_id,
                access_token=r.access_token,
                name=r.name,
                status=status_of(r.snapshot),
                subscribed_by=r.subscribed_by,
                subscribed_at=r.subscribed_at,
                tracking_ts=r.tracking_ts,
            )
            for r in rows
        ]


def _joined() -> Select[Any]:
    return select(*_COLUMNS).join(ImportRow, ImportRow.id == SubscriptionRow.import_id)


def _finished(r: Any) -> FinishedWatch:
    return FinishedWatch(
        team_id=r.team_id,
        channel_id=r.channel_id,
        access_token=r.access_token,
        name=r.name,
        status=status_of(r.snapshot),
        subscribed_by=r.subscribed_by,
        subscribed_at=r.subscribed_at,
        ended_at=r.ended_at,
        ended_reason=r.ended_reason,
        tracking_ts=r.tracking_ts,
    )
