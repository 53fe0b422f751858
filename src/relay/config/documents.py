"""Workspaces as JSON documents: how the database stores them, how the API and `relay config export` show them.

A stored document is the config file's workspace object with only the fields that were given (so a default
that changes in a later release still applies, and `load_balancing.enabled` keeps meaning "given explicitly").
Secrets are kept as they were given: an `env:NAME` reference stays a reference (each process resolves it from
its own environment), a literal value is stored as is. Shown documents replace literal secrets with
`SECRET_MASK`; an `env:NAME` reference is not a secret and is shown. Writing the mask back keeps the stored
value, so a document read from the API can be edited and written back without knowing its secrets.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr

from .models import Workspace
from .providers import GmailSettings, MailgunSettings, MandrillSettings, SandboxSettings, UpstreamSmtpSettings
from .settings import Settings

__all__ = [
    "SECRET_FIELDS",
    "SECRET_MASK",
    "MaskedSecretError",
    "redact",
    "restore_masked",
    "with_workspaces",
    "workspace_document",
]

SECRET_MASK = "********"  # noqa: S105 (the mask shown instead of a secret)

Path = tuple[str | int, ...]


def _secret_fields(*models: type[BaseModel]) -> frozenset[str]:
    names = set()
    for model in models:
        for name, field in model.model_fields.items():
            if "SecretStr" in repr(field.annotation):
                names.add(name)
    return frozenset(names)


# Field names that hold a secret in a workspace document (api_key, password, service_account_json).
SECRET_FIELDS = _secret_fields(GmailSettings, MailgunSettings, MandrillSettings, UpstreamSmtpSettings, SandboxSettings)


class MaskedSecretError(ValueError):
    """The mask was given for a secret that has no stored value to keep."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f'"{SECRET_MASK}" keeps a stored secret, but there is none here: give the value')


def workspace_document(workspace: Workspace) -> dict[str, Any]:
    """The document to store for `workspace`: fields as given, secrets as given (reference or value)."""
    shown = workspace.model_dump(mode="json", exclude_unset=True)
    for path, secret in _secrets(workspace.model_dump(mode="python", exclude_unset=True)):
        reference = getattr(secret, "reference", None)
        _set(shown, path, reference if reference is not None else secret.get_secret_value())
    return shown


def redact(document: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a stored workspace document with literal secrets masked (references are kept)."""

    def walk(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                key: (SECRET_MASK if key in SECRET_FIELDS and _is_literal(item) else walk(item))
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    return dict(walk(document))


def restore_masked(document: Mapping[str, Any], stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """`document` with every masked secret replaced by the stored document's value at the same place.

    Raises `MaskedSecretError` when there is nothing stored there (a new workspace, or a different provider)."""
    out = copy.deepcopy(dict(document))

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in SECRET_FIELDS and item == SECRET_MASK:
                    kept = _get(stored, (*path, key)) if stored is not None else None
                    if not isinstance(kept, str):
                        raise MaskedSecretError((*path, key))
                    value[key] = kept
                else:
                    walk(item, (*path, key))

    walk(out, ())
    return out


def with_workspaces(settings: Settings, workspaces: list[Workspace]) -> Settings:
    """`settings` running `workspaces` instead of the file's (the database's definitions)."""
    return settings.model_copy(update={"workspaces": workspaces})


def _is_literal(value: Any) -> bool:
    return isinstance(value, str) and not value.startswith("env:")


def _secrets(value: Any, path: Path = ()) -> Iterator[tuple[Path, SecretStr]]:
    if isinstance(value, SecretStr):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secrets(item, (*path, index))


def _get(document: Any, path: Path) -> Any:
    for part in path:
        try:
            document = document[part]
        except (KeyError, IndexError, TypeError):
            return None
    return document


def _set(document: Any, path: Path, value: Any) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = value
