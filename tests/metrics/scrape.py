"""Reading `/metrics` in tests: the text parsed by prometheus-client's own parser, and one sample looked up."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from relay.runtime import Relay
from tests.support.api import api_client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(relay: Relay) -> Samples:
    """`GET /metrics` through the HTTP app, as Prometheus asks for it (no key)."""
    async with api_client(relay) as api:
        answer = await api.get("/metrics")
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


def value(found: Samples, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly `labels`, or None when there is none."""
    return found.get((name, tuple(sorted(labels.items()))))


def total(found: Samples, name: str, **labels: str) -> float:
    """The sum of every `name` sample whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and wanted <= set(ls))
