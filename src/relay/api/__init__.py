"""HTTP API: FastAPI app and routers."""

from .app import create_app
from .auth import ApiKeys, Caller
from .services import ApiServices

__all__ = ["ApiKeys", "ApiServices", "Caller", "create_app"]
