"""What one provider fault case measured, and the table the reliability report shows for the matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Measured", "figures", "render"]


@dataclass
class Measured:
    case_id: str
    title: str
    note: str
    late: bool  # duplicates are expected (and checked to be exactly the timed-out sends)
    accepted: int
    windows: list[tuple[datetime, datetime]]  # (injected, cleared) per fault period
    failover: list[float | None]  # seconds from each injection to the first message sent elsewhere because of it
    out_after: list[float | None]  # seconds from each injection to the member's leaving the rotation
    recovery: list[float | None]  # seconds from each clearing to the first message the member delivered
    tries: int  # sends tried on the member from the first injection on that did not deliver
    failed_over: int  # messages delivered by another member after a try on the faulty one
    duplicates: int
    latency_p50: float  # accept → sent, every message
    latency_max: float
    others_p99: float  # accept → sent of the messages the other members delivered: does mail keep flowing?
    states: list[str] = field(default_factory=list)  # the faulty member's health states from the first injection
    layer: dict[str, int] = field(default_factory=dict)  # what the fault layer did: answered, held, dropped


def figures(m: Measured) -> dict[str, Any]:
    return {
        "accepted": m.accepted,
        "failover_seconds": m.failover,
        "out_of_rotation_seconds": m.out_after,
        "recovery_seconds": m.recovery,
        "tries_on_faulty": m.tries,
        "failed_over": m.failed_over,
        "duplicates": m.duplicates,
        "latency_p50_seconds": round(m.latency_p50, 3),
        "latency_max_seconds": round(m.latency_max, 3),
        "other_members_p99_seconds": round(m.others_p99, 3),
        "states": m.states,
        "fault_layer": m.layer,
    }


def render(rows: list[Measured], setup: str) -> str:
    """`setup`: how the cases were run (rates, periods, breaker settings), one paragraph."""
    once = (
        "exactly once, except where the table counts duplicates (see its note),"
        if any(m.late for m in rows)
        else ("exactly once")
    )
    lines = [
        f"{setup} Relay accepted every message, and delivered every accepted message {once} "
        "(Message-IDs counted at the three upstreams, agreeing with the attempts): none refused, lost or left queued.",
        "",
        "*Failover*: fault injected → the first message sent elsewhere because of it (left out of a decision, "
        "passed over, or failed over after a try on it). *Out*: fault injected → the member out of rotation (open, "
        "throttled or auth_broken). *Recovery*: fault cleared → the first message it delivered again. *Tries*: "
        "sends on it that did not deliver, each failed over in the same pass to a healthy member. *Others' p99*: "
        "accept → sent of the mail the healthy members delivered. Flapping lists each cycle; — is none.",
        "",
        "| fault | accepted | failover (s) | out (s) | recovery (s) | tries | duplicates | accept→sent p50 / max (s) "
        "| others' p99 (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        lines.append(
            f"| {m.title} | {m.accepted} | {_seconds(m.failover)} | {_seconds(m.out_after)} | "
            f"{_seconds(m.recovery)} | {m.tries} | {m.duplicates} | {m.latency_p50:.2f} / {m.latency_max:.2f} | "
            f"{m.others_p99:.2f} |"
        )
    notes = [f"- {m.title}: {m.note}." for m in rows if m.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def _seconds(values: list[float | None]) -> str:
    return " / ".join("—" if v is None else f"{v:.2f}" for v in values)
