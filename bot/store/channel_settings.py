"""Channel settings: one row per (workspace, channel) that changed anything.

The columns hold each value's canonical text; ``bot.domain.settings`` parses
it back, so the database never holds a value ``set`` would refuse. A row the
current code cannot read (a time zone the system no longer knows, say) falls
back to that key's default with a log line rather than breaking the channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.domain.settings import (
    DEFAULTS,
    ChannelSettings,
    Digest,
    InvalidSetting,
    parse_setting,
)
from bot.store.tables import ChannelSettingsRow, SubscriptionRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DigestChannel:
    """A channel that wants a daily digest."""

    team_id: str
    channel_id: str
    digest: Digest
    since: datetime | None


def settings_columns(settings: ChannelSettings) -> dict[str, Any]:
    """The ``channel_settings`` columns that hold ``settings``."""
    return {
        "broadcast": settings.broadcast.value,
        "milestones": settings.milestones,
        "mention": settings.mention.text(),
        "alerts_channel": settings.alerts,
        "compact": settings.compact,
        "digest_time": f"{settings.digest.at:%H:%M}" if settings.digest else None,
        "digest_zone": settings.digest.zone if settings.digest else None,
        "exceptions": settings.exceptions.value if settings.exceptions else None,
    }


# Read for every subscription delivered: built once (see outbox.py's statements).
_SETTINGS_OF = select(ChannelSettingsRow.__table__).where(
    ChannelSettingsRow.team_id == bindparam("p_team"),
    ChannelSettingsRow.channel_id == bindparam("p_channel"),
)


def settings_of(conn: Connection | Session, team_id: str, channel_id: str) -> ChannelSettings:
    """A channel's settings read on the caller's connection (the defaults when it never
    changed any)."""
    row = conn.execute(_SETTINGS_OF, {"p_team": team_id, "p_channel": channel_id}).first()
    return settings_from_row(row) if row is not None else DEFAULTS


def settings_from_row(row: Any) -> ChannelSettings:
    """The ChannelSettings a row holds; an unreadable value is that key's default."""
    texts = {
        "broadcast": row.broadcast,
        "milestones": "on" if row.milestones else "off",
        "mention": row.mention,
        "alerts": row.alerts_channel or "off",
        "compact": "on" if row.compact else "off",
        "digest": f"{row.digest_time} {row.digest_zone}" if row.digest_time else "off",
        "exceptions": row.exceptions or "default",
    }
    settings = DEFAULTS
    for key, text in texts.items():
        try:
            settings = settings.with_value(key, parse_setting(key, text)[1])
        except InvalidSetting:
            log.warning(
                "stored setting %s is unreadable; using its default",
                key,
                extra={"team": row.team_id, "channel": row.channel_id},
            )
    return settings


class ChannelSettingsTable:
    """The ``channel_settings`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = postgresql if engine.dialect.name == "postgresql" else sqlite

    def get(self, team_id: str, channel_id: str) -> ChannelSettings:
        """The channel's settings (the defaults when it never changed any)."""
        with self.engine.connect() as conn:
            return settings_of(conn, team_id, channel_id)

    def update(
        self,
        team_id: str,
        channel_id: str,
        changes: dict[str, Any],
        user_id: str,
        now: datetime,
    ) -> tuple[ChannelSettings, ChannelSettings]:
        """Apply parsed values (key → value from ``parse_setting``); returns (before, after).

        One transaction with the row locked, so two people changing different keys at
        once both keep their change.
        """
        where = (
            ChannelSettingsRow.team_id == team_id,
            ChannelSettingsRow.channel_id == channel_id,
        )
        with self.engine.begin() as conn:
            conn.execute(
                self._dialect.insert(ChannelSettingsRow)
                .values(
                    team_id=team_id,
                    channel_id=channel_id,
                    updated_by=user_id,
                    updated_at=now,
                    **settings_columns(DEFAULTS),
                )
                .on_conflict_do_nothing(index_elements=["team_id", "channel_id"])
            )
            row = conn.execute(select(ChannelSettingsRow).where(*where).with_for_update()).one()
            before = settings_from_row(row)
            after = before
            for key, value in changes.items():
                after = after.with_value(key, value)
            values = settings_columns(after) | {"updated_by": user_id, "updated_at": now}
            if after.digest != before.digest:
                values["digest_since"] = now if after.digest else None
            conn.execute(update(ChannelSettingsRow).where(*where).values(**values))
            if after.compact != before.compact:
                # The channel's cards change shape: each gets one edit to show it.
                conn.execute(
                    update(SubscriptionRow)
                    .where(
                        SubscriptionRow.team_id == team_id,
                        SubscriptionRow.channel_id == channel_id,
                        SubscriptionRow.state == "active",
                    )
                    .values(card_wanted=SubscriptionRow.card_wanted + 1)
                )
        return before, after

    def digest_channels(self) -> list[DigestChannel]:
        """Every channel with a digest time."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ChannelSettingsRow).where(ChannelSettingsRow.digest_time.is_not(None))
            ).all()
        found: list[DigestChannel] = []
        for row in rows:
            digest = settings_from_row(row).digest
            if digest is not None:
                found.append(DigestChannel(row.team_id, row.channel_id, digest, row.digest_since))
        return found
