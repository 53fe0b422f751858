"""Domain pattern matching: exact domains and `*.` wildcards on a label boundary. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = ["DomainTable", "pattern_matches"]

T = TypeVar("T")


def pattern_matches(pattern: str, domain: str) -> bool:
    """`*.example.org` matches `a.example.org` and `a.b.example.org`, never `example.org` or `badexample.org`."""
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])  # pattern[1:] is ".example.org": the dot is the label boundary
    return domain == pattern


class DomainTable(Generic[T]):
    """Maps normalized domains to values: an exact entry wins, then the longest wildcard suffix.

    Lookup walks the domain's parent suffixes, so it costs O(labels) dictionary probes whatever the
    table's size.
    """

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}
        for pattern, value in entries:
            if pattern.startswith("*."):
                self._wildcard.setdefault(pattern[2:], value)
            else:
                self._exact.setdefault(pattern, value)

    def lookup(self, domain: str) -> T | None:
        found = self._exact.get(domain)
        if found is not None:
            return found
        rest = domain
        while "." in rest:
            rest = rest.split(".", 1)[1]
            found = self._wildcard.get(rest)
            if found is not None:
                return found
        return None
