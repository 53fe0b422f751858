"""Byte-exact work on the top-level header block of an RFC 5322 message. No parsing of the body.

Relay never re-serialises a message: these functions cut whole header fields out of the original
bytes and leave every other byte where it was, so signatures (DKIM) and MIME structure survive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["bare_cr_in_header", "fields", "header_values", "remove_fields", "split_header_block"]

_LINE = re.compile(rb"[^\n]*\n|[^\n]+$")


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """(header block including its terminating blank line, body). A message with no body has body b""."""
    crlf, lf = raw.find(b"\r\n\r\n"), raw.find(b"\n\n")
    if crlf == -1 and lf == -1:
        return raw, b""
    # Whichever blank line comes first ends the headers, for messages that mix CRLF and LF.
    end = crlf + 4 if crlf != -1 and (lf == -1 or crlf < lf) else lf + 2
    return raw[:end], raw[end:]


def bare_cr_in_header(raw: bytes) -> bool:
    """Whether the top-level header block holds a CR that is not part of a CRLF (RFC 5322 §2.2 allows none).

    These functions end a line at LF, but many readers also end one at a bare CR (Python's email package, an SMTP
    client repairing line endings before DATA): a field hidden behind one (`Subject: x<CR>Bcc: y`) would reach
    them as a field of its own that `remove_fields` never saw.
    """
    header_block, _ = split_header_block(raw)
    return header_block.count(b"\r") != header_block.count(b"\r\n")


def fields(header_block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(lower-cased field name, all raw bytes of the field with its folded lines)."""
    name, chunks = b"", list[bytes]()
    for line in _LINE.findall(header_block):
        if line[:1] in (b" ", b"\t") and chunks:
            chunks.append(line)
            continue
        if chunks:
            yield name, b"".join(chunks)
        name, chunks = line.split(b":", 1)[0].strip().lower() if b":" in line else b"", [line]
    if chunks:
        yield name, b"".join(chunks)


def remove_fields(raw: bytes, names: Iterable[str], prefixes: Iterable[str] = ()) -> bytes:
    """The message without the top-level header fields named in `names` or starting with one of `prefixes`
    (both case-insensitive)."""
    drop = {n.lower().encode("ascii") for n in names}
    starts = tuple(p.lower().encode("ascii") for p in prefixes)
    header_block, body = split_header_block(raw)
    kept = [
        chunk for name, chunk in fields(header_block) if name not in drop and not (starts and name.startswith(starts))
    ]
    return b"".join(kept) + body


def header_values(raw: bytes, name: str) -> list[str]:
    """Unfolded values of every top-level field called `name`, decoded as UTF-8 (bad bytes replaced)."""
    wanted = name.lower().encode("ascii")
    header_block, _ = split_header_block(raw)
    values = []
    for field_name, chunk in fields(header_block):
        if field_name == wanted:
            value = chunk.split(b":", 1)[1]
            unfolded = re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()
            values.append(unfolded.decode("utf-8", errors="replace"))
    return values
