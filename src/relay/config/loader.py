"""Read the config file and environment into `Settings`, or raise `ConfigError` listing every problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from ..errors import ConfigError, Problem
from .checks import cross_checks
from .settings import Settings

__all__ = ["json_path", "load_settings", "validation_problems"]


def load_settings(path: Path | None) -> Settings:
    """Settings from the JSON file at `path` (or defaults) plus environment overrides."""
    data = _read_json(path) if path is not None else {}
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        raise ConfigError([_problem(error) for error in exc.errors()]) from None
    except SettingsError as exc:
        raise ConfigError([Problem("", f"environment: {exc}")]) from None
    problems = cross_checks(settings)
    if problems:
        raise ConfigError(problems)
    return settings


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([Problem("", f"{path}: line {exc.lineno} column {exc.colno}: {exc.msg}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([Problem("", f"{path}: the top level must be a JSON object")])
    return data


def json_path(loc: tuple[int | str, ...]) -> str:
    """`("workspaces", 0, "id")` → `workspaces[0].id`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problems(exc: ValidationError, prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """One `Problem` per error of `exc`, its path under `prefix`."""
    return [_problem(error, prefix) for error in exc.errors()]


def _problem(error: Any, under: tuple[int | str, ...] = ()) -> Problem:
    message = str(error["msg"])
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    return Problem(json_path((*under, *error["loc"])), message)
