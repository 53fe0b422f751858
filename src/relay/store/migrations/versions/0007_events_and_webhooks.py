"""Events and webhooks (issue 8): the transactional outbox `events`, webhook endpoints and their deliveries, the
suppression list, and an index to find a message by the provider's id (inbound provider events).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(26), nullable=True),
        sa.Column("occurred_at", Timestamp, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("fanned_out", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_events_fanned_out", "events", ["fanned_out", "id"])
    op.create_index("ix_events_message_id", "events", ["message_id"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(512), nullable=True),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("format", sa.String(16), nullable=False, server_default="relay"),
        sa.Column("workspace_selected_sample", sa.Float, nullable=False, server_default="1.0"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text, nullable=True),
        sa.Column("failing_since", Timestamp, nullable=True),
        sa.Column("managed_by", sa.String(16), nullable=False, server_default="file"),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.BigInteger, nullable=False),
        sa.Column("message_id", sa.String(26), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", Timestamp, nullable=True),
        sa.Column("lease_owner", sa.String(128), nullable=True),
        sa.Column("last_status", sa.Integer, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("delivered_at", Timestamp, nullable=True),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_order", "webhook_deliveries", ["endpoint_id", "message_id", "event_id"])
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_table(
        "suppressions",
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("message_id", sa.String(26), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_delivery_attempts_provider_message_id", "delivery_attempts", ["provider_message_id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_provider_message_id", table_name="delivery_attempts")
    op.drop_table("suppressions")
    op.drop_index("ix_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_order", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_events_message_id", table_name="events")
    op.drop_index("ix_events_fanned_out", table_name="events")
    op.drop_table("events")
