"""Present a message under another sender: addresses in `From:`/`Sender:` replaced in place, `Reply-To:`
added so replies still reach the real sender.

Byte-exact like the rest of `mime/`: inside a rewritten field only the address itself changes (display
names, comments, folding and RFC 2047 encoded words keep every byte), other fields and the body are untouched.
The field value is scanned with RFC 5322's quoting rules, so a `<`, `,` or `@` inside a quoted display name
or a comment is never taken for an address.
"""

from __future__ import annotations

from collections.abc import Iterator

from .headers import fields, split_header_block

__all__ = ["present_sender"]

_WSP = b" \t\r\n"
_QUOTE, _BACKSLASH, _OPEN, _CLOSE = ord('"'), ord("\\"), ord("("), ord(")")


def present_sender(raw: bytes, original: str, replacement: str) -> bytes:
    """`raw` with every `From:` and `Sender:` address equal to `original` (case-insensitive) replaced by
    `replacement`, plus `Reply-To:` holding the original `From:` value right after it when the message has
    no `Reply-To:`. When no `From:` address matches, `raw` itself comes back."""
    if any(c in replacement for c in "\r\n"):
        raise ValueError("the replacement address must not contain a line break")
    wanted = original.strip().lower()
    if not wanted:
        return raw
    header_block, body = split_header_block(raw)
    chunks = list(fields(header_block))
    new = replacement.encode("utf-8")
    rewritten = [_rewrite(chunk, wanted, new) if name in (b"from", b"sender") else chunk for name, chunk in chunks]
    if not any(name == b"from" and old != chunk for (name, old), chunk in zip(chunks, rewritten, strict=True)):
        return raw
    reply_to_missing = all(name != b"reply-to" for name, _ in chunks)
    newline = b"\r\n" if b"\r\n" in header_block else b"\n"
    out: list[bytes] = []
    for (name, old), chunk in zip(chunks, rewritten, strict=True):
        out.append(chunk)
        if reply_to_missing and name == b"from" and old != chunk:
            if not chunk.endswith(b"\n"):  # the last line of a message without a final line break
                out[-1] = chunk + newline
            out.append(b"Reply-To:" + old.split(b":", 1)[1])  # the value keeps its folding and line ending
            reply_to_missing = False
    return b"".join(out) + body


def _rewrite(field: bytes, wanted: str, replacement: bytes) -> bytes:
    colon = field.index(b":") + 1
    value = field[colon:]
    out, last = [field[:colon]], 0
    for start, end in _address_spans(value):
        if value[start:end].decode("utf-8", "surrogateescape").lower() == wanted:
            out += [value[last:start], replacement]
            last = end
    out.append(value[last:])
    return b"".join(out)


def _address_spans(value: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each addr-spec in an address-list value: the inside of `<…>`, or a bare mailbox.

    Mailboxes are separated by `,`; `:` and `;` delimit a group (`team: a@x, b@y;`). Quoted strings and
    (nested) comments are skipped whole.
    """
    i, element, angled = 0, 0, False
    while i < len(value):
        c = value[i]
        if c == _QUOTE:
            i = _skip_quoted(value, i)
        elif c == _OPEN:
            i = _skip_comment(value, i)
        elif c == ord("<"):
            end = _angle_end(value, i + 1)
            yield _strip(value, i + 1, end)
            angled, i = True, end + 1
        elif c in b",:;":
            if not angled and (bare := _bare(value, element, i)) is not None:
                yield bare
            element, angled, i = i + 1, False, i + 1
        else:
            i += 1
    if not angled and (bare := _bare(value, element, len(value))) is not None:
        yield bare


def _skip_quoted(value: bytes, i: int) -> int:
    """Index just past the quoted string opening at `i` (backslash escapes honoured)."""
    j = i + 1
    while j < len(value):
        if value[j] == _BACKSLASH:
            j += 2
        elif value[j] == _QUOTE:
            return j + 1
        else:
            j += 1
    return len(value)


def _skip_comment(value: bytes, i: int) -> int:
    """Index just past the comment opening at `i`; comments nest."""
    depth, j = 0, i
    while j < len(value):
        c = value[j]
        if c == _BACKSLASH:
            j += 2
            continue
        depth += (c == _OPEN) - (c == _CLOSE)
        j += 1
        if depth == 0:
            return j
    return len(value)


def _angle_end(value: bytes, j: int) -> int:
    while j < len(value) and value[j] != ord(">"):
        j = _skip_quoted(value, j) if value[j] == _QUOTE else j + 1
    return min(j, len(value))


def _strip(value: bytes, start: int, end: int) -> tuple[int, int]:
    while start < end and value[start] in _WSP:
        start += 1
    while end > start and value[end - 1] in _WSP:
        end -= 1
    return start, end


def _bare(value: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The one word of a mailbox without angle brackets (`a@x (A)`), or None when there is not exactly one."""
    words: list[tuple[int, int]] = []
    j = start
    while j < end:
        if value[j] in _WSP:
            j += 1
        elif value[j] == _OPEN:
            j = _skip_comment(value, j)
        else:
            begin = j
            while j < end and value[j] not in _WSP and value[j] != _OPEN:
                j = _skip_quoted(value, j) if value[j] == _QUOTE else j + 1
            words.append((begin, min(j, end)))
    return words[0] if len(words) == 1 else None
