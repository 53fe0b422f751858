"""Messages, delivery attempts and workspace state.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
RawBytes = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(26), primary_key=True),
        sa.Column("mail_from", sa.String(512), nullable=False),
        sa.Column("rcpt_to", sa.JSON, nullable=False),
        sa.Column("pending_rcpts", sa.JSON, nullable=True),
        sa.Column("raw", RawBytes, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("temp_failures", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", Timestamp, nullable=True),
        sa.Column("workspace_id", sa.String(255), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("client_address", sa.String(64), nullable=True),
        sa.Column("authenticated_user", sa.String(255), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_index("ix_messages_next_attempt_at", "messages", ["next_attempt_at"])
    op.create_index("ix_messages_status", "messages", ["status"])
    op.create_table(
        "delivery_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(26), sa.ForeignKey("messages.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt_number", sa.Integer, nullable=False),
        sa.Column("workspace_id", sa.String(255), nullable=True),
        sa.Column("provider_kind", sa.String(32), nullable=True),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("provider_status", sa.String(32), nullable=True),
        sa.Column("provider_response", sa.Text, nullable=True),
        sa.Column("provider_message_id", sa.String(255), nullable=True),
        sa.Column("latency_ms", sa.Integer, nullable=False),
    )
    op.create_index("ix_delivery_attempts_message_id", "delivery_attempts", ["message_id"])
    op.create_table(
        "workspaces",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_reason", sa.Text, nullable=True),
        sa.Column("state_changed_at", Timestamp, nullable=False),
        sa.Column("recheck_at", Timestamp, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("workspaces")
    op.drop_table("delivery_attempts")
    op.drop_table("messages")
