"""Secret values in the config file: literal strings or `env:NAME` references, never printed."""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

__all__ = ["NonEmptySecret", "Secret", "resolve_secret"]

_ENV_PREFIX = "env:"


def resolve_secret(value: Any) -> Any:
    """Replace `env:NAME` with the value of environment variable NAME; raise if it is not set."""
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX) :]
        if not name:
            raise ValueError('"env:" needs a variable name, e.g. "env:RELAY_ADMIN_KEY"')
        resolved = os.environ.get(name)
        if resolved is None:
            raise ValueError(f"environment variable {name} is not set")
        return resolved
    return value


def resolve_non_empty_secret(value: Any) -> Any:
    """`resolve_secret`, and refuse an empty result, naming the variable when it came from one."""
    resolved = resolve_secret(value)
    if resolved == "":
        if isinstance(value, str) and value.startswith(_ENV_PREFIX):
            raise ValueError(f"environment variable {value[len(_ENV_PREFIX) :]} is empty")
        raise ValueError("must not be empty")
    return resolved


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
NonEmptySecret = Annotated[SecretStr, BeforeValidator(resolve_non_empty_secret)]
