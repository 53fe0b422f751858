from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.routing import DomainTable, pattern_matches

label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(label, min_size=2, max_size=5).map(".".join)


@settings(derandomize=True, max_examples=300)
@given(base=domains, prefix=st.lists(label, min_size=0, max_size=3))
def test_wildcard_matches_exactly_the_subdomains(base: str, prefix: list[str]) -> None:
    domain = ".".join([*prefix, base])
    assert pattern_matches("*." + base, domain) == bool(prefix)
    assert pattern_matches(base, domain) == (not prefix)


@settings(derandomize=True, max_examples=300)
@given(base=domains, glued=label)
def test_wildcard_never_matches_across_a_label_boundary(base: str, glued: str) -> None:
    # "*.example.org" must not match "badexample.org": the suffix must start at a dot.
    assert not pattern_matches("*." + base, glued + base)


def test_exact_entry_beats_wildcard_and_longest_wildcard_wins() -> None:
    table = DomainTable([("*.mednet.org", "wild"), ("invite.mednet.org", "exact"), ("*.eu.mednet.org", "eu")])
    assert table.lookup("invite.mednet.org") == "exact"
    assert table.lookup("x.mednet.org") == "wild"
    assert table.lookup("a.b.mednet.org") == "wild"
    assert table.lookup("x.eu.mednet.org") == "eu"
    assert table.lookup("eu.mednet.org") == "wild"
    assert table.lookup("mednet.org") is None
    assert table.lookup("othermednet.org") is None


@settings(derandomize=True, max_examples=200)
@given(
    patterns=st.lists(st.tuples(st.booleans(), domains), min_size=1, max_size=8),
    probe=domains,
    prefix=st.lists(label, max_size=2),
)
def test_table_agrees_with_pattern_matches(patterns: list[tuple[bool, str]], probe: str, prefix: list[str]) -> None:
    entries = [("*." + d if wild else d) for wild, d in patterns]
    table = DomainTable((p, p) for p in entries)
    domain = ".".join([*prefix, probe])
    found = table.lookup(domain)
    matching = [p for p in entries if pattern_matches(p, domain)]
    assert (found is None) == (not matching)
    if found is not None:
        assert found in matching
