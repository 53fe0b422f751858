"""The messages pages over HTTP (issue 9): search by sender, recipient, status, workspace and id with paging; a
message's attempts as a timeline with each routing decision explained (a failover through two workspaces); an
operator's resend and cancel, sharing the API's code and its audit; and what a viewer or a forged form may not do."""

from __future__ import annotations

import random
import re
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path

import pytest
import sqlalchemy as sa

from relay.runtime import Relay
from relay.store import Messages
from relay.store.tables import messages
from tests.support.dashboard import KEYS, OPERATOR_KEY, VIEWER_KEY, dashboard_client, form_token
from tests.support.pools import pool, submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay

UNKNOWN_ID = "01NOSUCHMESSAGE00000000000"


@pytest.fixture
async def relay(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Relay]:
    """Pool `invite` prefers ws-bad (weight 999 to 1), which answers 451 to every send, so a pool message fails over
    to ws-good; good.example goes straight to ws-good; ws-limited (limited.example) sends one message a day."""
    limited = sandbox_workspace("ws-limited", ["limited.example"], tmp_path / "limited")
    limited["rate_limits"] = {"workspace_daily": 1}
    data = config(
        sqlite_url,
        [
            sandbox_workspace("ws-bad", [], tmp_path / "bad", fail_rate=1.0, fail_with="451 4.3.0 try later"),
            sandbox_workspace("ws-good", ["good.example"], tmp_path / "good"),
            limited,
        ],
        http=KEYS,
        load_balancing_pools=[pool("invite", ["invite.com"], [("ws-bad", 999.0), ("ws-good", 1.0)])],
    )
    started = await start_relay(data, tmp_path, rng=random.Random(11))
    yield started
    await started.stop()


def listed(html: str) -> list[str]:
    return re.findall(r'<tr data-message="([^"]+)"', html)


async def sent_and_deferred(relay: Relay, sent_before: int = 0) -> tuple[str, str]:
    """ws-limited's one message of the day, sent, and the next one, deferred until tomorrow."""
    ids = await submit_many(relay, "dan@limited.example", 2, tag="limit", recipient="bob@example.org")
    await wait_for_statuses(relay, {"sent": sent_before + 1, "deferred": 1})
    found = [await Messages(relay.db).get(i) for i in ids.values()]
    by_status = {view.status: view.id for view in found if view is not None}
    return by_status["sent"], by_status["deferred"]


async def test_search_finds_messages_by_sender_recipient_status_workspace_and_id(relay: Relay) -> None:
    brian = await submit_many(relay, "brian@good.example", 2, tag="b")
    carol = (await submit_many(relay, "carol@good.example", 1, tag="c", recipient="Zed@Example.net"))[0]
    await wait_for_statuses(relay, {"sent": 3})
    sent, deferred = await sent_and_deferred(relay, sent_before=3)
    everything = sorted([*brian.values(), carol, sent, deferred], reverse=True)
    async with dashboard_client(relay, VIEWER_KEY) as client:

        async def search(**params: str) -> list[str]:
            answer = await client.get("/dashboard/messages", params=params)
            assert answer.status_code == 200, answer.text
            return listed(answer.text)

        page = (await client.get("/dashboard/messages")).text
        assert '<form id="message-search" class="search" method="get" action="/dashboard/messages">' in page
        for name in ("q", "sender", "recipient", "status", "workspace"):
            assert f'name="{name}"' in page
        assert '<button type="submit">Search</button>' in page and 'id="message-results" data-live' in page
        assert listed(page) == everything  # newest first
        assert f'<a href="/dashboard/messages/{carol}">' in page
        assert f'<tr data-message="{deferred}">' in page and 'class="badge status-deferred">deferred<' in page

        assert await search(sender="CAROL@good") == [carol]
        assert await search(recipient="zed@example.NET") == [carol]
        assert await search(status="deferred") == [deferred]
        assert await search(status="sent", workspace="ws-limited") == [sent]
        assert await search(workspace="ws-good") == sorted([*brian.values(), carol], reverse=True)
        assert await search(workspace="ws-limited") == [sent]  # the deferred one has not been sent anywhere yet
        assert await search(q="zed@") == [carol]  # free text: part of a recipient
        assert await search(q="brian") == sorted(brian.values(), reverse=True)  # or of the sender
        assert await search(status="bogus", sender="dan@") == sorted([sent, deferred], reverse=True)

        for text in (carol, carol.lower()):
            found = await client.get("/dashboard/messages", params={"q": text})
            assert found.status_code == 303 and found.headers["location"] == f"/dashboard/messages/{carol}"
        missing = await client.get("/dashboard/messages", params={"q": UNKNOWN_ID})
        assert missing.status_code == 200 and listed(missing.text) == []
        assert f"No message &#34;{UNKNOWN_ID}&#34;" in missing.text


async def test_results_page_fifty_at_a_time_with_an_older_link(relay: Relay) -> None:
    ids = await submit_many(relay, "brian@good.example", 53, tag="page", sessions=3)
    await wait_for_statuses(relay, {"sent": 53})
    async with dashboard_client(relay, VIEWER_KEY) as client:
        first = (await client.get("/dashboard/messages", params={"sender": "brian@"})).text
        assert len(listed(first)) == 50
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', first)
        assert older is not None and "sender=brian%40" in older.group(1)
        second = (await client.get(unescape(older.group(1)))).text
        assert 'rel="next"' not in second
        assert listed(first) + listed(second) == sorted(ids.values(), reverse=True)


async def test_the_timeline_explains_each_attempt_of_a_failover(relay: Relay) -> None:
    [message_id] = (await submit_many(relay, "brian@invite.com", 1, tag="failover")).values()
    await wait_for_statuses(relay, {"sent": 1})
    async with dashboard_client(relay, VIEWER_KEY) as client:
        page = (await client.get(f"/dashboard/messages/{message_id}")).text
    assert re.findall(r'<li class="([a-z]+)" data-attempt="(\d+)">', page) == [("retry", "1"), ("sent", "2")]
    first, second = (unescape(d) for d in re.findall(r'<p class="decision">(.*?)</p>', page, re.S))
    assert first.startswith("Pool invite (capacity_weighted) chose ws-bad: score ")
    assert " vs ws-good " in first and "failover" not in first
    assert second.startswith("Pool invite (capacity_weighted) chose ws-good: score ")
    assert "the only eligible member" in second
    assert "excluded: ws-bad (already tried in this pass)" in second
    assert second.endswith("failover after 1 earlier try in this pass.")
    for link in ("/dashboard/workspaces/ws-bad", "/dashboard/workspaces/ws-good", "/dashboard/pools/invite"):
        assert f'href="{link}"' in page
    assert "451" in page and "try later" in page  # the provider's answer to the first attempt
    assert 'class="badge status-sent"' in page and "brian@invite.com" in page


async def test_an_operator_resends_a_message_as_an_audited_copy(relay: Relay) -> None:
    [original] = (await submit_many(relay, "brian@good.example", 1, tag="again")).values()
    await wait_for_statuses(relay, {"sent": 1})
    async with dashboard_client(relay, OPERATOR_KEY) as client:
        page = (await client.get(f"/dashboard/messages/{original}")).text
        assert f'action="/dashboard/messages/{original}/resend"' in page and "data-confirm=" in page
        assert "/cancel" not in page  # a sent message cannot be cancelled: no button
        answer = await client.post(f"/dashboard/messages/{original}/resend", data={"csrf": form_token(page)})
        assert answer.status_code == 303
        location = answer.headers["location"]
        copy_id = location.removeprefix("/dashboard/messages/")
        assert copy_id != original and "relay_flash" in answer.headers["set-cookie"]
        await wait_for_statuses(relay, {"sent": 2})
        copy_page = (await client.get(location)).text
        assert "resent by otto" in copy_page
        assert f'<a href="/dashboard/messages/{original}" data-resent-from>' in copy_page
    async with relay.db.read() as connection:
        row = (
            await connection.execute(
                sa.select(messages.c.resent_from, messages.c.authenticated_user, messages.c.rcpt_to).where(
                    messages.c.id == copy_id
                )
            )
        ).one()
    assert (row.resent_from, row.authenticated_user, list(row.rcpt_to)) == (original, "otto", ["ann@example.org"])
    assert await Messages(relay.db).raw(copy_id) == await Messages(relay.db).raw(original)


async def test_an_operator_cancels_a_deferred_message_but_not_a_sent_one(relay: Relay) -> None:
    sent, deferred = await sent_and_deferred(relay)
    async with dashboard_client(relay, OPERATOR_KEY) as client:
        page = (await client.get(f"/dashboard/messages/{deferred}")).text
        assert f'action="/dashboard/messages/{deferred}/cancel"' in page and "Next attempt" in page
        token = form_token(page)
        answer = await client.post(f"/dashboard/messages/{deferred}/cancel", data={"csrf": token})
        assert answer.status_code == 303 and answer.headers["location"] == f"/dashboard/messages/{deferred}"
        view = await Messages(relay.db).get(deferred)
        assert view is not None and view.status == "failed"
        assert view.last_error == 'cancelled through the dashboard by "otto"'
        assert "Cancelled by otto" in (await client.get(answer.headers["location"])).text

        refused = await client.post(f"/dashboard/messages/{sent}/cancel", data={"csrf": token})
        assert refused.status_code == 303 and "relay_flash" in refused.headers["set-cookie"]
        banner = (await client.get(refused.headers["location"])).text
        assert 'class="problem"' in banner and "this one is sent" in banner
    assert await relay.queue.status_counts() == {"sent": 1, "failed": 1}


async def test_resend_and_cancel_need_an_operator_and_the_form_token(relay: Relay) -> None:
    _, deferred = await sent_and_deferred(relay)
    async with dashboard_client(relay, VIEWER_KEY) as viewer:
        page = (await viewer.get(f"/dashboard/messages/{deferred}")).text
        assert "/resend" not in page and "/cancel" not in page
        for action in ("resend", "cancel"):
            refused = await viewer.post(f"/dashboard/messages/{deferred}/{action}", data={"csrf": form_token(page)})
            assert refused.status_code == 403
    async with dashboard_client(relay, OPERATOR_KEY) as operator:
        for action in ("resend", "cancel"):
            assert (await operator.post(f"/dashboard/messages/{deferred}/{action}", data={})).status_code == 403
            forged = await operator.post(f"/dashboard/messages/{deferred}/{action}", data={"csrf": "forged"})
            assert forged.status_code == 403
    async with dashboard_client(relay) as anonymous:
        answer = await anonymous.post(f"/dashboard/messages/{deferred}/cancel", data={})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/dashboard/login")
    assert await relay.queue.status_counts() == {"sent": 1, "deferred": 1}  # nothing resent, nothing cancelled


async def test_an_unknown_message_is_a_404(relay: Relay) -> None:
    async with dashboard_client(relay, OPERATOR_KEY) as client:
        for path in (f"/dashboard/messages/{UNKNOWN_ID}", "/dashboard/messages/" + "x" * 300):
            assert (await client.get(path)).status_code == 404
        token = form_token((await client.get("/dashboard/messages")).text)
        for action in ("resend", "cancel"):
            answer = await client.post(f"/dashboard/messages/{UNKNOWN_ID}/{action}", data={"csrf": token})
            assert answer.status_code == 404
