"""Workspace health: the passive circuit breaker, and the state every process shares.

`breaker.py` holds the pure transitions (no I/O, no clock) and the pool-safety rule `eject_allowed`;
`store.py` applies them atomically through one interface (`BreakerStore`) with two backends of identical
semantics, `MemoryBreakerStore` (one process) and `RedisBreakerStore` (every process), and the `Breakers`
facade that delivery asks. `BACKENDS` maps the configuration's name for each store to its class.
"""

from .breaker import (
    WINDOW_BUCKETS,
    BreakerSettings,
    BreakerState,
    CircuitState,
    current,
    eject_allowed,
    open_duration,
    record_failure,
    record_recovery,
    record_success,
    release_probe,
    try_admit,
)
from .store import (
    DEFAULT_KEY_PREFIX,
    Breakers,
    BreakerStore,
    BreakerStoreUnavailableError,
    EjectionGroups,
    MemoryBreakerStore,
    OnChange,
    RedisBreakerStore,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_KEY_PREFIX",
    "WINDOW_BUCKETS",
    "BreakerSettings",
    "BreakerState",
    "BreakerStore",
    "BreakerStoreUnavailableError",
    "Breakers",
    "CircuitState",
    "EjectionGroups",
    "MemoryBreakerStore",
    "OnChange",
    "RedisBreakerStore",
    "current",
    "eject_allowed",
    "open_duration",
    "record_failure",
    "record_recovery",
    "record_success",
    "release_probe",
    "try_admit",
]

BACKENDS: dict[str, type[MemoryBreakerStore] | type[RedisBreakerStore]] = {
    "memory": MemoryBreakerStore,
    "redis": RedisBreakerStore,
}
