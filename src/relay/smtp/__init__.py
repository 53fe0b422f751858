"""SMTP ingress: AUTH, allowed networks, sender policy, size limits, durable enqueue."""

from .auth import Authenticator, NetworkPolicy
from .handler import RelayHandler
from .server import RelaySMTP, start_smtp_server

__all__ = ["Authenticator", "NetworkPolicy", "RelayHandler", "RelaySMTP", "start_smtp_server"]
