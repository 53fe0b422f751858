"""Store: tables, migrations, durable ingest, the delivery queue, workspace state and load-balancing pools."""

from .activity import Activity, EventView, FailureView, MinuteCounts, minutes_back
from .audit import AuditEntry, AuditLog
from .config_lock import config_change
from .database import Database, async_url
from .events import EVENT_TYPES, EventLog, event_row, pool_exhausted_event, timestamp
from .ids import new_message_id
from .inbound import InboundEvents, InboundResult, ProviderEvent
from .ingest import DuplicateKeyError, Ingest
from .messages import AttemptView, CountedSend, Messages, MessageView
from .pools import PoolMemberRow, PoolRow, PoolTables, pool_document
from .queue import MessageQueue
from .selections import SelectionLog, SelectionView
from .suppressions import REASONS as SUPPRESSION_REASONS
from .suppressions import Suppression, SuppressionList, suppression_key
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
from .webhooks import ClaimedDelivery, DeliveryView, EndpointRow, Settlement, WebhookStore
from .workspace_defs import FILE_ACTOR, WorkspaceDefinition, WorkspaceTables
from .workspaces import WorkspaceStates

__all__ = [
    "EVENT_TYPES",
    "FILE_ACTOR",
    "SUPPRESSION_REASONS",
    "Activity",
    "AttemptRecord",
    "AttemptView",
    "AuditEntry",
    "AuditLog",
    "ClaimedDelivery",
    "CountedSend",
    "Database",
    "Deferred",
    "DeliveryView",
    "DuplicateKeyError",
    "EndpointRow",
    "EventLog",
    "EventView",
    "Failed",
    "FailureView",
    "InboundEvents",
    "InboundResult",
    "Ingest",
    "MessageQueue",
    "MessageStatus",
    "MessageView",
    "Messages",
    "MinuteCounts",
    "NewMessage",
    "PoolMemberRow",
    "PoolRow",
    "PoolTables",
    "ProviderEvent",
    "QueuedMessage",
    "SelectionLog",
    "SelectionView",
    "Sent",
    "Settlement",
    "Suppression",
    "SuppressionList",
    "Transition",
    "WebhookStore",
    "WorkspaceDefinition",
    "WorkspaceState",
    "WorkspaceStates",
    "WorkspaceTables",
    "async_url",
    "config_change",
    "event_row",
    "minutes_back",
    "new_message_id",
    "pool_document",
    "pool_exhausted_event",
    "suppression_key",
    "timestamp",
]
