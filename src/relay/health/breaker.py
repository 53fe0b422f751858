"""A workspace's passive circuit breaker: pure transitions over a frozen, JSON-serialisable state.

No I/O and no clock: every function takes the time as `now` (epoch seconds) and returns a new state, so
`store.py` can apply it atomically to the one state every process shares.

    closed ──N consecutive failures, or failure rate > X over the window with ≥ min_requests──▶ open
    open ──first try_admit at/after open_until: that caller gets THE probe──▶ half_open
    half_open ──probe success──▶ closed           half_open ──probe failure──▶ open (k + 1, longer)

The open time is `base * 2^k` capped at `max_open_seconds`, k being the ejections before this one; k drops
by one for every `decay_seconds` spent closed, computed lazily (`current`) on the next transition or read.

Results that are not the probe's: a send admitted before the breaker opened may finish while it is open or
half-open. Its outcome says nothing new (the breaker already opened on that evidence), so it never changes
the state, the counters or the window; a failure only updates `last_error`. Only the result reported by the
probe's owner (`instance == probe_owner`) closes or reopens a half-open breaker.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

__all__ = [
    "WINDOW_BUCKETS",
    "BreakerSettings",
    "BreakerState",
    "CircuitState",
    "current",
    "eject_allowed",
    "open_duration",
    "record_failure",
    "record_success",
    "try_admit",
]

CircuitState = Literal["closed", "open", "half_open"]
Bucket = tuple[int, int, int]
"""One slice of the sliding window: (bucket index = floor(now / bucket_seconds), successes, failures)."""

WINDOW_BUCKETS = 6
_MAX_ERROR_CHARS = 300  # last_error is for display; keep the shared JSON small
_CODES: dict[CircuitState, str] = {"closed": "c", "open": "o", "half_open": "h"}
_STATES: dict[str, CircuitState] = {code: name for name, code in _CODES.items()}
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """Thresholds of one workspace's breaker. The window is kept in `WINDOW_BUCKETS` buckets."""

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    window_seconds: float = 60.0
    min_requests: int = 20
    base_open_seconds: float = 30.0
    max_open_seconds: float = 600.0
    decay_seconds: float = 300.0
    probe_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        problems = [
            message
            for wrong, message in [
                (self.consecutive_failures < 1, "consecutive_failures must be at least 1"),
                (not 0.0 < self.failure_rate <= 1.0, "failure_rate must be in (0, 1]"),
                (self.min_requests < 1, "min_requests must be at least 1"),
                (self.max_open_seconds < self.base_open_seconds, "max_open_seconds must be >= base_open_seconds"),
                *[
                    (not value > 0, f"{name} must be positive")
                    for name, value in [
                        ("window_seconds", self.window_seconds),
                        ("base_open_seconds", self.base_open_seconds),
                        ("decay_seconds", self.decay_seconds),
                        ("probe_timeout_seconds", self.probe_timeout_seconds),
                    ]
                ],
            ]
            if wrong
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def bucket_seconds(self) -> float:
        return self.window_seconds / WINDOW_BUCKETS


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One workspace's breaker. The default value is a fresh, closed breaker.

    `ejections` is k. `opened_at`/`open_until` describe the current or most recent ejection. The probe, while
    half-open, belongs to `probe_owner` until `probe_until`. `healthy_since` is where decay counts from.
    `last_change` is when `state` last changed (0.0: never).
    """

    state: CircuitState = "closed"
    ejections: int = 0
    opened_at: float | None = None
    open_until: float | None = None
    consecutive: int = 0
    window: tuple[Bucket, ...] = ()
    probe_owner: str | None = None
    probe_until: float | None = None
    last_error: str | None = None
    last_change: float = 0.0
    healthy_since: float | None = None

    @property
    def ejected(self) -> bool:
        """Open or half-open: out of the pool, as `eject_allowed` counts it."""
        return self.state != "closed"

    def to_json(self) -> str:
        """Compact JSON: short keys, fields at their default left out. Floats round-trip exactly."""
        fields: list[tuple[str, Any, Any]] = [  # (key, value, default)
            ("k", self.ejections, 0),
            ("oa", self.opened_at, None),
            ("ou", self.open_until, None),
            ("c", self.consecutive, 0),
            ("w", [list(bucket) for bucket in self.window], []),
            ("po", self.probe_owner, None),
            ("pu", self.probe_until, None),
            ("e", self.last_error, None),
            ("lc", self.last_change, 0.0),
            ("hs", self.healthy_since, None),
        ]
        kept = {key: value for key, value, default in fields if value != default}
        return json.dumps({"v": _FORMAT, "s": _CODES[self.state], **kept}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> BreakerState:
        """The state `to_json` wrote; ValueError for anything else (the stores treat that as a fresh state)."""
        try:
            data = json.loads(raw)
            if data.get("v") != _FORMAT:
                raise ValueError(f"unknown breaker state format {data.get('v')!r}")
            return cls(
                state=_STATES[data["s"]],
                ejections=int(data.get("k", 0)),
                opened_at=_number(data.get("oa")),
                open_until=_number(data.get("ou")),
                consecutive=int(data.get("c", 0)),
                window=tuple((int(i), int(s), int(f)) for i, s, f in data.get("w", [])),
                probe_owner=None if data.get("po") is None else str(data["po"]),
                probe_until=_number(data.get("pu")),
                last_error=None if data.get("e") is None else str(data["e"]),
                last_change=float(data.get("lc", 0.0)),
                healthy_since=_number(data.get("hs")),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a breaker state: {exc}") from exc


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


# --- pool safety ----------------------------------------------------------------------------------------------


def eject_allowed(pool_size: int, already_ejected: int, max_ejection_percent: float) -> bool:
    """Whether ejecting one more member keeps the ejected share, counted after the ejection, within the cap.

    `max_ejection_percent` is 0..100. A pool of one can eject its only member only when the cap is 100 %;
    below that, some member always stays in (Envoy #27066).
    """
    if pool_size <= 0 or already_ejected < 0:
        return False
    return (already_ejected + 1) * 100 <= max_ejection_percent * pool_size + 1e-9  # tolerance for float caps


# --- transitions ----------------------------------------------------------------------------------------------


def open_duration(settings: BreakerSettings, k: int) -> float:
    """How long an ejection lasts when `k` ejections came before it: base * 2^k, capped."""
    return min(settings.max_open_seconds, settings.base_open_seconds * 2.0 ** min(max(k, 0), 64))


def current(state: BreakerState, settings: BreakerSettings, now: float) -> BreakerState:
    """`state` as of `now`: decay applied (closed only) and window buckets that left the window dropped.

    Never changes `state.state`; reads use it for display, transitions start from it.
    """
    s = state
    if s.state == "closed" and s.ejections > 0 and s.healthy_since is not None:
        steps = math.floor((now - s.healthy_since) / settings.decay_seconds)  # negative under clock skew: no-op
        if steps > 0:
            k = max(0, s.ejections - steps)
            since = None if k == 0 else s.healthy_since + steps * settings.decay_seconds
            s = replace(s, ejections=k, healthy_since=since)
    first = _bucket(settings, now) - WINDOW_BUCKETS + 1
    if s.window and s.window[0][0] < first:
        s = replace(s, window=tuple(b for b in s.window if b[0] >= first))
    return s


def try_admit(state: BreakerState, settings: BreakerSettings, now: float, instance: str) -> tuple[bool, BreakerState]:
    """May `instance` send now? Closed: always. Open: never before `open_until`; at or after it, the first caller
    moves the breaker to half-open and takes the probe. Half-open: refused (the owner too: the probe is one send)
    while the probe is outstanding; a probe past `probe_until` with no result goes to the next caller."""
    if state.state == "closed":
        return True, state
    if state.state == "open":
        if state.open_until is not None and now < state.open_until:
            return False, state
        return True, _probe(replace(state, state="half_open", last_change=now), settings, now, instance)
    if state.probe_owner is not None and state.probe_until is not None and now < state.probe_until:
        return False, state
    return True, _probe(state, settings, now, instance)


def record_success(
    state: BreakerState, settings: BreakerSettings, now: float, *, instance: str | None = None
) -> BreakerState:
    """A send succeeded. Closed: counted. Half-open: closes only when `instance` owns the probe. Else ignored."""
    if state.state == "closed":
        s = current(state, settings, now)
        return replace(s, consecutive=0, window=_count(s.window, _bucket(settings, now), success=True))
    if state.state == "half_open" and instance is not None and instance == state.probe_owner:
        return replace(
            state,
            state="closed",
            consecutive=0,
            window=(),
            probe_owner=None,
            probe_until=None,
            last_change=now,
            healthy_since=now,
        )
    return state


def record_recovery(state: BreakerState, settings: BreakerSettings, now: float) -> BreakerState:
    """An active health check passed. An open breaker becomes eligible for its probe now (`open_until` = now)
    instead of closing outright: the checks are read-only (a token, a domain read, EHLO/AUTH) and can pass while
    sends fail, so the next real send decides, and a relapse still doubles the ejection. Otherwise unchanged."""
    if state.state == "open" and state.open_until is not None and state.open_until > now:
        return replace(state, open_until=now)
    return current(state, settings, now) if state.state == "closed" else state


def release_probe(state: BreakerState, instance: str) -> BreakerState:
    """The probe taken by `instance` was not sent (its reservation was refused, the process is stopping) or its
    answer says nothing about health (a quota, a recipient's refusal): the next caller may probe at once."""
    if state.state == "half_open" and state.probe_owner == instance:
        return replace(state, probe_owner=None, probe_until=None)
    return state


def record_failure(
    state: BreakerState,
    settings: BreakerSettings,
    now: float,
    error: str,
    may_eject: bool = True,
    *,
    instance: str | None = None,
) -> BreakerState:
    """A send failed for a reason that is the workspace's (5xx, timeout, refused connection).

    Closed: counted; opens when a rule trips and `may_eject` (the pool's ejection cap allows it), else stays
    closed and keeps counting. Half-open: the probe owner's failure reopens with k + 1, whatever `may_eject`
    (the member is already out, so the ejected count does not change). Otherwise only `last_error` changes.
    """
    error = error[:_MAX_ERROR_CHARS]
    if state.state == "closed":
        s = current(state, settings, now)
        s = replace(
            s,
            consecutive=s.consecutive + 1,
            window=_count(s.window, _bucket(settings, now), success=False),
            last_error=error,
        )
        return _open(s, settings, now) if may_eject and _tripped(s, settings) else s
    if state.state == "half_open" and instance is not None and instance == state.probe_owner:
        return _open(replace(state, last_error=error), settings, now)
    return state if state.last_error == error else replace(state, last_error=error)


def _open(state: BreakerState, settings: BreakerSettings, now: float) -> BreakerState:
    until = now + open_duration(settings, state.ejections)
    if state.state != "closed" and state.open_until is not None:
        until = max(until, state.open_until)  # a re-ejection never shortens a deadline (LiteLLM #40130)
    return replace(
        state,
        state="open",
        ejections=state.ejections + 1,
        opened_at=now,
        open_until=until,
        consecutive=0,
        window=(),
        probe_owner=None,
        probe_until=None,
        last_change=now,
        healthy_since=None,
    )


def _probe(state: BreakerState, settings: BreakerSettings, now: float, instance: str) -> BreakerState:
    return replace(state, probe_owner=instance, probe_until=now + settings.probe_timeout_seconds)


def _tripped(state: BreakerState, settings: BreakerSettings) -> bool:
    if state.consecutive >= settings.consecutive_failures:
        return True
    total = sum(s + f for _, s, f in state.window)
    failures = sum(f for _, _, f in state.window)
    return total >= settings.min_requests and failures > settings.failure_rate * total


def _bucket(settings: BreakerSettings, now: float) -> int:
    return math.floor(now / settings.bucket_seconds)


def _count(window: tuple[Bucket, ...], index: int, *, success: bool) -> tuple[Bucket, ...]:
    """Add one result to the newest bucket; a clock that went back counts into the newest one."""
    if window and index <= window[-1][0]:
        last, s, f = window[-1]
        return (*window[:-1], (last, s + success, f + (not success)))
    return (*window, (index, int(success), int(not success)))
