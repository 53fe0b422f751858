from __future__ import annotations

from pathlib import Path

from relay.config import RateLimits
from relay.limits.policy import cost_of, limits_for, user_limit
from relay.limits.types import Limit
from tests.config.test_settings import example, problems


def test_user_limit_precedence_matches_the_previous_relay() -> None:
    limits = RateLimits(per_user_daily=100, custom_user_limits={"Brian@Invite.com": 500})
    assert user_limit(limits, "brian@invite.com", 2000) == 500
    assert user_limit(limits, "ann@invite.com", 2000) == 100
    assert user_limit(RateLimits(), "ann@invite.com", 2000) == 2000


def test_limits_for_a_send() -> None:
    rate = RateLimits(workspace_daily=2000, per_user_daily=100, per_second=5)
    assert limits_for("gmail-1", rate, "Brian@Invite.com", 2000) == [
        Limit("ws:gmail-1", "rolling", 2000),
        Limit("user:gmail-1:brian@invite.com", "rolling", 100),
        Limit("rate:gmail-1:s", "gcra", 5, period_seconds=1.0, burst=5),
    ]
    assert [x.key for x in limits_for("w", RateLimits(workspace_daily=0), "a@b.c", 10)] == ["user:w:a@b.c"]


def test_calendar_windows_carry_their_time_zone() -> None:
    rate = RateLimits(workspace_daily=10, window="calendar_day", reset_timezone="America/New_York")
    [workspace, user] = limits_for("w", rate, "a@b.c", 10)
    assert (workspace.kind, workspace.timezone, user.kind) == ("calendar", "America/New_York", "calendar")


def test_cost_by_message_or_recipient() -> None:
    assert cost_of(RateLimits(), 7) == 1
    assert cost_of(RateLimits(count_by="recipient"), 7) == 7


def test_an_unknown_time_zone_is_a_config_problem(tmp_path: Path) -> None:
    data = example()
    data["workspaces"][0]["rate_limits"]["reset_timezone"] = "Mars/Olympus"
    assert problems(tmp_path, data) == [
        'workspaces[0].rate_limits.reset_timezone: "Mars/Olympus" is not an IANA time zone (e.g. "America/New_York")'
    ]
