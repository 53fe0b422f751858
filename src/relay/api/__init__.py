"""HTTP API: FastAPI app and routers."""

from .app import create_app

__all__ = ["create_app"]
