"""The database tables. Alembic migrations in ``migrations/`` create them.

Every row that belongs to a workspace carries the Slack team id, and every
import carries the MyPreferences clientId. No secret is ever stored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class ImportRow(Base):
    """One MyPreferences import the bot knows of, with its polling bookkeeping."""

    __tablename__ = "imports"
    __table_args__ = (UniqueConstraint("client_id", "access_token", name="uq_imports_token"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[str] = mapped_column(String(100))
    access_token: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str | None] = mapped_column(String(20))
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    expires_at: Mapped[datetime | None]
    # Bumped on every change the channel should see; the tracking cards follow it.
    version: Mapped[int] = mapped_column(Integer, default=0)
    # Counts status changes; part of each transition's event key.
    transitions: Mapped[int] = mapped_column(Integer, default=0)
    first_seen_at: Mapped[datetime]
    last_polled_at: Mapped[datetime | None]
    last_changed_at: Mapped[datetime | None]
    next_poll_at: Mapped[datetime] = mapped_column(index=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))
    trouble_since: Mapped[datetime | None]
    trouble_notified: Mapped[bool] = mapped_column(Boolean, default=False)
    # The first Processing observation, from which the processing rate (ETA) is measured.
    rate_base_at: Mapped[datetime | None]
    rate_base_done: Mapped[int | None] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]


class SubscriptionRow(Base):
    """A channel watching an import: (workspace, channel, import)."""

    __tablename__ = "subscriptions"
    __table_args__ = (
        Index(
            "uq_subscriptions_active",
            "team_id",
            "channel_id",
            "import_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        Index("ix_subscriptions_import_state", "import_id", "state"),
        Index("ix_subscriptions_channel", "team_id", "channel_id", "state"),
        Index("ix_subscriptions_channel_ended", "team_id", "channel_id", "ended_at"),
        Index("ix_subscriptions_batch", "batch_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    subscribed_by: Mapped[str] = mapped_column(String(32))
    subscribed_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="active")  # active | ended
    ended_at: Mapped[datetime | None]
    ended_reason: Mapped[str | None] = mapped_column(String(200))
    # The tracking message; a row, not memory, so the thread survives restarts.
    tracking_ts: Mapped[str | None] = mapped_column(String(32))
    # The card needs an edit while card_done < card_wanted.
    card_wanted: Mapped[int] = mapped_column(Integer, default=1)
    card_done: Mapped[int] = mapped_column(Integer, default=0)
    # Failed tries at posting or editing the card since it last succeeded, and when to
    # try again (backoff), so a card Slack refuses is neither retried every tick nor forever.
    card_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    card_retry_at: Mapped[datetime | None]
    card_error: Mapped[str | None] = mapped_column(String(200))
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]
    # The batch this watch belongs to (``batches``), whose card and thread it shares;
    # None for a watch of its own. A plain column, no foreign key: adding one would make
    # SQLite rebuild this table (and its partial unique index) in the migration.
    batch_id: Mapped[int | None] = mapped_column(Integer)


class NotificationRow(Base):
    """One event for one subscription: the uniqueness rule makes it sendable once."""

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_key", name="uq_notifications_event"),
        Index("ix_notifications_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(String(32))
    event_key: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The import as it was when the event happened, so the message says what was true then.
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending | sent | dropped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(String(200))


class ArchiveRow(Base):
    """An exceptions archive of one import: fetched once, posted to each watching channel.

    One per (import, kind): ``final`` when the import ended with failures, ``partial``
    when it was still running at the expiry warning. An outbox entry like a
    notification: leased while it is fetched and posted, done when every upload is.
    """

    __tablename__ = "archives"
    __table_args__ = (
        UniqueConstraint("import_id", "kind", name="uq_archives_import_kind"),
        Index("ix_archives_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(10))  # final | partial
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending | done
    created_at: Mapped[datetime]
    # The token's Expires when the archive was decided: the soonest goes first.
    expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    # What the last fetch found (the cards show it).
    records: Mapped[int | None] = mapped_column(BigInteger)
    expected: Mapped[int | None] = mapped_column(BigInteger)
    pages: Mapped[int | None] = mapped_column(Integer)
    stopped: Mapped[str | None] = mapped_column(String(200))  # why the records are partial
    cut: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(String(300))  # why nothing could be fetched
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]


class ArchiveUploadRow(Base):
    """One archive posted into one subscription's thread: sendable once, like a notification."""

    __tablename__ = "archive_uploads"
    __table_args__ = (
        UniqueConstraint("archive_id", "subscription_id", name="uq_archive_uploads"),
        Index("ix_archive_uploads_subscription", "subscription_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    archive_id: Mapped[int] = mapped_column(ForeignKey("archives.id", ondelete="CASCADE"))
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id", ondelete="CASCADE"))
    team_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending | sent | dropped
    # What was posted: the EXCEPTIONS_FILE mode, the file's id, or the message's ts.
    mode: Mapped[str | None] = mapped_column(String(10))
    slack_file_id: Mapped[str | None] = mapped_column(String(40))
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    sent_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(200))


class ChannelSettingsRow(Base):
    """A channel's settings (bot.domain.settings); no row means every default."""

    __tablename__ = "channel_settings"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", name="uq_channel_settings"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    broadcast: Mapped[str] = mapped_column(String(10))
    milestones: Mapped[bool] = mapped_column(Boolean)
    # The canonical mention text: subscriber | none | <@U…|label> | <!subteam^S…|label>.
    mention: Mapped[str] = mapped_column(String(200))
    alerts_channel: Mapped[str | None] = mapped_column(String(32))
    compact: Mapped[bool] = mapped_column(Boolean)
    digest_time: Mapped[str | None] = mapped_column(String(5))  # HH:MM
    digest_zone: Mapped[str | None] = mapped_column(String(64))  # IANA name
    # When the digest time was chosen: days whose digest time came earlier are not due.
    digest_since: Mapped[datetime | None]
    exceptions: Mapped[str | None] = mapped_column(String(10))  # None: EXCEPTIONS_FILE
    updated_by: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime]


class DigestRow(Base):
    """One channel's digest for one local day: the unique key makes it one per day."""

    __tablename__ = "digests"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "day", name="uq_digests_day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    day: Mapped[str] = mapped_column(String(10))  # the channel's local date, YYYY-MM-DD
    state: Mapped[str] = mapped_column(String(10))  # sending | sent | empty
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(String(200))
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]


class ChannelWaitRow(Base):
    """Slack asked the bot to wait (HTTP 429, Retry-After) before its next call here.

    Keyed by workspace and channel: a rate-limited channel holds back its own cards
    and replies, and nothing else. A row, not memory, so every replica honours it.
    """

    __tablename__ = "channel_waits"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    not_before: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(200))


class BatchRow(Base):
    """Several imports watched as one (``watch 1001 1002 ...``): one card, one thread.

    Its imports are subscriptions with this ``batch_id``; they share the batch's card
    (their ``tracking_ts`` is the batch's) and are delivered with it, under its lease.
    """

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_channel", "team_id", "channel_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    subscribed_by: Mapped[str] = mapped_column(String(32))
    subscribed_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="active")  # active | ended
    ended_at: Mapped[datetime | None]
    ended_reason: Mapped[str | None] = mapped_column(String(200))
    tracking_ts: Mapped[str | None] = mapped_column(String(32))
    # The card needs an edit while card_done < card_wanted here, or in one of its imports.
    card_wanted: Mapped[int] = mapped_column(Integer, default=1)
    card_done: Mapped[int] = mapped_column(Integer, default=0)
    card_attempts: Mapped[int] = mapped_column(Integer, default=0)
    card_retry_at: Mapped[datetime | None]
    card_error: Mapped[str | None] = mapped_column(String(200))
    # The one reply that sums the batch up when it ends: None (none wanted) | pending |
    # sent | dropped, sendable once like a notification.
    summary_state: Mapped[str | None] = mapped_column(String(10))
    summary_attempts: Mapped[int] = mapped_column(Integer, default=0)
    summary_next_at: Mapped[datetime | None]
    summary_ts: Mapped[str | None] = mapped_column(String(32))
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]


class ChannelPostRow(Base):
    """A message to a channel outside any card's thread: an alert, a settings notice, a note.

    An outbox entry like a notification: ``key`` makes each sendable once, it is
    leased while it is sent, and it waits when its channel must wait.
    """

    __tablename__ = "channel_posts"
    __table_args__ = (
        UniqueConstraint("key", name="uq_channel_posts_key"),
        Index("ix_channel_posts_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(10))  # alert | notice | note
    key: Mapped[str] = mapped_column(String(120))
    thread_ts: Mapped[str | None] = mapped_column(String(32))  # a note goes into a thread
    # What the message says (kind-specific; rendered when it is sent). No secrets.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(10), default="pending")  # pending | sent | dropped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    slack_ts: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(String(200))
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None]
