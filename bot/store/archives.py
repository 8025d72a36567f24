"""Exceptions archives: an outbox of files to fetch once and post into each watching thread.

An archive (``archives``) is created in the same transaction as the poll that decides
it (``create_archives``, called by ``Polls.save_poll_results``), with one upload
(``archive_uploads``) per subscription watching the import then; both are unique, so
a decision seen twice changes nothing. The archiver leases due archives, soonest
token expiry first (a conditional ``UPDATE ... RETURNING``, ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), renews the lease while it pages, and marks each upload
sent as soon as Slack accepts it: so no two replicas fetch one archive at once, and
a channel never gets a second file, except for a crash between Slack accepting an
upload and ``mark_upload_sent`` (the same window as for messages).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, and_, bindparam, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from bot.domain.archiving import ArchiveKind
from bot.domain.status import ImportStatus, Status
from bot.store.records import ACTIVE, PENDING, ArchiveNote, status_of
from bot.store.tables import (
    ArchiveRow,
    ArchiveUploadRow,
    ChannelSettingsRow,
    ImportRow,
    NotificationRow,
    SubscriptionRow,
)

# Archive states.
ARCHIVE_PENDING = "pending"
ARCHIVE_DONE = "done"
# Upload states.
UPLOAD_PENDING = "pending"
UPLOAD_SENT = "sent"
UPLOAD_DROPPED = "dropped"

# Subscriptions that ended because the import did still want its archive (the reasons
# Polls gives when it ends them); any other end (unwatched, channel lost) does not.
_FINISHED_REASONS = frozenset({Status.COMPLETED.value, Status.FAILED.value, "token expired"})


@dataclass(frozen=True)
class DueArchive:
    """An archive this replica has leased."""

    id: int
    import_id: int
    client_id: str
    access_token: int
    kind: ArchiveKind
    created_at: datetime
    expires_at: datetime | None
    attempts: int
    #: the import as last polled (its counts go into the summary)
    status: ImportStatus | None


@dataclass(frozen=True)
class UploadTarget:
    """One pending upload: where it goes and whether it can go now."""

    upload_id: int
    subscription_id: int
    team_id: str
    channel_id: str
    subscribed_by: str
    tracking_ts: str | None
    #: the channel's ``exceptions`` setting, None when it has none (EXCEPTIONS_FILE then)
    mode: str | None
    #: False when the subscription ended by hand or lost its channel: drop the upload
    wanted: bool
    #: the card is posted and every notification from before the archive is sent
    ready: bool
    #: failed tries of this upload so far
    attempts: int = 0


def channel_exceptions_mode(conn: Connection, team_id: str, channel_id: str) -> str | None:
    """A channel's own ``exceptions`` setting (``redacted`` | ``full`` | ``none``), or None
    when it has none and follows EXCEPTIONS_FILE (``/import-status set exceptions …``)."""
    mode = conn.execute(
        select(ChannelSettingsRow.exceptions).where(
            ChannelSettingsRow.team_id == team_id, ChannelSettingsRow.channel_id == channel_id
        )
    ).scalar()
    return str(mode) if mode else None


def create_archives(
    conn: Connection,
    import_id: int,
    kinds: Iterable[ArchiveKind],
    subscriptions: Sequence[Row[Any]] | Sequence[Any],
    expires_at: datetime | None,
    now: datetime,
) -> int:
    """Create the archives a poll decided, with one upload per subscription (``id``,
    ``team_id``); returns the uploads created. Run inside the poll's transaction.

    Both inserts skip what exists, so repeating a decision is harmless. A channel that
    starts watching after an archive was posted gets it too: the archive is due again
    for that channel alone (the others' uploads are already sent).
    """
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    created = 0
    for kind in kinds:
        conn.execute(
            dialect.insert(ArchiveRow)
            .values(
                import_id=import_id,
                kind=kind.value,
                state=ARCHIVE_PENDING,
                created_at=now,
                expires_at=expires_at,
                attempts=0,
                next_attempt_at=now,
                cut=False,
            )
            .on_conflict_do_nothing(index_elements=["import_id", "kind"])
        )
        archive_id = conn.execute(
            select(ArchiveRow.id).where(
                ArchiveRow.import_id == import_id, ArchiveRow.kind == kind.value
            )
        ).scalar_one()
        if not subscriptions:
            continue
        rows = [
            {
                "archive_id": archive_id,
                "subscription_id": sub.id,
                "team_id": sub.team_id,
                "state": UPLOAD_PENDING,
                "attempts": 0,
            }
            for sub in subscriptions
        ]
        new = len(
            conn.execute(
                dialect.insert(ArchiveUploadRow)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["archive_id", "subscription_id"])
                .returning(ArchiveUploadRow.id)
            ).all()
        )
        if new:
            conn.execute(
                update(ArchiveRow)
                .where(ArchiveRow.id == archive_id, ArchiveRow.state == ARCHIVE_DONE)
                .values(state=ARCHIVE_PENDING, next_attempt_at=now, finished_at=None)
            )
        created += new
    return created


class Archives:
    """The ``archives`` and ``archive_uploads`` tables as the archiver sees them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim_due_archives(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[DueArchive]:
        """Lease up to ``limit`` due archives, the soonest token expiry first."""
        due = (
            select(ArchiveRow.id)
            .where(
                ArchiveRow.state == ARCHIVE_PENDING,
                ArchiveRow.next_attempt_at <= now,
                or_(ArchiveRow.lease_until.is_(None), ArchiveRow.lease_until < now),
            )
            .order_by(ArchiveRow.expires_at.is_(None), ArchiveRow.expires_at, ArchiveRow.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=ArchiveRow)
        )
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    update(ArchiveRow)
                    .where(ArchiveRow.id.in_(due.scalar_subquery()))
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                    .returning(ArchiveRow.id)
                ).scalars()
            )
            if not ids:
                return []
            rows = conn.execute(
                select(
                    ArchiveRow.id,
                    ArchiveRow.import_id,
                    ArchiveRow.kind,
                    ArchiveRow.created_at,
                    ArchiveRow.expires_at,
                    ArchiveRow.attempts,
                    ImportRow.client_id,
                    ImportRow.access_token,
                    ImportRow.snapshot,
                )
                .join(ImportRow, ImportRow.id == ArchiveRow.import_id)
                .where(ArchiveRow.id.in_(ids))
            ).all()
        found = [
            DueArchive(
                id=r.id,
                import_id=r.import_id,
                client_id=r.client_id,
                access_token=r.access_token,
                kind=ArchiveKind(r.kind),
                created_at=r.created_at,
                expires_at=r.expires_at,
                attempts=r.attempts,
                status=status_of(r.snapshot),
            )
            for r in rows
        ]
        # The soonest expiry first, as claimed.
        return sorted(found, key=lambda a: (a.expires_at is None, a.expires_at or now, a.id))

    def renew_lease(self, archive_id: int, owner: str, now: datetime, lease_seconds: float) -> bool:
        """Extend this replica's lease; False when it no longer holds it (stop at once)."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(ArchiveRow)
                    .where(
                        ArchiveRow.id == archive_id,
                        ArchiveRow.lease_owner == owner,
                        ArchiveRow.state == ARCHIVE_PENDING,
                    )
                    .values(lease_until=now + timedelta(seconds=lease_seconds))
                ).rowcount
            )

    def upload_targets(self, archive_id: int) -> list[UploadTarget]:
        """The archive's pending uploads, with where they go and whether they can go now."""
        with self.engine.connect() as conn:
            created_at = conn.execute(
                select(ArchiveRow.created_at).where(ArchiveRow.id == archive_id)
            ).scalar()
            if created_at is None:
                return []
            older_pending = exists().where(
                NotificationRow.subscription_id == SubscriptionRow.id,
                NotificationRow.state == PENDING,
                NotificationRow.created_at <= created_at,
            )
            rows = conn.execute(
                select(
                    ArchiveUploadRow.id,
                    ArchiveUploadRow.attempts,
                    SubscriptionRow.id.label("subscription_id"),
                    SubscriptionRow.team_id,
                    SubscriptionRow.channel_id,
                    SubscriptionRow.subscribed_by,
                    SubscriptionRow.tracking_ts,
                    SubscriptionRow.state,
                    SubscriptionRow.ended_reason,
                    older_pending.label("behind"),
                )
                .join(SubscriptionRow, SubscriptionRow.id == ArchiveUploadRow.subscription_id)
                .where(
                    ArchiveUploadRow.archive_id == archive_id,
                    ArchiveUploadRow.state == UPLOAD_PENDING,
                )
                .order_by(ArchiveUploadRow.id)
            ).all()
            return [
                UploadTarget(
                    upload_id=r.id,
                    subscription_id=r.subscription_id,
                    team_id=r.team_id,
                    channel_id=r.channel_id,
                    subscribed_by=r.subscribed_by,
                    tracking_ts=r.tracking_ts,
                    mode=channel_exceptions_mode(conn, r.team_id, r.channel_id),
                    wanted=r.state == ACTIVE or r.ended_reason in _FINISHED_REASONS,
                    ready=r.tracking_ts is not None and not r.behind,
                    attempts=r.attempts,
                )
                for r in rows
            ]

    def record_fetch(
        self,
        archive_id: int,
        owner: str,
        *,
        records: int | None,
        expected: int | None,
        pages: int | None,
        stopped: str | None,
        cut: bool,
        error: str | None,
    ) -> bool:
        """Keep what the fetch found (the cards show it); False when the lease is lost."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(ArchiveRow)
                    .where(ArchiveRow.id == archive_id, ArchiveRow.lease_owner == owner)
                    .values(
                        records=records,
                        expected=expected,
                        pages=pages,
                        stopped=stopped[:200] if stopped else None,
                        cut=cut,
                        error=error[:300] if error else None,
                    )
                ).rowcount
            )

    def mark_upload_sent(
        self,
        upload_id: int,
        *,
        mode: str,
        file_id: str | None,
        ts: str | None,
        now: datetime,
    ) -> bool:
        """Slack accepted the upload: record it and have the card say so. Once only."""
        with self.engine.begin() as conn:
            subscription_id = conn.execute(
                update(ArchiveUploadRow)
                .where(ArchiveUploadRow.id == upload_id, ArchiveUploadRow.state == UPLOAD_PENDING)
                .values(
                    state=UPLOAD_SENT,
                    mode=mode,
                    slack_file_id=file_id,
                    slack_ts=ts,
                    sent_at=now,
                    attempts=ArchiveUploadRow.attempts + 1,
                )
                .returning(ArchiveUploadRow.subscription_id)
            ).scalar()
            if subscription_id is None:
                return False
            conn.execute(
                update(SubscriptionRow)
                .where(SubscriptionRow.id == subscription_id)
                .values(card_wanted=SubscriptionRow.card_wanted + 1)
            )
            return True

    def drop_upload(self, upload_id: int, error: str) -> None:
        """This upload can never be made (channel gone, unwatched): give it up."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ArchiveUploadRow)
                .where(ArchiveUploadRow.id == upload_id, ArchiveUploadRow.state == UPLOAD_PENDING)
                .values(
                    state=UPLOAD_DROPPED,
                    last_error=error[:200],
                    attempts=ArchiveUploadRow.attempts + 1,
                )
            )

    def note_upload_failure(self, upload_id: int, error: str) -> None:
        """One failed try of an upload (it stays pending)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ArchiveUploadRow)
                .where(ArchiveUploadRow.id == upload_id)
                .values(last_error=error[:200], attempts=ArchiveUploadRow.attempts + 1)
            )

    def finish_archive(self, archive_id: int, owner: str, now: datetime) -> bool:
        """Done when no upload is pending any more; otherwise released, due again now."""
        with self.engine.begin() as conn:
            pending = conn.execute(
                select(
                    exists().where(
                        ArchiveUploadRow.archive_id == archive_id,
                        ArchiveUploadRow.state == UPLOAD_PENDING,
                    )
                )
            ).scalar()
            values: dict[str, Any] = {"lease_owner": None, "lease_until": None}
            if pending:
                values["next_attempt_at"] = now
            else:
                values |= {"state": ARCHIVE_DONE, "finished_at": now}
            conn.execute(
                update(ArchiveRow)
                .where(ArchiveRow.id == archive_id, ArchiveRow.lease_owner == owner)
                .values(**values)
            )
            return not pending

    def retry_archive(
        self, archive_id: int, owner: str, error: str | None, retry_at: datetime, *, count: bool
    ) -> None:
        """Give the lease back and try again at ``retry_at`` (``count``: a failed attempt)."""
        values: dict[str, Any] = {
            "lease_owner": None,
            "lease_until": None,
            "next_attempt_at": retry_at,
        }
        if count:
            values["attempts"] = ArchiveRow.attempts + 1
        if error is not None:
            values["error"] = error[:300]
        with self.engine.begin() as conn:
            conn.execute(
                update(ArchiveRow)
                .where(ArchiveRow.id == archive_id, ArchiveRow.lease_owner == owner)
                .values(**values)
            )

    def release_leases(self, owner: str) -> None:
        """Give back every archive lease this replica holds (shutdown): due again at once."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ArchiveRow)
                .where(ArchiveRow.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def channel_mode(self, team_id: str, channel_id: str) -> str | None:
        """A channel's own ``exceptions`` setting (see ``channel_exceptions_mode``)."""
        with self.engine.connect() as conn:
            return channel_exceptions_mode(conn, team_id, channel_id)

    def note_for(self, subscription_id: int) -> ArchiveNote | None:
        """What the subscription's card says about exceptions (see ``archive_note``)."""
        with self.engine.connect() as conn:
            return archive_note(conn, subscription_id)


# Read for every subscription delivered: built once (see outbox.py's statements).
_ARCHIVE_NOTE = (
    select(
        ArchiveRow.kind,
        ArchiveRow.records,
        ArchiveRow.expected,
        ArchiveRow.stopped,
        ArchiveRow.cut,
        ArchiveRow.error,
        ArchiveUploadRow.mode,
        ArchiveUploadRow.slack_file_id,
    )
    .join(
        ArchiveUploadRow,
        and_(
            ArchiveUploadRow.archive_id == ArchiveRow.id,
            ArchiveUploadRow.subscription_id == bindparam("p_subscription"),
            ArchiveUploadRow.state == UPLOAD_SENT,
        ),
    )
    .order_by(
        ArchiveRow.records.is_not(None).desc(),
        (ArchiveRow.kind == ArchiveKind.FINAL.value).desc(),
        ArchiveUploadRow.id.desc(),
    )
    .limit(1)
)


def archive_note(conn: Connection, subscription_id: int) -> ArchiveNote | None:
    """The archive a subscription's card speaks of: the final one, unless it could not be
    fetched and a partial one was posted (the card then points at the partial file)."""
    row = conn.execute(_ARCHIVE_NOTE, {"p_subscription": subscription_id}).first()
    if row is None:
        return None
    return ArchiveNote(
        kind=ArchiveKind(row.kind),
        records=row.records,
        expected=row.expected,
        stopped=row.stopped,
        cut=row.cut,
        error=row.error,
        mode=row.mode,
        has_file=row.slack_file_id is not None,
    )
