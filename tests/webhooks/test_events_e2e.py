"""Issue 8 acceptance, end to end on a running Relay: a local receiver gets every event type Relay emits; the PRD's
two events carry exactly the PRD's fields; every signature verifies with an implementation written here from the
documented scheme (not Relay's); a Mandrill-format endpoint gets Mandrill's form and signature; filters and
sampling limit what an endpoint gets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import smtplib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.store.inbound import ProviderEvent
from tests.support.net import async_wait_for
from tests.support.pools import pool, submit_many
from tests.support.receiver import Posted, Receiver
from tests.support.relay import config, sandbox_workspace, smtp_workspace, start_relay
from tests.support.sink import SmtpSink

SECRET = "whsec-e2e-7f3a9c"
MANDRILL_KEY = "mandrill-webhook-key-1d2e"
PRD_SELECTED = {"pool_id", "workspace_id", "sender_email", "selection_score", "capacity_percentage", "selection_reason"}
PRD_EXHAUSTED = {"pool_id", "sender_email", "available_workspaces", "fallback_action"}
EMITTED = {
    "message.queued",
    "message.delivered",
    "message.complained",
    "message.unsubscribed",
    "message.sent",
    "message.deferred",
    "message.failed",
    "message.bounced",
    "load_balancing.workspace_selected",
    "load_balancing.pool_exhausted",
    "workspace.health_changed",
    "config.changed",
}


def verify_relay_signature(post: Posted, secret: str, tolerance: float = 300.0) -> bool:
    """The receiver's side of `X-Relay-Signature: t=<unix>,v1=<hex>`, as documented: HMAC-SHA256 over
    "<t>.<body>", constant-time comparison, a bounded clock skew."""
    parts = dict(item.split("=", 1) for item in post.headers["x-relay-signature"].split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + post.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"]) and abs(time.time() - int(parts["t"])) < tolerance


def verify_mandrill_signature(post: Posted, key: str, url: str) -> bool:
    """Mandrill's documented scheme: base64(HMAC-SHA1(key, url + each POST key and value, sorted by key))."""
    form = post.form()
    signed = url + "".join(k + form[k] for k in sorted(form))
    expected = base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()
    return hmac.compare_digest(expected, post.headers["x-mandrill-signature"])


def failing(workspace_id: str, domain: str, tmp_path: Path, reply: str) -> dict[str, Any]:
    return sandbox_workspace(workspace_id, [domain], tmp_path / workspace_id, fail_rate=1.0, fail_with=reply)


def send_to_two(relay: Any, sender: str, recipients: list[str]) -> None:
    host, port = relay.smtp_address
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.sendmail(sender, recipients, f"From: {sender}\r\nSubject: two\r\n\r\nhello\r\n")


def events_of(posts: list[Posted]) -> list[dict[str, Any]]:
    return [p.json() for p in posts]


async def test_every_event_type_arrives_signed_with_the_prd_fields(sqlite_url: str, tmp_path: Path) -> None:
    with Receiver() as everything, Receiver() as mandrill, Receiver() as filtered, SmtpSink() as upstream:
        upstream.behaviour.rcpt_replies["bob@example.org"] = "550 5.1.1 <bob@example.org>: no such user"
        data = config(
            sqlite_url,
            [
                sandbox_workspace("ws-a", ["a.example"], tmp_path / "a"),
                sandbox_workspace("ws-b", ["b.example"], tmp_path / "b"),
                {
                    **sandbox_workspace("ws-tiny", ["tiny.example"], tmp_path / "t"),
                    "rate_limits": {"per_user_daily": 1},
                },
                sandbox_workspace("ws-fail", ["fail.example"], tmp_path / "f", fail_rate=1.0, fail_with="550 5.7.1 no"),
                sandbox_workspace(
                    "ws-late", ["late.example"], tmp_path / "l", fail_rate=1.0, fail_with="451 4.3.0 later"
                ),
                sandbox_workspace("ws-auth", ["auth.example"], tmp_path / "x", fail_rate=1.0, fail_with="535 5.7.8 no"),
                smtp_workspace("ws-up", ["up.example"], upstream.port),
            ],
            fallback_workspace="ws-a",
            load_balancing_pools=[
                pool("invite", ["invite.com"], [("ws-a", 2.0), ("ws-b", 1.0)]),
                pool("tiny", ["tinypool.com"], [("ws-tiny", 1.0)]),
            ],
            webhooks=[
                {"url": everything.url, "secret": SECRET},
                {"url": mandrill.url, "secret": MANDRILL_KEY, "format": "mandrill", "events": ["message.*"]},
                {"url": filtered.url, "events": ["message.sent", "load_balancing.*"], "workspace_selected_sample": 0.0},
            ],
        )
        relay = await start_relay(data, tmp_path)
        try:
            await submit_many(relay, "brian@invite.com", 4, tag="pool")
            await submit_many(relay, "ann@tinypool.com", 2, tag="tiny")  # the second finds the pool exhausted
            await submit_many(relay, "ann@fail.example", 1, tag="fail")
            await submit_many(relay, "ann@late.example", 1, tag="late")
            await submit_many(relay, "ann@auth.example", 1, tag="auth")
            await asyncio.to_thread(send_to_two, relay, "ann@up.example", ["ann@example.org", "bob@example.org"])
            # What providers report later (verified by `/webhooks/inbound/*`, tested there) becomes events too.
            sent = await submit_many(relay, "ann@a.example", 1, tag="reported")
            await async_wait_for(
                lambda: any(e["event"] == "message.sent" and e["data"]["message_id"] == sent[0]
                            for e in events_of(everything.accepted())),
                timeout=15, what="the reported message sent",
            )  # fmt: skip
            reports = [
                ProviderEvent("sandbox", "ws-a", kind, "ann@example.org", (sent[0],), datetime.now(UTC))
                for kind in ("message.delivered", "message.complained", "message.unsubscribed")
            ]
            assert (await relay.inbound.record(reports, suppress_on=())).recorded == 3
            await async_wait_for(
                lambda: {e["event"] for e in events_of(everything.accepted())} >= EMITTED,
                timeout=30,
                what="every event type at the receiver",
            )
            seen = events_of(everything.accepted())
        finally:
            await relay.stop()

        for post in everything.accepted():
            assert verify_relay_signature(post, SECRET)
            assert post.headers["x-relay-event"] == post.json()["event"] and post.headers["x-relay-event-id"].isdigit()
        for event in seen:
            assert set(event) == {"event", "timestamp", "data"}
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["timestamp"])
        selected = [e["data"] for e in seen if e["event"] == "load_balancing.workspace_selected"]
        assert selected and all(set(d) == PRD_SELECTED for d in selected)
        assert {d["workspace_id"] for d in selected} <= {"ws-a", "ws-b", "ws-tiny"}
        assert all(
            d["selection_reason"] == "capacity_weighted" and 0 <= d["capacity_percentage"] <= 1 for d in selected
        )
        exhausted = [e["data"] for e in seen if e["event"] == "load_balancing.pool_exhausted"]
        assert exhausted and all(set(d) == PRD_EXHAUSTED for d in exhausted)
        assert exhausted[0] == {
            "pool_id": "tiny",
            "sender_email": "ann@tinypool.com",
            "available_workspaces": 0,
            "fallback_action": "fallback_workspace",
        }
        [bounced] = [e["data"] for e in seen if e["event"] == "message.bounced"]
        assert bounced["recipient"] == "bob@example.org" and bounced["workspace_id"] == "ws-up"
        health = [e["data"] for e in seen if e["event"] == "workspace.health_changed"]
        assert any(d["workspace_id"] == "ws-auth" and d["state"] == "auth_broken" for d in health)

        # Mandrill format: form-encoded `mandrill_events`, Mandrill's names, one event per recipient, signed.
        posts = mandrill.accepted()
        assert posts and all(p.headers["content-type"] == "application/x-www-form-urlencoded" for p in posts)
        assert all(verify_mandrill_signature(p, MANDRILL_KEY, mandrill.url) for p in posts)
        batches = [json.loads(p.form()["mandrill_events"]) for p in posts]
        names = {e["event"] for batch in batches for e in batch}
        assert {"send", "hard_bounce", "deferral"} <= names
        assert names <= {"send", "deferral", "soft_bounce", "hard_bounce", "reject"}
        sends = [e for batch in batches for e in batch if e["event"] == "send"]
        assert all(set(e) == {"event", "_id", "ts", "msg"} and e["msg"]["state"] == "sent" for e in sends)
        assert {"brian@invite.com"} <= {e["msg"]["sender"] for e in sends}

        # Filters and sampling: only what the endpoint asked for; workspace_selected sampled away entirely.
        kinds = {p.json()["event"] for p in filtered.accepted()}
        assert kinds == {"message.sent", "load_balancing.pool_exhausted"}
