"""A delivery attempt's routing decision in words, from the evidence it recorded (`delivery_attempts.selection`,
written by `relay.pools.Decision.evidence` and the delivery's pool path): which pool and strategy chose which
workspace with what score against the others, who was left out and why, a failover within the pass, and a pool
that had no member so the message went to the sender's direct mapping or the `fallback_workspace`.

Pure: no I/O. The evidence is read defensively (it is JSON from the database), so an odd document gives a
plainer sentence, never an error.
"""

from collections.abc import Mapping
from typing import Any

__all__ = ["EXCLUSIONS", "explain"]

# The balancer's exclusion codes (`relay.balancer.eligibility`, `relay.pools.load_balancer`), in words.
EXCLUSIONS = {
    "disabled": "disabled",
    "zero_weight": "weight 0",
    "unhealthy": "unhealthy, circuit open or blocked",
    "sender_not_allowed": "may not send for this sender",
    "no_capacity": "no capacity left",
    "below_threshold": "under its minimum capacity threshold",
    "already_tried": "already tried in this pass",
    "reservation_refused": "its limits refused the send",
}

_DRAWN = frozenset({"capacity_weighted", "random_weighted"})  # scores are drawn in proportion
_LOWER_IS_BETTER = frozenset({"least_used"})  # scores are loads

_FALLBACKS = {
    "direct_mapping": "the sender's direct mapping",
    "fallback_workspace": "the fallback_workspace",
}


def explain(selection: Mapping[str, Any] | None, workspace_id: str | None = None) -> str:
    """One or two sentences on why the attempt went to `workspace_id` (the workspace the attempt used)."""
    if not isinstance(selection, Mapping) or not selection:
        if workspace_id:
            return f"Direct route: the sender's domain maps to {workspace_id}; no pool decided."
        return "No routing decision was recorded."
    pool = _text(selection.get("pool")) or "(unknown)"
    strategy = _text(selection.get("strategy"))
    named = f"Pool {pool}" + (f" ({strategy})" if strategy else "")
    chosen = _text(selection.get("workspace"))
    parts: list[str] = []
    if "fallback_action" in selection:
        action = _text(selection.get("fallback_action"))
        instead = _FALLBACKS.get(action, action.replace("_", " ") or "another route")
        parts.append(f"{named} had no member available")
        parts.append(f"sent through {workspace_id or '(none)'} instead, {instead}")
    elif chosen:
        parts.append(f"{named} chose {chosen}: {_scores(selection, chosen)}")
        capacity = _number(selection.get("capacity"))
        if capacity is not None:
            parts.append(f"{capacity * 100:.1f} % of its capacity left")
        if workspace_id and workspace_id != chosen:
            parts.append(f"but the attempt went through {workspace_id}")
    else:
        parts.append(f"{named} chose no member")
    if selection.get("spilled") is True:
        parts.append("every member was under its capacity threshold, so the threshold was set aside")
    left_out = _excluded(selection)
    if left_out:
        parts.append("excluded: " + left_out)
    failovers = _number(selection.get("failover"))
    if failovers:
        tries = int(failovers)
        parts.append(f"failover after {tries} earlier {'try' if tries == 1 else 'tries'} in this pass")
    return "; ".join(parts) + "."


def _scores(selection: Mapping[str, Any], chosen: str) -> str:
    """`score 0.7500 vs ws-b 0.2500, ws-c 0.1000`: the winner's score, then the others', best first; for a
    weighted draw, the winner's chance; for `least_used`, loads (lower is better)."""
    raw = selection.get("scores")
    scores = {str(ws): float(v) for ws, v in raw.items() if _number(v) is not None} if isinstance(raw, Mapping) else {}
    own = _number(selection.get("score"))
    if own is None:
        own = scores.get(chosen)
    strategy = selection.get("strategy")
    lower_wins = strategy in _LOWER_IS_BETTER
    label = "load" if lower_wins else "score"
    text = f"{label} " + ("unknown" if own is None else f"{own:.4f}")
    others = sorted(
        ((ws, v) for ws, v in scores.items() if ws != chosen), key=lambda p: (p[1] if lower_wins else -p[1], p[0])
    )
    if not others:
        return text + ", the only eligible member"
    text += " vs " + ", ".join(f"{ws} {v:.4f}" for ws, v in others)
    total = sum(v for v in scores.values() if v > 0)
    if strategy in _DRAWN and own is not None and own > 0 and total > 0:
        text += f" (a weighted draw: {min(own / total, 1.0) * 100:.1f} % chance)"
    elif lower_wins:
        text += " (lower is better)"
    return text


def _excluded(selection: Mapping[str, Any]) -> str:
    """`ws-c (unhealthy: …), ws-d (its limits refused the send: daily limit reached)`, in the evidence's order;
    members refused in this pass but not listed as excluded are added after."""
    excluded = selection.get("excluded")
    refused = selection.get("refused")
    excluded = dict(excluded) if isinstance(excluded, Mapping) else {}
    refused = dict(refused) if isinstance(refused, Mapping) else {}
    for ws in refused:
        excluded.setdefault(ws, "reservation_refused")
    out = []
    for ws, code in excluded.items():
        reason = EXCLUSIONS.get(_text(code), _text(code).replace("_", " ") or "no reason recorded")
        detail = _text(refused.get(ws))
        out.append(f"{ws} ({reason}: {detail})" if detail else f"{ws} ({reason})")
    return ", ".join(out)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
