"""Header rewrite rules (the previous relay's `header_rewrite`): set, replace or remove header fields.

Byte-exact like the rest of `mime/`: fields a rule does not name keep every byte, the body is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

from .headers import fields, split_header_block

__all__ = ["rewrite_headers"]


def rewrite_headers(raw: bytes, rules: Sequence[tuple[str, str]]) -> bytes:
    """Apply `(name, value)` rules in order.

    An empty value removes every field called `name`. Otherwise the first such field is replaced by
    `name: value` and any later ones are removed; if there is none, the field is added at the end of the
    header block. Names match case-insensitively.
    """
    if not rules:
        return raw
    header_block, body = split_header_block(raw)
    newline = b"\r\n" if b"\r\n" in header_block or not header_block else b"\n"
    chunks = list(fields(header_block))
    # The blank line that ends the header block is the last chunk with an empty name; keep it last.
    terminator = [c for c in chunks if c[1].strip(b"\r\n") == b""]
    chunks = [c for c in chunks if c[1].strip(b"\r\n") != b""]
    for name, value in rules:
        key = name.lower().encode("ascii")
        line = f"{name}: {value}".encode() + newline
        out: list[tuple[bytes, bytes]] = []
        placed = not value
        for field_name, chunk in chunks:
            if field_name != key:
                out.append((field_name, chunk))
            elif not placed:
                out.append((key, line))
                placed = True
        if not placed:
            out.append((key, line))
        chunks = out
    if not terminator and body:
        terminator = [(b"", newline)]
    return b"".join(chunk for _, chunk in [*chunks, *terminator]) + body
