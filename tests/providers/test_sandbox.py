"""The sandbox provider: `<id>.eml` holds the exact bytes, and `fail_rate`/`fail_with` fail on request."""

from __future__ import annotations

import json
import random
from pathlib import Path

from relay.config import SandboxSettings
from relay.providers import OutboundMessage, SandboxProvider

# CRLF and bare LF mixed, a leading dot, 8-bit bytes that are not UTF-8, no final newline: all kept as they are.
AWKWARD = (
    b"From: app@box.test\r\nTo: you@dest.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n"
    b"Gr\xc3\xbc\xc3\x9fe\r\n.leading dot\nbare LF line\n\xff\xfe latin-1 \xe9\r\n\r\n\ttrailing"
)


def message(number: int, data: bytes = AWKWARD) -> OutboundMessage:
    return OutboundMessage(
        id=f"01SANDBOX{number:017d}", mail_from="app@box.test", recipients=("you@dest.test", "b@dest.test"), data=data
    )


async def test_writes_id_eml_with_the_exact_bytes_and_the_envelope(outbox: Path) -> None:
    provider = SandboxProvider("box", SandboxSettings(outbox_dir=outbox))
    outgoing = message(1)

    outcome = await provider.send(outgoing)

    assert outcome.kind == "sent"
    assert outcome.provider_message_id == outgoing.id
    assert (outbox / f"{outgoing.id}.eml").read_bytes() == AWKWARD
    envelope = json.loads((outbox / f"{outgoing.id}.json").read_text())
    assert envelope == {
        "mail_from": "app@box.test",
        "recipients": ["you@dest.test", "b@dest.test"],
        "workspace_id": "box",
    }
    assert sorted(p.name for p in outbox.iterdir()) == [f"{outgoing.id}.eml", f"{outgoing.id}.json"]  # no temp files
    assert (await provider.check()).ok


async def test_fail_with_a_4xx_reply_is_a_retry(outbox: Path) -> None:
    provider = SandboxProvider("box", SandboxSettings(outbox_dir=outbox, fail_rate=1.0, fail_with="451 4.3.0 x"))

    outcome = await provider.send(message(1))

    assert (outcome.kind, outcome.status, outcome.response) == ("retry", "451", "4.3.0 x")
    assert list(outbox.iterdir()) == []


async def test_fail_with_a_bare_503_is_permanent(outbox: Path) -> None:
    provider = SandboxProvider("box", SandboxSettings(outbox_dir=outbox, fail_rate=1.0, fail_with="503"))

    outcome = await provider.send(message(1))

    assert (outcome.kind, outcome.status) == ("permanent", "503")
    assert outcome.response  # a default text says why
    assert list(outbox.iterdir()) == []


async def test_fail_with_a_quota_reply_is_classified_like_an_upstream_reply(outbox: Path) -> None:
    settings = SandboxSettings(
        outbox_dir=outbox, fail_rate=1.0, fail_with="550 5.4.5 Daily user sending quota exceeded"
    )

    outcome = await SandboxProvider("box", settings).send(message(1))

    assert outcome.kind == "quota"


async def test_a_seeded_rng_gives_a_deterministic_failure_pattern(tmp_path: Path) -> None:
    async def pattern(outbox: Path, seed: int) -> list[str]:
        settings = SandboxSettings(outbox_dir=outbox, fail_rate=0.5, fail_with="451 4.3.0 x")
        provider = SandboxProvider("box", settings, random.Random(seed))
        return [(await provider.send(message(n))).kind for n in range(40)]

    first = await pattern(tmp_path / "a", 1234)
    again = await pattern(tmp_path / "b", 1234)
    other = await pattern(tmp_path / "c", 4321)

    # The pattern is exactly the seeded stream compared with fail_rate, one draw per send.
    draws = random.Random(1234)
    assert first == ["retry" if draws.random() < 0.5 else "sent" for _ in range(40)]
    assert again == first
    assert other != first
    assert {"sent", "retry"} == set(first)
    written = sorted(p.stem for p in (tmp_path / "a").glob("*.eml"))
    assert written == [message(n).id for n, kind in enumerate(first) if kind == "sent"]


async def test_fail_rate_zero_never_fails(outbox: Path) -> None:
    provider = SandboxProvider("box", SandboxSettings(outbox_dir=outbox, fail_with="451 4.3.0 x"), random.Random(1))
    kinds = {(await provider.send(message(n))).kind for n in range(20)}
    assert kinds == {"sent"}
