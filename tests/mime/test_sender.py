from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.mime import header_values, present_sender, split_header_block

ORIGINAL = "brian@invite.com"
NEW = "brian@joinmednet.org"


def present(raw: bytes) -> bytes:
    return present_sender(raw, ORIGINAL, NEW)


def test_only_the_address_changes_and_reply_to_keeps_the_real_sender() -> None:
    raw = (
        b"Received: from app\r\n"
        b'From: "Smith, Brian <boss>" <Brian@Invite.COM>\r\n'
        b"To: alice@example.org\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"\r\n"
        b"From: brian@invite.com stays in the body\r\n"
    )
    assert present(raw) == (
        b"Received: from app\r\n"
        b'From: "Smith, Brian <boss>" <brian@joinmednet.org>\r\n'
        b'Reply-To: "Smith, Brian <boss>" <Brian@Invite.COM>\r\n'
        b"To: alice@example.org\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"\r\n"
        b"From: brian@invite.com stays in the body\r\n"
    )


def test_folded_from_with_an_encoded_word_and_a_sender_field() -> None:
    raw = b"From: =?utf-8?q?Bri=C3=A1n_=28Invite=29?=\r\n\t<brian@invite.com>\r\nSender: brian@invite.com\r\n\r\nbody"
    assert present(raw) == (
        b"From: =?utf-8?q?Bri=C3=A1n_=28Invite=29?=\r\n"
        b"\t<brian@joinmednet.org>\r\n"
        b"Reply-To: =?utf-8?q?Bri=C3=A1n_=28Invite=29?=\r\n"
        b"\t<brian@invite.com>\r\n"
        b"Sender: brian@joinmednet.org\r\n"
        b"\r\n"
        b"body"
    )


def test_an_existing_reply_to_is_kept_and_none_is_added() -> None:
    raw = b"Reply-To: help@invite.com\nFrom: brian@invite.com (Brian)\n\nbody\n"
    assert present(raw) == b"Reply-To: help@invite.com\nFrom: brian@joinmednet.org (Brian)\n\nbody\n"


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        # Only the matching address of several, in a group too.
        (b"From: a@x.org, brian@invite.com", b"From: a@x.org, brian@joinmednet.org"),
        (b"From: team: a@x.org, <brian@invite.com>;", b"From: team: a@x.org, <brian@joinmednet.org>;"),
        # Address-like text in a quoted name or a comment is not an address.
        (b'From: "brian@invite.com" <brian@invite.com>', b'From: "brian@invite.com" <brian@joinmednet.org>'),
        (b"From: (brian@invite.com) brian@invite.com", b"From: (brian@invite.com) brian@joinmednet.org"),
        (b'From: "a \\" <b@c>" <brian@invite.com>', b'From: "a \\" <b@c>" <brian@joinmednet.org>'),
        (b"From:<brian@invite.com>", b"From:<brian@joinmednet.org>"),
        (b"FROM: < brian@invite.com >", b"FROM: < brian@joinmednet.org >"),
    ],
)
def test_address_forms(field: bytes, expected: bytes) -> None:
    raw = field + b"\r\nSubject: s\r\n\r\nbody"
    value = field.split(b":", 1)[1]
    assert present(raw) == expected + b"\r\nReply-To:" + value + b"\r\nSubject: s\r\n\r\nbody"


@pytest.mark.parametrize(
    "raw",
    [
        b"From: other@invite.com\r\nSender: brian@invite.com\r\n\r\nbody",  # Sender alone changes nothing
        b'From: "brian@invite.com" <other@invite.com>\r\n\r\n',
        b"From: Brian <brian@invite.com.evil>\r\n\r\n",
        b"From: xbrian@invite.com\n\n",
        b"Subject: no from\r\n\r\nFrom: brian@invite.com\r\n",
        b"",
    ],
)
def test_no_matching_from_returns_the_message_unchanged(raw: bytes) -> None:
    assert present(raw) is raw


def test_a_header_only_message_without_a_final_line_break() -> None:
    assert present(b"From: brian@invite.com") == b"From: brian@joinmednet.org\nReply-To: brian@invite.com"


def test_a_replacement_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        present_sender(b"From: brian@invite.com\r\n\r\n", ORIGINAL, "x@y.org\r\nBcc: victim@example.org")


# --- properties ----------------------------------------------------------------------------------------------------

word = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.:;<>@()éß", max_size=20)
display = word.map(lambda w: '"' + w.replace('"', "") + '"')
address = st.sampled_from(["brian@invite.com", "Brian@INVITE.com", "other@invite.com", "brian@invite.co"])
newline = st.sampled_from([b"\r\n", b"\n"])
body = st.binary(max_size=200)


@st.composite
def messages(draw: st.DrawFn) -> tuple[bytes, bytes, bytes]:
    """(raw message, the message expected from `present`, its body)."""
    nl = draw(newline)
    name = draw(st.one_of(st.just(""), display, st.just("=?utf-8?q?Bri=C3=A1n?=")))
    fold = nl.decode() + "\t" if name and draw(st.booleans()) else " "
    addr = draw(address)

    def from_value(a: str) -> bytes:
        return (f" {name}{fold}<{a}>" if name else f" {a}").encode()

    others = [b"To: alice@example.org" + nl, b"Subject: hello" + nl]
    at = draw(st.integers(0, len(others)))
    content = draw(body)
    raw = b"".join([*others[:at], b"From:" + from_value(addr) + nl, *others[at:]]) + nl + content
    if addr.lower() != ORIGINAL:
        return raw, raw, content
    presented = b"From:" + from_value(NEW) + nl + b"Reply-To:" + from_value(addr) + nl
    return raw, b"".join([*others[:at], presented, *others[at:]]) + nl + content, content


@settings(derandomize=True, max_examples=300)
@given(messages())
def test_only_the_from_address_changes_and_the_body_is_byte_identical(message: tuple[bytes, bytes, bytes]) -> None:
    raw, expected, content = message
    out = present(raw)
    assert out == expected
    assert split_header_block(out)[1] == content
    if out != raw:
        assert header_values(out, "Reply-To") == header_values(raw, "From")


@settings(derandomize=True, max_examples=300)
@given(st.binary(max_size=400), st.sampled_from([b"\r\n", b"\n"]))
def test_any_message_without_a_matching_from_comes_back_identical(raw: bytes, nl: bytes) -> None:
    message = raw.replace(b"@", b"")  # no "@", so nothing can equal the address
    assert present(message) is message
    with_header = b"From: Brian <other@invite.com>" + nl + message
    assert present(with_header) is with_header
