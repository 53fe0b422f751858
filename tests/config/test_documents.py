"""The guards on workspace secrets written through the API: the mask keeps a stored secret only while it goes to
the same place, and `env:NAME` through the API names only `RELAY_SECRET_*` variables."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from relay.config.documents import (
    API_ENV_PREFIX,
    SECRET_MASK,
    MaskedSecretError,
    check_api_env_references,
    destination_fields,
    restore_masked,
)


def mailgun(**section: Any) -> dict[str, Any]:
    return {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": SECRET_MASK, **section}}


def smtp(**section: Any) -> dict[str, Any]:
    return {"id": "up", "domains": ["up.example"], "smtp": {"host": "smtp.example", **section}}


def test_the_destination_fields_are_every_field_but_the_secrets_and_the_harmless_ones() -> None:
    # Deny by default: a field added to a provider model appears here (and fails this test) until it is
    # judged harmless or accepted as a destination.
    assert destination_fields("gmail") == ("service_account_file", "service_account_env", "base_url")
    assert destination_fields("mailgun") == ("domain", "region", "base_url")
    assert destination_fields("mandrill") == ("base_url",)
    assert destination_fields("smtp") == ("host", "port", "username", "tls", "tls_verify", "ca_file")
    assert destination_fields("sandbox") == ()


def test_the_mask_keeps_the_secret_when_only_harmless_fields_change() -> None:
    key = secrets.token_hex(16)
    stored = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": key, "region": "eu"}}
    edited = mailgun(
        region="eu",
        tracking={"opens": True},
        default_tags=["x"],
        enabled=False,
        header_rewrite={"enabled": True, "rules": [{"header_name": "X-A", "new_value": "b"}]},
    )
    edited["display_name"] = "Mailgun"
    edited["domains"] = ["mg.example", "other.example"]
    assert restore_masked(edited, stored)["mailgun"]["api_key"] == key


@pytest.mark.parametrize(
    ("stored_section", "given_section", "changed"),
    [
        ({}, {"base_url": "https://attacker.example"}, "base_url"),
        ({"base_url": "https://api.mailgun.net"}, {}, "base_url"),
        ({}, {"region": "eu"}, "region"),
        ({"domain": "mg.example"}, {"domain": "other.example"}, "domain"),
        ({}, {"region": "eu", "base_url": "https://attacker.example"}, "region and base_url"),
    ],
)
def test_the_mask_refuses_when_a_destination_changes(
    stored_section: dict[str, Any], given_section: dict[str, Any], changed: str
) -> None:
    stored = {"id": "mg", "mailgun": {"api_key": secrets.token_hex(16), **stored_section}}
    with pytest.raises(MaskedSecretError) as refused:
        restore_masked(mailgun(**given_section), stored)
    assert refused.value.path == ("mailgun", "api_key")
    assert str(refused.value) == (
        f'"{SECRET_MASK}" keeps the stored secret only while it is sent to the same place; {changed} changed: '
        "give the secret again"
    )


def test_defaults_and_normal_forms_count_as_unchanged() -> None:
    key = secrets.token_hex(16)
    stored = {"id": "up", "smtp": {"host": "smtp.example", "username": "u", "password": key}}
    # Given explicitly with the default value, the port as a string, a URL left out that was stored as the
    # default, a host without its slash: all the same.
    given = smtp(username="u", password=SECRET_MASK, port="587", tls="starttls", tls_verify=True, ca_file=None)
    assert restore_masked(given, stored)["smtp"]["password"] == key
    mandrill_stored = {"id": "md", "mandrill": {"api_key": key, "base_url": "https://mandrillapp.com/api/1.0"}}
    mandrill_given = {"id": "md", "mandrill": {"api_key": SECRET_MASK, "subaccount": "b", "default_tags": ["t"]}}
    assert restore_masked(mandrill_given, mandrill_stored)["mandrill"]["api_key"] == key
    mailgun_stored = {"id": "mg", "mailgun": {"api_key": key, "base_url": "https://api.mailgun.net"}}
    assert restore_masked(mailgun(base_url="https://api.mailgun.net/"), mailgun_stored)["mailgun"]["api_key"] == key


@pytest.mark.parametrize(
    "change",
    [
        {"host": "attacker.example"},
        {"port": 2525},
        {"username": "someone-else"},
        {"tls": "none"},
        {"tls_verify": False},
        {"ca_file": "/tmp/attacker-ca.pem"},
    ],
)
def test_every_smtp_destination_field_is_guarded(change: dict[str, Any]) -> None:
    stored = {"id": "up", "smtp": {"host": "smtp.example", "username": "u", "password": secrets.token_hex(16)}}
    given = smtp(**{"username": "u", "password": SECRET_MASK, **change})
    with pytest.raises(MaskedSecretError) as refused:
        restore_masked(given, stored)
    assert refused.value.path == ("smtp", "password")
    assert f"{next(iter(change))} changed" in str(refused.value)


def test_smtp_harmless_fields_keep_the_password() -> None:
    key = secrets.token_hex(16)
    stored = {"id": "up", "smtp": {"host": "smtp.example", "username": "u", "password": key}}
    given = smtp(username="u", password=SECRET_MASK, timeout_seconds=5, max_connections=9, helo_name="me.example")
    assert restore_masked(given, stored)["smtp"]["password"] == key


def test_gmail_base_url_is_guarded() -> None:
    stored = {"id": "gm", "gmail": {"service_account_json": '{"type": "service_account"}'}}
    given = {"id": "gm", "gmail": {"service_account_json": SECRET_MASK, "base_url": "https://attacker.example"}}
    with pytest.raises(MaskedSecretError, match="base_url changed"):
        restore_masked(given, stored)
    harmless = {"id": "gm", "gmail": {"service_account_json": SECRET_MASK, "default_sender": "a@gm.example"}}
    assert restore_masked(harmless, stored)["gmail"]["service_account_json"] == '{"type": "service_account"}'


def test_the_mask_keeps_nothing_from_another_provider_or_a_new_workspace() -> None:
    stored = {"id": "mg", "mailgun": {"api_key": secrets.token_hex(16)}}
    with pytest.raises(MaskedSecretError, match=r"the provider changed \(mailgun before, mandrill now\)") as moved:
        restore_masked({"id": "mg", "mandrill": {"api_key": SECRET_MASK}}, stored)
    assert moved.value.path == ("mandrill", "api_key")
    with pytest.raises(MaskedSecretError, match="there is none here") as new:
        restore_masked(mailgun(), None)
    assert new.value.reason is None


def test_a_stored_env_reference_is_kept_by_the_mask_under_the_same_rule() -> None:
    stored = {"id": "mg", "mailgun": {"api_key": "env:RELAY_MG_KEY"}}
    assert restore_masked(mailgun(), stored)["mailgun"]["api_key"] == "env:RELAY_MG_KEY"
    with pytest.raises(MaskedSecretError, match="base_url changed"):
        restore_masked(mailgun(base_url="https://attacker.example"), stored)


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"mailgun": {"api_key": "env:RELAY_DATABASE_URL"}}, "mailgun.api_key"),
        ({"mandrill": {"api_key": "env:PATH"}}, "mandrill.api_key"),
        ({"smtp": {"host": "h", "username": "u", "password": "env:RELAY_ADMIN_KEY"}}, "smtp.password"),
        ({"gmail": {"service_account_json": "env:HOME"}}, "gmail.service_account_json"),
        ({"gmail": {"service_account_env": "HOME"}}, "gmail.service_account_env"),
        ({"gmail": {"service_account_env": "RELAY_SECRET_"}}, "gmail.service_account_env"),  # a prefix, no name
        ({"mailgun": {"api_key": "env:relay_secret_x"}}, "mailgun.api_key"),  # the prefix is case-sensitive
    ],
)
def test_api_env_references_must_name_relay_secret_variables(document: dict[str, Any], path: str) -> None:
    [problem] = check_api_env_references({"id": "w", **document})
    assert problem.path == path
    assert f"env: may only name variables starting with {API_ENV_PREFIX}" in problem.message
    assert "other variables are readable only from the config file" in problem.message


def test_allowed_references_and_literals_pass() -> None:
    literal = secrets.token_hex(16)
    for document in (
        {"mailgun": {"api_key": "env:RELAY_SECRET_MG"}},
        {"mailgun": {"api_key": literal}},
        {"mailgun": {"api_key": SECRET_MASK}},
        {"gmail": {"service_account_env": "RELAY_SECRET_GMAIL_KEY"}},
        {"sandbox": {"outbox_dir": "env:PATH"}},  # not a secret field: just text
    ):
        assert check_api_env_references({"id": "w", **document}) == []


def test_a_stored_reference_is_kept_while_its_destination_is() -> None:
    stored = {"id": "mg", "domains": ["mg.example"], "mailgun": {"api_key": "env:RELAY_MG_KEY", "region": "eu"}}
    same = {"id": "mg", "display_name": "x", "mailgun": {"api_key": "env:RELAY_MG_KEY", "region": "eu"}}
    assert check_api_env_references(same, stored) == []
    redirected = {
        "id": "mg",
        "mailgun": {"api_key": "env:RELAY_MG_KEY", "region": "eu", "base_url": "https://a.example"},
    }
    [problem] = check_api_env_references(redirected, stored)
    assert problem.path == "mailgun.api_key" and "base_url changed" in problem.message
    other = {"id": "mg", "mailgun": {"api_key": "env:RELAY_OTHER_KEY", "region": "eu"}}
    assert [p.path for p in check_api_env_references(other, stored)] == ["mailgun.api_key"]
    gmail_stored = {"id": "gm", "gmail": {"service_account_env": "RELAY_GMAIL_KEY"}}
    assert (
        check_api_env_references({"id": "gm", "gmail": {"service_account_env": "RELAY_GMAIL_KEY"}}, gmail_stored) == []
    )
    moved = {"id": "gm", "gmail": {"service_account_env": "RELAY_GMAIL_KEY", "base_url": "https://a.example"}}
    assert [p.path for p in check_api_env_references(moved, gmail_stored)] == ["gmail.service_account_env"]
