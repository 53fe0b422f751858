"""Store: tables, migrations, durable ingest, the delivery queue, workspace state and load-balancing pools."""

from .audit import AuditEntry, AuditLog
from .config_lock import config_change
from .database import Database, async_url
from .events import EVENT_TYPES, event_row, pool_exhausted_event, timestamp
from .ids import new_message_id
from .ingest import DuplicateKeyError, Ingest
from .messages import AttemptView, CountedSend, Messages, MessageView
from .pools import PoolMemberRow, PoolRow, PoolTables, pool_document
from .queue import MessageQueue
from .selections import SelectionLog, SelectionView
from .types import (
    AttemptRecord,
    Deferred,
    Failed,
    MessageStatus,
    NewMessage,
    QueuedMessage,
    Sent,
    Transition,
    WorkspaceState,
)
from .workspace_defs import FILE_ACTOR, WorkspaceDefinition, WorkspaceTables
from .workspaces import WorkspaceStates

__all__ = [
    "EVENT_TYPES",
    "FILE_ACTOR",
    "AttemptRecord",
    "AttemptView",
    "AuditEntry",
    "AuditLog",
    "CountedSend",
    "Database",
    "Deferred",
    "DuplicateKeyError",
    "Failed",
    "Ingest",
    "MessageQueue",
    "MessageStatus",
    "MessageView",
    "Messages",
    "NewMessage",
    "PoolMemberRow",
    "PoolRow",
    "PoolTables",
    "QueuedMessage",
    "SelectionLog",
    "SelectionView",
    "Sent",
    "Transition",
    "WorkspaceDefinition",
    "WorkspaceState",
    "WorkspaceStates",
    "WorkspaceTables",
    "async_url",
    "config_change",
    "event_row",
    "new_message_id",
    "pool_document",
    "pool_exhausted_event",
    "timestamp",
]
