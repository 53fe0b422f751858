"""Raw SMTP on a socket for the fuzz tests: exact bytes out, every reply checked against RFC 5321's grammar.

`Wire` sends whatever it is given (bare CR, NUL, 8-bit, half a TLS handshake) and reads replies strictly: a line
that is not `Reply-code [("-" / SP) textstring] CRLF` (RFC 5321 §4.2), longer than 512 octets (§4.5.3.1.5), or
whose enhanced status code (RFC 3463) is of another class than its reply code fails the test at once.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from dataclasses import dataclass

__all__ = [
    "REPLY_LINE_LIMIT",
    "MalformedReplyError",
    "Reply",
    "Wire",
    "crlf_lines",
    "data_end",
    "dot_stuff",
    "dot_unstuff",
]

REPLY_LINE_LIMIT = 512  # RFC 5321 §4.5.3.1.5, with the CRLF
_LINE = re.compile(rb"([2-5][0-5][0-9])(?:([ -])([\t\x20-\x7e]*))?\r\n")
_ENHANCED = re.compile(rb"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")


class MalformedReplyError(AssertionError):
    pass


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[bytes, ...]  # as received, with CRLF

    @property
    def text(self) -> bytes:
        return b"".join(line[4:] for line in self.lines)

    def __str__(self) -> str:
        return repr(b"".join(self.lines))


def check_line(line: bytes, code: bytes | None) -> tuple[bytes, bool]:
    """(code, more lines follow) of one reply line; raises MalformedReplyError."""
    match = _LINE.fullmatch(line)
    if match is None or len(line) > REPLY_LINE_LIMIT:
        raise MalformedReplyError(f"not an RFC 5321 reply line: {line[:600]!r}")
    if code is not None and match.group(1) != code:
        raise MalformedReplyError(f"a multiline reply changed its code: {code!r} then {line!r}")
    enhanced = _ENHANCED.match(match.group(3) or b"")
    if enhanced is not None and enhanced.group(1)[:1] != match.group(1)[:1]:
        raise MalformedReplyError(f"enhanced status code of another class than the reply code: {line!r}")
    return match.group(1), match.group(2) == b"-"


class Wire:
    """One client connection. Blocking; every read has a deadline so a server that stops answering fails the test."""

    def __init__(self, address: tuple[str, int], timeout: float = 20.0) -> None:
        self.address = address
        self.sock: socket.socket = socket.create_connection(address, timeout=timeout)
        self._file = self.sock.makefile("rb")
        self.sent = 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def reply(self) -> Reply:
        lines: list[bytes] = []
        code: bytes | None = None
        while True:
            line = self._file.readline(REPLY_LINE_LIMIT + 1)
            if not line:
                raise MalformedReplyError(f"connection closed in the middle of a reply, after {lines!r}")
            code, more = check_line(line, code)
            lines.append(line)
            if not more:
                return Reply(int(code), tuple(lines))

    def starttls(self, context: ssl.SSLContext, hostname: str) -> None:
        self._file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=hostname)
        self._file = self.sock.makefile("rb")

    def closed_by_server(self, timeout: float = 20.0, *, strict: bool = True) -> list[Reply]:
        """Wait for the server to close the connection; the replies it still sent first (checked when `strict`)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        rest = b""
        while time.monotonic() < deadline:
            try:
                chunk = self._file.read1(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            if not chunk:
                break
            rest += chunk
        else:
            raise AssertionError(f"the server did not close the connection within {timeout:g} s")
        if not strict:
            return []
        replies, code, lines = [], None, list[bytes]()
        for line in rest.splitlines(keepends=True):
            code, more = check_line(line, code)
            lines.append(line)
            if not more:
                replies.append(Reply(int(code), tuple(lines)))
                code, lines = None, []
        if lines:
            raise MalformedReplyError(f"connection closed in the middle of a reply: {lines!r}")
        return replies

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self.sock.close()


def crlf_lines(data: bytes) -> list[bytes]:
    """Lines as RFC 5321 §2.3.8 defines them: ended by CRLF only (a bare CR or LF is part of the line)."""
    lines, start = [], 0
    while (end := data.find(b"\r\n", start)) != -1:
        lines.append(data[start : end + 2])
        start = end + 2
    if start < len(data):
        lines.append(data[start:])
    return lines


def data_end(buffer: bytes) -> int | None:
    """Where the data of a DATA command ends: the offset of the `.CRLF` line that ends it (RFC 5321 §4.1.1.4), or
    None while it has not come. The data is buffer[:offset]; the terminator is the 3 bytes after."""
    start = 0
    while (end := buffer.find(b"\r\n", start)) != -1:
        if buffer[start : end + 2] == b".\r\n":
            return start
        start = end + 2
    return None


def dot_stuff(message: bytes) -> bytes:
    """The bytes a client sends after 354 for `message` (RFC 5321 §4.5.2), the terminator included. A message that
    does not end in CRLF gets one first, as smtplib does."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return b"".join(b"." + line if line.startswith(b".") else line for line in crlf_lines(message)) + b".\r\n"


def dot_unstuff(data: bytes) -> bytes:
    """The message a server must store for `data` (everything before the terminator line)."""
    return b"".join(line[1:] if line.startswith(b".") else line for line in crlf_lines(data))
