"""Syntax of sender domains and domain patterns (`invite.com`, `*.mednet.org`). No I/O."""

from __future__ import annotations

import re

__all__ = ["normalize_domain", "normalize_pattern"]

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_domain(value: str) -> str:
    """Lower-case a domain and check its labels; raise ValueError naming the problem."""
    domain = value.strip().lower().rstrip(".")
    if not domain or len(domain) > 253:
        raise ValueError(f'"{value}" is not a domain name')
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f'"{value}" is not a domain name') from exc
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f'"{value}" is not a domain name')
    return ascii_domain


def normalize_pattern(value: str) -> str:
    """A domain or a `*.` wildcard over a domain; the wildcard matches subdomains only."""
    if value.startswith("*."):
        return "*." + normalize_domain(value[2:])
    if "*" in value:
        raise ValueError(f'"{value}": a wildcard is only allowed as the first label ("*.example.org")')
    return normalize_domain(value)
