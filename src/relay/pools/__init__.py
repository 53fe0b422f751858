"""Pools at run time: the current pools (config file and database), their members' capacity and health, and the
PRD's `LoadBalancer` that turns them into one decision per message. I/O lives here; the choice itself is the pure
`relay.balancer`."""

from .capacity import CapacityView, LimitPolicy
from .catalog import PoolCatalog, PoolView, config_rows
from .changes import ChangeNotices
from .checks import HealthChecker, breaker_settings, log_breaker_change
from .config_store import (
    ConfigStore,
    ConflictError,
    Current,
    NotFoundError,
    PreconditionFailedError,
    pool_etag,
    pool_model,
    pool_row,
)
from .definitions import Reading, WorkspaceDefinitions
from .health import HealthState, HealthView, WorkspaceHealth
from .load_balancer import ALREADY_TRIED, RESERVATION_REFUSED, Decision, LoadBalancer, MemberReport, PoolStatus

__all__ = [
    "ALREADY_TRIED",
    "RESERVATION_REFUSED",
    "CapacityView",
    "ChangeNotices",
    "ConfigStore",
    "ConflictError",
    "Current",
    "Decision",
    "HealthChecker",
    "HealthState",
    "HealthView",
    "LimitPolicy",
    "LoadBalancer",
    "MemberReport",
    "NotFoundError",
    "PoolCatalog",
    "PoolStatus",
    "PoolView",
    "PreconditionFailedError",
    "Reading",
    "WorkspaceDefinitions",
    "WorkspaceHealth",
    "breaker_settings",
    "config_rows",
    "log_breaker_change",
    "pool_etag",
    "pool_model",
    "pool_row",
]
