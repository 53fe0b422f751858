"""README.md's "Environment variables" section names every environment variable Relay reads.

Three sources of names, each checked against that section:

- the settings: `RELAY_` + the field path joined by `__`, upper case, walked from `Settings.model_fields`
  through nested sections (`smtp`, `delivery.retry`, …). List fields such as `workspaces` are given whole as
  JSON, so their own name is required but not their items' fields;
- the previous relay's names, every upper-case string constant in `relay/config/legacy_env.py`;
- the `RELAY_*` names the code reads or sets in src/, bench/, tests/, .ci/ and the Makefile, found by how
  they are used (`os.environ.get("…")`, `getenv`, typer's `envvar=`, `monkeypatch.setenv`, an env dict key,
  a shell or make `$NAME` / `export NAME=` / `NAME ?=`), plus `"env:NAME"` references in examples/. Tests
  also invent `RELAY_TEST_*` names (`RELAY_SECRET_TEST_*` where the API must accept them) as `env:NAME`
  fixtures that they set themselves; such a name counts only when something reads it.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from relay.config import Settings

REPO = Path(__file__).parents[2]
README = REPO / "README.md"
HEADING = "## Environment variables"

SCANNED = ("src", "bench", "tests", ".ci", "Makefile")
TEXT_SUFFIXES = {".py", ".sh", ".mk", ""}
SKIPPED_PARTS = {"__pycache__", ".venv"}

NAME = r"RELAY_[A-Z0-9_]+"
READ_PYTHON = re.compile(rf"""(?:environ\.get\(|environ\[|getenv\(|envvar=)\s*["']({NAME})["']""")
READ_SHELL = re.compile(rf"""\$[{{(]?({NAME})""")  # shell and make: $NAME, ${NAME}, $(NAME)
WRITE = re.compile(
    rf"""(?:setenv\(|delenv\(|setdefault\()\s*["']({NAME})["']"""  # monkeypatch, os.environ.setdefault
    rf"""|["']({NAME})["']\s*:"""  # a key of an environment dict
    rf"""|^\s*(?:export\s+)?({NAME})\s*[:?+]?=""",  # shell `export NAME=…`, make `NAME ?= …`
    re.MULTILINE,
)
SYNTHETIC = ("RELAY_TEST_", "RELAY_SECRET_TEST_")  # the latter: fixtures an API write may name (env:RELAY_SECRET_*)
ENV_REFERENCE = re.compile(r"""["']env:([A-Za-z_][A-Za-z0-9_]*)["']""")
LEGACY_NAME = re.compile(r"""["']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)["']""")


def env_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{HEADING}\n")
    assert start != -1, f'README.md has no "{HEADING}" section'
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def undocumented(names: typing.Iterable[str]) -> list[str]:
    section = env_section()
    return sorted(n for n in set(names) if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", section))


def _section_model(annotation: typing.Any) -> type[BaseModel] | None:
    """The model of a nested section (`SmtpSettings`, or `X | None`); None for values, lists and dicts."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return models[0]
    return None


def settings_env_names(model: type[BaseModel], prefix: str, delimiter: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        env_name = f"{prefix}{name}".upper()
        yield env_name
        section = _section_model(field.annotation)
        if section is not None:
            yield from settings_env_names(section, env_name + delimiter, delimiter)


def all_settings_env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix") or ""
    delimiter = Settings.model_config.get("env_nested_delimiter") or ""
    assert prefix == "RELAY_"
    assert delimiter == "__"
    return set(settings_env_names(Settings, prefix, delimiter))


def _scanned_files() -> Iterator[Path]:
    for entry in SCANNED:
        path = REPO / entry
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in candidates:
            parts = set(file.relative_to(REPO).parts)
            if parts & SKIPPED_PARTS or any(p.endswith(".egg-info") for p in parts):
                continue
            if file.suffix in TEXT_SUFFIXES or file.name == "Makefile":
                yield file


def used_env_names() -> dict[str, str]:
    """Every `RELAY_*` name the code reads or sets, with a file where it does (synthetic test names left out)."""
    read: dict[str, str] = {}
    written: dict[str, str] = {}
    for file in _scanned_files():
        if file == Path(__file__):
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        where = str(file.relative_to(REPO))
        read_pattern = READ_PYTHON if file.suffix == ".py" else READ_SHELL
        for pattern, found in ((read_pattern, read), (WRITE, written)):
            for match in pattern.finditer(text):
                found.setdefault(next(g for g in match.groups() if g), where)
    for file in sorted((REPO / "examples").rglob("*")):
        if file.is_file():
            for match in ENV_REFERENCE.finditer(file.read_text(encoding="utf-8", errors="replace")):
                read.setdefault(match.group(1), str(file.relative_to(REPO)))
    kept = {name: where for name, where in written.items() if not name.startswith(SYNTHETIC)}
    return {**kept, **read}


def legacy_env_names() -> set[str]:
    source = (REPO / "src/relay/config/legacy_env.py").read_text(encoding="utf-8")
    return set(LEGACY_NAME.findall(source))


def test_every_setting_has_its_variable_in_the_readme() -> None:
    missing = undocumented(all_settings_env_names())
    assert not missing, f"README.md ({HEADING}) does not name these settings overrides: {missing}"


def test_every_variable_the_code_uses_is_in_the_readme() -> None:
    used = used_env_names()
    missing = undocumented(used)
    assert not missing, "README.md (" + HEADING + ") does not name: " + ", ".join(f"{n} ({used[n]})" for n in missing)


def test_every_previous_relay_variable_is_in_the_readme() -> None:
    missing = undocumented(legacy_env_names())
    assert not missing, f"README.md ({HEADING}) does not name these previous relay variables: {missing}"


def test_the_scans_find_what_they_should() -> None:
    """Guards the guards: a pattern that silently stopped matching would make the tests above pass vacuously."""
    settings = all_settings_env_names()
    assert {"RELAY_SMTP", "RELAY_SMTP__PORT", "RELAY_DELIVERY__RETRY__MAX_ATTEMPTS", "RELAY_WORKSPACES"} <= settings
    assert not any(n.startswith("RELAY_WORKSPACES__") for n in settings)  # list items are JSON, not variables
    used = used_env_names()
    assert {"RELAY_CONFIG", "RELAY_SEND_PASSWORD", "RELAY_REQUIRE_SERVICES", "RELAY_TEST_REDIS_URL"} <= set(used)
    assert "RELAY_BENCH_REDIS_URL" in used
    assert "RELAY_TEST_MG_KEY" not in used  # an env:NAME fixture that a test sets for itself
    assert {"SMTP_PORT", "SMTP_AUTH_PASSWORD", "MYSQL_HOST", "QUEUE_DAILY_RATE_LIMIT"} <= legacy_env_names()


class _Inner(BaseModel):
    depth: int = 0


class _Section(BaseModel):
    value: str = ""
    inner: _Inner = _Inner()
    optional_inner: _Inner | None = None
    items: list[_Inner] = []


class _Root(BaseModel):
    section: _Section = _Section()
    top: int = 1


def test_a_new_nested_setting_yields_a_name_to_document() -> None:
    assert set(settings_env_names(_Root, "RELAY_", "__")) == {
        "RELAY_SECTION",
        "RELAY_SECTION__VALUE",
        "RELAY_SECTION__INNER",
        "RELAY_SECTION__INNER__DEPTH",
        "RELAY_SECTION__OPTIONAL_INNER",
        "RELAY_SECTION__OPTIONAL_INNER__DEPTH",
        "RELAY_SECTION__ITEMS",
        "RELAY_TOP",
    }
    assert undocumented(["RELAY_SECTION__INNER__DEPTH"]) == ["RELAY_SECTION__INNER__DEPTH"]
