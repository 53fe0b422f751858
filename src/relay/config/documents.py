"""Workspaces as JSON documents: how the database stores them, how the API and `relay config export` show them.

A stored document is the config file's workspace object with only the fields that were given (so a default
that changes in a later release still applies, and `load_balancing.enabled` keeps meaning "given explicitly").
Secrets are kept as they were given: an `env:NAME` reference stays a reference (each process resolves it from
its own environment), a literal value is stored as is. Shown documents replace literal secrets with
`SECRET_MASK`; an `env:NAME` reference is not a secret and is shown. Writing the mask back keeps the stored
value, so a document read from the API can be edited and written back without knowing its secrets.

Two guards keep an API key from turning that into a way to read secrets (the config file is trusted and not
subject to them):

- The mask keeps a stored secret only while it would be sent to the same place: the same provider section,
  and that section's destination fields (`destination_fields`) equal to the stored ones. Otherwise a key could
  be sent to a `base_url` of the writer's choosing.
- Through the API, `env:NAME` (and `gmail.service_account_env`) may only name variables starting with
  `API_ENV_PREFIX` (`check_api_env_references`); any other variable of the relay's environment could otherwise
  be sent to a server of the writer's choosing.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel, SecretStr, TypeAdapter, ValidationError

from ..errors import Problem
from .loader import json_path
from .models import Workspace
from .providers import GmailSettings, MailgunSettings, MandrillSettings, SandboxSettings, UpstreamSmtpSettings
from .settings import Settings

__all__ = [
    "API_ENV_PREFIX",
    "HARMLESS_PROVIDER_FIELDS",
    "SECRET_FIELDS",
    "SECRET_MASK",
    "MaskedSecretError",
    "check_api_env_references",
    "destination_changes",
    "destination_fields",
    "redact",
    "restore_masked",
    "with_workspaces",
    "workspace_document",
]

SECRET_MASK = "********"  # noqa: S105 (the mask shown instead of a secret)
_ENV = "env:"

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

# The provider sections that hold a secret, by their key in a workspace (the provider kind).
_SECRET_SECTIONS: dict[str, type[BaseModel]] = {
    "gmail": GmailSettings,
    "mailgun": MailgunSettings,
    "mandrill": MandrillSettings,
    "smtp": UpstreamSmtpSettings,
}

_COMMON_HARMLESS = frozenset({"kind", "enabled", "enable_webhooks", "header_rewrite"})

# Fields of a provider section that cannot change where, how or as which account its secret is sent: changing
# them keeps a masked secret. Every other field that is not itself a secret is a destination field (deny by
# default: a field added to a provider model later counts as a destination until it is listed here).
# `header_rewrite` only sets message headers, which the sender controls anyway (Mandrill's `subaccount` is such
# a header, X-MC-Subaccount); gmail's `default_sender` is a sender to impersonate, which every message chooses
# anyway; Mandrill's `webhook_url` only checks the signatures of incoming events; `helo_name` is the EHLO
# greeting; `timeout_seconds` and `max_connections` are limits.
HARMLESS_PROVIDER_FIELDS: dict[str, frozenset[str]] = {
    "gmail": _COMMON_HARMLESS | {"default_sender", "require_valid_sender"},
    "mailgun": _COMMON_HARMLESS | {"tracking", "default_tags"},
    "mandrill": _COMMON_HARMLESS | {"tracking", "default_tags", "subaccount", "webhook_url"},
    "smtp": _COMMON_HARMLESS | {"timeout_seconds", "max_connections", "helo_name"},
}

API_ENV_PREFIX = "RELAY_SECRET_"
"""Through the API, `env:NAME` may only name variables with this prefix (see `check_api_env_references`)."""

_API_ENV_RULE = (
    f"through the API, env: may only name variables starting with {API_ENV_PREFIX} (set them on every relay "
    "host); other variables are readable only from the config file"
)


class MaskedSecretError(ValueError):
    """The mask was given for a secret that has no stored value to keep, or whose destination changed
    (`reason`, e.g. "base_url changed")."""

    def __init__(self, path: Path, reason: str | None = None) -> None:
        self.path = path
        self.reason = reason
        if reason is None:
            message = f'"{SECRET_MASK}" keeps a stored secret, but there is none here: give the value'
        else:
            message = (
                f'"{SECRET_MASK}" keeps the stored secret only while it is sent to the same place; {reason}: '
                "give the secret again"
            )
        super().__init__(message)


def destination_fields(kind: str) -> tuple[str, ...]:
    """The fields of provider section `kind` that decide where, how or as which account its secret is sent:
    every field but the secrets and `HARMLESS_PROVIDER_FIELDS`. Empty for a section without secrets."""
    model = _SECRET_SECTIONS.get(kind)
    if model is None:
        return ()
    harmless = HARMLESS_PROVIDER_FIELDS[kind]
    return tuple(name for name in model.model_fields if name not in SECRET_FIELDS and name not in harmless)


def destination_changes(kind: str, section: Any, stored_section: Any) -> list[str]:
    """The destination fields of provider section `kind` that differ between `section` and `stored_section`
    (documents as given: a field absent on one side equals its default on the other; values are compared as
    the model reads them, so `https://x` equals `https://x/`)."""
    model = _SECRET_SECTIONS.get(kind)
    if model is None:
        return []
    new = section if isinstance(section, Mapping) else {}
    old = stored_section if isinstance(stored_section, Mapping) else {}
    return [name for name in destination_fields(kind) if _normalised(model, name, new) != _normalised(model, name, old)]


def _normalised(model: type[BaseModel], name: str, section: Mapping[str, Any]) -> Any:
    """The value of field `name` as the model reads it, in JSON form; a value that equals no other (not even
    itself) when there is none to read: a required field left out, or a value the model refuses."""
    field = model.model_fields[name]
    adapter = _adapter(model, name)
    if name not in section:
        if field.is_required():
            return object()
        return adapter.dump_python(field.get_default(call_default_factory=True), mode="json")
    try:
        return adapter.dump_python(adapter.validate_python(section[name]), mode="json")
    except ValidationError:
        return object()


@functools.cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    annotation: Any = model.model_fields[name].annotation
    return TypeAdapter(annotation)


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

    Raises `MaskedSecretError` when there is nothing stored there (a new workspace, or a different provider),
    or when the secret would no longer go to the same place: one of its section's `destination_fields` differs
    from the stored document's (after normalisation: absent equals the default)."""
    out = copy.deepcopy(dict(document))

    def walk(value: Any, path: Path) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in SECRET_FIELDS and item == SECRET_MASK:
                    value[key] = _kept((*path, key), out, stored)
                else:
                    walk(item, (*path, key))

    walk(out, ())
    return out


def _kept(path: Path, document: Mapping[str, Any], stored: Mapping[str, Any] | None) -> str:
    """The stored secret a mask at `path` keeps, or `MaskedSecretError`."""
    kept = _get(stored, path) if stored is not None else None
    kind = path[0] if len(path) == 2 else None
    if not isinstance(kept, str) or not isinstance(kind, str) or kind not in _SECRET_SECTIONS:
        before = [k for k in _SECRET_SECTIONS if isinstance(_get(stored, (k,)), Mapping)]
        if isinstance(kind, str) and before and kind not in before:
            raise MaskedSecretError(path, f"the provider changed ({before[0]} before, {kind} now)")
        raise MaskedSecretError(path)
    changes = destination_changes(kind, document.get(kind), _get(stored, (kind,)))
    if changes:
        raise MaskedSecretError(path, f"{_words(changes)} changed")
    return kept


def check_api_env_references(document: Mapping[str, Any], stored: Mapping[str, Any] | None = None) -> list[Problem]:
    """Problems with the environment variables a workspace document written through the API would read.

    An `env:NAME` secret and `gmail.service_account_env` may name only variables starting with
    `API_ENV_PREFIX`: any other variable of a relay's environment (`RELAY_DATABASE_URL`, `RELAY_ADMIN_KEY`…)
    could otherwise be sent to a server of the writer's choosing. A reference equal to the `stored` document's
    at the same place (one the config file gave) is kept, like the mask keeps a secret: only while its
    section's `destination_fields` are unchanged. Paths are relative to the document (`mailgun.api_key`)."""
    problems = []
    for kind, model in _SECRET_SECTIONS.items():
        section = document.get(kind)
        if not isinstance(section, Mapping):
            continue
        stored_section = _get(stored, (kind,))
        for name in model.model_fields:
            value = section.get(name)
            if not isinstance(value, str):
                continue
            if name in SECRET_FIELDS and value.startswith(_ENV):
                variable = value.removeprefix(_ENV)
            elif name == "service_account_env":
                variable = value
            else:
                continue
            if variable.startswith(API_ENV_PREFIX) and variable != API_ENV_PREFIX:
                continue
            path = json_path((kind, name))
            if isinstance(stored_section, Mapping) and stored_section.get(name) == value:
                changes = destination_changes(kind, section, stored_section)
                if not changes:
                    continue  # as stored (by the config file): it still goes where it went
                problems.append(
                    Problem(
                        path,
                        f'"{value}" is kept as stored only while it is sent to the same place; '
                        f"{_words(changes)} changed, and {_API_ENV_RULE}",
                    )
                )
            else:
                problems.append(Problem(path, f'"{value}": {_API_ENV_RULE}'))
    return problems


def _words(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def with_workspaces(settings: Settings, workspaces: list[Workspace]) -> Settings:
    """`settings` running `workspaces` instead of the file's (the database's definitions)."""
    return settings.model_copy(update={"workspaces": workspaces})


def _is_literal(value: Any) -> bool:
    return isinstance(value, str) and not value.startswith(_ENV)


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


# Files on the relay hosts a workspace reads: a key file would be used to mint tokens that go to `base_url`.
API_PATH_FIELDS = {"gmail": ("service_account_file",), "smtp": ("ca_file",)}


def check_api_paths(document: Mapping[str, Any], stored: Mapping[str, Any] | None = None) -> list[Problem]:
    """Problems with host file paths in a workspace document written through the API: a new or changed path is
    refused (an admin key could otherwise point a workspace at another workspace's key file and a server of its
    choosing); one equal to the stored document's is kept. Paths on the hosts are the config file's business."""
    problems = []
    for kind, names in API_PATH_FIELDS.items():
        section = document.get(kind)
        if not isinstance(section, Mapping):
            continue
        stored_section = _get(stored, (kind,))
        for name in names:
            value = section.get(name)
            if value is None:
                continue
            if isinstance(stored_section, Mapping) and stored_section.get(name) == value:
                continue
            problems.append(
                Problem(
                    json_path((kind, name)),
                    "a path on the relay hosts can be set only in the config file (through the API it could point "
                    "a workspace at another one's key); give the key as service_account_json or a RELAY_SECRET_ "
                    "variable",
                )
            )
    return problems
