"""Polling: which imports are due, their leases, and saving what each poll decided.

Claims use short leases with a conditional ``UPDATE ... RETURNING`` (plus
``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so several replicas can share one
database without polling the same import twice. A poll's events go into the
outbox in the same transaction as the import's new state, so a crash keeps
both or neither.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bot.domain.archiving import archives_for
from bot.domain.events import EventKind
from bot.domain.history import EXPIRED_REASON
from bot.domain.rules import Decision
from bot.store.archives import create_archives
from bot.store.records import (
    ACTIVE,
    PENDING,
    DueImport,
    PollResult,
    memory_columns,
    memory_from_row,
    snapshot_of,
)
from bot.store.subscriptions import end_subscriptions
from bot.store.tables import ImportRow, NotificationRow, SubscriptionRow

# The columns memory_from_row reads, for RETURNING clauses.
MEMORY_COLUMNS = (
    ImportRow.transitions,
    ImportRow.failures,
    ImportRow.trouble_since,
    ImportRow.trouble_notified,
    ImportRow.rate_base_at,
    ImportRow.rate_base_done,
)


class Polls:
    """The ``imports`` table as the poller sees it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    def claim_due_imports(
        self,
        owner: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        expected_interval: float | None = None,
        *,
        exclude: Collection[int] = (),
    ) -> list[DueImport]:
        """Lease up to ``limit`` imports that are due and watched by someone.

        The claim also writes the poll time and the next poll, ``expected_interval``
        (default: the lease) from now, as if the poll will change nothing, which it
        usually does not: then the poll itself needs no write at all (see
        PollResult.needs_saving). A lease this replica still holds does not stop
        it claiming the import once it is due again, unless its id is in
        ``exclude`` (the polls this replica still has in flight).

        The caller picks ``lease_seconds``: the poller asks for the interval plus
        the HTTP timeout, so a dead replica's imports are free again at most one
        HTTP timeout after they are due.
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
                *([ImportRow.id.not_in(list(exclude))] if exclude else []),
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
                    *MEMORY_COLUMNS,
                )
            ).all()
        return [
            DueImport(
                id=r.id,
                client_id=r.client_id,
                access_token=r.access_token,
                memory=memory_from_row(r),
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
                quiet.append(_save_parameters(owner, result))
        if not quiet and not changed:
            return 0
        created = 0
        with self.engine.begin() as conn:
            if quiet:
                conn.execute(_SAVE_POLL, quiet)
            for result in changed:
                created += self._save_change(conn, owner, result)
        return created

    def _save_change(self, conn: Connection, owner: str, result: PollResult) -> int:
        status = result.decision.memory.status
        values = _save_parameters(owner, result)
        save = _SAVE_POLL
        if result.decision.changed and status is not None:
            save = _SAVE_CHANGED_POLL
            values |= {
                "status": status.status.value,
                "name": status.name,
                "snapshot": snapshot_of(status),
                "expires_at": status.expires,
                "last_changed_at": result.polled_at,
            }
        if not conn.execute(save, values).rowcount:
            return 0  # the lease expired and another replica took over: its result wins
        subscriptions = conn.execute(_ACTIVE_SUBSCRIPTIONS, {"p_id": result.import_id}).all()
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
                    "snapshot": snapshot_of(status),
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
        kinds = archives_for(result.decision)
        if kinds and status is not None:
            # The exceptions archive is an outbox entry too: decided with the poll, kept with it.
            create_archives(
                conn, result.import_id, kinds, subscriptions, status.expires, result.polled_at
            )
        ids = [sub.id for sub in subscriptions]
        if result.decision.changed:
            conn.execute(_WANT_NEW_CARD, {"p_ids": ids})
        if result.decision.finished:
            reason = _finish_reason(result.decision)
            end_subscriptions(conn, ids, reason, result.polled_at, drop_pending=False)
        return max(created, 0)

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
        """Give back every import lease this replica holds (graceful shutdown)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ImportRow)
                .where(ImportRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )


# The statements of every saved poll, built once with bound parameters (named p_*,
# never a column's name); the columns to set are the execution's other parameters.
# SQLAlchemy then reuses their cache key and compiled form (see outbox.py).
_SAVE_POLL = update(ImportRow).where(
    ImportRow.id == bindparam("p_id"), ImportRow.lease_owner == bindparam("p_owner")
)
_SAVE_CHANGED_POLL = _SAVE_POLL.values(version=ImportRow.version + 1)
_ACTIVE_SUBSCRIPTIONS = select(SubscriptionRow.id, SubscriptionRow.team_id).where(
    SubscriptionRow.import_id == bindparam("p_id"), SubscriptionRow.state == ACTIVE
)
_WANT_NEW_CARD = (
    update(SubscriptionRow)
    .where(SubscriptionRow.id.in_(bindparam("p_ids", expanding=True)))
    .values(card_wanted=SubscriptionRow.card_wanted + 1)
)


def _save_parameters(owner: str, result: PollResult) -> dict[str, Any]:
    """``_SAVE_POLL``'s parameters: which import, whose lease, and what every saved poll
    writes (when, what next, the memory, and the lease let go)."""
    return {
        "p_id": result.import_id,
        "p_owner": owner,
        "last_polled_at": result.polled_at,
        "next_poll_at": result.next_poll_at,
        "last_error": result.error,
        **memory_columns(result.decision.memory),
        "lease_owner": None,
        "lease_until": None,
    }


def _finish_reason(decision: Decision) -> str:
    status = decision.memory.status
    if (
        status is not None
        and status.status.is_terminal
        and not any(e.kind is EventKind.EXPIRED for e in decision.events)
    ):
        return status.status.value
    return EXPIRED_REASON
