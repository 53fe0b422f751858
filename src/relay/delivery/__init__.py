"""Delivery: workers that claim, route, send, record and retry."""

from .backoff import RetryPolicy
from .gate import Admission, CapacityGate, LimitPolicy, certainly_refused
from .worker import DeliveryWorker

__all__ = ["Admission", "CapacityGate", "DeliveryWorker", "LimitPolicy", "RetryPolicy", "certainly_refused"]
