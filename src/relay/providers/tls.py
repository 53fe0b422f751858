"""The TLS context every HTTP provider's client uses."""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["tls_context"]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One context for all providers, built as httpx builds its default (certifi, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).

    Each context holds its own parsed copy of the CA bundle, about 0.86 MB: one client per workspace with a
    context of its own made 1,000 Mailgun workspaces cost 860 MB and 30 s to start (bench/memory.py).
    """
    return httpx.create_ssl_context()
