"""Load-balancing pools, their members, the selection log (PRD TR4), and pool columns on attempts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STRATEGIES = ("capacity_weighted", "round_robin", "least_used", "random_weighted")


def upgrade() -> None:
    op.create_table(
        "load_balancing_pools",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("domain_patterns", sa.JSON, nullable=False),
        sa.Column("strategy", sa.String(32), nullable=False, server_default="capacity_weighted"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("max_failover_attempts", sa.Integer, nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.CheckConstraint(f"strategy IN ({', '.join(repr(s) for s in STRATEGIES)})", name="ck_lb_pools_strategy"),
    )
    op.create_table(
        "pool_workspaces",
        sa.Column(
            "pool_id",
            sa.String(255),
            sa.ForeignKey("load_balancing_pools.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("workspace_id", sa.String(255), primary_key=True),
        sa.Column("weight", sa.Numeric(5, 2), nullable=False, server_default="1.0"),
        sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    )
    op.create_table(
        "load_balancing_selections",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("pool_id", sa.String(255), nullable=True),
        sa.Column("workspace_id", sa.String(255), nullable=True),
        sa.Column("sender_email", sa.String(255), nullable=True),
        sa.Column("selected_at", Timestamp, nullable=False),
        sa.Column("success", sa.Boolean, nullable=True),
        sa.Column("capacity_score", sa.Numeric(5, 4), nullable=True),
    )
    op.create_index("idx_pool_workspace", "load_balancing_selections", ["pool_id", "workspace_id"])
    op.create_index("idx_selected_at", "load_balancing_selections", ["selected_at"])
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.add_column(sa.Column("pool_id", sa.String(255), nullable=True))
        batch.add_column(sa.Column("selection", sa.JSON, nullable=True))
        batch.add_column(sa.Column("sent_as", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_attempts") as batch:
        batch.drop_column("sent_as")
        batch.drop_column("selection")
        batch.drop_column("pool_id")
    op.drop_index("idx_selected_at", "load_balancing_selections")
    op.drop_index("idx_pool_workspace", "load_balancing_selections")
    op.drop_table("load_balancing_selections")
    op.drop_table("pool_workspaces")
    op.drop_table("load_balancing_pools")
