from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.mime import (
    PRIVATE_HEADERS,
    PRIVATE_PREFIXES,
    extract_metadata,
    header_values,
    remove_fields,
    split_header_block,
)

MESSAGE = (
    b"From: Brian <brian@invite.com>\r\n"
    b"To: a@example.org\r\n"
    b"Bcc: hidden@example.org,\r\n"
    b"\tother-hidden@example.org\r\n"
    b'X-MC-Tags: ["invite", "conf"]\r\n'
    b'X-MC-Metadata: {"invitation_id": "42",\r\n'
    b' "email_type": "invite"}\r\n'
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"\r\n"
    b"Bcc: this line is body text, not a header\r\n"
    b"\xc3\xa9 8-bit body\r\n"
)


def test_private_headers_are_cut_and_every_other_byte_kept() -> None:
    cleaned = remove_fields(MESSAGE, PRIVATE_HEADERS)
    assert cleaned == (
        b"From: Brian <brian@invite.com>\r\n"
        b"To: a@example.org\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"\r\n"
        b"Bcc: this line is body text, not a header\r\n"
        b"\xc3\xa9 8-bit body\r\n"
    )


def test_header_names_match_case_insensitively_and_lf_messages_work() -> None:
    raw = b"bcc: x@y.z\nSubject: s\n\nbody\n"
    assert remove_fields(raw, ["BCC"]) == b"Subject: s\n\nbody\n"
    assert split_header_block(raw) == (b"bcc: x@y.z\nSubject: s\n\n", b"body\n")


def test_every_x_mc_field_is_private() -> None:
    raw = b"X-MC-BccAddress: spy@example.org\r\nx-mc-subaccount: other\r\nX-MCX: kept\r\nSubject: s\r\n\r\nb\r\n"
    assert remove_fields(raw, PRIVATE_HEADERS, PRIVATE_PREFIXES) == b"X-MCX: kept\r\nSubject: s\r\n\r\nb\r\n"


def test_resent_bcc_is_private_too() -> None:
    raw = b"Resent-Bcc: hidden@example.org\r\nSubject: s\r\n\r\nbody\r\n"
    assert remove_fields(raw, PRIVATE_HEADERS) == b"Subject: s\r\n\r\nbody\r\n"


def test_a_message_without_a_body() -> None:
    assert remove_fields(b"Bcc: a@b.c\r\nSubject: s\r\n", ["Bcc"]) == b"Subject: s\r\n"


def test_metadata_from_mandrill_headers() -> None:
    assert extract_metadata(MESSAGE) == {
        "tags": ["invite", "conf"],
        "metadata": {"invitation_id": "42", "email_type": "invite"},
    }
    assert extract_metadata(b"X-MC-Tags: a, b ,a\r\n\r\n") == {"tags": ["a", "b"]}
    assert extract_metadata(b"X-MC-Metadata: not json\r\n\r\n") == {"invalid_headers": ["X-MC-Metadata"]}
    assert extract_metadata(b'X-MC-Metadata: {"a": NaN}\r\n\r\n') == {"invalid_headers": ["X-MC-Metadata"]}
    deep = b"X-MC-Metadata: " + b"[" * 5000 + b"\r\nX-MC-Tags: " + b"[" * 5000 + b"\r\n\r\n"
    assert extract_metadata(deep) == {"invalid_headers": ["X-MC-Metadata"], "tags": ["[" * 5000]}
    assert header_values(MESSAGE, "bcc") == ["hidden@example.org,\tother-hidden@example.org"]


field_name = st.sampled_from(["From", "To", "Subject", "Bcc", "X-MC-Tags", "X-Other", "Received"])
field_value = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
folds = st.lists(field_value, max_size=2)


@settings(derandomize=True, max_examples=300)
@given(
    fields=st.lists(st.tuples(field_name, field_value, folds), max_size=10),
    body=st.binary(max_size=200),
    drop=st.sets(field_name, max_size=3),
)
def test_removal_equals_building_the_message_without_those_fields(
    fields: list[tuple[str, str, list[str]]], body: bytes, drop: set[str]
) -> None:
    def render(items: list[tuple[str, str, list[str]]]) -> bytes:
        out = b""
        for name, value, continuation in items:
            out += f"{name}: {value}\r\n".encode() + b"".join(f"\t{c}\r\n".encode() for c in continuation)
        return out + b"\r\n" + body

    kept = [f for f in fields if f[0] not in drop]
    assert remove_fields(render(fields), drop) == render(kept)
