"""Store: tables, migrations, durable ingest, the delivery queue and workspace state."""

from .database import Database, async_url
from .ids import new_message_id
from .ingest import Ingest
from .messages import AttemptView, CountedSend, Messages, MessageView
from .queue import MessageQueue
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
from .workspaces import WorkspaceStates

__all__ = [
    "AttemptRecord",
    "AttemptView",
    "CountedSend",
    "Database",
    "Deferred",
    "Failed",
    "Ingest",
    "MessageQueue",
    "MessageStatus",
    "MessageView",
    "Messages",
    "NewMessage",
    "QueuedMessage",
    "Sent",
    "Transition",
    "WorkspaceState",
    "WorkspaceStates",
    "async_url",
    "new_message_id",
]
