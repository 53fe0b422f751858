"""The dashboard over HTTP (issue 9): the login, the session's limits, and what the overview and the pools pages
show of load balancing and health. The browser tests drive the same pages in Chromium."""

from __future__ import annotations

import html
import re
from pathlib import Path

from relay.runtime import Relay
from relay.store import AuditLog
from tests.support.dashboard import ADMIN_KEY, VIEWER_KEY, dashboard_client, form_token
from tests.support.pools import submit_many, wait_for_statuses
from tests.support.relay import config, sandbox_workspace, start_relay


def etag_of(page: str) -> str:
    found = re.search(r'name="etag" value="([^"]*)"', page)
    assert found, "no pool version on the form"
    return html.unescape(found.group(1))


async def test_every_page_asks_for_a_login_first(relay: Relay) -> None:
    async with dashboard_client(relay) as client:
        for path in ("/dashboard", "/dashboard/pools", "/dashboard/pools/invite"):
            answer = await client.get(path)
            assert answer.status_code == 303
            assert answer.headers["location"] == f"/dashboard/login?next={path}"
        login = await client.get("/dashboard/login")
        assert login.status_code == 200 and 'name="key"' in login.text


async def test_an_unknown_key_is_refused_and_a_known_one_opens_a_session(relay: Relay) -> None:
    async with dashboard_client(relay) as client:
        refused = await client.post("/dashboard/login", data={"key": "not-a-key", "next": "/dashboard/pools"})
        assert refused.status_code == 303 and "relay_flash" in refused.headers["set-cookie"]
        banner = (await client.get(refused.headers["location"])).text
        assert 'class="problem"' in banner and "that API key is not known here" in banner
        again = (await client.get(refused.headers["location"])).text
        assert "that API key is not known here" not in again  # shown once
        assert (await client.get("/dashboard")).status_code == 303
        opened = await client.post("/dashboard/login", data={"key": VIEWER_KEY, "next": "/dashboard/pools"})
        assert opened.headers["location"] == "/dashboard/pools"
        cookie = opened.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and VIEWER_KEY not in cookie
        page = await client.get("/dashboard/pools")
        assert page.status_code == 200 and "vera · viewer" in page.text


async def test_login_never_sends_the_browser_to_another_site(relay: Relay) -> None:
    async with dashboard_client(relay) as client:
        for target in ("https://evil.example/", "//evil.example/dashboard", "/dashboard//evil", "/api/v1/pools"):
            opened = await client.post("/dashboard/login", data={"key": VIEWER_KEY, "next": target})
            assert opened.headers["location"] == "/dashboard"


async def test_a_forged_or_expired_cookie_is_no_session(relay: Relay) -> None:
    async with dashboard_client(relay, VIEWER_KEY) as client:
        token = client.cookies["relay_session"]
        name, role, expires, mac = token.split(".")
        client.cookies.clear()
        client.cookies.set("relay_session", f"{name}.{role}.{int(expires) + 10}.{mac}", path="/dashboard")
        assert (await client.get("/dashboard")).status_code == 303
        client.cookies.clear()
        client.cookies.set("relay_session", f"{name}.{role}.1.{mac}", path="/dashboard")
        assert (await client.get("/dashboard")).status_code == 303


async def test_the_overview_and_pools_show_what_happened(relay: Relay) -> None:
    await submit_many(relay, "brian@invite.com", 8, tag="dash")
    await wait_for_statuses(relay, {"sent": 8})
    async with dashboard_client(relay, VIEWER_KEY) as client:
        overview = (await client.get("/dashboard")).text
        assert 'data-figure="attempts">8<' in overview
        assert 'data-figure="success-rate">100.0 %<' in overview
        assert 'data-queue="sent">8<' in overview
        assert 'data-pool-available="invite">2 / 2<' in overview
        pools = (await client.get("/dashboard/pools")).text
        for member in ("ws-a", "ws-b"):
            assert f'data-member="{member}"' in pools
        assert "healthy" in pools and "expected 75.0 %" in pools and "expected 25.0 %" in pools


async def test_an_admin_changes_a_weight_and_it_is_applied_and_audited(relay: Relay) -> None:
    async with dashboard_client(relay, ADMIN_KEY) as client:
        page = (await client.get("/dashboard/pools/invite")).text
        changed = await client.post(
            "/dashboard/pools/invite/members/ws-b", data={"csrf": form_token(page), "weight": "5", "enabled": "on"}
        )
        assert changed.status_code == 303 and changed.headers["location"] == "/dashboard/pools/invite"
        view = relay.balancer.catalog.get("invite")
        assert view is not None and {m.workspace_id: m.weight for m in view.members}["ws-b"] == 5.0
        entry = (await AuditLog(relay.db).entries(target_type="pool", target_id="invite"))[0]
        assert entry.actor == "ada" and entry.action == "update_member"
        after = (await client.get(changed.headers["location"])).text
        assert 'data-audit-action="update_member"' in after and "weight 5.0, enabled" in after


async def test_a_weight_form_needs_an_admin_and_its_token(relay: Relay) -> None:
    async with dashboard_client(relay, VIEWER_KEY) as viewer:
        page = (await viewer.get("/dashboard/pools/invite")).text
        assert "Change members" not in page
        refused = await viewer.post(
            "/dashboard/pools/invite/members/ws-b", data={"csrf": form_token(page), "weight": "5"}
        )
        assert refused.status_code == 403
    async with dashboard_client(relay, ADMIN_KEY) as admin:
        forged = await admin.post("/dashboard/pools/invite/members/ws-b", data={"csrf": "x", "weight": "5"})
        assert forged.status_code == 403
    view = relay.balancer.catalog.get("invite")
    assert view is not None and {m.workspace_id: m.weight for m in view.members}["ws-b"] == 1.0


async def test_the_routing_test_form_runs_a_dry_run(relay: Relay) -> None:
    async with dashboard_client(relay, VIEWER_KEY) as client:
        page = await client.get("/dashboard/pools/invite", params={"sender": "brian@invite.com", "count": "400"})
        assert page.status_code == 200
        assert "data-chosen>ws-" in page.text and "Picks of 400" in page.text


async def test_without_api_keys_the_login_page_says_how_to_add_one(sqlite_url: str, tmp_path: Path) -> None:
    relay = await start_relay(config(sqlite_url, [sandbox_workspace("ws-a", ["a.example"], tmp_path / "a")]), tmp_path)
    try:
        async with dashboard_client(relay) as client:
            page = (await client.get("/dashboard/login")).text
            assert "No API keys are configured" in page and "http.api_keys" in page
            refused = await client.post("/dashboard/login", data={"key": "", "next": "/dashboard"})
            assert "relay_flash" in refused.headers["set-cookie"]
    finally:
        await relay.stop()


async def test_forms_posted_from_another_site_are_refused(relay: Relay) -> None:
    async with dashboard_client(relay) as client:
        elsewhere = {"origin": "https://evil.example"}
        refused = await client.post("/dashboard/login", data={"key": ADMIN_KEY}, headers=elsewhere)
        assert refused.status_code == 403 and "relay_session" not in client.cookies
    async with dashboard_client(relay, ADMIN_KEY) as admin:
        token = form_token((await admin.get("/dashboard/pools/invite")).text)
        form = {"csrf": token, "weight": "7", "enabled": "on"}
        refused = await admin.post("/dashboard/pools/invite/members/ws-b", data=form, headers=elsewhere)
        assert refused.status_code == 403
        here = await admin.post("/dashboard/pools/invite/members/ws-b", data=form, headers={"origin": "http://t"})
        assert here.status_code == 303


async def test_a_link_cannot_put_a_banner_on_a_page(relay: Relay) -> None:
    async with dashboard_client(relay, VIEWER_KEY) as client:
        for path in ("/dashboard/pools", "/dashboard/login"):
            page = (await client.get(path, params={"notice": "call +1 555 0100", "problem": "your key expired"})).text
            assert "555 0100" not in page and "your key expired" not in page


async def test_a_session_is_bound_to_its_key_s_role_when_names_repeat(sqlite_url: str, tmp_path: Path) -> None:
    admin = {"name": "ops", "key": "ops-admin-key-1", "role": "admin"}
    keys = {"api_keys": [admin, {"name": "ops", "key": VIEWER_KEY}]}
    data = config(sqlite_url, [sandbox_workspace("ws-a", ["a.example"], tmp_path / "a")], http=keys)
    relay = await start_relay(data, tmp_path)
    try:
        async with dashboard_client(relay, VIEWER_KEY) as client:
            page = (await client.get("/dashboard")).text
            assert "ops · viewer" in page and "ops · admin" not in page
            token = client.cookies["relay_session"]
            name, _role, expires, mac = token.split(".")
            client.cookies.clear()
            client.cookies.set("relay_session", f"{name}.admin.{expires}.{mac}", path="/dashboard")
            assert (await client.get("/dashboard")).status_code == 303
    finally:
        await relay.stop()


async def test_odd_cookies_and_counts_are_no_server_error(relay: Relay) -> None:
    async with dashboard_client(relay) as client:
        for cookie in ("x.viewer.².y", "x.viewer." + "9" * 5000 + ".y", "..", "a.b.c.d.e"):
            raw = {"cookie": f"relay_session={cookie}".encode()}
            assert (await client.get("/dashboard", headers=raw)).status_code == 303
    async with dashboard_client(relay, VIEWER_KEY) as client:
        for count in ("²", "9" * 5000, "-1", "x"):
            page = await client.get("/dashboard/pools/invite", params={"sender": "a@invite.com", "count": count})
            assert page.status_code == 200


async def test_a_form_posted_after_the_session_ended_returns_to_its_page(relay: Relay) -> None:
    async with dashboard_client(relay) as client:
        referer = {"referer": "http://t/dashboard/pools/invite"}
        answer = await client.post("/dashboard/pools/invite/members/ws-b", data={"weight": "2"}, headers=referer)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/dashboard/login?next=/dashboard/pools/invite"


async def test_a_stale_weight_form_never_undoes_a_change_made_since(relay: Relay) -> None:
    async with dashboard_client(relay, ADMIN_KEY) as admin:
        page = (await admin.get("/dashboard/pools/invite")).text
        async with dashboard_client(relay, ADMIN_KEY) as other:
            other_page = (await other.get("/dashboard/pools/invite")).text
            form = {"csrf": form_token(other_page), "etag": etag_of(other_page), "weight": "1"}  # ws-b turned off
            assert (await other.post("/dashboard/pools/invite/members/ws-b", data=form)).status_code == 303
        stale = {"csrf": form_token(page), "etag": etag_of(page), "weight": "9", "enabled": "on"}
        refused = await admin.post("/dashboard/pools/invite/members/ws-b", data=stale)
        banner = (await admin.get(refused.headers["location"])).text
        assert "changed meanwhile" in banner
    view = relay.balancer.catalog.get("invite")
    assert view is not None
    assert [(m.weight, m.enabled) for m in view.members if m.workspace_id == "ws-b"] == [(1.0, False)]


async def test_the_live_refresh_does_not_run_the_routing_test_again(relay: Relay) -> None:
    async with dashboard_client(relay, VIEWER_KEY) as client:
        query = {"sender": "brian@invite.com", "count": "50"}
        first = await client.get("/dashboard/pools/invite", params=query)
        assert "Picks of 50" in first.text
        before = relay.metrics.render()
        live = await client.get("/dashboard/pools/invite", params=query, headers={"x-relay-live": "1"})
        assert live.status_code == 200 and "Picks of 50" not in live.text
        assert relay.metrics.render() == before  # dry runs are not decisions: the decision-time metric is untouched
