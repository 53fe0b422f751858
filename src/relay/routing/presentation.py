"""How a sender is presented in the workspace a pool picked (`load_balancing.sender_rewrite`). No I/O.

A pool's generic domain (`brian@invite.com`) is usually not one the picked workspace may send as: Gmail
only impersonates its own users, Mailgun and Mandrill want a verified domain. The workspace's
`sender_rewrite` says what to send as instead; direct mail is never rewritten.
"""

from __future__ import annotations

from ..config import Workspace

__all__ = ["presented_sender"]


def presented_sender(workspace: Workspace, sender: str) -> str | None:
    """The envelope sender for pool mail from `sender` in `workspace`, or None to keep `sender` as it is.

    `keep` keeps it; `domain` keeps the local part on the workspace's primary domain (`brian@invite.com`
    → `brian@joinmednet.org`); `default_sender` sends as `load_balancing.default_sender`, else the gmail
    section's `default_sender`. None also when the result is `sender` itself (compared case-insensitively),
    when the null sender or a bare local part has nothing to rewrite, or when the address the mode needs is
    missing (the config checks refuse that).
    """
    lb = workspace.load_balancing
    if lb.sender_rewrite == "keep" or not sender:
        return None
    if lb.sender_rewrite == "domain":
        local, at, _ = sender.rpartition("@")
        primary = workspace.primary_domain
        presented = f"{local}@{primary}" if at and local and primary else None
    else:
        gmail_sender = workspace.gmail.default_sender if workspace.gmail else None
        presented = lb.default_sender or (gmail_sender.strip() if gmail_sender else None)
    if presented is None or presented.lower() == sender.lower():
        return None
    return presented
