"""The suppression list on every backend: an address is listed once (the first reason stays), and each process's
in-memory copy follows the table — rows added or removed by another process, including one whose clock runs
behind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from relay.clock import ManualClock
from relay.store import Database, Suppression, SuppressionList
from relay.store.suppressions import insert_suppressions

AT = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def entry(email: str, reason: str = "hard_bounce", at: datetime = AT) -> Suppression:
    return Suppression(email, reason, None, "test", None, at)


async def test_an_address_is_listed_once_and_keeps_its_first_reason(db: Database) -> None:
    async with db.begin() as connection:
        added = await insert_suppressions(connection, [entry("ann@example.org"), entry("ann@example.org", "manual")])
    assert [a.reason for a in added] == ["hard_bounce"]
    async with db.begin() as connection:
        added = await insert_suppressions(
            connection, [entry("ann@example.org", "complaint"), entry("bob@example.org", "complaint")]
        )
    assert [a.email for a in added] == ["bob@example.org"]
    listing = SuppressionList(db, ManualClock(AT))
    ann = await listing.get("ANN@example.org")
    assert ann is not None and ann.reason == "hard_bounce" and ann.created_at == AT
    assert [s.email for s in await listing.search(reason="complaint")] == ["bob@example.org"]
    # Longer than the column: skipped rather than failing the transaction it is part of.
    async with db.begin() as connection:
        assert await insert_suppressions(connection, [entry("x" * 320 + "@example.org")]) == []


async def test_each_process_follows_the_table(db: Database) -> None:
    here, there = SuppressionList(db, ManualClock(AT)), SuppressionList(db, ManualClock(AT))
    await here.refresh(full=True)
    await there.refresh(full=True)

    assert await there.add(entry("ann@example.org"))
    assert there.refuses("ann@example.org") is not None  # at once in the writing process
    assert here.refuses("ann@example.org") is None  # the other one follows on its next refresh
    await here.refresh()
    listed = here.refuses("Ann@Example.org")
    assert listed is not None and listed.reason == "hard_bounce"

    # Stamped before the newest row by a process whose clock runs behind: the count gives it away.
    assert await there.add(entry("bob@example.org", at=AT - timedelta(hours=1)))
    await here.refresh()
    assert here.refuses("bob@example.org") is not None

    assert await there.remove("ann@example.org")
    assert there.refuses("ann@example.org") is None
    await here.refresh()
    assert here.refuses("ann@example.org") is None and len(here) == 1


async def test_refusing_can_be_switched_off(db: Database) -> None:
    enabled = True
    listing = SuppressionList(db, ManualClock(AT), enabled=lambda: enabled)
    assert await listing.add(entry("ann@example.org"))
    assert listing.refuses("ann@example.org") is not None
    enabled = False
    assert listing.refuses("ann@example.org") is None
    assert listing.lookup("ann@example.org") is not None
