"""SMTP reply → outcome, following RFC 5321/3463 and the providers' documented quota replies.

The class digit alone is not enough: Gmail reports an exhausted daily quota with 550 5.4.5, and
SES throttles with 454. See ../shared/notes/provider-apis.md §4 and §5.
"""

from __future__ import annotations

import re

from .types import OutcomeKind

__all__ = ["classify_reply", "enhanced_code"]

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_QUOTA_TEXT = re.compile(
    r"throttling failure|daily (user )?sending quota|daily .*limit exceeded|peak smtp relay limit|"
    r"unusual rate|rate limit|too many messages|quota exceeded",
    re.IGNORECASE,
)


def enhanced_code(text: str) -> str | None:
    """The RFC 3463 status at the start of a reply text (`5.1.1`), if any."""
    match = _ENHANCED.match(text)
    return ".".join(match.groups()) if match else None


def classify_reply(code: int, text: str = "") -> OutcomeKind:
    """Map an SMTP reply to Relay's outcome taxonomy."""
    enhanced = enhanced_code(text) or ""
    if 200 <= code < 300:
        return "sent"
    if code in (530, 534, 535):
        return "auth"
    if enhanced in ("4.2.1", "5.4.5", "4.4.5") or _QUOTA_TEXT.search(text):
        return "quota"
    if code == 454 and enhanced == "4.7.0":
        return "retry"  # RFC 4954: temporary authentication failure
    if 400 <= code < 500:
        return "retry"
    return "permanent"
