"""The store's narrow interface: what each part of the bot may ask of the database.

Each consumer depends on one of these protocols, not on the SQL behind it, so
a test can hand it a small fake. ``bot.store.Store`` provides all three.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any, Protocol

from bot.domain.history import ActiveWatch, FinishedWatch
from bot.domain.settings import ChannelSettings
from bot.domain.status import ImportStatus
from bot.store.archives import DueArchive, UploadTarget
from bot.store.batches import BatchCreated, BatchState, NewMember
from bot.store.channel_posts import ChannelPost
from bot.store.channel_settings import DigestChannel
from bot.store.digests import DayKey
from bot.store.records import DeliveryState, DueImport, PollResult, Subscribed, Watch


class SubscriptionStore(Protocol):
    """For the commands: who watches what."""

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
    ) -> Subscribed: ...

    def forget(self, subscription_id: int) -> bool: ...

    def unsubscribe(
        self,
        *,
        team_id: str,
        channel_id: str,
        client_id: str,
        access_token: int,
        reason: str,
        now: datetime,
    ) -> int | None: ...

    def channel_watches(self, team_id: str, channel_id: str) -> list[Watch]: ...

    def end_team(self, team_id: str, reason: str, now: datetime) -> int: ...

    def watched_imports_by_status(self) -> dict[str, int]: ...


class PollStore(Protocol):
    """For the poller: due imports, their leases, and each poll's result."""

    def claim_due_imports(
        self,
        owner: str,
        now: datetime,
        limit: int,
        lease_seconds: float,
        expected_interval: float | None = None,
        *,
        exclude: Collection[int] = (),
    ) -> list[DueImport]: ...

    def save_poll_results(self, owner: str, results: Iterable[PollResult]) -> int: ...

    def abandon_polls(self, owner: str, import_ids: list[int], now: datetime) -> None: ...

    def release_leases(self, owner: str) -> None: ...


class OutboxStore(Protocol):
    """For delivery: what each channel still has to be told."""

    def claim_deliveries(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[int]: ...

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
    ) -> list[int]: ...

    def claim_subscription(
        self, subscription_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool: ...

    def renew_lease(
        self, subscription_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool: ...

    def delivery(self, subscription_id: int) -> DeliveryState | None: ...

    def set_tracking_message(self, subscription_id: int, ts: str, card_version: int) -> None: ...

    def mark_card_done(self, subscription_id: int, card_version: int) -> None: ...

    def mark_card_failed(self, subscription_id: int, error: str, retry_at: datetime) -> None: ...

    def wait_channel(
        self, team_id: str, channel_id: str, not_before: datetime, reason: str
    ) -> None: ...

    def clear_waits(self, now: datetime) -> int: ...

    def channel_wait(self, team_id: str, channel_id: str) -> datetime | None: ...

    def mark_sent(self, notification_id: int, ts: str | None, now: datetime) -> None: ...

    def mark_attempt_failed(self, notification_id: int, error: str, retry_at: datetime) -> None: ...

    def drop_notification(self, notification_id: int, error: str) -> None: ...

    def mark_skipped(self, notification_id: int) -> None: ...

    def end_subscription(self, subscription_id: int, reason: str, now: datetime) -> None: ...

    def release_subscription(
        self, subscription_id: int, owner: str, card_not_before: datetime | None = None
    ) -> None: ...

    def release_leases(self, owner: str) -> None: ...


class SettingsStore(Protocol):
    """For the settings commands, the modal and the digest job: each channel's choices."""

    def get(self, team_id: str, channel_id: str) -> ChannelSettings: ...

    def update(
        self,
        team_id: str,
        channel_id: str,
        changes: dict[str, Any],
        user_id: str,
        now: datetime,
    ) -> tuple[ChannelSettings, ChannelSettings]: ...

    def digest_channels(self) -> list[DigestChannel]: ...


class HistoryStore(Protocol):
    """For history, the digest and App Home: what the watches came to."""

    def finished(
        self,
        team_id: str,
        *,
        channel_id: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
    ) -> list[FinishedWatch]: ...

    def active(
        self,
        team_id: str,
        *,
        channel_id: str | None = None,
        subscribed_by: str | None = None,
        limit: int = 200,
    ) -> list[ActiveWatch]: ...


class DigestStore(Protocol):
    """For the digest job: which days are settled, and the lease on each day's digest."""

    def settled(self, keys: list[DayKey]) -> set[DayKey]: ...

    def claim(self, key: DayKey, owner: str, now: datetime, lease_seconds: float) -> int | None: ...

    def extend(self, key: DayKey, owner: str, now: datetime, seconds: float) -> bool: ...

    def postpone(self, key: DayKey, owner: str, until: datetime) -> None: ...

    def finish(
        self, key: DayKey, owner: str, state: str, now: datetime, ts: str | None = None
    ) -> None: ...

    def failed(
        self, key: DayKey, owner: str, error: str, retry_at: datetime, give_up: bool
    ) -> None: ...

    def release_leases(self, owner: str) -> None: ...


class ArchiveStore(Protocol):
    """For the exceptions archive: due archives, their leases, and each upload's fate."""

    def claim_due_archives(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[DueArchive]: ...

    def renew_lease(
        self, archive_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool: ...

    def upload_targets(self, archive_id: int) -> list[UploadTarget]: ...

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
    ) -> bool: ...

    def mark_upload_sent(
        self, upload_id: int, *, mode: str, file_id: str | None, ts: str | None, now: datetime
    ) -> bool: ...

    def drop_upload(self, upload_id: int, error: str) -> None: ...

    def note_upload_failure(self, upload_id: int, error: str) -> None: ...

    def finish_archive(self, archive_id: int, owner: str, now: datetime) -> bool: ...

    def retry_archive(
        self, archive_id: int, owner: str, error: str | None, retry_at: datetime, *, count: bool
    ) -> None: ...

    def release_leases(self, owner: str) -> None: ...


class ChannelWaitStore(Protocol):
    """For whatever posts to a channel outside delivery: Slack's per-channel waits."""

    def channel_wait(self, team_id: str, channel_id: str) -> datetime | None: ...

    def wait_channel(
        self, team_id: str, channel_id: str, not_before: datetime, reason: str
    ) -> None: ...


class BatchStore(Protocol):
    """For the watch command and delivery: batches, their card and their leases."""

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
    ) -> BatchCreated: ...

    def forget(self, batch_id: int) -> bool: ...

    def claim_batches(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[int]: ...

    def claim_batch(
        self, batch_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool: ...

    def renew_batch_lease(
        self, batch_id: int, owner: str, now: datetime, lease_seconds: float
    ) -> bool: ...

    def release_batch(self, batch_id: int, owner: str) -> None: ...

    def release_leases(self, owner: str) -> None: ...

    def batch_state(self, batch_id: int) -> BatchState | None: ...

    def set_batch_card(self, state: BatchState, ts: str) -> None: ...

    def mark_batch_card_done(self, state: BatchState) -> None: ...

    def mark_batch_card_failed(self, batch_id: int, error: str, retry_at: datetime) -> None: ...

    def end_batch(self, batch_id: int, reason: str, now: datetime, *, summary: bool) -> bool: ...

    def end_batch_now(self, batch_id: int, reason: str, now: datetime) -> None: ...

    def summary_sent(self, batch_id: int, ts: str | None) -> None: ...

    def summary_failed(self, batch_id: int, retry_at: datetime | None) -> None: ...


class ChannelPostStore(Protocol):
    """For alerts, settings notices and notes: posts outside any card's thread."""

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
    ) -> bool: ...

    def claim_posts(
        self, owner: str, now: datetime, limit: int, lease_seconds: float
    ) -> list[ChannelPost]: ...

    def extend_post(self, post_id: int, owner: str, now: datetime, seconds: float) -> bool: ...

    def post_sent(self, post_id: int, ts: str | None, now: datetime) -> None: ...

    def post_failed(self, post_id: int, error: str, retry_at: datetime) -> None: ...

    def drop_post(self, post_id: int, error: str) -> None: ...

    def release_post(self, post_id: int, owner: str) -> None: ...

    def release_leases(self, owner: str) -> None: ...
