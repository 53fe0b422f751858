"""Workspaces defined in the database (issue 7): each workspace's definition, who manages it, and a version that
every process polls to pick up changes; `config_revision`, the one row every configuration change locks (and
counts), so changes from any process are serialised; `messages.resent_from` links a resent copy to its original.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("definition", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("workspaces", sa.Column("managed_by", sa.String(16), nullable=True))
    op.add_column("workspaces", sa.Column("version", sa.Integer, nullable=False, server_default="0"))
    op.add_column("workspaces", sa.Column("defined_at", Timestamp, nullable=True))
    op.add_column("messages", sa.Column("resent_from", sa.String(26), nullable=True))
    revision_table = op.create_table(
        "config_revision",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0}])


def downgrade() -> None:
    op.drop_table("config_revision")
    op.drop_column("messages", "resent_from")
    op.drop_column("workspaces", "defined_at")
    op.drop_column("workspaces", "version")
    op.drop_column("workspaces", "managed_by")
    op.drop_column("workspaces", "definition")
