"""The outbox: what each subscription's channel still has to be told, and its leases.

A notification row is written in the same transaction as the poll that caused
it; delivery leases a subscription, brings its channel up to date, and marks
each message sent as soon as Slack accepts it. Slack's "wait before calling
again" (HTTP 429) is kept per (workspace, channel) in ``channel_waits``, and a
subscription is not leased while its channel waits, nor while its card or its
next reply is backing off: a channel in trouble costs the others nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Engine,
    and_,
    bindparam,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import BindParameter

from bot.domain.events import Event
from bot.store.archives import archive_note
from bot.store.channel_settings import settings_of
from bot.store.records import (
    ACTIVE,
    DROPPED,
    PENDING,
    SENT,
    SKIPPED,
    DeliveryState,
    PendingNotification,
    status_of,
)
from bot.store.subscriptions import end_subscriptions
from bot.store.tables import (
    ChannelWaitRow,
    ImportRow,
    NotificationRow,
    SubscriptionRow,
)


class Outbox:
    """Notifications waiting for Slack, and the tracking cards they hang off."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim_deliveries(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[int]:
        """Lease subscriptions whose channel has something to be told now.

        Not leased: a subscription whose channel Slack asked to wait, whose card is
        backing off, or whose next reply is not due yet.
        """
        due = (
            select(SubscriptionRow.id)
            .where(
                _deliverable(now),
                or_(SubscriptionRow.lease_until.is_(None), SubscriptionRow.lease_until < now),
            )
            .order_by(SubscriptionRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=SubscriptionRow)
        )
        with self.engine.begin() as conn:
            return list(
                conn.execute(
                    update(SubscriptionRow)
                    .where(SubscriptionRow.id.in_(due.scalar_subquery()))
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                    .returning(SubscriptionRow.id)
                ).scalars()
            )

    def claim_channel_heads(
        self,
        owner: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        *,
        skip_channels: Collection[tuple[str, str]] = (),
        skip_subscriptions: Collection[int] = (),
        served_channels: Collection[tuple[str, str]] = (),
    ) -> list[int]:
        """Lease one subscription with something due in each of up to ``limit`` channels.

        Only in channels where no subscription is leased now (by any replica): one
        sender per channel at a time, so that Slack's per-channel rate is kept by
        spacing messages, not by racing into 429s, and every channel gets its turn
        (the first ``limit`` channels by their lowest subscription id; those in
        ``served_channels``, which the caller has just sent to, only after every
        other). Also skipped: ``skip_channels`` ((team, channel) pairs the caller is
        pacing) and ``skip_subscriptions``; and, as in ``claim_deliveries``,
        whatever must wait.
        """
        with self.engine.begin() as conn:
            # One plain scan, no correlated subquery: the subscriptions with work now and
            # those leased (their channels are busy), from one snapshot, so that a lease
            # another replica commits meanwhile cannot make a second head in its channel.
            rows = conn.execute(_CHANNEL_HEADS_SCAN, {"p_now": now}).all()
            waiting = conn.execute(_WAITING_CHANNELS, {"p_now": now}).all()
            passed = {(team, channel) for _, team, channel, busy in rows if busy}
            passed.update((team, channel) for team, channel in waiting)
            passed.update(skip_channels)
            skipped = set(skip_subscriptions)
            heads: list[int] = []
            # A channel yet to be told anything goes before one that has just had a
            # message: when many channels have news at once, each one's first message
            # (and with it the start of its pace) comes as early as it can. The sort is
            # stable: within each group, lowest subscription id first.
            served = set(served_channels)
            for subscription_id, team, channel, busy in sorted(
                rows, key=lambda row: (row.team_id, row.channel_id) in served
            ):
                if len(heads) >= limit:
                    break
                if busy or subscription_id in skipped or (team, channel) in passed:
                    continue
                heads.append(subscription_id)
                passed.add((team, channel))
            if not heads:
                return []
            # On PostgreSQL, the lease condition, checked again by the UPDATE on the row
            # it locks, keeps a head to one replica (both pick the same head of a channel).
            until = now + timedelta(seconds=lease_seconds)
            leased = conn.execute(
                _LEASE_HEADS, {"p_ids": heads, "p_now": now, "p_owner": owner, "p_until": until}
            )
            return list(leased.scalars())

    def claim_subscription(
        self, subscription_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Lease one subscription (the watch command delivers its card right away).

        A lease held by this same replica counts too: the watcher's tick may be
        delivering this subscription at this moment, and two deliveries at once
        would post the card (or a notification) twice. The tick delivers it then.
        """
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(SubscriptionRow)
                    .where(
                        SubscriptionRow.id == subscription_id,
                        # A batch's imports are delivered with their batch (store/batches.py).
                        SubscriptionRow.batch_id.is_(None),
                        or_(
                            SubscriptionRow.lease_until.is_(None),
                            SubscriptionRow.lease_until < now,
                        ),
                    )
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def renew_lease(
        self, subscription_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Extend this replica's lease while it is still sending; False if it was lost."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(SubscriptionRow)
                    .where(
                        SubscriptionRow.id == subscription_id,
                        SubscriptionRow.lease_owner == owner,
                    )
                    .values(lease_until=now + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def delivery(self, subscription_id: int) -> DeliveryState | None:
        """Everything delivery needs about one subscription, its waits included.

        Loaded for every subscription delivered, so plain columns (no ORM objects), the
        channel's wait joined to the subscription, and statements built once.
        """
        with self.engine.connect() as conn:
            row = conn.execute(_DELIVERY, {"p_id": subscription_id}).first()
            if row is None:
                return None
            notifications = conn.execute(_PENDING_NOTIFICATIONS, {"p_id": subscription_id})
            pending = [
                PendingNotification(
                    id=n.id,
                    event=Event.from_json(n.event),
                    snapshot=status_of(n.snapshot),
                    attempts=n.attempts,
                    created_at=n.created_at,
                    next_attempt_at=n.next_attempt_at,
                )
                for n in notifications
            ]
            return DeliveryState(
                subscription_id=row.id,
                team_id=row.team_id,
                channel_id=row.channel_id,
                subscribed_by=row.subscribed_by,
                subscribed_at=row.subscribed_at,
                active=row.state == ACTIVE,
                ended_reason=row.ended_reason,
                tracking_ts=row.tracking_ts,
                card_wanted=row.card_wanted,
                card_done=row.card_done,
                access_token=row.access_token,
                status=status_of(row.snapshot),
                rate_base_at=row.rate_base_at,
                rate_base_done=row.rate_base_done,
                notifications=pending,
                card_attempts=row.card_attempts,
                card_retry_at=row.card_retry_at,
                card_error=row.card_error,
                channel_wait_until=row.not_before,
                exceptions=archive_note(conn, subscription_id),
                settings=settings_of(conn, row.team_id, row.channel_id),
            )

    def set_tracking_message(self, subscription_id: int, ts: str, card_version: int) -> None:
        """The card is posted: its ts, the version it shows, and its backoff cleared."""
        with self.engine.begin() as conn:
            conn.execute(
                _SET_TRACKING_MESSAGE, {"p_id": subscription_id, "p_ts": ts, "p_done": card_version}
            )

    def mark_card_done(self, subscription_id: int, card_version: int) -> None:
        """The card shows ``card_version`` (or that version is given up); backoff cleared."""
        with self.engine.begin() as conn:
            conn.execute(
                update(SubscriptionRow)
                .where(
                    SubscriptionRow.id == subscription_id,
                    SubscriptionRow.card_done < card_version,
                )
                .values(card_done=card_version, **_CARD_HEALTHY)
            )

    def mark_card_failed(self, subscription_id: int, error: str, retry_at: datetime) -> None:
        """Posting or editing the card failed: count it and try again no sooner than then."""
        with self.engine.begin() as conn:
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id)
                .values(
                    card_attempts=SubscriptionRow.card_attempts + 1,
                    card_error=error[:200],
                    card_retry_at=retry_at,
                )
            )

    def wait_channel(
        self, team_id: str, channel_id: str, not_before: datetime, reason: str
    ) -> None:
        """Slack said wait: nothing goes to this channel before ``not_before``.
        An earlier wait never shortens a later one."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(ChannelWaitRow).values(
            team_id=team_id, channel_id=channel_id, not_before=not_before, reason=reason[:200]
        )
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["team_id", "channel_id"],
                    set_={"not_before": not_before, "reason": reason[:200]},
                    where=ChannelWaitRow.not_before < not_before,
                )
            )

    def channel_wait(self, team_id: str, channel_id: str) -> datetime | None:
        """Until when Slack asked this channel to wait (None: no wait known)."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(ChannelWaitRow.not_before).where(
                    ChannelWaitRow.team_id == team_id, ChannelWaitRow.channel_id == channel_id
                )
            ).scalar()

    def clear_waits(self, now: datetime) -> int:
        """Forget waits that are over (housekeeping; an old row changes nothing)."""
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    delete(ChannelWaitRow).where(ChannelWaitRow.not_before <= now)
                ).rowcount
            )

    def mark_sent(self, notification_id: int, ts: str | None, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(_MARK_SENT, {"p_id": notification_id, "p_ts": ts, "p_now": now})

    def mark_attempt_failed(self, notification_id: int, error: str, retry_at: datetime) -> None:
        """A reply failed: try it again at ``retry_at``; the replies after it wait too
        (the thread keeps its order, and the subscription is not leased meanwhile)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(NotificationRow)
                .where(NotificationRow.id == notification_id)
                .values(
                    attempts=NotificationRow.attempts + 1,
                    last_error=error[:200],
                    next_attempt_at=retry_at,
                )
            )
            subscription_id = (
                select(NotificationRow.subscription_id)
                .where(NotificationRow.id == notification_id)
                .scalar_subquery()
            )
            conn.execute(
                update(NotificationRow)
                .where(
                    NotificationRow.subscription_id == subscription_id,
                    NotificationRow.state == PENDING,
                    NotificationRow.id > notification_id,
                    NotificationRow.next_attempt_at < retry_at,
                )
                .values(next_attempt_at=retry_at)
            )

    def mark_skipped(self, notification_id: int) -> None:
        """The channel's settings say this one is not posted (milestones off, say)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(NotificationRow)
                .where(NotificationRow.id == notification_id, NotificationRow.state == PENDING)
                .values(state=SKIPPED)
            )

    def drop_notification(self, notification_id: int, error: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(NotificationRow)
                .where(NotificationRow.id == notification_id)
                .values(
                    state=DROPPED, last_error=error[:200], attempts=NotificationRow.attempts + 1
                )
            )

    def end_subscription(self, subscription_id: int, reason: str, now: datetime) -> None:
        """The channel is gone or the token revoked: end it, drop what cannot be sent."""
        with self.engine.begin() as conn:
            end_subscriptions(conn, [subscription_id], reason, now, drop_pending=True, card=False)
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id)
                .values(card_done=SubscriptionRow.card_wanted)
            )

    def release_subscription(
        self, subscription_id: int, owner: str, card_not_before: datetime | None = None
    ) -> None:
        """Give the lease back, if this replica still holds it; with ``card_not_before``,
        the card's edit waits its turn under Slack's workspace-wide limit until then
        (not a failure: no attempt is counted, no error kept)."""
        with self.engine.begin() as conn:
            conn.execute(
                _RELEASE_SUBSCRIPTION,
                {"p_id": subscription_id, "p_owner": owner, "p_card_at": card_not_before},
            )

    def release_leases(self, owner: str) -> None:
        """Give back every subscription lease this replica holds (graceful shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )


# What a card that has just succeeded looks like: no failures, no backoff.
_CARD_HEALTHY = {"card_attempts": 0, "card_retry_at": None, "card_error": None}


def _deliverable(now: datetime) -> ColumnElement[bool]:
    """A subscription with something to send now, and nothing telling it to wait."""
    channel_waits = exists().where(
        ChannelWaitRow.team_id == SubscriptionRow.team_id,
        ChannelWaitRow.channel_id == SubscriptionRow.channel_id,
        ChannelWaitRow.not_before > now,
    )
    return and_(~channel_waits, _has_work(now))


def _has_work(now: datetime | ColumnElement[datetime]) -> ColumnElement[bool]:
    """A subscription whose card or next reply is due now (its channel's wait aside).

    The replies due are found once, from ``ix_notifications_due``, not per subscription.
    """
    card_due = and_(
        SubscriptionRow.card_done < SubscriptionRow.card_wanted,
        or_(SubscriptionRow.card_retry_at.is_(None), SubscriptionRow.card_retry_at <= now),
    )
    replies_due = select(NotificationRow.subscription_id).where(
        NotificationRow.state == PENDING, NotificationRow.next_attempt_at <= now
    )
    reply_due = and_(
        # Replies hang off the card: none before it is posted.
        SubscriptionRow.tracking_ts.is_not(None),
        SubscriptionRow.id.in_(replies_due),
    )
    # A batch's imports share its card and thread: they are delivered with the batch.
    return and_(SubscriptionRow.batch_id.is_(None), or_(card_due, reply_due))


# The statements of every delivered message, built once with bound parameters (named
# p_*, never a column's name): SQLAlchemy then reuses their cache key and compiled form
# and maps their result columns without matching them again. Built per call, the load
# alone cost 1 ms of CPU per subscription (bench/README.md, fan-out).
_DELIVERY = (
    select(
        SubscriptionRow.id,
        SubscriptionRow.team_id,
        SubscriptionRow.channel_id,
        SubscriptionRow.subscribed_by,
        SubscriptionRow.subscribed_at,
        SubscriptionRow.state,
        SubscriptionRow.ended_reason,
        SubscriptionRow.tracking_ts,
        SubscriptionRow.card_wanted,
        SubscriptionRow.card_done,
        SubscriptionRow.card_attempts,
        SubscriptionRow.card_retry_at,
        SubscriptionRow.card_error,
        ImportRow.access_token,
        ImportRow.snapshot,
        ImportRow.rate_base_at,
        ImportRow.rate_base_done,
        ChannelWaitRow.not_before,
    )
    .join(ImportRow, ImportRow.id == SubscriptionRow.import_id)
    .outerjoin(
        ChannelWaitRow,
        and_(
            ChannelWaitRow.team_id == SubscriptionRow.team_id,
            ChannelWaitRow.channel_id == SubscriptionRow.channel_id,
        ),
    )
    .where(SubscriptionRow.id == bindparam("p_id"))
)
_PENDING_NOTIFICATIONS = (
    select(
        NotificationRow.id,
        NotificationRow.event,
        NotificationRow.snapshot,
        NotificationRow.attempts,
        NotificationRow.created_at,
        NotificationRow.next_attempt_at,
    )
    .where(NotificationRow.subscription_id == bindparam("p_id"), NotificationRow.state == PENDING)
    .order_by(NotificationRow.id)
)
_NOW: BindParameter[datetime] = bindparam("p_now")
_FREE = or_(SubscriptionRow.lease_until.is_(None), SubscriptionRow.lease_until < _NOW)
_LEASED = SubscriptionRow.lease_until > _NOW
_CHANNEL_HEADS_SCAN = (
    select(SubscriptionRow.id, SubscriptionRow.team_id, SubscriptionRow.channel_id, _LEASED)
    .where(or_(_LEASED, and_(_FREE, _has_work(_NOW))))
    .order_by(SubscriptionRow.id)
)
_WAITING_CHANNELS = select(ChannelWaitRow.team_id, ChannelWaitRow.channel_id).where(
    ChannelWaitRow.not_before > _NOW
)
_LEASE_HEADS = (
    update(SubscriptionRow)
    .where(SubscriptionRow.id.in_(bindparam("p_ids", expanding=True)), _FREE)
    .values(lease_owner=bindparam("p_owner"), lease_until=bindparam("p_until"))
    .returning(SubscriptionRow.id)
)
_SET_TRACKING_MESSAGE = (
    update(SubscriptionRow)
    .where(SubscriptionRow.id == bindparam("p_id"))
    .values(tracking_ts=bindparam("p_ts"), card_done=bindparam("p_done"), **_CARD_HEALTHY)
)
_MARK_SENT = (
    update(NotificationRow)
    .where(NotificationRow.id == bindparam("p_id"))
    .values(
        state=SENT,
        slack_ts=bindparam("p_ts"),
        sent_at=bindparam("p_now"),
        attempts=NotificationRow.attempts + 1,
    )
)
_RELEASE_SUBSCRIPTION = (
    update(SubscriptionRow)
    .where(
        SubscriptionRow.id == bindparam("p_id"), SubscriptionRow.lease_owner == bindparam("p_owner")
    )
    .values(
        lease_owner=None,
        lease_until=None,
        # A card turn booked during the delivery (None: the card's retry time as it is).
        card_retry_at=func.coalesce(
            bindparam("p_card_at", type_=SubscriptionRow.card_retry_at.type),
            SubscriptionRow.card_retry_at,
        ),
    )
)
