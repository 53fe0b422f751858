from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.mime import remove_fields, rewrite_headers

RAW = (
    b"From: app@joinmednet.org\r\n"
    b"List-Unsubscribe: <https://mandrillapp.com/unsub?u=1>\r\n"
    b"X-Campaign: a\r\n"
    b"X-Campaign: b,\r\n"
    b"\tfolded\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"\r\n"
    b"X-Campaign: body text stays\r\n"
)


def test_replace_collapses_every_field_of_that_name_into_one() -> None:
    assert rewrite_headers(RAW, [("X-Campaign", "spring")]) == RAW.replace(
        b"X-Campaign: a\r\nX-Campaign: b,\r\n\tfolded\r\n", b"X-Campaign: spring\r\n"
    )


def test_empty_value_removes_and_missing_field_is_added_before_the_body() -> None:
    out = rewrite_headers(RAW, [("list-unsubscribe", ""), ("X-Relay-Pool", "invite")])
    assert out == (
        b"From: app@joinmednet.org\r\n"
        b"X-Campaign: a\r\n"
        b"X-Campaign: b,\r\n"
        b"\tfolded\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"X-Relay-Pool: invite\r\n"
        b"\r\n"
        b"X-Campaign: body text stays\r\n"
    )


def test_rules_apply_in_order_and_keep_lf_messages_lf() -> None:
    raw = b"Subject: s\nX-A: 1\n\nbody\n"
    assert rewrite_headers(raw, [("X-A", "2"), ("X-A", "")]) == b"Subject: s\n\nbody\n"
    assert rewrite_headers(raw, [("X-B", "v")]) == b"Subject: s\nX-A: 1\nX-B: v\n\nbody\n"
    assert rewrite_headers(raw, []) is raw


name = st.sampled_from(["X-A", "X-B", "Subject", "List-Unsubscribe"])


@settings(derandomize=True, max_examples=200)
@given(
    rules=st.lists(st.tuples(name, st.sampled_from(["", "v1", "v 2"])), max_size=4),
    other=st.binary(max_size=100).filter(lambda b: b"\n" not in b and b"\r" not in b),
)
def test_fields_no_rule_names_are_untouched(rules: list[tuple[str, str]], other: bytes) -> None:
    raw = b"From: a@b.org\r\nX-Other: " + other + b"\r\nX-A: old\r\n\r\nbody \xff\r\n"
    out = rewrite_headers(raw, rules)
    named = {n for n, _ in rules}
    assert remove_fields(out, named) == remove_fields(raw, named)
