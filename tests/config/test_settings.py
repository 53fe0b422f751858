from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relay.config import PROVIDER_KINDS, load_settings
from relay.errors import ConfigError
from relay.providers import PROVIDERS, build_provider

EXAMPLE = Path(__file__).parents[2] / "examples" / "relay.json"


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "relay.json"
    path.write_text(json.dumps(data))
    return path


def problems(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, data))
    return [str(p) for p in caught.value.problems]


def example() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())


def test_example_config_is_valid() -> None:
    settings = load_settings(EXAMPLE)
    assert [w.id for w in settings.workspaces] == ["sandbox-primary", "sandbox-secondary"]
    assert settings.load_balancing_pools[0].workspaces[0].weight == 2.0


def test_every_prd_field_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_MG_KEY", "key-123")
    data = example()
    data["workspaces"] += [
        {
            "id": "gmail-workspace",
            "domains": ["joinmednet.net"],
            "display_name": "Gmail Workspace",
            "load_balancing": {
                "enabled": True,
                "pools": ["invite-domain-pool"],
                "default_weight": 1.0,
                "min_capacity_threshold": 0.1,
            },
            "rate_limits": {
                "workspace_daily": 2000,
                "per_user_daily": 100,
                "custom_user_limits": {"Brian@Invite.com": 500},
            },
            "gmail": {
                "service_account_file": "credentials/sa.json",
                "enabled": True,
                "default_sender": "a@b.org",
                "require_valid_sender": True,
                "base_url": "http://127.0.0.1:9999",
            },
        },
        {
            "id": "mailgun-1",
            "domains": ["mg.example.org"],
            "mailgun": {
                "api_key": "env:RELAY_TEST_MG_KEY",
                "region": "eu",
                "tracking": {"opens": True},
                "default_tags": ["t"],
                "header_rewrite": {"enabled": True, "rules": [{"header_name": "List-Unsubscribe"}]},
            },
        },
        {
            "id": "mandrill-1",
            "domains": ["md.example.org"],
            "mandrill": {"api_key": "k", "subaccount": "s", "tracking": {"opens": True, "clicks": True}},
        },
        {
            "id": "smtp-1",
            "domains": ["smtp.example.org"],
            "smtp": {"host": "smtp.example.org", "port": 465, "username": "u", "password": "p", "tls": "implicit"},
        },
    ]
    data["webhooks"] = [{"url": "https://hooks.example/relay", "secret": "s", "events": ["*"]}]
    data["http"]["api_keys"] = [{"name": "ops", "key": "k", "role": "admin"}]
    settings = load_settings(write(tmp_path, data))
    gmail = settings.workspace("gmail-workspace")
    assert gmail is not None
    assert gmail.rate_limits.custom_user_limits == {"brian@invite.com": 500}
    mailgun = settings.workspace("mailgun-1")
    assert mailgun is not None and mailgun.mailgun is not None
    assert mailgun.mailgun.api_key.get_secret_value() == "key-123"


def test_problems_name_their_json_path(tmp_path: Path) -> None:
    data = example()
    data["load_balancing_pools"][0]["workspaces"].append({"workspace_id": "mailgn-1", "weight": 1})
    assert problems(tmp_path, data) == [
        'load_balancing_pools[0].workspaces[2].workspace_id: unknown workspace "mailgn-1"'
    ]


def test_every_structural_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = example()
    data["smtp"]["port"] = "not-a-port"
    data["smtp"]["users"][0]["password"] = "env:RELAY_TEST_UNSET_VARIABLE"
    data["workspaces"][1]["sandbox"]["bogus"] = 1
    data["workspaces"][0]["mailgun"] = {"api_key": "k"}
    data["load_balancing_pools"][0]["domain_patterns"].append("not a domain")
    found = problems(tmp_path, data)
    assert "smtp.users[0].password: environment variable RELAY_TEST_UNSET_VARIABLE is not set" in found
    assert "workspaces[1].sandbox.bogus: unknown field" in found
    assert any(p.startswith("smtp.port: ") for p in found)
    assert any(p.startswith("workspaces[0]: a workspace needs exactly one provider section") for p in found)
    assert 'load_balancing_pools[0].domain_patterns[1]: "not a domain" is not a domain name' in found


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(fallback_workspace="nope"), 'fallback_workspace: unknown workspace "nope"'),
        (
            lambda d: d["workspaces"][0]["sandbox"].update(enabled=False),
            'fallback_workspace: workspace "sandbox-primary" is disabled',
        ),
        (
            lambda d: d["workspaces"][1]["domains"].append("joinmednet.org"),
            'workspaces[1].domains[1]: domain "joinmednet.org" is already served by workspace "sandbox-primary"',
        ),
        (
            lambda d: d["workspaces"][1].update(id="sandbox-primary"),
            'workspaces[1].id: duplicate workspace id "sandbox-primary"',
        ),
        (
            lambda d: d["workspaces"][0]["load_balancing"]["pools"].append("ghost"),
            'workspaces[0].load_balancing.pools[1]: unknown pool "ghost"',
        ),
        (
            lambda d: d["load_balancing_pools"][0]["domain_patterns"].append("in*valid.com"),
            'load_balancing_pools[0].domain_patterns[1]: "in*valid.com": a wildcard is only allowed as the first label '
            '("*.example.org")',
        ),
        (
            lambda d: d["load_balancing_pools"][0].update(strategy="fastest"),
            "load_balancing_pools[0].strategy: Input should be 'capacity_weighted', 'round_robin', 'least_used' or "
            "'random_weighted'",
        ),
        (
            lambda d: d["workspaces"][0].update(sendgrid={"api_key": "k"}),
            'workspaces[0]: provider kind "sendgrid" is not supported yet '
            "(use gmail, mailgun, mandrill, smtp or sandbox)",
        ),
        (
            lambda d: d.update(delivery={"lease_seconds": 10, "send_timeout_seconds": 20}),
            "delivery: lease_seconds must be longer than send_timeout_seconds, "
            "or a slow send could be claimed and sent again by another worker",
        ),
    ],
)
def test_cross_object_problems(tmp_path: Path, change: Any, expected: str) -> None:
    data = example()
    change(data)
    assert expected in problems(tmp_path, data)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.json")
    path = tmp_path / "broken.json"
    path.write_text('{"smtp": {"port": 25,}}')
    with pytest.raises(ConfigError, match=r"line 1 column 22"):
        load_settings(path)


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SMTP__PORT", "2626")
    monkeypatch.setenv("RELAY_DATABASE_URL", "postgresql://db/relay")
    monkeypatch.setenv("RELAY_SMTP__ALLOWED_NETWORKS", '["10.0.0.0/8"]')
    settings = load_settings(EXAMPLE)
    assert settings.smtp.port == 2626
    assert settings.smtp.hostname == "relay.localhost"  # the rest of the section still comes from the file
    assert settings.database_url == "postgresql://db/relay"
    assert settings.smtp.allowed_networks == ["10.0.0.0/8"]


def test_bad_environment_value_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SMTP__PORT", "twenty")
    with pytest.raises(ConfigError) as caught:
        load_settings(EXAMPLE)
    assert [p.path for p in caught.value.problems] == ["smtp.port"]


LEGACY_ENV = {
    "SMTP_PORT": "2700",
    "SMTP_MAX_SIZE": "10485760",
    "SMTP_AUTH_USERNAME": "legacy",
    "SMTP_AUTH_PASSWORD": "pw",
    "MYSQL_HOST": "db.internal",
    "MYSQL_USER": "relay",
    "MYSQL_PASSWORD": "p@ss",
    "MYSQL_DATABASE": "relay",
    "QUEUE_MAX_RETRIES": "3",
    "WEB_UI_PORT": "9090",
}


def test_previous_relay_environment_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LEGACY_ENV.items():
        monkeypatch.setenv(name, value)
    # A file that leaves those settings out: the previous relay's names fill them in.
    path = write(tmp_path, {"smtp": {"hostname": "relay.test", "auth_require_tls": False}})
    settings = load_settings(path)
    assert settings.smtp.port == 2700
    assert settings.smtp.hostname == "relay.test"  # the rest of the section still comes from the file
    assert settings.smtp.max_message_size == 10_485_760
    assert [u.username for u in settings.smtp.users] == ["legacy"]
    assert settings.database_url == "mysql://relay:p%40ss@db.internal:3306/relay"
    assert settings.http.port == 9090
    assert settings.delivery.retry.max_attempts == 3
    monkeypatch.setenv("RELAY_SMTP__PORT", "2800")  # Relay's own names win
    assert load_settings(path).smtp.port == 2800


def test_the_file_wins_over_previous_relay_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LEGACY_ENV.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(EXAMPLE)
    assert settings.database_url == "sqlite:///var/relay.db"  # not MYSQL_HOST's URL
    assert settings.smtp.port == 2525
    assert settings.smtp.max_message_size == 26_214_400
    assert [u.username for u in settings.smtp.users] == ["app"]
    assert settings.http.port == 8080
    # What the file leaves out is still filled in.
    assert settings.delivery.retry.max_attempts == 3


@pytest.mark.parametrize("name", ["SMTP_PORT", "SMTP_MAX_SIZE", "WEB_UI_PORT", "QUEUE_MAX_RETRIES", "MYSQL_PORT"])
def test_kubernetes_service_link_values_are_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # A Service named "smtp" (or "web-ui", "mysql" …) makes Kubernetes inject SMTP_PORT=tcp://10.96.0.12:25.
    monkeypatch.setenv(name, "tcp://10.96.0.12:25")
    monkeypatch.setenv("MYSQL_HOST", "db.internal")
    settings = load_settings(write(tmp_path, {}))
    assert settings.smtp.port == 2525
    assert settings.smtp.max_message_size == 26_214_400
    assert settings.http.port == 8080
    assert settings.delivery.retry.max_attempts == 15
    assert settings.database_url == "mysql://root@db.internal:3306/relay"


@pytest.mark.parametrize(
    ("password", "env", "expected"),
    [
        ("", None, "smtp.users[0].password: must not be empty"),
        (
            "env:RELAY_TEST_EMPTY_PASSWORD",
            "",
            "smtp.users[0].password: environment variable RELAY_TEST_EMPTY_PASSWORD is empty",
        ),
    ],
)
def test_empty_smtp_password_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, password: str, env: str | None, expected: str
) -> None:
    if env is not None:
        monkeypatch.setenv("RELAY_TEST_EMPTY_PASSWORD", env)
    data = example()
    data["smtp"]["users"][0]["password"] = password
    assert problems(tmp_path, data) == [expected]


def test_users_who_can_never_log_in_are_refused(tmp_path: Path) -> None:
    data = example()
    del data["smtp"]["auth_require_tls"]  # true by default, and the example has no certificate
    assert problems(tmp_path, data) == [
        "smtp.users: these users can never log in: AUTH is only offered after STARTTLS (auth_require_tls is "
        "true) and there is no certificate; set smtp.tls_cert and smtp.tls_key, or set smtp.auth_require_tls "
        "to false"
    ]
    data["smtp"]["users"] = []
    assert load_settings(write(tmp_path, data)).smtp.auth_require_tls is True


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("oracle://scott:tiger@db/relay", 'database_url: unsupported database "oracle"'),
        ("mssql+pyodbc://db/relay", 'database_url: unsupported database "mssql"'),
        ("relay.db", "database_url: not a database URL"),
        ("postgresql://user:s3cret@db:notaport/relay", "database_url: not a database URL"),
    ],
)
def test_unsupported_database_url_is_refused(tmp_path: Path, url: str, expected: str) -> None:
    data = example()
    data["database_url"] = url
    found = problems(tmp_path, data)
    assert len(found) == 1
    assert found[0].startswith(expected), found
    assert "s3cret" not in found[0]


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///var/relay.db",
        "sqlite://",
        "postgresql://relay@db/relay",
        "postgres://relay@db/relay",
        "postgresql+asyncpg://relay@db/relay",
        "mysql://relay:pw@db/relay",
        "mariadb://relay@db/relay",
        "mysql+asyncmy://relay@db/relay",
    ],
)
def test_supported_database_urls_are_accepted(tmp_path: Path, url: str) -> None:
    data = example()
    data["database_url"] = url
    assert load_settings(write(tmp_path, data)).database_url == url


def test_secrets_never_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_TEST_SECRET", "s3cr3t-value")
    data = example()
    data["smtp"]["users"][0]["password"] = "env:RELAY_TEST_SECRET"
    settings = load_settings(write(tmp_path, data))
    assert settings.smtp.users[0].password.get_secret_value() == "s3cr3t-value"
    for shown in (repr(settings), str(settings), json.dumps(settings.redacted())):
        assert "s3cr3t-value" not in shown


def test_config_provider_kinds_match_the_registry() -> None:
    assert set(PROVIDERS) == set(PROVIDER_KINDS)  # every provider section the config accepts can deliver
    settings = load_settings(EXAMPLE)
    assert build_provider(settings.workspaces[0]).kind == "sandbox"


def test_header_rewrite_rules_cannot_inject_headers(tmp_path: Path) -> None:
    data = example()
    data["workspaces"][0]["sandbox"]["header_rewrite"] = {
        "enabled": True,
        "rules": [{"header_name": "X-A", "new_value": "x\r\nBcc: victim@example.org"}, {"header_name": "Bad Name"}],
    }
    found = problems(tmp_path, data)
    assert [p.split(":", 1)[0] for p in found] == [
        "workspaces[0].sandbox.header_rewrite.rules[0].new_value",
        "workspaces[0].sandbox.header_rewrite.rules[1].header_name",
    ]


def test_the_previous_relays_mandrill_webhook_url_becomes_a_mandrill_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANDRILL_WEBHOOK_URL", "https://tracking.example/mandrill")
    monkeypatch.setenv("RELAY_MANDRILL_WEBHOOK_KEY", "legacy-key-4c1")
    [hook] = load_settings(None).webhooks
    assert (str(hook.url), hook.format, hook.events) == ("https://tracking.example/mandrill", "mandrill", ["message.*"])
    assert hook.secret is not None and hook.secret.get_secret_value() == "legacy-key-4c1"
