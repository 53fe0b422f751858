"""Outbound webhooks (issue 8): the dispatcher that posts outbox events to endpoints, their formats and
signatures. The outbox and the endpoints' tables are in `relay.store`."""

from .dispatcher import Dispatcher, OnResult
from .endpoints import endpoint_id, endpoints_from_settings, resolved_secret
from .formats import Request, mandrill_events, request_for
from .signing import mandrill_signature, relay_signature

__all__ = [
    "Dispatcher",
    "OnResult",
    "Request",
    "endpoint_id",
    "endpoints_from_settings",
    "mandrill_events",
    "mandrill_signature",
    "relay_signature",
    "request_for",
    "resolved_secret",
]
