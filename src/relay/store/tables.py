"""SQLAlchemy Core tables. Alembic migrations in `migrations/versions/` create exactly these."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "STRATEGIES",
    "audit_log",
    "config_revision",
    "delivery_attempts",
    "events",
    "idempotency_keys",
    "load_balancing_pools",
    "load_balancing_selections",
    "messages",
    "metadata",
    "pool_workspaces",
    "suppressions",
    "webhook_deliveries",
    "webhook_endpoints",
    "workspaces",
]

metadata = sa.MetaData()

# MySQL's plain DATETIME drops fractions of a second and BLOB stops at 64 KiB.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
RawBytes = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(26), primary_key=True),
    sa.Column("mail_from", sa.String(512), nullable=False),
    sa.Column("rcpt_to", sa.JSON, nullable=False),
    # Recipients still to deliver after a partly successful attempt; NULL means all of rcpt_to.
    sa.Column("pending_rcpts", sa.JSON, nullable=True),
    sa.Column("raw", RawBytes, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    # Attempts that ended in a temporary failure: only these count towards `max_attempts`, so quota and
    # broken-credential deferrals never use up a message's retries.
    sa.Column("temp_failures", sa.Integer, nullable=False, default=0),
    # When the message next needs a worker: due time while waiting, lease expiry while sending,
    # NULL once sent or failed. One indexed column makes the claim query a range scan.
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
    # The message this one is a copy of (`POST /api/v1/messages/{id}/resend`).
    sa.Column("resent_from", sa.String(26), nullable=True),
    sa.Index("ix_messages_next_attempt_at", "next_attempt_at"),
    sa.Index("ix_messages_status", "status"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
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
    sa.Column("recipients", sa.JSON, nullable=True),
    # Set when a load-balancing pool chose the workspace: the pool, the decision's evidence, and the
    # envelope sender actually used if the sender was rewritten for that workspace.
    sa.Column("pool_id", sa.String(255), nullable=True),
    sa.Column("selection", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("sent_as", sa.String(512), nullable=True),
    sa.Index("ix_delivery_attempts_message_id", "message_id"),
    sa.Index("ix_delivery_attempts_provider_message_id", "provider_message_id"),
    sa.Index("ix_delivery_attempts_finished_at", "finished_at"),
    sa.Index("ix_delivery_attempts_workspace_id", "workspace_id", "id"),
)

# Runtime state of each configured workspace, shared by every process on the database.
workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("state_reason", sa.Text, nullable=True),
    sa.Column("state_changed_at", Timestamp, nullable=False),
    sa.Column("recheck_at", Timestamp, nullable=True),
    # The workspace's definition (the config file's workspace object; secrets as given: a literal, or an
    # `env:NAME` reference resolved by each process). NULL: not defined, only state is kept.
    sa.Column("definition", sa.JSON(none_as_null=True), nullable=True),
    # "file": written from the config file at start and on SIGHUP; "api": created or changed through the API
    # or `relay config apply`, and from then on left alone by the file.
    sa.Column("managed_by", sa.String(16), nullable=True),
    # Incremented on every change of the definition: each process polls (id, version) to follow changes.
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("defined_at", Timestamp, nullable=True),
)

# The PRD's TR4 tables. Strategy names are checked by a named CHECK constraint rather than a native ENUM,
# which PostgreSQL would create as a separate type and SQLite lacks.
STRATEGIES = ("capacity_weighted", "round_robin", "least_used", "random_weighted")

load_balancing_pools = sa.Table(
    "load_balancing_pools",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("domain_patterns", sa.JSON, nullable=False),
    sa.Column("strategy", sa.String(32), nullable=False, server_default="capacity_weighted"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    # Not in the PRD: how many workspaces of the pool one delivery pass may try; NULL means the default.
    sa.Column("max_failover_attempts", sa.Integer, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.CheckConstraint(f"strategy IN ({', '.join(repr(s) for s in STRATEGIES)})", name="ck_lb_pools_strategy"),
    # "file": written from the config file at start and on SIGHUP; "api": created or last changed through the
    # API, and from then on left alone by the file (the database is the source of truth).
    sa.Column("managed_by", sa.String(16), nullable=False, server_default="file"),
)

pool_workspaces = sa.Table(
    "pool_workspaces",
    metadata,
    sa.Column(
        "pool_id", sa.String(255), sa.ForeignKey("load_balancing_pools.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("workspace_id", sa.String(255), primary_key=True),
    sa.Column("weight", sa.Numeric(5, 2), nullable=False, server_default="1.0"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
)

# One row per pick: the decision log. Written in batches by `SelectionLog`, never on the delivery path.
load_balancing_selections = sa.Table(
    "load_balancing_selections",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("pool_id", sa.String(255), nullable=True),
    sa.Column("workspace_id", sa.String(255), nullable=True),
    sa.Column("sender_email", sa.String(255), nullable=True),
    sa.Column("selected_at", Timestamp, nullable=False),
    sa.Column("success", sa.Boolean, nullable=True),
    sa.Column("capacity_score", sa.Numeric(5, 4), nullable=True),
    sa.Index("idx_pool_workspace", "pool_id", "workspace_id"),
    sa.Index("idx_selected_at", "selected_at"),
)

# Every configuration change: who (the API key's name, or "config-file"), when, what, before and after.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", Timestamp, nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("target_type", sa.String(32), nullable=False),
    sa.Column("target_id", sa.String(255), nullable=False),
    sa.Column("before", sa.JSON(none_as_null=True), nullable=True),
    sa.Column("after", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_target", "target_type", "target_id"),
)

# `Idempotency-Key` of a message sent through the API: written in the message's own transaction.
idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("message_id", sa.String(26), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
)

# One row (id 1): every configuration change updates it first, in its own transaction, which serialises changes
# from every process (a row lock; SQLite's write lock) and counts them.
config_revision = sa.Table(
    "config_revision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"),
)

# The transactional outbox (issue 8): each event is written in the transaction of the change it describes; the
# dispatcher fans it out to the subscribed webhook endpoints (`fanned_out`), never the mail path.
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(26), nullable=True),
    sa.Column("occurred_at", Timestamp, nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("fanned_out", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_events_fanned_out", "fanned_out", "id"),
    sa.Index("ix_events_message_id", "message_id"),
    sa.Index("ix_events_type", "type", "id"),
)

# Where events go: from the config file's `webhooks` (managed_by "file") or `/api/v1/webhooks` ("api").
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(512), nullable=True),  # write-only: never returned by the API
    sa.Column("events", sa.JSON, nullable=False),  # patterns: "*", "message.*", "load_balancing.pool_exhausted"
    sa.Column("format", sa.String(16), nullable=False, server_default="relay"),  # or "mandrill"
    sa.Column("workspace_selected_sample", sa.Float, nullable=False, server_default="1.0"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("disabled_reason", sa.Text, nullable=True),
    sa.Column("failing_since", Timestamp, nullable=True),  # first failure of the current run of failures
    sa.Column("managed_by", sa.String(16), nullable=False, server_default="file"),
    sa.Column("version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
)

# One row per (endpoint, event): its delivery state, retries and the endpoint's delivery log.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("endpoint_id", sa.String(64), nullable=False),
    sa.Column("event_id", sa.BigInteger, nullable=False),
    sa.Column("message_id", sa.String(26), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # pending | delivered | failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # Due time while pending, lease expiry while being sent: one indexed column, as in the mail queue.
    sa.Column("next_attempt_at", Timestamp, nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("last_status", sa.Integer, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("delivered_at", Timestamp, nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_order", "endpoint_id", "message_id", "event_id"),
    sa.Index("ix_webhook_deliveries_endpoint", "endpoint_id", "id"),
)

# Recipients Relay no longer sends to: hard bounces, complaints, unsubscribes (from provider events), or added
# through the API.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("message_id", sa.String(26), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
)
