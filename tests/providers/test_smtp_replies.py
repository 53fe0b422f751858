"""`classify_reply` against every SMTP row of the outcome table in shared/notes/provider-apis.md §5.

Each case is a reply as the provider really sends it (§4 quotes them); the table row it comes from is
named in the id, so a failure points at the row that broke.
"""

from __future__ import annotations

import pytest

from relay.providers import classify_reply, enhanced_code

# (table row, code, text, outcome)
SMTP_TABLE = [
    # SMTP 250 after DATA -> sent
    ("250 after DATA", 250, "2.0.0 Ok: queued as 4BX3kT0qKz", "sent"),
    ("250 after DATA (no enhanced code)", 250, "Ok", "sent"),
    # SMTP 454 Throttling failure (SES) -> quota
    ("SES 454 sending rate", 454, "Throttling failure: Maximum sending rate exceeded.", "quota"),
    ("SES 454 daily quota", 454, "Throttling failure: Daily message quota exceeded.", "quota"),
    # 550 5.4.5 / 550 5.7.1 "Daily ... limit" (Gmail, rolling 24 h) -> quota
    ("Gmail 550 5.4.5 daily user quota", 550, "5.4.5 Daily user sending quota exceeded. x - gsmtp", "quota"),
    ("smtp-relay 550 5.4.5 user limit", 550, "5.4.5 Daily SMTP relay limit exceeded for user. x - gsmtp", "quota"),
    ("smtp-relay 550 5.7.1 customer limit", 550, "5.7.1 Daily SMTP relay limit exceeded for customer. x", "quota"),
    # 450 4.2.1 peak relay -> quota
    ("smtp-relay 450 4.2.1 peak", 450, "4.2.1 Peak SMTP relay limit exceeded for customer. x - gsmtp", "quota"),
    # 421 4.7.0 unusual rate -> quota
    (
        "Gmail 421 4.7.0 unusual rate",
        421,
        "4.7.0 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your "
        "IP address. To protect our users from spam, mail sent from your IP address has been temporarily blocked.",
        "quota",
    ),
    # SMTP 452 4.5.3 too many recipients -> retry with smaller batches
    ("smtp-relay 452 4.5.3 too many recipients", 452, "4.5.3 Your message has too many recipients.", "retry"),
    # SMTP 535 5.7.8 / 530 5.7.0 -> auth
    ("Gmail 535 5.7.8", 535, "5.7.8 Username and Password not accepted. x - gsmtp", "auth"),
    ("SES 535 credentials", 535, "Authentication Credentials Invalid", "auth"),
    ("RFC 4954 535 5.7.8", 535, "5.7.8 Authentication credentials invalid", "auth"),
    ("530 5.7.0 authentication required", 530, "5.7.0 Authentication Required", "auth"),
    # SMTP 454 4.7.0 temporary auth failure; other 4xx -> retry
    ("454 4.7.0 temporary auth failure", 454, "4.7.0 Temporary authentication failure", "retry"),
    ("other 4xx: 451 4.3.0", 451, "4.3.0 Temporary system problem, try later", "retry"),
    ("other 4xx: 421 at greeting", 421, "4.3.2 Service not available, closing transmission channel", "retry"),
    ("other 4xx: 450 4.2.0 mailbox busy", 450, "4.2.0 Mailbox temporarily unavailable", "retry"),
    ("other 4xx: 452 4.3.1 storage", 452, "4.3.1 Insufficient system storage", "retry"),
    ("other 4xx: no enhanced code", 451, "Local error in processing", "retry"),
    # SMTP 550 5.1.1 / 552 5.3.4 / other 5xx -> permanent
    ("550 5.1.1 unknown user", 550, "5.1.1 The email account that you tried to reach does not exist.", "permanent"),
    ("552 5.3.4 too big", 552, "5.3.4 Message size exceeds fixed maximum message size", "permanent"),
    ("other 5xx: 554 5.7.1 not verified", 554, "Message rejected: Email address is not verified.", "permanent"),
    ("other 5xx: 550 5.7.1 policy without a limit", 550, "5.7.1 Relaying denied", "permanent"),
    ("other 5xx: 553 5.1.8 bad sender", 553, "5.1.8 Sender address rejected: Domain not found", "permanent"),
    ("other 5xx: 503 bad sequence", 503, "5.5.1 Error: need RCPT command", "permanent"),
    ("other 5xx: 503 bare", 503, "", "permanent"),
]


@pytest.mark.parametrize(("code", "text", "expected"), [row[1:] for row in SMTP_TABLE], ids=[r[0] for r in SMTP_TABLE])
def test_classify_reply_follows_the_outcome_table(code: int, text: str, expected: str) -> None:
    assert classify_reply(code, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.1.1 no such user", "5.1.1"),
        ("4.5.3 Your message has too many recipients", "4.5.3"),
        ("  2.0.0 Ok", "2.0.0"),
        ("Throttling failure: Maximum sending rate exceeded.", None),
        ("5.1 incomplete", None),
        ("", None),
    ],
)
def test_enhanced_code_is_read_from_the_start_of_the_text(text: str, expected: str | None) -> None:
    assert enhanced_code(text) == expected
