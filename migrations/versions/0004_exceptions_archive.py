"""exceptions archive: archives and archive_uploads

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=True),
        sa.Column("expected", sa.BigInteger(), nullable=True),
        sa.Column("pages", sa.Integer(), nullable=True),
        sa.Column("stopped", sa.String(length=200), nullable=True),
        sa.Column("cut", sa.Boolean(), nullable=False),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(length=80), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["import_id"], ["imports.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("import_id", "kind", name="uq_archives_import_kind"),
    )
    with op.batch_alter_table("archives", schema=None) as batch_op:
        batch_op.create_index("ix_archives_due", ["state", "next_attempt_at"], unique=False)

    op.create_table(
        "archive_uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("archive_id", sa.Integer(), nullable=False),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("team_id", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("mode", sa.String(length=10), nullable=True),
        sa.Column("slack_file_id", sa.String(length=40), nullable=True),
        sa.Column("slack_ts", sa.String(length=32), nullable=True),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["archive_id"], ["archives.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscriptions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("archive_id", "subscription_id", name="uq_archive_uploads"),
    )
    with op.batch_alter_table("archive_uploads", schema=None) as batch_op:
        batch_op.create_index(
            "ix_archive_uploads_subscription", ["subscription_id", "state"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("archive_uploads", schema=None) as batch_op:
        batch_op.drop_index("ix_archive_uploads_subscription")
    op.drop_table("archive_uploads")
    with op.batch_alter_table("archives", schema=None) as batch_op:
        batch_op.drop_index("ix_archives_due")
    op.drop_table("archives")
