"""The API held to its own OpenAPI document by schemathesis, against a real `relay serve` process: for
generated requests to every operation, no 5xx, and every response conforms to the declared status codes,
content types and schemas (errors included). Bounded to fit `make test`: a fixed seed and few examples each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.net import free_port, wait_for
from tests.support.pools import pool
from tests.support.relay import RelayProcess, config, sandbox_workspace

ADMIN = "admin-key-schema-5c1e"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp_path: Path = tmp_path_factory.mktemp("schemathesis")
    port = free_port()
    data = config(
        f"sqlite:///{tmp_path / 'relay.db'}",
        [
            sandbox_workspace("ws-a", ["joinmednet.org"], tmp_path / "a"),
            sandbox_workspace("ws-b", ["mednet.example"], tmp_path / "b"),
        ],
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-a", 2.0), ("ws-b", 1.0)])],
        http={"port": port, "api_keys": [{"name": "ops", "key": ADMIN, "role": "admin"}]},
    )
    relay = RelayProcess(data, tmp_path).start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _up(url), timeout=10, what="the HTTP API")
    yield url
    relay.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_the_api_keeps_its_contract(base_url: str) -> None:
    # Driven through Hypothesis directly: schemathesis' pytest plugin does not load under this pytest version.
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def conforms(case: schemathesis.Case) -> None:
            # Requests valid for the JSON schema may still break the config rules (a domain that is not one, a
            # workspace that does not exist): a 422 for those is right, so that one check is left out.
            case.call_and_validate(
                headers={"Authorization": f"Bearer {ADMIN}"}, excluded_checks=[positive_data_acceptance]
            )

        conforms()
