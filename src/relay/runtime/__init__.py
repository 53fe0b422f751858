"""One Relay process: its parts wired together (`relay.py`) and the configuration it follows live (`live.py`)."""

from .relay import Relay

__all__ = ["Relay"]
