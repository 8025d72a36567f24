"""Subscriptions: channels watching imports (the watch, unwatch and list commands)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, bindparam, delete, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bot.domain.rules import Memory
from bot.domain.status import ImportStatus, Status
from bot.store.records import (
    ACTIVE,
    DROPPED,
    ENDED,
    PENDING,
    Subscribed,
    Watch,
    memory_columns,
    snapshot_of,
)
from bot.store.tables import BatchRow, ImportRow, NotificationRow, SubscriptionRow


class Subscriptions:
    """Who watches what: the ``subscriptions`` table and the imports they need."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    def subscribe(
        self,
        *,
        team_id: str,
        channel_id: str,
        client_id: str,
        status: ImportStatus,
        user_id: str,
        now: datetime,
        next_poll_at: datetime,
        lease_owner: str | None = None,
        lease_seconds: float = 0.0,
    ) -> Subscribed:
        """Watch an import in a channel; an existing active watch is returned unchanged.

        With ``lease_owner`` a new subscription starts leased to it for ``lease_seconds``:
        the watch command posts the card itself and must know how that went, so no
        background delivery may pick the subscription up in between.
        """
        with self.engine.begin() as conn:
            import_id = self.ensure_import(conn, client_id, status, now, next_poll_at)
            existing = conn.execute(
                select(SubscriptionRow.id).where(
                    SubscriptionRow.team_id == team_id,
                    SubscriptionRow.channel_id == channel_id,
                    SubscriptionRow.import_id == import_id,
                    SubscriptionRow.state == ACTIVE,
                )
            ).scalar()
            if existing is not None:
                return Subscribed(existing, created=False)
            subscription_id = conn.execute(
                insert(SubscriptionRow)
                .values(
                    team_id=team_id,
                    channel_id=channel_id,
                    import_id=import_id,
                    subscribed_by=user_id,
                    subscribed_at=now,
                    state=ACTIVE,
                    card_wanted=1,
                    card_done=0,
                    lease_owner=lease_owner,
                    lease_until=(
                        now + timedelta(seconds=lease_seconds) if lease_owner is not None else None
                    ),
                )
                .returning(SubscriptionRow.id)
            ).scalar_one()
            return Subscribed(subscription_id, created=True)

    def ensure_import(
        self,
        conn: Connection,
        client_id: str,
        status: ImportStatus,
        now: datetime,
        next_poll_at: datetime,
    ) -> int:
        """The import's id, inserted if new; a fresh status if nobody watches it now."""
        row = conn.execute(
            select(ImportRow.id, ImportRow.status).where(
                ImportRow.client_id == client_id, ImportRow.access_token == status.access_token
            )
        ).first()
        if row is not None:
            # Not watched by anyone until now: take the fresh status and poll on schedule.
            watched = conn.execute(
                select(
                    exists().where(
                        SubscriptionRow.import_id == row.id, SubscriptionRow.state == ACTIVE
                    )
                )
            ).scalar()
            if not watched:
                fresh_memory = memory_columns(Memory(status=status))
                del fresh_memory["transitions"]
                conn.execute(
                    update(ImportRow)
                    .where(ImportRow.id == row.id)
                    .values(
                        status=status.status.value,
                        name=status.name,
                        snapshot=snapshot_of(status),
                        expires_at=status.expires,
                        version=ImportRow.version + 1,
                        last_polled_at=now,
                        next_poll_at=next_poll_at,
                        # A fresh start, except the transition count: it keys events.
                        **fresh_memory,
                    )
                )
            return int(row.id)
        insert = (
            self._dialect.insert(ImportRow)
            .values(
                client_id=client_id,
                access_token=status.access_token,
                name=status.name,
                status=status.status.value,
                snapshot=snapshot_of(status),
                expires_at=status.expires,
                version=1,
                transitions=0,
                first_seen_at=now,
                last_polled_at=now,
                next_poll_at=next_poll_at,
                failures=0,
                trouble_notified=False,
            )
            .on_conflict_do_nothing(index_elements=["client_id", "access_token"])
        )
        conn.execute(insert)
        return int(
            conn.execute(
                select(ImportRow.id).where(
                    ImportRow.client_id == client_id,
                    ImportRow.access_token == status.access_token,
                )
            ).scalar_one()
        )

    def forget(self, subscription_id: int) -> bool:
        """Remove a subscription as if it never was (its card could not be posted).

        Its notifications go too, and its import when nothing else refers to it, so
        nothing is left watched. False if there was no such subscription.
        """
        with self.engine.begin() as conn:
            import_id = conn.execute(
                select(SubscriptionRow.import_id).where(SubscriptionRow.id == subscription_id)
            ).scalar()
            if import_id is None:
                return False
            conn.execute(
                delete(NotificationRow).where(NotificationRow.subscription_id == subscription_id)
            )
            conn.execute(delete(SubscriptionRow).where(SubscriptionRow.id == subscription_id))
            referenced = conn.execute(
                select(exists().where(SubscriptionRow.import_id == import_id))
            ).scalar()
            if not referenced:
                conn.execute(delete(ImportRow).where(ImportRow.id == import_id))
            return True

    def unsubscribe(
        self,
        *,
        team_id: str,
        channel_id: str,
        client_id: str,
        access_token: int,
        reason: str,
        now: datetime,
    ) -> int | None:
        """End a channel's watch of an import; returns the subscription id, or None."""
        with self.engine.begin() as conn:
            subscription_id = conn.execute(
                select(SubscriptionRow.id)
                .join(ImportRow, ImportRow.id == SubscriptionRow.import_id)
                .where(
                    SubscriptionRow.team_id == team_id,
                    SubscriptionRow.channel_id == channel_id,
                    SubscriptionRow.state == ACTIVE,
                    ImportRow.client_id == client_id,
                    ImportRow.access_token == access_token,
                )
            ).scalar()
            if subscription_id is None:
                return None
            end_subscriptions(conn, [subscription_id], reason, now, drop_pending=True)
            return int(subscription_id)

    def channel_watches(self, team_id: str, channel_id: str) -> list[Watch]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    SubscriptionRow.id,
                    ImportRow.access_token,
                    ImportRow.name,
                    ImportRow.status,
                    SubscriptionRow.subscribed_by,
                    SubscriptionRow.subscribed_at,
                )
                .join(ImportRow, ImportRow.id == SubscriptionRow.import_id)
                .where(
                    SubscriptionRow.team_id == team_id,
                    SubscriptionRow.channel_id == channel_id,
                    SubscriptionRow.state == ACTIVE,
                )
                .order_by(SubscriptionRow.subscribed_at, SubscriptionRow.id)
            ).all()
        return [
            Watch(
                subscription_id=r.id,
                access_token=r.access_token,
                name=r.name,
                status=Status(r.status) if r.status else None,
                subscribed_by=r.subscribed_by,
                subscribed_at=r.subscribed_at,
            )
            for r in rows
        ]

    def end_team(self, team_id: str, reason: str, now: datetime) -> int:
        """End every active subscription of a workspace (uninstall, revoked tokens)."""
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(SubscriptionRow.id).where(
                        SubscriptionRow.team_id == team_id, SubscriptionRow.state == ACTIVE
                    )
                ).scalars()
            )
            end_subscriptions(conn, ids, reason, now, drop_pending=True, card=False)
            # Their batches too: nothing can be posted in this workspace any more.
            conn.execute(
                update(BatchRow)
                .where(BatchRow.team_id == team_id, BatchRow.state == ACTIVE)
                .values(
                    state=ENDED,
                    ended_at=now,
                    ended_reason=reason[:200],
                    card_done=BatchRow.card_wanted,
                    summary_state=None,
                )
            )
            return len(ids)

    def watched_imports_by_status(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ImportRow.status, func.count(func.distinct(ImportRow.id)))
                .join(
                    SubscriptionRow,
                    and_(
                        SubscriptionRow.import_id == ImportRow.id,
                        SubscriptionRow.state == ACTIVE,
                    ),
                )
                .group_by(ImportRow.status)
            ).all()
        return {str(status or "Unknown"): int(n) for status, n in rows}


def end_subscriptions(
    conn: Connection,
    subscription_ids: list[int],
    reason: str,
    now: datetime,
    *,
    drop_pending: bool,
    card: bool = True,
) -> None:
    """End these active subscriptions; the card gets one last edit unless ``card`` is False."""
    if not subscription_ids:
        return
    ending = {"p_ids": subscription_ids, "p_at": now, "p_reason": reason[:200]}
    conn.execute(_END_WITH_CARD_EDIT if card else _END, ending)
    if drop_pending:
        conn.execute(_DROP_PENDING, {"p_ids": subscription_ids})


# Run for every import that finishes: built once (see outbox.py's statements).
_END = (
    update(SubscriptionRow)
    .where(
        SubscriptionRow.id.in_(bindparam("p_ids", expanding=True)),
        SubscriptionRow.state == ACTIVE,
    )
    .values(state=ENDED, ended_at=bindparam("p_at"), ended_reason=bindparam("p_reason"))
)
# One last edit so the card says the watch is over.
_END_WITH_CARD_EDIT = _END.values(card_wanted=SubscriptionRow.card_wanted + 1)
_DROP_PENDING = (
    update(NotificationRow)
    .where(
        NotificationRow.subscription_id.in_(bindparam("p_ids", expanding=True)),
        NotificationRow.state == PENDING,
    )
    .values(state=DROPPED)
)
