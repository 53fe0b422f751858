"""Inbound provider events (issue 8): Mailgun's and Mandrill's webhooks, verified and recorded as Relay events."""

from .router import InboundOut, inbound_router

__all__ = ["InboundOut", "inbound_router"]
