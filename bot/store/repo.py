"""Every query the bot runs, behind one narrow interface.

The methods are synchronous (SQLAlchemy Core on a pooled engine); async
callers run them with ``asyncio.to_thread``. Claims use short leases with a
conditional ``UPDATE ... RETURNING`` (plus ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so several replicas can share one database without doing the
same work twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from bot.mypreferences.models import ImportStatus, Status
from bot.store.tables import ImportRow, NotificationRow, SubscriptionRow
from bot.watch.events import Event, EventKind
from bot.watch.rules import Decision, Memory

# A healthy poll whose next time is within this of what its claim wrote is not saved.
NEXT_POLL_TOLERANCE_SECONDS = 1.0

ACTIVE = "active"
ENDED = "ended"
PENDING = "pending"
SENT = "sent"
DROPPED = "dropped"


@dataclass(frozen=True)
class DueImport:
    """An import this replica has leased for one poll."""

    id: int
    client_id: str
    access_token: int
    memory: Memory
    #: What the claim already wrote as the next poll (the active interval from now).
    expected_next_poll_at: datetime | None = None


@dataclass(frozen=True)
class PollResult:
    """What one poll decided, ready to be saved."""

    import_id: int
    decision: Decision
    polled_at: datetime
    next_poll_at: datetime
    error: str | None = None
    previous: Memory | None = None
    expected_next_poll_at: datetime | None = None

    def needs_saving(self) -> bool:
        """False for a healthy poll that changed nothing and is due when the claim said.

        The claim already wrote the lease, the poll time and the next poll, so
        such a poll costs one row in all (the claim); its lease simply runs out.
        """
        previous, memory = self.previous, self.decision.memory
        if previous is None or self.expected_next_poll_at is None or self.error is not None:
            return True
        if self.decision.events or self.decision.changed or self.decision.finished:
            return True
        if memory.failures or previous.failures:
            return True
        if (memory.rate_base_at, memory.rate_base_done) != (
            previous.rate_base_at,
            previous.rate_base_done,
        ):
            return True
        drift = abs((self.next_poll_at - self.expected_next_poll_at).total_seconds())
        return drift > NEXT_POLL_TOLERANCE_SECONDS


@dataclass(frozen=True)
class Watch:
    """One active subscription as the ``list`` command shows it."""

    subscription_id: int
    access_token: int
    name: str | None
    status: Status | None
    subscribed_by: str
    subscribed_at: datetime


@dataclass(frozen=True)
class PendingNotification:
    id: int
    event: Event
    snapshot: ImportStatus | None
    attempts: int
    created_at: datetime
    next_attempt_at: datetime


@dataclass(frozen=True)
class Delivery:
    """Everything the notifier needs to bring one subscription's channel up to date."""

    subscription_id: int
    team_id: str
    channel_id: str
    subscribed_by: str
    subscribed_at: datetime
    active: bool
    ended_reason: str | None
    tracking_ts: str | None
    card_wanted: int
    card_done: int
    access_token: int
    status: ImportStatus | None
    rate_base_at: datetime | None
    rate_base_done: int | None
    notifications: list[PendingNotification]


@dataclass(frozen=True)
class Subscribed:
    subscription_id: int
    created: bool


def _snapshot(status: ImportStatus | None) -> dict[str, Any] | None:
    return status.to_json() if status is not None else None


def _status(snapshot: dict[str, Any] | None) -> ImportStatus | None:
    return ImportStatus.from_json(snapshot) if snapshot else None


class Store:
    """The database, as the rest of the bot sees it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    # ----- commands -------------------------------------------------------

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
    ) -> Subscribed:
        """Watch an import in a channel; an existing active watch is returned unchanged."""
        with self.engine.begin() as conn:
            import_id = self._ensure_import(conn, client_id, status, now, next_poll_at)
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
                )
                .returning(SubscriptionRow.id)
            ).scalar_one()
            return Subscribed(subscription_id, created=True)

    def _ensure_import(
        self,
        conn: Connection,
        client_id: str,
        status: ImportStatus,
        now: datetime,
        next_poll_at: datetime,
    ) -> int:
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
                conn.execute(
                    update(ImportRow)
                    .where(ImportRow.id == row.id)
                    .values(
                        status=status.status.value,
                        name=status.name,
                        snapshot=_snapshot(status),
                        expires_at=status.expires,
                        version=ImportRow.version + 1,
                        last_polled_at=now,
                        next_poll_at=next_poll_at,
                        failures=0,
                        trouble_since=None,
                        trouble_notified=False,
                        rate_base_at=None,
                        rate_base_done=None,
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
                snapshot=_snapshot(status),
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
            self._end(conn, [subscription_id], reason, now, drop_pending=True)
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
            self._end(conn, ids, reason, now, drop_pending=True, card=False)
            return len(ids)

    # ----- the watcher ----------------------------------------------------

    def claim_due_imports(
        self,
        owner: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        expected_interval: float | None = None,
    ) -> list[DueImport]:
        """Lease up to ``limit`` imports that are due and watched by someone.

        The claim also writes the poll time and the next poll, ``expected_interval``
        (default: the lease) from now, as if the poll will change nothing, which it
        usually does not: then the poll itself needs no write at all (see
        PollResult.needs_saving). A lease this replica still holds does not stop
        it claiming the import once it is due again.
        """
        interval = lease_seconds if expected_interval is None else expected_interval
        expected = now + timedelta(seconds=interval)
        values: dict[str, Any] = {
            "lease_owner": owner,
            "lease_until": now + timedelta(seconds=lease_seconds),
            # Not due again before then, even for this replica: it is never polled twice.
            "next_poll_at": expected,
            "last_polled_at": now,
        }
        due = (
            select(ImportRow.id)
            .where(
                ImportRow.next_poll_at <= now,
                or_(
                    ImportRow.lease_until.is_(None),
                    ImportRow.lease_until < now,
                    ImportRow.lease_owner == owner,
                ),
                exists().where(
                    SubscriptionRow.import_id == ImportRow.id, SubscriptionRow.state == ACTIVE
                ),
            )
            .order_by(ImportRow.next_poll_at)
            .limit(limit)
            .with_for_update(skip_locked=True, of=ImportRow)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                update(ImportRow)
                .where(ImportRow.id.in_(due.scalar_subquery()))
                .values(**values)
                .returning(
                    ImportRow.id,
                    ImportRow.client_id,
                    ImportRow.access_token,
                    ImportRow.snapshot,
                    ImportRow.transitions,
                    ImportRow.failures,
                    ImportRow.trouble_since,
                    ImportRow.trouble_notified,
                    ImportRow.rate_base_at,
                    ImportRow.rate_base_done,
                )
            ).all()
        return [
            DueImport(
                id=r.id,
                client_id=r.client_id,
                access_token=r.access_token,
                memory=Memory(
                    status=_status(r.snapshot),
                    transitions=r.transitions,
                    failures=r.failures,
                    trouble_since=r.trouble_since,
                    trouble_notified=r.trouble_notified,
                    rate_base_at=r.rate_base_at,
                    rate_base_done=r.rate_base_done,
                ),
                expected_next_poll_at=expected,
            )
            for r in rows
        ]

    def save_poll_results(self, owner: str, results: Iterable[PollResult]) -> int:
        """Record a batch of polls in one transaction; returns notifications created.

        Healthy unchanged polls were fully recorded by their claim and are skipped;
        other quiet ones (errors, backoff) become one batched UPDATE. A changed
        import is saved only if this replica still holds its lease; its events
        go into the outbox in the same transaction, so a crash either keeps
        both or neither.
        """
        quiet: list[dict[str, Any]] = []
        changed: list[PollResult] = []
        for result in results:
            decision = result.decision
            if not result.needs_saving():
                continue
            if decision.events or decision.changed or decision.finished:
                changed.append(result)
            else:
                memory = decision.memory
                quiet.append(
                    {
                        "b_id": result.import_id,
                        "b_owner": owner,
                        "last_polled_at": result.polled_at,
                        "next_poll_at": result.next_poll_at,
                        "failures": memory.failures,
                        "last_error": result.error,
                        "trouble_since": memory.trouble_since,
                        "rate_base_at": memory.rate_base_at,
                        "rate_base_done": memory.rate_base_done,
                        "lease_owner": None,
                        "lease_until": None,
                    }
                )
        if not quiet and not changed:
            return 0
        created = 0
        with self.engine.begin() as conn:
            if quiet:
                conn.execute(
                    update(ImportRow).where(
                        ImportRow.id == bindparam("b_id"),
                        ImportRow.lease_owner == bindparam("b_owner"),
                    ),
                    quiet,
                )
            for result in changed:
                created += self._save_change(conn, owner, result)
        return created

    def _save_change(self, conn: Connection, owner: str, result: PollResult) -> int:
        memory = result.decision.memory
        status = memory.status
        values: dict[str, Any] = {
            "last_polled_at": result.polled_at,
            "next_poll_at": result.next_poll_at,
            "failures": memory.failures,
            "last_error": result.error,
            "transitions": memory.transitions,
            "trouble_since": memory.trouble_since,
            "trouble_notified": memory.trouble_notified,
            "rate_base_at": memory.rate_base_at,
            "rate_base_done": memory.rate_base_done,
            "lease_owner": None,
            "lease_until": None,
        }
        if result.decision.changed and status is not None:
            values |= {
                "status": status.status.value,
                "name": status.name,
                "snapshot": _snapshot(status),
                "expires_at": status.expires,
                "version": ImportRow.version + 1,
                "last_changed_at": result.polled_at,
            }
        saved = conn.execute(
            update(ImportRow)
            .where(ImportRow.id == result.import_id, ImportRow.lease_owner == owner)
            .values(**values)
        ).rowcount
        if not saved:
            return 0  # the lease expired and another replica took over: its result wins
        subscriptions = conn.execute(
            select(SubscriptionRow.id, SubscriptionRow.team_id).where(
                SubscriptionRow.import_id == result.import_id, SubscriptionRow.state == ACTIVE
            )
        ).all()
        if not subscriptions:
            return 0
        created = 0
        if result.decision.events:
            rows = [
                {
                    "subscription_id": sub.id,
                    "team_id": sub.team_id,
                    "event_key": event.key,
                    "kind": event.kind.value,
                    "event": event.to_json(),
                    "snapshot": _snapshot(status),
                    "created_at": result.polled_at,
                    "state": PENDING,
                    "attempts": 0,
                    "next_attempt_at": result.polled_at,
                }
                for event in result.decision.events
                for sub in subscriptions
            ]
            # Count RETURNING rows: psycopg's rowcount reads 0 once an INSERT's cursor is closed.
            created = len(
                conn.execute(
                    self._dialect.insert(NotificationRow)
                    .values(rows)
                    .on_conflict_do_nothing(index_elements=["subscription_id", "event_key"])
                    .returning(NotificationRow.id)
                ).all()
            )
        ids = [sub.id for sub in subscriptions]
        if result.decision.changed:
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id.in_(ids))
                .values(card_wanted=SubscriptionRow.card_wanted + 1)
            )
        if result.decision.finished:
            reason = _finish_reason(result.decision)
            self._end(conn, ids, reason, result.polled_at, drop_pending=False)
        return max(created, 0)

    # ----- the notifier ---------------------------------------------------

    def claim_deliveries(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[int]:
        """Lease subscriptions whose channel has something to be told."""
        pending = exists().where(
            NotificationRow.subscription_id == SubscriptionRow.id,
            NotificationRow.state == PENDING,
            NotificationRow.next_attempt_at <= now,
        )
        due = (
            select(SubscriptionRow.id)
            .where(
                or_(SubscriptionRow.card_done < SubscriptionRow.card_wanted, pending),
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
                        or_(
                            SubscriptionRow.lease_until.is_(None),
                            SubscriptionRow.lease_until < now,
                        ),
                    )
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def delivery(self, subscription_id: int) -> Delivery | None:
        with Session(self.engine) as conn:
            row = conn.execute(
                select(SubscriptionRow, ImportRow)
                .join(ImportRow, ImportRow.id == SubscriptionRow.import_id)
                .where(SubscriptionRow.id == subscription_id)
            ).first()
            if row is None:
                return None
            sub, imp = row
            notifications = conn.execute(
                select(NotificationRow)
                .where(
                    NotificationRow.subscription_id == subscription_id,
                    NotificationRow.state == PENDING,
                )
                .order_by(NotificationRow.id)
            ).scalars()
            pending = [
                PendingNotification(
                    id=n.id,
                    event=Event.from_json(n.event),
                    snapshot=_status(n.snapshot),
                    attempts=n.attempts,
                    created_at=n.created_at,
                    next_attempt_at=n.next_attempt_at,
                )
                for n in notifications
            ]
            return Delivery(
                subscription_id=sub.id,
                team_id=sub.team_id,
                channel_id=sub.channel_id,
                subscribed_by=sub.subscribed_by,
                subscribed_at=sub.subscribed_at,
                active=sub.state == ACTIVE,
                ended_reason=sub.ended_reason,
                tracking_ts=sub.tracking_ts,
                card_wanted=sub.card_wanted,
                card_done=sub.card_done,
                access_token=imp.access_token,
                status=_status(imp.snapshot),
                rate_base_at=imp.rate_base_at,
                rate_base_done=imp.rate_base_done,
                notifications=pending,
            )

    def set_tracking_message(self, subscription_id: int, ts: str, card_version: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id)
                .values(tracking_ts=ts, card_done=card_version)
            )

    def mark_card_done(self, subscription_id: int, card_version: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(SubscriptionRow)
                .where(
                    SubscriptionRow.id == subscription_id,
                    SubscriptionRow.card_done < card_version,
                )
                .values(card_done=card_version)
            )

    def mark_sent(self, notification_id: int, ts: str | None, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(NotificationRow)
                .where(NotificationRow.id == notification_id)
                .values(state=SENT, slack_ts=ts, sent_at=now, attempts=NotificationRow.attempts + 1)
            )

    def mark_attempt_failed(self, notification_id: int, error: str, retry_at: datetime) -> None:
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
            self._end(conn, [subscription_id], reason, now, drop_pending=True, card=False)
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id)
                .values(card_done=SubscriptionRow.card_wanted)
            )

    def release_subscription(self, subscription_id: int, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id, SubscriptionRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def abandon_polls(self, owner: str, import_ids: list[int], now: datetime) -> None:
        """Polls cut short at shutdown: due again now, for any replica."""
        if not import_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(
                update(ImportRow)
                .where(ImportRow.id.in_(import_ids), ImportRow.lease_owner == owner)
                .values(next_poll_at=now, lease_owner=None, lease_until=None)
            )

    def release_leases(self, owner: str) -> None:
        """Give back every lease this replica holds (graceful shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ImportRow)
                .where(ImportRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    # ----- shared ---------------------------------------------------------

    def _end(
        self,
        conn: Connection,
        subscription_ids: list[int],
        reason: str,
        now: datetime,
        *,
        drop_pending: bool,
        card: bool = True,
    ) -> None:
        if not subscription_ids:
            return
        values: dict[str, Any] = {"state": ENDED, "ended_at": now, "ended_reason": reason[:200]}
        if card:
            # One last edit so the card says the watch is over.
            values["card_wanted"] = SubscriptionRow.card_wanted + 1
        conn.execute(
            update(SubscriptionRow)
            .where(SubscriptionRow.id.in_(subscription_ids), SubscriptionRow.state == ACTIVE)
            .values(**values)
        )
        if drop_pending:
            conn.execute(
                update(NotificationRow)
                .where(
                    NotificationRow.subscription_id.in_(subscription_ids),
                    NotificationRow.state == PENDING,
                )
                .values(state=DROPPED)
            )

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


def _finish_reason(decision: Decision) -> str:
    status = decision.memory.status
    if (
        status is not None
        and status.status.is_terminal
        and not any(e.kind is EventKind.EXPIRED for e in decision.events)
    ):
        return status.status.value
    return "token expired"
