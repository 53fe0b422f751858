"""Delivery: workers that claim, route, send, record and retry."""

from .backoff import RetryPolicy
from .worker import DeliveryWorker

__all__ = ["DeliveryWorker", "RetryPolicy"]
