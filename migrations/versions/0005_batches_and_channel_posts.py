"""batches (several imports, one card) and channel posts (alerts, settings notices)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("subscribed_by", sa.String(length=32), nullable=False),
        sa.Column("subscribed_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("ended_reason", sa.String(length=200), nullable=True),
        sa.Column("tracking_ts", sa.String(length=32), nullable=True),
        sa.Column("card_wanted", sa.Integer(), nullable=False),
        sa.Column("card_done", sa.Integer(), nullable=False),
        sa.Column("card_attempts", sa.Integer(), nullable=False),
        sa.Column("card_retry_at", sa.DateTime(), nullable=True),
        sa.Column("card_error", sa.String(length=200), nullable=True),
        sa.Column("summary_state", sa.String(length=10), nullable=True),
        sa.Column("summary_attempts", sa.Integer(), nullable=False),
        sa.Column("summary_next_at", sa.DateTime(), nullable=True),
        sa.Column("summary_ts", sa.String(length=32), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_batches_channel", ["team_id", "channel_id", "state"], unique=False
        )

    # A plain column (no foreign key), so SQLite adds it in place instead of rebuilding
    # the table and its partial unique index.
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_subscriptions_batch", ["batch_id"], unique=False)

    op.create_table(
        "channel_posts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("channel_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("key", sa.String(length=120), nullable=False),
        sa.Column("thread_ts", sa.String(length=32), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("slack_ts", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key", name="uq_channel_posts_key"),
    )
    with op.batch_alter_table("channel_posts", schema=None) as batch_op:
        batch_op.create_index("ix_channel_posts_due", ["state", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("channel_posts", schema=None) as batch_op:
        batch_op.drop_index("ix_channel_posts_due")
    op.drop_table("channel_posts")
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriptions_batch")
        batch_op.drop_column("batch_id")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index("ix_batches_channel")
    op.drop_table("batches")
