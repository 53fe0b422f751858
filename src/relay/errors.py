"""Relay's exception tree. Each package raises its own subclass; callers catch these, never foreign types.

RelayError
├── ConfigError            invalid configuration; carries one Problem per JSON path
├── StoreError             the database refused or is unreachable (a retry may succeed)
└── ProviderError          a provider could not be built from its configuration
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigError", "Problem", "ProviderError", "RelayError", "StoreError"]


class RelayError(Exception):
    """Base of every error Relay raises on purpose."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the configuration, at one JSON path (`smtp.users[0].password`)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(RelayError):
    """The configuration is invalid; `problems` lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(RelayError):
    """The database could not complete an operation; the caller may retry later."""


class ProviderError(RelayError):
    """A provider could not be created from its configuration."""
