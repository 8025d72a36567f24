"""Batches: several imports watched as one card and one thread (``watch 1001 1002 ...``).

Each import of a batch is an ordinary subscription (polled, its events written to
the outbox, its history kept, as for a watch of its own) with ``batch_id`` set.
The batch row holds what is shared: the tracking card, its backoff, the lease
under which the card and every import's replies are delivered, and the one
reply that sums the batch up when every import has ended. Its imports are never
leased one by one (``outbox.py`` leaves them out), so a batch's thread has one
writer at a time, as a single watch's has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, and_, delete, exists, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from bot.domain.events import Event
from bot.domain.settings import DEFAULTS, ChannelSettings
from bot.domain.status import ImportStatus
from bot.store.channel_settings import settings_of
from bot.store.records import (
    ACTIVE,
    DROPPED,
    ENDED,
    PENDING,
    SENT,
    PendingNotification,
    status_of,
)
from bot.store.subscriptions import Subscriptions, end_subscriptions
from bot.store.tables import (
    BatchRow,
    ChannelWaitRow,
    ImportRow,
    NotificationRow,
    SubscriptionRow,
)


@dataclass(frozen=True)
class NewMember:
    """An import joining a new batch: its status now, and when to poll it first."""

    status: ImportStatus
    next_poll_at: datetime


@dataclass(frozen=True)
class BatchCreated:
    """The batch made, or (``batch_id`` None) the tokens this channel already watches."""

    batch_id: int | None
    already_watched: tuple[int, ...] = ()


@dataclass(frozen=True)
class MemberState:
    """One import of a batch as delivery sees it."""

    subscription_id: int
    access_token: int
    status: ImportStatus | None
    #: None while watched; why its watch ended otherwise.
    ended_reason: str | None
    card_wanted: int
    card_done: int
    rate_base_at: datetime | None
    rate_base_done: int | None


@dataclass(frozen=True)
class MemberNotification:
    """A pending reply of one of the batch's imports."""

    subscription_id: int
    access_token: int
    notification: PendingNotification


@dataclass(frozen=True)
class BatchState:
    """Everything delivery needs to bring one batch's card and thread up to date."""

    batch_id: int
    team_id: str
    channel_id: str
    subscribed_by: str
    subscribed_at: datetime
    active: bool
    ended_reason: str | None
    tracking_ts: str | None
    card_wanted: int
    card_done: int
    card_attempts: int
    card_retry_at: datetime | None
    card_error: str | None
    summary_state: str | None
    summary_attempts: int
    summary_next_at: datetime | None
    members: list[MemberState]
    notifications: list[MemberNotification]
    channel_wait_until: datetime | None = None
    settings: ChannelSettings = DEFAULTS
    #: Each import's card version as loaded: what the card shows once edited.
    member_versions: dict[int, int] = field(default_factory=dict)

    @property
    def card_due(self) -> bool:
        """The card shows less than is known (the batch or one of its imports changed)."""
        return self.card_done < self.card_wanted or any(
            m.card_done < m.card_wanted for m in self.members
        )


class _AlreadyWatched(Exception):
    def __init__(self, tokens: tuple[int, ...]) -> None:
        super().__init__(tokens)
        self.tokens = tokens


class Batches:
    """The ``batches`` table and the subscriptions that belong to each batch."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._subscriptions = Subscriptions(engine)

    # ------------------------------------------------------------------ watching

    def create(
        self,
        *,
        team_id: str,
        channel_id: str,
        client_id: str,
        members: list[NewMember],
        user_id: str,
        now: datetime,
        lease_owner: str,
        lease_seconds: float,
    ) -> BatchCreated:
        """Watch these imports in the channel as one batch, leased to ``lease_owner``.

        One transaction: all of it or nothing. Nothing is made when the channel
        already watches one of the imports (the answer lists which). An import that
        has finished already joins as ended: its line shows how it ended.
        """
        try:
            with self.engine.begin() as conn:
                batch_id = self._create(
                    conn,
                    team_id=team_id,
                    channel_id=channel_id,
                    client_id=client_id,
                    members=members,
                    user_id=user_id,
                    now=now,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    lease_owner=lease_owner,
                )
        except _AlreadyWatched as already:
            return BatchCreated(None, already.tokens)
        return BatchCreated(batch_id)

    def _create(
        self,
        conn: Connection,
        *,
        team_id: str,
        channel_id: str,
        client_id: str,
        members: list[NewMember],
        user_id: str,
        now: datetime,
        lease_until: datetime,
        lease_owner: str,
    ) -> int:
        ids = [
            self._subscriptions.ensure_import(conn, client_id, m.status, now, m.next_poll_at)
            for m in members
        ]
        watched = conn.execute(
            select(ImportRow.access_token)
            .join(SubscriptionRow, SubscriptionRow.import_id == ImportRow.id)
            .where(
                SubscriptionRow.team_id == team_id,
                SubscriptionRow.channel_id == channel_id,
                SubscriptionRow.state == ACTIVE,
                ImportRow.id.in_(ids),
            )
        ).scalars()
        already = tuple(sorted(set(watched)))
        if already:
            raise _AlreadyWatched(already)  # rolls the transaction back: nothing is kept
        batch_id = conn.execute(
            insert(BatchRow)
            .values(
                team_id=team_id,
                channel_id=channel_id,
                subscribed_by=user_id,
                subscribed_at=now,
                state=ACTIVE,
                card_wanted=1,
                card_done=0,
                card_attempts=0,
                summary_attempts=0,
                lease_owner=lease_owner,
                lease_until=lease_until,
            )
            .returning(BatchRow.id)
        ).scalar_one()
        for member, import_id in zip(members, ids, strict=True):
            finished = member.status.status.is_terminal
            conn.execute(
                insert(SubscriptionRow).values(
                    team_id=team_id,
                    channel_id=channel_id,
                    import_id=import_id,
                    subscribed_by=user_id,
                    subscribed_at=now,
                    state=ENDED if finished else ACTIVE,
                    ended_at=now if finished else None,
                    ended_reason=member.status.status.value if finished else None,
                    card_wanted=1,
                    card_done=0,
                    card_attempts=0,
                    batch_id=batch_id,
                )
            )
        return int(batch_id)

    def forget(self, batch_id: int) -> bool:
        """Remove a batch as if it never was (its card could not be posted)."""
        with self.engine.begin() as conn:
            members = conn.execute(
                select(SubscriptionRow.id, SubscriptionRow.import_id).where(
                    SubscriptionRow.batch_id == batch_id
                )
            ).all()
            ids = [m.id for m in members]
            if ids:
                conn.execute(
                    delete(NotificationRow).where(NotificationRow.subscription_id.in_(ids))
                )
                conn.execute(delete(SubscriptionRow).where(SubscriptionRow.id.in_(ids)))
            gone = conn.execute(delete(BatchRow).where(BatchRow.id == batch_id)).rowcount
            for import_id in {m.import_id for m in members}:
                referenced = conn.execute(
                    select(exists().where(SubscriptionRow.import_id == import_id))
                ).scalar()
                if not referenced:
                    conn.execute(delete(ImportRow).where(ImportRow.id == import_id))
            return bool(gone)

    # ------------------------------------------------------------------ leases

    def claim_batches(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[int]:
        """Lease batches whose card or thread has something to show now."""
        due = (
            select(BatchRow.id)
            .where(
                _deliverable(now),
                or_(BatchRow.lease_until.is_(None), BatchRow.lease_until < now),
            )
            .order_by(BatchRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=BatchRow)
        )
        with self.engine.begin() as conn:
            return list(
                conn.execute(
                    update(BatchRow)
                    .where(BatchRow.id.in_(due.scalar_subquery()))
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                    .returning(BatchRow.id)
                ).scalars()
            )

    def claim_batch(self, batch_id: int, owner: str, now: datetime, lease_seconds: float) -> bool:
        """Lease one batch now, unless someone (this replica included) holds it."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(BatchRow)
                    .where(
                        BatchRow.id == batch_id,
                        or_(BatchRow.lease_until.is_(None), BatchRow.lease_until < now),
                    )
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def renew_batch_lease(
        self, batch_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Extend this replica's lease while it is still sending; False if it was lost."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(BatchRow)
                    .where(BatchRow.id == batch_id, BatchRow.lease_owner == owner)
                    .values(lease_until=now + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def release_batch(self, batch_id: int, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id, BatchRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def release_leases(self, owner: str) -> None:
        """Give back every batch lease this replica holds (graceful shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRow)
                .where(BatchRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    # ------------------------------------------------------------------ delivery

    def batch_state(self, batch_id: int) -> BatchState | None:
        """The batch, its imports, their pending replies, its channel's wait and settings."""
        with Session(self.engine) as conn:
            batch = conn.get(BatchRow, batch_id)
            if batch is None:
                return None
            rows = conn.execute(
                select(SubscriptionRow, ImportRow)
                .join(ImportRow, ImportRow.id == SubscriptionRow.import_id)
                .where(SubscriptionRow.batch_id == batch_id)
                .order_by(SubscriptionRow.id)
            ).all()
            members = [
                MemberState(
                    subscription_id=sub.id,
                    access_token=imp.access_token,
                    status=status_of(imp.snapshot),
                    ended_reason=None if sub.state == ACTIVE else (sub.ended_reason or "ended"),
                    card_wanted=sub.card_wanted,
                    card_done=sub.card_done,
                    rate_base_at=imp.rate_base_at,
                    rate_base_done=imp.rate_base_done,
                )
                for sub, imp in rows
            ]
            tokens = {m.subscription_id: m.access_token for m in members}
            pending = conn.execute(
                select(NotificationRow)
                .where(
                    NotificationRow.subscription_id.in_(list(tokens)),
                    NotificationRow.state == PENDING,
                )
                .order_by(NotificationRow.id)
            ).scalars()
            notifications = [
                MemberNotification(
                    subscription_id=n.subscription_id,
                    access_token=tokens[n.subscription_id],
                    notification=PendingNotification(
                        id=n.id,
                        event=Event.from_json(n.event),
                        snapshot=status_of(n.snapshot),
                        attempts=n.attempts,
                        created_at=n.created_at,
                        next_attempt_at=n.next_attempt_at,
                    ),
                )
                for n in pending
            ]
            wait = conn.execute(
                select(ChannelWaitRow.not_before).where(
                    ChannelWaitRow.team_id == batch.team_id,
                    ChannelWaitRow.channel_id == batch.channel_id,
                )
            ).scalar()
            return BatchState(
                batch_id=batch.id,
                team_id=batch.team_id,
                channel_id=batch.channel_id,
                subscribed_by=batch.subscribed_by,
                subscribed_at=batch.subscribed_at,
                active=batch.state == ACTIVE,
                ended_reason=batch.ended_reason,
                tracking_ts=batch.tracking_ts,
                card_wanted=batch.card_wanted,
                card_done=batch.card_done,
                card_attempts=batch.card_attempts,
                card_retry_at=batch.card_retry_at,
                card_error=batch.card_error,
                summary_state=batch.summary_state,
                summary_attempts=batch.summary_attempts,
                summary_next_at=batch.summary_next_at,
                members=members,
                notifications=notifications,
                channel_wait_until=wait,
                settings=settings_of(conn, batch.team_id, batch.channel_id),
                member_versions={m.subscription_id: m.card_wanted for m in members},
            )

    def set_batch_card(self, state: BatchState, ts: str) -> None:
        """The card is posted: its ts (for the batch and every import) and what it shows."""
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRow)
                .where(BatchRow.id == state.batch_id)
                .values(tracking_ts=ts, card_done=state.card_wanted, **_CARD_HEALTHY)
            )
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.batch_id == state.batch_id)
                .values(tracking_ts=ts)
            )
            _members_shown(conn, state)

    def mark_batch_card_done(self, state: BatchState) -> None:
        """The card shows what ``state`` knew (or that is given up); backoff cleared."""
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRow)
                .where(BatchRow.id == state.batch_id, BatchRow.card_done < state.card_wanted)
                .values(card_done=state.card_wanted)
            )
            conn.execute(
                update(BatchRow).where(BatchRow.id == state.batch_id).values(**_CARD_HEALTHY)
            )
            _members_shown(conn, state)

    def mark_batch_card_failed(self, batch_id: int, error: str, retry_at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id)
                .values(
                    card_attempts=BatchRow.card_attempts + 1,
                    card_error=error[:200],
                    card_retry_at=retry_at,
                )
            )

    def end_batch(self, batch_id: int, reason: str, now: datetime, *, summary: bool) -> bool:
        """Every import has ended: so has the batch (its card gets one last edit), and
        ``summary`` asks for the one reply that sums it up. False if it had ended already."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(BatchRow)
                    .where(BatchRow.id == batch_id, BatchRow.state == ACTIVE)
                    .values(
                        state=ENDED,
                        ended_at=now,
                        ended_reason=reason[:200],
                        card_wanted=BatchRow.card_wanted + 1,
                        summary_state=PENDING if summary else None,
                        summary_next_at=now if summary else None,
                    )
                ).rowcount
            )

    def end_batch_now(self, batch_id: int, reason: str, now: datetime) -> None:
        """The channel is lost or the token revoked: end the batch and all its imports."""
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    select(SubscriptionRow.id).where(
                        SubscriptionRow.batch_id == batch_id, SubscriptionRow.state == ACTIVE
                    )
                ).scalars()
            )
            end_subscriptions(conn, ids, reason, now, drop_pending=True, card=False)
            conn.execute(
                update(NotificationRow)
                .where(
                    NotificationRow.subscription_id.in_(
                        select(SubscriptionRow.id).where(SubscriptionRow.batch_id == batch_id)
                    ),
                    NotificationRow.state == PENDING,
                )
                .values(state=DROPPED)
            )
            conn.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id)
                .values(
                    state=ENDED,
                    ended_at=now,
                    ended_reason=reason[:200],
                    card_done=BatchRow.card_wanted,
                    summary_state=None,
                )
            )
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.batch_id == batch_id)
                .values(card_done=SubscriptionRow.card_wanted)
            )

    def summary_sent(self, batch_id: int, ts: str | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(BatchRow)
                .where(BatchRow.id == batch_id)
                .values(
                    summary_state=SENT,
                    summary_ts=ts,
                    summary_attempts=BatchRow.summary_attempts + 1,
                )
            )

    def summary_failed(self, batch_id: int, retry_at: datetime | None) -> None:
        """The summary failed: try again at ``retry_at``, or (None) give it up."""
        values: dict[str, object] = {"summary_attempts": BatchRow.summary_attempts + 1}
        if retry_at is None:
            values["summary_state"] = DROPPED
        else:
            values["summary_next_at"] = retry_at
        with self.engine.begin() as conn:
            conn.execute(update(BatchRow).where(BatchRow.id == batch_id).values(**values))


# What a card that has just succeeded looks like: no failures, no backoff.
_CARD_HEALTHY = {"card_attempts": 0, "card_retry_at": None, "card_error": None}


def _members_shown(conn: Connection, state: BatchState) -> None:
    """Each import's card version as loaded is now shown (a later change stays due)."""
    for subscription_id, version in state.member_versions.items():
        conn.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.id == subscription_id, SubscriptionRow.card_done < version)
            .values(card_done=version)
        )


def _deliverable(now: datetime) -> ColumnElement[bool]:
    """A batch with something to show now, and nothing telling it to wait."""
    member = SubscriptionRow.batch_id == BatchRow.id
    channel_waits = exists().where(
        ChannelWaitRow.team_id == BatchRow.team_id,
        ChannelWaitRow.channel_id == BatchRow.channel_id,
        ChannelWaitRow.not_before > now,
    )
    card_due = and_(
        or_(
            BatchRow.card_done < BatchRow.card_wanted,
            exists().where(member, SubscriptionRow.card_done < SubscriptionRow.card_wanted),
        ),
        or_(BatchRow.card_retry_at.is_(None), BatchRow.card_retry_at <= now),
    )
    pending = and_(
        NotificationRow.subscription_id == SubscriptionRow.id,
        member,
        NotificationRow.state == PENDING,
    )
    reply_due = and_(
        BatchRow.tracking_ts.is_not(None),
        exists().where(pending, NotificationRow.next_attempt_at <= now),
    )
    end_due = and_(
        BatchRow.state == ACTIVE,
        BatchRow.tracking_ts.is_not(None),
        ~exists().where(member, SubscriptionRow.state == ACTIVE),
        ~exists().where(pending),
    )
    summary_due = and_(BatchRow.summary_state == PENDING, BatchRow.summary_next_at <= now)
    return and_(~channel_waits, or_(card_due, reply_due, end_due, summary_due))
