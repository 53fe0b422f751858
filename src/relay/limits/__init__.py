"""Limits: atomic, all-or-nothing reservations against rolling, calendar and GCRA limits.

One interface (`LimitBackend`), two backends with identical semantics: `MemoryLimits` (one process, any
clock) and `RedisLimits` (shared by every process, one Lua script call per operation). `BACKENDS` maps the
configuration's name for each to its class.
"""

from .base import LimitBackend
from .capacity import Capacity, capacity_from
from .errors import LimitsUnavailableError
from .memory import MemoryLimits
from .redis import DEFAULT_KEY_PREFIX, RedisLimits
from .types import Limit, LimitKind, Reservation, Usage

__all__ = [
    "BACKENDS",
    "DEFAULT_KEY_PREFIX",
    "Capacity",
    "Limit",
    "LimitBackend",
    "LimitKind",
    "LimitsUnavailableError",
    "MemoryLimits",
    "RedisLimits",
    "Reservation",
    "Usage",
    "capacity_from",
]

BACKENDS: dict[str, type[MemoryLimits] | type[RedisLimits]] = {"memory": MemoryLimits, "redis": RedisLimits}
