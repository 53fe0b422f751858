"""Messages and SMTP submission shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import email
import email.policy
import random
import smtplib
from email.message import EmailMessage


def multipart_with_attachment(
    sender: str, *, bcc: str | None = None, message_id: str = "<report-1@joinmednet.org>", seed: int = 7
) -> tuple[bytes, bytes]:
    """(a text + HTML + 1 MB attachment message as submitted, the attachment's bytes)."""
    attachment = random.Random(seed).randbytes(1024 * 1024)
    msg = EmailMessage()
    msg["From"] = f"Med Net <{sender}>"
    msg["To"] = "Ann <ann@example.org>"
    msg["Cc"] = "cat@example.org"
    if bcc:
        msg["Bcc"] = bcc
    msg["Subject"] = "Your report, with Grüße"
    msg["Message-ID"] = message_id
    msg.set_content("Plain text body: Grüße\n")
    msg.add_alternative("<p>HTML body: <b>Grüße</b></p>\n", subtype="html")
    msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="report.bin")
    return msg.as_bytes(policy=email.policy.SMTP), attachment


async def submit(address: tuple[str, int], sender: str, recipients: list[str], raw: bytes) -> str:
    """One SMTP transaction with smtplib; the queue id from `250 2.0.0 Ok: queued as <id>`."""

    def send() -> str:
        with smtplib.SMTP(*address, timeout=30) as client:
            client.ehlo()
            client.mail(sender)
            for recipient in recipients:
                code, reply = client.rcpt(recipient)
                assert code == 250, reply
            code, reply = client.data(raw)
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]

    return await asyncio.to_thread(send)


def leaf_parts(raw: bytes) -> list[tuple[str, str | None, bytes]]:
    """(content type, filename, decoded payload) of every leaf MIME part."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    leaves = []
    for part in parsed.walk():
        if not part.is_multipart():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            leaves.append((part.get_content_type(), part.get_filename(), payload))
    return leaves
