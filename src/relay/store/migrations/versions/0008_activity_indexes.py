"""Indexes for the dashboard's reads (issue 9): attempts by time (per minute, sends per route) and a workspace's
latest attempts, and events by type, newest first. Without them each refresh of a live page scans the tables.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_delivery_attempts_finished_at", "delivery_attempts", ["finished_at"])
    op.create_index("ix_delivery_attempts_workspace_id", "delivery_attempts", ["workspace_id", "id"])
    op.create_index("ix_events_type", "events", ["type", "id"])


def downgrade() -> None:
    op.drop_index("ix_events_type", table_name="events")
    op.drop_index("ix_delivery_attempts_workspace_id", table_name="delivery_attempts")
    op.drop_index("ix_delivery_attempts_finished_at", table_name="delivery_attempts")
